"""The decision page: its recommendations from hand-made records match answers computed by hand, it says
what was not measured instead of failing, and decision.ipynb executes on such records (papermill)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from studylib.record import CostRecord, DeployRecord, TrainRecord
from studylib.stages.cost.prices import load_prices
from studylib.stages.cost.record import cost_record
from studylib.stages.cost.tables import cost_tables
from studylib.study import book
from studylib.study.collect import epochs_frame, flatten
from studylib.views import decision
from studylib.views.results import BELOW, BEST, WITHIN, accuracy_comparison, accuracy_table

ROOT = Path(__file__).resolve().parents[1]
N = 200                                    # test images; image i has label i % 10
LABELS = [i % 10 for i in range(N)]
CPU = {"cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 2, "gpu_name": None, "platform": "x"}
CPU_LABEL = "Test CPU (2 CPUs)"
TARGETS = [0.5, 0.7, 0.8]


def predictions(wrong) -> list[int]:
    """Right on every image but those in `wrong`."""
    wrong = set(wrong)
    return [(y + 1) % 10 if i in wrong else y for i, y in enumerate(LABELS)]


def train_record(model: str, seed: int, wrong, size_mb: float, history: list[tuple], **params) -> dict:
    """A valid train record: `history` is (train seconds, val seconds, val top-1) per epoch."""
    p = {"dataset": "clothing10", "model": model, "seed": seed, "image_size": 64, "epochs": len(history),
         "pretrained": False, "targets": TARGETS, "lr": 0.01, **params}
    hist, elapsed, tts, tte = [], 0.0, {f"{t:g}": None for t in TARGETS}, {f"{t:g}": None for t in TARGETS}
    for n, (s, vs, v) in enumerate(history, 1):
        hist.append({"epoch": n, "train_loss": 1.0, "train_top1": 0.5, "val_loss": 1.0, "val_top1": v, "lr": 0.01,
                     "seconds": s, "val_seconds": vs, "images_per_second": 100.0, "data_wait_seconds": 0.0})
        elapsed += s + vs
        for t in TARGETS:
            if v >= t and tts[f"{t:g}"] is None:
                tts[f"{t:g}"], tte[f"{t:g}"] = elapsed, n
    pred = predictions(wrong)
    top1 = sum(a == b for a, b in zip(pred, LABELS)) / N
    record = {
        "run_id": f"train-clothing10-{model}-s{seed}", "stage": "train", "status": "ok", "params": p,
        "dataset": "clothing10", "model": model, "pretrained": p["pretrained"], "device": "cpu", "hardware": CPU,
        "versions": {}, "classes": [f"c{i}" for i in range(10)], "num_classes": 10, "image_size": 64,
        "param_count": int(size_mb * 250_000), "trainable_params": int(size_mb * 250_000), "size_mb": size_mb,
        "gmacs": 0.05, "data": {"cache": {}}, "history": hist,
        "test": {"top1": top1, "top5": 1.0, "balanced_accuracy": top1, "macro_f1": top1, "per_class": [],
                 "confusion_matrix": [], "predictions": pred, "labels": LABELS, "images_digest": "clothing10-test"},
        "train_seconds": elapsed, "first_step_seconds": 0.5, "eval_seconds": 2.0, "time_to_target": tts,
        "epoch_to_target": tte, "peak_memory_mb": 500.0, "checkpoint": "runs/x/model.pt",
        "started_at": "2026-01-01T10:00:00+00:00", "finished_at": "2026-01-01T10:05:00+00:00"}
    return TrainRecord.model_validate(record).model_dump(mode="json")


def serving(rec: dict, latency_ms: float, int8_mb=None, int8_top1=None) -> dict:
    return {"model": rec["model"], "run_id": rec["run_id"], "latency_ms": latency_ms, "throughput": 1000 / latency_ms * 2,
            "batch_size": 32, "fp32_mb": rec["size_mb"], "int8_mb": int8_mb, "fp32_top1": rec["test"]["top1"],
            "int8_top1": int8_top1}


def deploy_record(trains: list[dict], models: list[dict]) -> dict:
    served = trains[0]
    record = {
        "run_id": "deploy-clothing10", "stage": "deploy", "status": "ok", "params": {"run": "best"},
        "train_run_id": served["run_id"], "dataset": "clothing10", "model": served["model"], "image_size": 64,
        "backend": "onnx", "precision": "fp32", "device": "cpu", "hardware": CPU, "versions": {}, "export": {},
        "sizes_mb": {}, "pytorch_top1": 0.8, "onnx_top1": 0.8, "int8_top1": None, "int8_top1_change": None,
        "int8_size_ratio": None, "served": {}, "served_agreement": 1.0, "served_top1": 0.8, "load": [],
        "throughput": 100.0, "latency_p50_ms": 6.0, "ceiling": {}, "inprocess_p50_ms": 5.0, "http_overhead_ms": 1.0,
        "server": {}, "models": models,
        "started_at": "2026-01-01T11:00:00+00:00", "finished_at": "2026-01-01T11:05:00+00:00"}
    return DeployRecord.model_validate(record).model_dump(mode="json")


def with_cost(records: list[dict]) -> list[dict]:
    """The records and the cost record the cost stage makes of them (this machine at 2 USD per hour)."""
    book = load_prices(ROOT / "params" / "prices.yaml", this_machine_price=2.0)
    tables = cost_tables(records, book, this_machine=[CPU_LABEL])
    cost = cost_record("cost-fake", {"study": "fake"}, "fake", book, tables, [CPU_LABEL])
    return records + [CostRecord.model_validate(cost).model_dump(mode="json")]


@pytest.fixture
def trains() -> list[dict]:
    """Four models. By hand: A is the most accurate (80%); B (78%) and D (79%) err on other images than A, so
    they are within noise of it; C (50%) is not. Two-epoch histories reach val top-1 0.7 (the highest target
    any run reaches) after 220 s (A), 55 s (B seed 0), 110 s (B seed 1), 176 s (D); C never does."""
    return [
        train_record("shufflenet_v2_x1_0", 0, range(0, 40), 5.0, [(100, 10, 0.60), (100, 10, 0.75)]),
        train_record("shufflenet_v2_x1_0", 1, range(5, 45), 5.0, [(100, 10, 0.55), (100, 10, 0.72)]),
        train_record("mobilenet_v3_small", 0, range(30, 74), 6.0, [(50, 5, 0.71), (50, 5, 0.74)]),
        train_record("mobilenet_v3_small", 1, range(30, 74), 6.0, [(50, 5, 0.65), (50, 5, 0.73)]),
        train_record("mnasnet0_5", 0, range(100, 200), 2.0, [(30, 3, 0.40), (30, 3, 0.50)]),
        train_record("smallvgg3_bn", 0, range(20, 62), 4.0, [(80, 8, 0.60), (80, 8, 0.70)]),
        train_record("smallvgg3_bn", 1, range(20, 62), 4.0, [(80, 8, 0.60), (80, 8, 0.70)]),
    ]


@pytest.fixture
def full(trains) -> list[dict]:
    """Train, deploy (serving numbers for each model's seed-0 run) and cost records. By hand: C serves fastest
    (1 ms) and is smallest (2 MB) but is below A beyond noise; within noise, B is fastest (2 ms) and D smallest."""
    a, _, b, _, c, d, _ = trains
    models = [serving(a, 5.0), serving(b, 2.0), serving(c, 1.0), serving(d, 3.0, int8_mb=1.1, int8_top1=0.785)]
    return with_cost(trains + [deploy_record(trains, models)])


def runs_of(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([flatten(r) for r in records])


def test_the_comparison_marks_what_is_within_noise(trains):
    table, notes = accuracy_comparison(runs_of(trains), trains, "clothing10")
    verdicts = dict(zip(table.label, accuracy_table(table)["compared with the best"]))
    assert verdicts == {"shufflenet_v2_x1_0": BEST, "smallvgg3_bn": WITHIN, "mobilenet_v3_small": WITHIN,
                        "mnasnet0_5": BELOW}
    assert list(table.label) == ["shufflenet_v2_x1_0", "smallvgg3_bn", "mobilenet_v3_small", "mnasnet0_5"]
    assert table.set_index("label").top1.to_dict() == pytest.approx(
        {"shufflenet_v2_x1_0": 0.8, "smallvgg3_bn": 0.79, "mobilenet_v3_small": 0.78, "mnasnet0_5": 0.5})
    assert notes == []
    shown = accuracy_table(table).set_index("model")
    assert shown.loc["mnasnet0_5", "test top-1 (%)"] == "50.0" and shown.loc["mnasnet0_5", "seeds"] == 1
    assert shown.loc["mobilenet_v3_small", "difference from the best (points)"] == "−2.0"
    assert shown.loc["shufflenet_v2_x1_0", "difference from the best (points)"] == "—"


def test_recommendations_match_the_hand_computed_answers(full):
    d = decision.decide(runs_of(full), full, "clothing10")
    assert d.picks == {"most_accurate": "shufflenet_v2_x1_0", "fastest": "mobilenet_v3_small",
                       "smallest": "smallvgg3_bn", "cheapest": "mobilenet_v3_small"}
    s = d.sentences
    assert "test top-1 80.0%" in s["most_accurate"] and "2 seed(s) × 200 test images" in s["most_accurate"]
    assert "Within noise of it: smallvgg3_bn, mobilenet_v3_small." in s["most_accurate"]
    assert "2.0 ms per image at batch 1" in s["fastest"] and "−2.0 points from the best" in s["fastest"]
    assert "The most accurate model takes 5.0 ms." in s["fastest"]
    assert "4.0 MB of fp32 weights" in s["smallest"] and "int8 it takes 1.1 MB and scores 78.5%" in s["smallest"]
    # 55 s on this machine at 2 USD per hour = 0.0306 USD; 6 of the 7 runs reached 0.7
    assert "validation top-1 ≥ 0.7" in s["cheapest"] and "6 of 7 runs reached it" in s["cheapest"]
    assert "(seed 0), 0.9 minutes of training to epoch 1, 0.0306 USD on this machine" in s["cheapest"]
    assert d.cost_column == "train_cost" and d.currency == "USD"
    costs = d.models.set_index("label").train_cost
    assert costs["shufflenet_v2_x1_0"] == pytest.approx(220 / 3600 * 2)
    assert costs["mobilenet_v3_small"] == pytest.approx((110 + 110) / 2 / 3600 * 2)
    table = decision.summary_table(d).set_index("model")
    assert table.loc["mnasnet0_5", "latency, batch 1 (ms)"] == "1.0" and table.loc["smallvgg3_bn", "size (MB)"] == "4.0"
    assert table.loc["shufflenet_v2_x1_0", "training cost (USD)"] == "0.1222"


def test_what_would_change_is_read_from_the_records(full):
    d = decision.decide(runs_of(full), full, "clothing10")
    text = "\n".join(d.changes)
    assert "2 model(s) are within noise of shufflenet_v2_x1_0" in text and "1–2 seeds per model" in text
    assert "shufflenet_v2_x1_0 by 16.0 points at epoch 2" in text          # (0.15 + 0.17) / 2, the last epoch
    assert "Every run trained from random initialisation" in text and "not measured here" in text
    assert "Every run trained on the CPU (Test CPU); no run of the same settings ran on a GPU" in text
    assert "Tuning" not in text                                                # no tune record: no claim


def test_runs_fine_tuned_from_another_run_point_at_the_pretraining_chapter(trains):
    source = trains[2]["run_id"]
    tuned = train_record("mobilenet_v3_small", 2, range(30, 70), 6.0, [(50, 5, 0.72), (50, 5, 0.75)],
                         pretrained=source, finetune="all")
    d = decision.decide(runs_of(trains + [tuned]), trains + [tuned], "clothing10")
    text = "\n".join(d.changes)
    assert "'Does pretraining help?'" in text and "Every run trained from random initialisation" not in text


def test_missing_deploy_and_cost_say_not_measured(trains):
    d = decision.decide(runs_of(trains), trains, "clothing10")
    assert d.picks["fastest"] is None
    assert d.sentences["fastest"] == ("**Fastest to serve within noise of the best**: not measured (no deploy record "
                                      "lists ONNX Runtime numbers for these models).")
    assert d.picks["smallest"] == "smallvgg3_bn" and d.picks["cheapest"] == "mobilenet_v3_small"
    assert "not priced (the cost stage did not run)" in d.sentences["cheapest"]
    assert d.cost_column == "train_minutes" and decision.pareto_figure(d, "latency_ms") is None
    assert "latency" in decision.not_measured(d, "latency_ms")
    assert decision.summary_table(d).set_index("model").loc["mnasnet0_5", "training (min)"] == "1.1"
    assert decision.pareto_figure(d, "size_mb") is not None
    assert "cost chapter (not run for this study)" in "\n".join(d.changes)


def test_records_without_test_predictions_still_give_an_answer(trains):
    old = [{**r, "test": {k: v for k, v in r["test"].items() if k not in ("predictions", "labels", "images_digest")}}
           for r in trains]
    d = decision.decide(runs_of(old), old, "clothing10")
    assert d.picks["most_accurate"] == "shufflenet_v2_x1_0"
    assert "no interval: no test predictions recorded" in d.sentences["most_accurate"]
    assert d.picks["smallest"] == "shufflenet_v2_x1_0"       # within noise of the best = the best alone
    assert any("no interval was computed" in n for n in d.notes)


def test_a_study_with_no_finished_run_says_so():
    d = decision.decide(pd.DataFrame(), [], "clothing10")
    assert d.picks == {} and "nothing to recommend" in d.sentences["most_accurate"]


def write_study(results: Path, study: str, records: list[dict]) -> None:
    """What `studylib collect` writes, from the records (the runs table through collect's own flatten)."""
    d = results / study
    d.mkdir(parents=True, exist_ok=True)
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs_of(records).assign(study=study).to_parquet(d / "runs.parquet", index=False)
    epochs_frame(records).to_parquet(d / "epochs.parquet", index=False)
    (d / "cells.json").write_text(json.dumps({"study": study, "grid": "x.yaml", "cells": []}))


def test_the_decision_page_is_the_first_chapter_after_the_intro(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("STUDYLIB_BOOK", str(tmp_path / "book"))
    write_study(tmp_path / "results", "s", [])
    assert book.toc("s")["parts"][0]["chapters"] == [{"file": "reference_studies"}]   # no report page run yet
    for page in ("results", "methods", "decision"):
        book.report_path(page, "s").parent.mkdir(parents=True, exist_ok=True)
        book.report_path(page, "s").write_text("{}")
    toc = book.toc("s")
    assert toc["root"] == "intro"
    assert [c["file"] for c in toc["parts"][0]["chapters"]] == [
        "results/decision-s", "results/methods-s", "reference_studies", "results/results-s"]
    assert "decision" in book.REPORT_PAGES   # write_report executes it for every study


@pytest.mark.slow
@pytest.mark.parametrize("stages", ["all", "train only"])
def test_decision_and_results_notebooks_execute(study_env, tmp_path, full, trains, stages):
    import papermill as pm

    records = full if stages == "all" else trains
    write_study(Path(study_env["STUDYLIB_RESULTS"]), "fake", records)
    for page in ("decision", "results"):
        out = tmp_path / f"{page}.ipynb"
        pm.execute_notebook(str(ROOT / "notebooks" / f"{page}.ipynb"), str(out), cwd=str(ROOT), progress_bar=False,
                            kernel_name="python3", parameters={"study": "fake"})
        text = out.read_text()
        assert "Traceback" not in text
    decision_text = (tmp_path / "decision.ipynb").read_text()
    assert "Most accurate: shufflenet_v2_x1_0" in decision_text
    assert ("Fastest to serve within noise of the best: mobilenet_v3_small" in decision_text) == (stages == "all")
    assert ("accuracy against serving latency: no deploy record" in decision_text) == (stages != "all")
    assert decision_text.count("image/png") == (3 if stages == "all" else 2)
    results_text = (tmp_path / "results.ipynb").read_text()
    assert "Results on clothing10 (test split)" in results_text and "within noise" in results_text


def test_models_trained_for_other_epochs_and_settings_are_told_apart(trains):
    """The cifar10 study: one model in two settings (3 epochs, and 2 epochs with augmentation) beside another.
    The labels name only what sets a model's groups apart, and the epochs in the sentences are each group's
    own (the grouping column 'epochs' and the measured one once collided and the page failed)."""
    three, two = [(80, 8, 0.5), (80, 8, 0.6), (80, 8, 0.7)], [(80, 8, 0.5), (80, 8, 0.6)]
    records = [train_record("smallvgg3", s, range(30 + s, 60), 4.0, h, augment=aug)
               for s in (0, 1) for h, aug in ((three, False), (two, True))]
    for r in records:
        r["run_id"] += f"-e{r['params']['epochs']}"
    records += trains[:2]
    d = decision.decide(runs_of(records), records, "clothing10")
    assert sorted(d.models.label) == ["shufflenet_v2_x1_0", "smallvgg3 (epochs 2, augment yes)",
                                      "smallvgg3 (epochs 3, augment no)"]
    text = "\n".join(d.changes)
    assert "smallvgg3 (epochs 3, augment no) by 10.0 points at epoch 3" in text
    assert "smallvgg3 (epochs 2, augment yes): 2" in text

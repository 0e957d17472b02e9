"""The chapter "Does pretraining help?" (issue 16, part 5): modes read from parameters, top-1 and the paired gain
over from-scratch per model and mode, time to a validation target, the learning curves, the sentence that answers
the question from the numbers, the links to source runs, and the page executing and reaching the book."""
import json

import numpy as np
import pytest

from studylib.study import book
from studylib.uncertainty import correct_matrix, paired_difference
from studylib.views import transfer

LABELS = [i % 10 for i in range(200)]
SOURCE = "train-cifar10-m-s0-abc"


def preds(right: int, offset: int = 0) -> list[int]:
    """Predictions whose images offset .. offset+right-1 are right (the rest wrong)."""
    return [label if offset <= i < offset + right else (label + 1) % 10 for i, label in enumerate(LABELS)]


def record(model, mode, seed, right, vals=(0.4, 0.6), to=None, seconds=60.0, offset=0, dataset="clothing10"):
    pretrained = False if mode == "scratch" else f"train-cifar10-{model}-s0-abc"
    finetune = "head" if mode == "head" else "all"
    return {"run_id": f"train-{dataset}-{model}-s{seed}-{mode}", "stage": "train", "status": "ok", "dataset": dataset,
            "model": model, "train_seconds": seconds, "notebook": f"train/train-{dataset}-{model}-s{seed}-{mode}.ipynb",
            "params": {"model": model, "seed": seed, "pretrained": pretrained, "finetune": finetune},
            "source_run_id": pretrained or None, "source_dataset": "cifar10" if pretrained else None,
            "test": {"top1": right / 200, "predictions": preds(right, offset), "labels": LABELS},
            "history": [{"epoch": e + 1, "val_top1": v} for e, v in enumerate(vals)],
            "time_to_target": to or {"0.5": None, "0.6": None}}


def test_a_runs_mode_comes_from_its_parameters():
    assert transfer.mode({"pretrained": False, "finetune": "all"}) == "from scratch"
    assert transfer.mode({"pretrained": SOURCE, "finetune": "head"}) == "head only"
    assert transfer.mode({"pretrained": SOURCE, "finetune": "all"}) == "all layers"
    assert transfer.mode({"pretrained": True, "finetune": "all"}) == "all layers"   # ImageNet weights
    assert transfer.source_dataset(record("m", "all", 0, 100)) == "cifar10"
    assert transfer.source_dataset(record("m", "scratch", 0, 100)) is None


def test_only_datasets_and_models_with_a_fine_tuned_run_are_compared():
    runs = transfer.finished([record("m", "scratch", 0, 100), record("m", "all", 0, 120),
                              record("m", "scratch", 0, 100, dataset="cifar10"),     # the pretraining run itself
                              record("n", "scratch", 0, 90),                         # no fine-tuned run of n
                              {**record("m", "head", 0, 1), "status": "failed"}])
    assert [(r["dataset"], r["model"], r["mode"]) for r in runs] == [("clothing10", "m", "from scratch"),
                                                                    ("clothing10", "m", "all layers")]


def test_each_mode_has_its_top1_interval_and_a_paired_gain_over_scratch():
    records = transfer.finished(
        [record("m", "scratch", s, 100 + 10 * s, seconds=120) for s in (0, 1, 2)]
        + [record("m", "all", s, 130 + 10 * s, seconds=60) for s in (0, 1, 2)]
        + [record("m", "head", s, 106 + 2 * s, offset=50) for s in (0, 1, 2)])
    rows = transfer.mode_rows(records).set_index("mode")
    assert list(rows.index) == ["from scratch", "head only", "all layers"]
    full = rows.loc["all layers"]
    assert full["test"] == pytest.approx(0.70) and full["std"] == pytest.approx(0.05)
    assert full["low"] < 0.70 < full["high"] and full["seeds"] == 3 and full["source"] == "cifar10"
    assert full["minutes"] == pytest.approx(1.0)
    # the gain is paired on the same test images: the uncertainty module's own interval, against from-scratch
    scratch = correct_matrix([preds(100 + 10 * s) for s in (0, 1, 2)], LABELS)
    want = paired_difference(correct_matrix([preds(130 + 10 * s) for s in (0, 1, 2)], LABELS), scratch)
    assert (full["gain"], full["gain_low"], full["gain_high"]) == pytest.approx((0.15, want.low, want.high))
    assert full["gain_low"] > 0
    head = rows.loc["head only"]
    assert head["gain"] == pytest.approx(-0.01) and head["gain_low"] < 0 < head["gain_high"]
    assert np.isnan(rows.loc["from scratch", "gain"])
    shown = transfer.mode_table(rows.reset_index()).set_index("mode")
    assert shown.loc["all layers", "test top-1 (%, mean ± std)"] == "70.0 ± 5.0"
    assert shown.loc["all layers", "gain over from scratch (points)"] == "+15.0"
    assert shown.loc["head only", "gain over from scratch (points)"] == "−1.0"
    assert shown.loc["from scratch", "gain over from scratch (points)"] == "—"
    assert shown.loc["all layers", "weights from"] == "cifar10" and shown.loc["from scratch", "weights from"] == "—"


def test_time_to_accuracy_is_read_at_the_target_every_scratch_run_reached():
    records = transfer.finished(
        [record("m", "scratch", s, 100, to={"0.5": 100.0 + s, "0.6": 200.0, "0.7": None}) for s in (0, 1)]
        + [record("m", "all", s, 120, to={"0.5": 30.0, "0.6": 60.0, "0.7": 90.0}) for s in (0, 1)]
        + [record("m", "head", 0, 90, to={"0.5": 150.0, "0.6": 240.0, "0.7": None}),
           record("m", "head", 1, 90, to={"0.5": 160.0, "0.6": None, "0.7": None})])
    rows = transfer.mode_rows(records).set_index("mode")
    assert set(rows["target"]) == {0.6}          # not 0.7, which only fine-tuning reached
    assert rows.loc["from scratch", "minutes_to_target"] == pytest.approx(200 / 60)
    assert rows.loc["all layers", "minutes_to_target"] == pytest.approx(1.0)
    shown = transfer.time_table(rows.reset_index()).set_index("mode")
    assert shown.loc["head only", "time to target (min)"] == "4.0 (1 of 2 seeds)"
    assert shown.loc["all layers", "time to target (min)"] == "1.0"
    assert shown.loc["all layers", "validation target (top-1, %)"] == "60"
    # nobody reached any target: the lowest one, "not reached"
    none = transfer.mode_rows(transfer.finished([record("m", "scratch", 0, 10), record("m", "all", 0, 12)]))
    assert set(none["target"]) == {0.5} and transfer.time_table(none)["time to target (min)"].tolist() == ["not reached"] * 2


def rows_for(gains: dict) -> "transfer.pd.DataFrame":
    """Three seeds of scratch at 100/200 right, and each model's full fine-tuning `gains[model]` images better."""
    records = []
    for model, gain in gains.items():
        records += [record(model, "scratch", s, 100 + s) for s in (0, 1, 2)]
        records += [record(model, "all", s, 100 + s + gain) for s in (0, 1, 2)]
    return transfer.mode_rows(transfer.finished(records))


def test_the_answer_is_generated_from_the_gains_and_their_intervals():
    [said] = transfer.answer(rows_for({"mobilenet_v3_small": 40, "shufflenet_v2_x1_0": 30}))
    rows = rows_for({"mobilenet_v3_small": 40, "shufflenet_v2_x1_0": 30}).set_index("model")
    lo, hi = rows.loc["mobilenet_v3_small"].iloc[1][["gain_low", "gain_high"]]
    assert said.startswith("On clothing10, fine-tuning every layer from cifar10 beats training from scratch for both "
                           "models: mobilenet_v3_small +20.0 points (95% interval ")
    assert f"(95% interval {100 * lo:+.1f} to {100 * hi:+.1f})" in said and "shufflenet_v2_x1_0 +15.0 points" in said
    [said] = transfer.answer(rows_for({"m": 1, "n": -40}))
    assert said.startswith("On clothing10, fine-tuning every layer from cifar10 is within noise of training from "
                           "scratch for m (+0.5 points") and "and loses to it for n (−20.0 points" in said
    [said] = transfer.answer(rows_for({"m": -1}))
    assert said.startswith("On clothing10, fine-tuning every layer from cifar10 is within noise of training from "
                           "scratch for m: −0.5 points (95% interval −")


def test_each_source_run_is_linked_with_the_runs_it_started():
    source = {"run_id": "train-cifar10-m-s0-abc", "stage": "train", "dataset": "cifar10", "model": "m",
              "notebook": "train/train-cifar10-m-s0-abc.ipynb", "test": {"top1": 0.55}, "train_seconds": 150.0}
    records = transfer.finished([record("m", "scratch", 0, 100), record("m", "head", 0, 90), record("m", "all", 1, 120),
                                 record("m", "all", 0, 120)])
    [line] = transfer.source_links(records, [source, *records])
    assert line == ("**m** pretrained on cifar10 in {doc}`train-cifar10-m-s0-abc </train/train-cifar10-m-s0-abc>` "
                    "(test top-1 55.0% on cifar10, 2.5 minutes of training) → head only: "
                    "{doc}`seed 0 </train/train-clothing10-m-s0-head>`; all layers: "
                    "{doc}`seed 0 </train/train-clothing10-m-s0-all>`, {doc}`seed 1 </train/train-clothing10-m-s1-all>`")
    [line] = transfer.source_links(records, records)    # a source from elsewhere: its id, unlinked
    assert line.startswith("**m** pretrained on cifar10 in train-cifar10-m-s0-abc →")


def test_one_figure_per_model_with_the_three_modes():
    records = transfer.finished([record("m", mode, s, 100, vals=(0.3 + s / 10, 0.5)) for mode in ("scratch", "head", "all")
                                 for s in (0, 1)])
    fig = transfer.curves(records, "clothing10", "m")
    [ax] = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["from scratch (2 seeds)", "head only (2 seeds)",
                                                             "all layers (2 seeds)"]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([35.0, 50.0])   # mean over seeds, in percent
    assert transfer.curves(records, "clothing10", "other") is None


def test_the_chapter_is_executed_only_for_studies_with_fine_tuned_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path))
    for study, pretrained in (("plain", False), ("imagenet", True), ("transfer", SOURCE)):
        (tmp_path / study).mkdir()
        cell = {"stage": "train", "run_id": "train-x", "params": {"dataset": "clothing10", "model": "m",
                                                                  "pretrained": pretrained}, "notebook": "train/x.ipynb"}
        (tmp_path / study / "cells.json").write_text(json.dumps({"study": study, "grid": "", "cells": [cell]}))
    assert book.report_pages("plain") == list(book.REPORT_PAGES)
    assert book.report_pages("imagenet") == [*book.REPORT_PAGES, "transfer"]   # fine-tuned from ImageNet weights
    assert book.report_pages("transfer") == [*book.REPORT_PAGES, "transfer"]


def test_the_chapter_follows_the_studys_results_page_in_the_book(tmp_path, monkeypatch):
    results, bk = tmp_path / "results", tmp_path / "book"
    monkeypatch.setenv("STUDYLIB_RESULTS", str(results))
    monkeypatch.setenv("STUDYLIB_BOOK", str(bk))
    (results / "transfer").mkdir(parents=True)
    (results / "transfer" / "cells.json").write_text(json.dumps({"study": "transfer", "grid": "", "book": str(bk),
                                                                  "cells": []}))
    for page in ("results", "transfer"):
        book.report_path(page, "transfer").parent.mkdir(parents=True, exist_ok=True)
        book.report_path(page, "transfer").write_text("{}")
    files = [c["file"] for p in book.toc("transfer")["parts"] for c in p["chapters"]]
    assert files == ["reference_studies", "results/results-transfer", "results/transfer-transfer"]


@pytest.mark.slow
def test_the_chapter_executes_from_the_records(tmp_path, monkeypatch):
    import papermill as pm

    results = tmp_path / "results"
    monkeypatch.setenv("STUDYLIB_RESULTS", str(results))
    (results / "c").mkdir(parents=True)
    source = {"run_id": SOURCE, "stage": "train", "status": "ok", "dataset": "cifar10", "model": "m",
              "notebook": f"train/{SOURCE}.ipynb", "test": {"top1": 0.55}, "train_seconds": 150.0,
              "params": {"model": "m", "seed": 0, "pretrained": False}, "history": [{"epoch": 1, "val_top1": 0.5}]}
    records = [source] + [record("m", mode, s, right + s, to={"0.5": 60.0, "0.6": None})
                          for mode, right in (("scratch", 100), ("head", 90), ("all", 140)) for s in (0, 1)]
    (results / "c" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "transfer.ipynb"
    pm.execute_notebook("notebooks/transfer.ipynb", str(out), parameters={"study": "c"}, kernel_name="python3",
                        progress_bar=False)
    text = out.read_text()
    assert "fine-tuning every layer from cifar10 beats training from scratch for m: +20.0 points" in text
    assert "image/png" in text and "time to target (min)" in text and "gain, 95% interval (points)" in text
    assert f"{{doc}}`{SOURCE} </train/{SOURCE}>`" in text


def test_zero_prints_with_its_decimal_as_its_column_does():
    rows = transfer.mode_rows(transfer.finished(
        [record("m", "scratch", s, 200) for s in (0, 1)] + [record("m", "all", s, 200 * s) for s in (0, 1)]))
    shown = transfer.mode_table(rows).set_index("mode")
    assert shown.loc["from scratch", "test top-1 (%, mean ± std)"] == "100.0 ± 0.0"
    assert shown.loc["all layers", "95% interval (%)"].startswith("0.0 to ")

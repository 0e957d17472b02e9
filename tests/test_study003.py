"""The chapter "Study 003 on CIFAR-10": arms named from parameters, ours beside 003's, the sentences that
say where they differ and why, the headline's minutes to 90% and 93%, and the page executing (issue 15)."""
import json

import numpy as np
import pytest

from studylib.views import study003

LABELS = [i % 10 for i in range(200)]


def record(model, seed, test_right, train_top1, wd=0.0, augment=False, epochs=3, seconds=120.0, to=None,
           optimizer="adam"):
    """A finished train record whose first `test_right` of 200 test images are right."""
    preds = [label if i < test_right else (label + 1) % 10 for i, label in enumerate(LABELS)]
    history = [{"epoch": e, "train_top1": train_top1 * e / epochs, "val_top1": 0.9 * test_right / 200 * e / epochs}
               for e in range(1, epochs + 1)]
    return {"run_id": f"train-cifar10-{model}-s{seed}", "model": model, "train_seconds": seconds,
            "params": {"model": model, "weight_decay": wd, "augment": augment, "epochs": epochs, "tta": False,
                       "optimizer": optimizer},
            "test": {"top1": test_right / 200, "predictions": preds, "labels": LABELS},
            "history": history, "time_to_target": to or {}, "precision": "bf16", "memory_format": "nhwc",
            "hardware": {"cpu_model": "AMD EPYC", "cpu_count": 2, "gpu_name": None}}


def test_each_run_is_named_by_its_arm():
    arm = study003.arm
    assert arm({"model": "smallvgg1", "weight_decay": 0, "augment": False}) == "1 block"
    assert arm({"model": "smallvgg3", "weight_decay": 0, "augment": False}) == "3 blocks"
    assert arm({"model": "smallvgg3", "weight_decay": 2e-3, "augment": False}) == "3 blocks + L2"
    assert arm({"model": "smallvgg3", "weight_decay": 0, "augment": True}) == "3 blocks + augmentation"
    assert arm({"model": "smallvgg3_bn_dropout", "weight_decay": 2e-3, "augment": True}) == "all combined"
    assert arm({"model": "smallvgg3_bn", "weight_decay": 0, "augment": True}) == "smallvgg3_bn"   # not an arm of 003
    assert arm({"model": "fastvgg32", "weight_decay": 5e-4, "augment": True}) == "headline"


def test_the_arm_table_sets_ours_beside_003s():
    runs = study003.finished([record("smallvgg3", 0, 140, 0.99), record("smallvgg3", 1, 150, 0.97, seconds=180),
                              record("smallvgg3_bn", 0, 164, 0.9), record("smallvgg3_bn", 1, 166, 0.9),
                              {"run_id": "failed", "params": {"model": "smallvgg1"}}])
    rows = study003.arm_rows(runs)
    assert list(rows["arm"]) == ["3 blocks", "3 blocks + BatchNorm"]               # 003's order; the failed run left out
    three = rows.iloc[0]
    assert three["test"] == pytest.approx(0.725) and three["std"] == pytest.approx(np.std([0.70, 0.75], ddof=1))
    assert three["train"] == pytest.approx(0.98) and three["gap"] == pytest.approx(0.98 - 0.725)
    assert three["minutes"] == pytest.approx(2.5) and three["published"] == 0.70
    assert three["low"] < 0.725 < three["high"]
    shown = study003.arm_table(rows).set_index("arm")    # the arm is a column: the book hides the index
    assert shown.loc["3 blocks", "003's test accuracy (%)"] == "70.0"
    assert shown.loc["3 blocks", "our test top-1 (%, mean ± std)"] == "72.5 ± 3.5"
    assert shown.loc["3 blocks + BatchNorm", "003's test accuracy (%)"] == "82.4"
    assert shown.loc["3 blocks", "gap, train − test (points)"] == "25.5"
    assert shown.loc["3 blocks", "train time (min)"] == "2.5"


def test_a_difference_beyond_the_interval_is_named_with_its_reason():
    rows = study003.arm_rows(study003.finished(
        [record("smallvgg3", s, 140, 0.99) for s in (0, 1)]                          # 70%: 003's number, inside
        + [record("smallvgg3_bn", s, 120, 0.62) for s in (0, 1)]                    # 60% vs 82.37%: below
        + [record("smallvgg3", s, 120, 0.6, augment=True) for s in (0, 1)]))        # 003 gave no number: no sentence
    said = study003.differences(rows)
    assert len(said) == 2 and not any("augmentation" in s for s in said)
    assert said[0].startswith("**3 blocks**: 003's 70.0% lies inside our interval")
    assert "**3 blocks + BatchNorm**: ours is 60.0%, below 003's 82.4%" in said[1]
    assert "we trained 3 epochs where 003 trained 100" in said[1]


def test_the_headline_reports_minutes_to_90_and_93():
    fast = record("fastvgg32", 0, 182, 0.95, wd=5e-4, augment=True, epochs=12, seconds=540,
                  to={"0.9": 420.0, "0.93": None}, optimizer="sgd")
    slow = record("airbench94", 0, 182, 0.95, wd=5e-4, augment=True, epochs=16, seconds=1500,
                  to={"0.9": 500.0, "0.93": 1400.0}, optimizer="muon")
    both = study003.headlines(study003.finished([slow, fast]))
    assert [h["model"] for h in both] == ["fastvgg32", "airbench94"]            # fastest first
    h = both[0]
    assert h["test"] == pytest.approx(0.91) and h["minutes"] == pytest.approx(9.0)
    assert h["to"] == {"0.9": pytest.approx(7.0), "0.93": None}
    sentence = study003.headline_sentence(h)
    assert "**91.0% test top-1** after 9.0 minutes" in sentence and "passed 90% after 7.0 minutes" in sentence
    assert "93% was not reached" in sentence
    assert "passed 90% after 8.3 minutes" in study003.headline_sentence(both[1])
    assert "and 93% after 23.3 minutes" in study003.headline_sentence(both[1])
    table = study003.headline_table(both)
    assert list(table.columns[:2]) == ["run", "machine"] and len(table) == 4   # two runs, 003, airbench
    assert table.iloc[1]["to 93% on validation (min)"] == "23.3"
    assert table.iloc[0]["to 90% on validation (min)"] == "7.0" and table.iloc[0]["to 93% on validation (min)"] == "not reached"
    assert table.iloc[0]["machine"] == "AMD EPYC, 2 cores"
    assert [table.iloc[i]["run"] for i in (0, 1)] == ["ours: fastvgg32, SGD, 12 epochs", "ours: airbench94, Muon + SGD, 16 epochs"]
    assert "(airbench94, Muon + SGD, bf16 nhwc)" in study003.headline_sentence(both[1])   # no test-time views
    for tta, said in ((True, "nhwc, test-time flip)"), ("flip_translate", "nhwc, six test-time views (flips and one-pixel shifts))")):
        assert said in study003.headline_sentence({**both[1], "tta": tta})
    # a recipe whose first epochs trained on smaller crops says so
    slow["params"].update(low_res_epochs=6, low_res_size=28)
    table = study003.headline_table(study003.headlines(study003.finished([slow])))
    assert table.iloc[0]["run"] == "ours: airbench94, Muon + SGD, 16 epochs (the first 6 on 28-pixel crops)"


@pytest.mark.slow
def test_the_chapter_executes_from_the_records(tmp_path, monkeypatch):
    import papermill as pm

    results = tmp_path / "results"
    monkeypatch.setenv("STUDYLIB_RESULTS", str(results))
    (results / "c").mkdir(parents=True)
    records = [record("smallvgg1", s, 130 + s, 0.9) for s in (0, 1)] + [
        record("fastvgg32", 0, 182, 0.95, wd=5e-4, augment=True, epochs=4, to={"0.9": 300.0, "0.93": None})]
    (results / "c" / "records.jsonl").write_text("".join(json.dumps({**r, "stage": "train"}) + "\n" for r in records))
    out = tmp_path / "study003.ipynb"
    pm.execute_notebook("notebooks/study003.ipynb", str(out), parameters={"study": "c"}, kernel_name="python3",
                        progress_bar=False)
    text = out.read_text()
    assert "1 block" in text and "passed 90% after 5.0 minutes" in text and "image/png" in text

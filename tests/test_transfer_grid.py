"""Cells that depend on cells (issue 16, part 3): a train block takes another block's runs as its `pretrained`
source; the grid expands each dependent cell onto its source cell, refuses a bad source in one sentence before
any work, and the runner starts a dependent cell only after its source finished (a Dask future as its
argument, any worker), records it as failed without running when its source failed, and on a rerun reuses
finished sources while their dependants run."""
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.record import run_id
from studylib.study import expand, runner
from test_grid import write_grid

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


TWO_STAGES = """
study: t
stages: [train]
train:
  - name: pretrain
    datasets: [cifar10]
    models: [smallvgg1, smallvgg2]
    seeds: {source_seeds}
    image_size: 32
  - name: fine-tune
    datasets: [clothing10]
    models: [smallvgg1, smallvgg2]
    seeds: [0, 1, 2]
    image_size: 32
    pretrained: {{from: pretrain}}
    finetune: [all, head]
"""


def test_each_dependent_cell_takes_its_source_cells_run_id(tmp_path):
    _, cells = expand.load_grid(write_grid(tmp_path, TWO_STAGES.format(source_seeds="[0, 1]")))
    train = cells["train"]
    sources = {(c.params["model"], c.params["seed"]): c for c in train if c.params["dataset"] == "cifar10"}
    dependants = [c for c in train if c.params["dataset"] == "clothing10"]
    assert len(sources) == 4 and len(dependants) == 2 * 3 * 2
    assert all(not c.source and c.params["pretrained"] is False for c in sources.values())
    for c in dependants:
        model, seed = c.params["model"], c.params["seed"]
        want = sources[(model, seed if seed in (0, 1) else 0)]   # the same seed, else the source block's first
        assert c.source == c.params["pretrained"] == want.run_id, (model, seed)
        # the id train_run will compute: the source's run id is one of the hashed parameters
        assert c.run_id == run_id("train", TrainParams.from_mapping(c.params, check_source=False).run_params())
        assert f"from cifar10, finetune {c.params['finetune']}" in c.title
    # a source with one seed serves every seed of the dependent block
    _, cells = expand.load_grid(write_grid(tmp_path, TWO_STAGES.format(source_seeds="[3]")))
    seeds = {c.run_id: c.params["seed"] for c in cells["train"]}
    assert {seeds[c.source] for c in cells["train"] if c.source} == {3}


BAD_SOURCES = [
    ("pretrained: {from: pretrian}",
     "parameter 'train[1].pretrained.from' is 'pretrian', but it must be the name of an earlier train block ('pretrain')."),
    ("pretrained: {from: fine-tune}",   # the block itself
     "parameter 'train[1].pretrained.from' is 'fine-tune', but it must be the name of an earlier train block (a block "
     "takes weights only from a block above it, so no two blocks wait on each other)."),
    ("pretrained: {from: later}",
     "parameter 'train[1].pretrained.from' is 'later', but it must be the name of an earlier train block (a block "
     "takes weights only from a block above it, so no two blocks wait on each other)."),
    ("pretrained: {form: pretrain}",
     "parameter 'train[1].pretrained' is {'form': 'pretrain'}, but it must be false, true, a run id, a path to a run "
     "folder, or {from: <name of an earlier train block>}."),
    ("models: [smallvgg1, smallvgg3]\n    pretrained: {from: pretrain}",
     "parameter 'train[1].pretrained.from' is 'pretrain', but it must be a block with a cell of model 'smallvgg3' "
     "(block 'pretrain' trains smallvgg1, smallvgg2)."),
]


@pytest.mark.parametrize("line,message", BAD_SOURCES, ids=["unknown", "itself", "later", "key", "model"])
def test_a_bad_source_is_one_sentence_before_any_work(tmp_path, line, message, monkeypatch):
    outputs = {name: tmp_path / name.lower() for name in ("STUDYLIB_RESULTS", "STUDYLIB_BOOK", "STUDYLIB_RUNS")}
    for name, folder in outputs.items():
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    path = write_grid(tmp_path, f"""
study: t
stages: [train]
train:
  - name: pretrain
    models: [smallvgg1, smallvgg2]
    image_size: 32
  - name: fine-tune
    models: [smallvgg1]
    image_size: 32
    {line}
  - name: later
    models: [smallvgg1]
    image_size: 32
""")
    with pytest.raises(ParameterError) as info:
        expand.load_grid(path)
    assert str(info.value) == message
    with pytest.raises(ParameterError) as again:    # the runner: the same sentence, before its cluster or manifest
        runner.run_grid(path, report=False)
    assert str(again.value) == message
    assert {name: list(folder.rglob("*")) for name, folder in outputs.items()} == {name: [] for name in outputs}


def test_check_lists_each_dependent_cell_after_its_source(tmp_path):
    path = write_grid(tmp_path, TWO_STAGES.format(source_seeds="[0]"))
    out = subprocess.run([str(VENV_BIN / "studylib"), "grid", str(path), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    _, cells = expand.load_grid(path)
    lines = out.stdout.splitlines()
    for c in cells["train"]:
        [line] = [x for x in lines if c.run_id in x.split()[1]]
        assert line.endswith(f"after {c.source}") if c.source else "after" not in line


def test_a_shipped_grid_fine_tunes_on_clothing10_from_cifar10():
    _, cells = expand.load_grid(ROOT / "params" / "transfer.yaml")
    train = cells["train"]
    by_id = {c.run_id: c for c in train}
    models = {"mobilenet_v3_small", "shufflenet_v2_x1_0"}
    pre = [c for c in train if c.params["dataset"] == "cifar10"]
    target = [c for c in train if c.params["dataset"] == "clothing10"]
    assert {c.params["model"] for c in pre} == models and all(c.params["image_size"] == 32 for c in pre)
    modes = {}
    for c in target:
        mode = "scratch" if c.params["pretrained"] is False else c.params["finetune"]
        modes.setdefault((c.params["model"], mode), []).append(c.params["seed"])
        if c.source:
            assert by_id[c.source].params["model"] == c.params["model"] and by_id[c.source].params["dataset"] == "cifar10"
    assert modes == {(m, mode): [0, 1, 2] for m in models for mode in ("scratch", "all", "head")}
    assert len({c.params["epochs"] for c in target}) == 1    # equal epochs for every mode
    assert [c.params["image_sizes"] for c in cells["data_prep"]] == [[32], [64]]


# ---- the runner: order, a failed source, a rerun ------------------------------------------------------------

# The fine-tuned block comes right after its source: without the dependency Dask would start it at once on the
# second worker, beside its source.
GRID = """
study: deps
stages: [train]
train:
  - name: source
    datasets: [imagefolder]
    root: {root}
    models: [smallvgg1]
    image_size: 32
    epochs: 1
    batch_size: 16
  - name: fine-tuned
    datasets: [imagefolder]
    root: {root}
    models: [smallvgg1]
    image_size: 32
    epochs: 1
    batch_size: 16
    pretrained: {{from: source}}
  - name: broken source
    datasets: [imagefolder]
    root: tests/data/no_images
    models: [smallvgg2]
    image_size: 32
    epochs: 1
  - name: fine-tuned from the broken source
    datasets: [imagefolder]
    root: {root}
    models: [smallvgg2]
    image_size: 32
    epochs: 1
    pretrained: {{from: broken source}}
"""


def _clock(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.slow
def test_dependent_cells_wait_for_their_source_and_a_rerun_reuses_it(study_env, tiny_imagefolder, tmp_path,
                                                                     monkeypatch, capsys):
    book = tmp_path / "book"
    for name, folder in (("STUDYLIB_RESULTS", tmp_path / "results"), ("STUDYLIB_BOOK", book),
                         ("STUDYLIB_RUNS", tmp_path / "runs")):
        monkeypatch.setenv(name, str(folder))
    grid = write_grid(tmp_path, GRID.format(root=tiny_imagefolder))
    _, cells = expand.load_grid(grid)
    ids = {c.title.split(" on ")[0] + ("-ft" if c.source else ""): c.run_id for c in cells["train"]}
    source, broken, tuned, orphan = ids["smallvgg1"], ids["smallvgg2"], ids["smallvgg1-ft"], ids["smallvgg2-ft"]

    status = runner.run_grid(grid, workers=2, gpus=0, report=False, log=lambda msg: None)
    out = capsys.readouterr().out
    assert status == 1, out
    runs = pd.read_csv(tmp_path / "results" / "deps" / "runs.csv").set_index("run_id")
    assert runs.status.to_dict() == {source: "ok", broken: "failed", tuned: "ok", orphan: "failed"}, out
    # two workers, yet the fine-tuned cell started only once its source had finished
    assert _clock(runs.started_at[tuned]) >= _clock(runs.finished_at[source])
    assert runs.pretrained[tuned] == source
    # the cell of the broken source never started: a failure row and notebook saying why
    message = runner.source_failed(broken)
    assert runs.error[orphan] == message and f"FAILED {orphan}: {message}" in out
    assert runs.error[broken].startswith("DatasetUnavailable")
    kept = nbformat.read(book / "train" / f"{orphan}.failed.ipynb", as_version=4)
    assert "did not start" in kept.cells[0].source and message in kept.cells[0].source
    assert not (tmp_path / "runs" / orphan).exists()

    # a rerun: the finished source is reused (its notebook untouched), its dependant runs again
    source_nb = book / "train" / f"{source}.ipynb"
    before = source_nb.stat().st_mtime_ns
    (book / "train" / f"{tuned}.ipynb").unlink()
    status = runner.run_grid(grid, workers=2, gpus=0, report=False, log=lambda msg: None)
    out = capsys.readouterr().out
    assert status == 1 and "1 ran ok, 1 skipped (already done), 2 failed" in out, out
    assert source_nb.stat().st_mtime_ns == before
    runs = pd.read_csv(tmp_path / "results" / "deps" / "runs.csv").set_index("run_id")
    assert runs.status[tuned] == "ok" and runs.error[orphan] == message
    assert _clock(runs.started_at[tuned]) > _clock(runs.finished_at[source])

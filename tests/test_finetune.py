"""Fine-tuning: a run's backbone weights as `pretrained` (by run id and by path), head-only and full fine-tuning,
the backbone's learning-rate factor under every schedule, the refusals, and what the record keeps."""
import copy
import json
from pathlib import Path

import papermill as pm
import pytest
import scrapbook as sb
import torch
from conftest import make_jpeg

from studylib.errors import ParameterError
from studylib.models import head_name
from studylib.params import TrainParams
from studylib.record import TrainRecord, run_id
from studylib.train.run import train_run
from studylib.train.setup import build_model, build_optimizer, build_schedule

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Runs, cache and results in a module temp dir; a tiny image folder of three flat colours."""
    base = tmp_path_factory.mktemp("finetune")
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for split, n in {"train": 12, "val": 3, "test": 3}.items():
        for cls, c in colours.items():
            for i in range(n):
                make_jpeg(base / "tiny" / split / cls / f"{i}.jpg", tuple(max(0, v - (i * 7) % 30) for v in c))
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RUNS", "CACHE", "RESULTS"):
            mp.setenv(f"STUDYLIB_{name}", str(base / name.lower()))
        yield base


def tiny(env, **kw) -> dict:
    return {"dataset": "imagefolder", "root": str(env / "tiny"), "model": "smallvgg1_bn", "epochs": 1, "image_size": 16,
            "batch_size": 8, "amp": False, "channels_last": False, **kw}


@pytest.fixture(scope="module")
def source(env):
    """A tiny trained run: the source of the fine-tuned ones."""
    return train_run(TrainParams.from_mapping(tiny(env)), progress=False)


def backbone(state: dict, head: str) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}


@pytest.mark.parametrize("by", ["id", "path"])
def test_backbone_starts_from_the_source_run_and_the_head_is_new(env, source, by):
    rid = source.record["run_id"]
    given = rid if by == "id" else str(source.output_dir)
    params = TrainParams.from_mapping(tiny(env, pretrained=given))
    model = build_model(params, 3, "cpu", channels_last=False)
    head = head_name(model)
    saved = torch.load(source.output_dir / "model.pt", weights_only=True)
    ours = model.state_dict()
    assert head == "classifier.4"
    assert all(torch.equal(ours[k], v) for k, v in backbone(saved, head).items())
    # the same three classes, yet the head is rebuilt: a new task
    assert not torch.equal(ours[f"{head}.weight"], saved[f"{head}.weight"])
    # the string is hashed as given: a dependent cell's run id is known before its source has run
    assert run_id("train", params.run_params()) == run_id("train", TrainParams.from_mapping(
        tiny(env, pretrained=given), check_source=False).run_params()) != source.record["run_id"]


def test_head_mode_trains_only_the_head_and_freezes_batchnorm(env, source):
    result = train_run(TrainParams.from_mapping(tiny(env, pretrained=source.record["run_id"], finetune="head",
                                                     head="mlp", lr=0.05)), progress=False)
    model = result.model.train()
    head = head_name(model)
    bns = [m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns), "a frozen backbone's BatchNorm stays in eval mode"
    assert all(p.requires_grad == n.startswith(head + ".") for n, p in model.named_parameters())
    saved = torch.load(source.output_dir / "model.pt", weights_only=True)
    after = model.state_dict()
    # weights and BatchNorm running statistics as the source left them, after a training epoch
    assert all(torch.equal(after[k], v) for k, v in backbone(saved, head).items())
    assert any(k.endswith("running_mean") for k in backbone(saved, head))
    first = build_model(TrainParams.from_mapping(tiny(env, pretrained=source.record["run_id"], finetune="head",
                                                      head="mlp", lr=0.05)), 3, "cpu", False)
    assert not torch.equal(after[f"{head}.3.weight"], first.state_dict()[f"{head}.3.weight"]), "the head trained"
    assert result.record["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_finetuning_trains_the_backbone(env, source):
    result = train_run(TrainParams.from_mapping(tiny(env, pretrained=source.record["run_id"])), progress=False)
    saved = torch.load(source.output_dir / "model.pt", weights_only=True)
    assert not torch.equal(result.model.state_dict()["features.0.weight"], saved["features.0.weight"])
    assert result.model.features[2].training   # BatchNorm trains too in full fine-tuning


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_backbone_lr_factor_holds_its_ratio_under_every_schedule(env, source, optimizer, schedule):
    params = TrainParams.from_mapping(tiny(env, pretrained=source.record["run_id"], backbone_lr_factor=0.1,
                                           optimizer=optimizer, schedule=schedule, lr=0.02))
    model = build_model(params, 3, "cpu", False)
    opt = build_optimizer(model, params.optimizer, params.lr, params.weight_decay, params.backbone_lr_factor)
    head = {id(p) for p in model.get_submodule(head_name(model)).parameters()}
    back, top = opt.param_groups
    assert not any(id(p) in head for p in back["params"]) and {id(p) for p in top["params"]} == head
    sched = build_schedule(opt, params.schedule, 20)
    peak = [g["lr"] for g in opt.param_groups]
    if schedule != "onecycle":
        assert peak == pytest.approx([0.002, 0.02])
    for _ in range(10):
        opt.step()
        sched.step()
        assert back["lr"] == pytest.approx(0.1 * top["lr"])
    if schedule == "onecycle":   # half way, past the peak: each group's own
        assert max(g["max_lr"] for g in opt.param_groups) == pytest.approx(0.02)
        assert back["max_lr"] == pytest.approx(0.002)


def test_refusals_are_one_sentence_each(env, source, tmp_path):
    rid = source.record["run_id"]

    def refused(**kw):
        with pytest.raises(ParameterError) as info:
            TrainParams.from_mapping(tiny(env, **kw))
        return str(info.value)

    msg = refused(pretrained="no-such-run")
    assert msg.startswith("parameter 'pretrained' is 'no-such-run', but it must be false, true (ImageNet weights)")
    assert str(env / "runs") in msg
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "record.json").write_text("{}")   # no model.pt: not a run folder
    assert "holding record.json and model.pt" in refused(pretrained=str(tmp_path / "half"))
    assert refused(pretrained=rid, model="smallvgg2_bn") == (
        f"parameter 'pretrained' is '{rid}', but it must be a run of model 'smallvgg2_bn' "
        f"(pretrained run {rid} trained smallvgg1_bn; this run trains smallvgg2_bn).")
    # smallvgg flattens into its dense layer: at 32 px that layer has four times the inputs
    msg = refused(pretrained=rid, image_size=32)
    assert "pretrained run" in msg and "trained smallvgg1_bn at 16 px; this run trains smallvgg1_bn at 32 px" in msg
    assert "'classifier.1.weight' has shape [128, 2048] in the checkpoint and [128, 8192]" in msg
    assert msg.count(".") <= 4 and msg.endswith(".")
    assert refused(finetune="head").startswith("parameter 'finetune' is 'head', but it must be 'all' when pretrained is false")
    assert refused(backbone_lr_factor=0.1).startswith("parameter 'backbone_lr_factor' is 0.1, but it must be 1 when pretrained is false")
    assert "a positive number" in refused(pretrained=True, backbone_lr_factor=0)
    assert "but it must be false, true" in refused(pretrained="")


def test_a_source_that_has_not_run_is_checked_again_before_any_work(env):
    params = TrainParams.from_mapping(tiny(env, pretrained="train-later-abc"), check_source=False)
    out = env / "not-written"
    with pytest.raises(ParameterError, match="'train-later-abc'"):
        train_run(params.model_copy(update={"output_dir": str(out)}), progress=False)
    assert not out.exists()


def test_record_keeps_the_source_and_old_records_still_read(env, source):
    assert source.record["source_run_id"] is None and source.record["source_dataset"] is None
    tuned = train_run(TrainParams.from_mapping(tiny(env, pretrained=str(source.output_dir), backbone_lr_factor=0.5,
                                                    train_limit=16)), progress=False).record
    assert tuned["source_run_id"] == source.record["run_id"] and tuned["source_dataset"] == "imagefolder"
    assert tuned["pretrained"] == str(source.output_dir) and tuned["params"]["backbone_lr_factor"] == 0.5
    # normalised as the inputs the backbone learned on, not with its own (smaller) train split's statistics
    assert tuned["data"]["mean"] == source.record["data"]["mean"] and tuned["data"]["sizes"]["train"] == 16
    old = copy.deepcopy(source.record)
    for key in ("source_run_id", "source_dataset"):
        del old[key]
    del old["params"]["backbone_lr_factor"]
    assert TrainRecord.model_validate(old).source_run_id is None
    assert json.loads((Path(tuned["checkpoint"]).parent / "record.json").read_text())["source_run_id"] == source.record["run_id"]


@pytest.mark.slow
def test_train_notebook_fine_tunes_a_run(env, source, tmp_path):
    out = tmp_path / "train.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "train.ipynb"), str(out), cwd=str(tmp_path), progress_bar=False,
                        kernel_name="python3", parameters=tiny(env, pretrained=source.record["run_id"], finetune="head"))
    record = sb.read_notebook(str(out)).scraps["record"].data
    assert record["source_run_id"] == source.record["run_id"]
    assert f"backbone weights from run {source.record['run_id']} (trained on imagefolder)" in out.read_text()

"""Every parameter error is one sentence naming the parameter, the bad value and what is allowed."""
import pytest

from studylib.errors import ParameterError
from studylib.params import ReportParams, TrainParams
from studylib.stages.data_prep import DataPrepParams


@pytest.mark.parametrize("bad, parameter, value_text, allowed_text", [
    ({"model": "resnet9000"}, "model", "'resnet9000'", "torchvision"),
    ({"dataset": "mnist"}, "dataset", "'mnist'", "clothing10"),
    ({"epochs": 0}, "epochs", "0", "positive integer"),
    ({"epochs": -3}, "epochs", "-3", "positive integer"),
    ({"batch_size": 0}, "batch_size", "0", "positive integer"),
    ({"lr": -0.1}, "lr", "-0.1", "positive number"),
    ({"lr": 0}, "lr", "0", "positive number"),
    ({"image_size": 16}, "image_size", "16", "at least 32"),
    ({"train_limit": 1}, "train_limit", "1", "at least 2"),
    ({"model": "smallvgg3_bn", "image_size": 4}, "image_size", "4", "at least 8"),
    ({"dataset": "imagefolder", "root": "/no/such/folder"}, "root", "/no/such/folder", "existing folder"),
    ({"dataset": "imagefolder"}, "root", "''", "folder"),
    ({"optimizer": "rmsprop"}, "optimizer", "'rmsprop'", "'adam'"),
    ({"finetune": "some"}, "finetune", "'some'", "'all'"),
    ({"label_smoothing": 1.5}, "label_smoothing", "1.5", "[0, 1)"),
    ({"device": "tpu"}, "device", "'tpu'", "'auto'"),
    ({"epochs": "ten"}, "epochs", "'ten'", "integer"),
    ({"learning_rate": 0.1}, "learning_rate", "0.1", "train parameters"),
    ({"low_res_epochs": 2, "augment": False}, "low_res_epochs", "2", "augment is false"),
    ({"low_res_epochs": 5, "epochs": 5}, "low_res_epochs", "5", "fewer than epochs (5)"),
    ({"low_res_epochs": 2, "low_res_size": 64}, "low_res_size", "64", "under image_size (64)"),
    ({"low_res_epochs": 2, "low_res_size": 16}, "low_res_size", "16", "at least 32"),
])
def test_bad_parameter_gives_one_clear_sentence(bad, parameter, value_text, allowed_text):
    with pytest.raises(ParameterError) as info:
        TrainParams.from_mapping(bad)
    msg = str(info.value)
    assert info.value.parameter == parameter
    assert msg.startswith(f"parameter '{parameter}' is ")
    assert value_text in msg and allowed_text in msg
    assert msg.count("\n") == 0 and msg.endswith(".")


def test_defaults_are_valid_and_hashable():
    from studylib.record import run_id
    p = TrainParams.from_mapping({})
    rid = run_id("train", p.run_params())
    assert rid.startswith("train-clothing10-shufflenet_v2_x1_0-s0-")
    assert rid == run_id("train", TrainParams.from_mapping({}).run_params())
    assert rid != run_id("train", TrainParams.from_mapping({"seed": 1}).run_params())
    # where the outputs go does not change what the run is
    assert rid == run_id("train", TrainParams.from_mapping({"output_dir": "/elsewhere"}).run_params())


def test_a_notebook_parameter_nobody_knows_is_refused_with_the_nearest_name():
    """papermill -p epoch 3 (a typo of epochs) lands in the notebook's globals: refused, naming both names."""
    import json
    namespace = {"In": [], "Out": {}, "_i1": "import x", "json": json, "TrainParams": TrainParams,
                 "get_ipython": print, "SPLITS": ("train",), "dataset": "clothing10", "epoch": 3}
    with pytest.raises(ParameterError) as info:
        TrainParams.from_namespace(namespace)
    assert info.value.parameter == "epoch" and "'epochs'" in str(info.value)
    assert str(info.value).count("\n") == 0 and str(info.value).endswith(".")
    del namespace["epoch"]  # modules, classes, functions, constants and IPython's own names are not parameters
    assert TrainParams.from_namespace(namespace).epochs == 5


def test_every_params_class_refuses_an_unknown_key_naming_the_nearest():
    """One mechanism for every stage: the unknown-key check of validate_mapping."""
    with pytest.raises(ParameterError, match=r"parameter 'storage_mod' is 'lazy'.*nearest.*'storage_mode'"):
        DataPrepParams.from_mapping({"storage_mod": "lazy"})
    with pytest.raises(ParameterError, match=r"parameter 'storage_mode' is 'lazy', but it must be one of the train"):
        TrainParams.from_namespace({"storage_mode": "lazy"})


def test_a_report_notebook_refuses_a_parameter_it_does_not_know():
    """results, decision, methods and study003 take one parameter, study: a typo of it is not ignored."""
    assert ReportParams.from_namespace({"study": "cifar10", "In": [], "SPLITS": ()}).study == "cifar10"
    with pytest.raises(ParameterError, match=r"parameter 'stduy' is 'x'.*the nearest is 'study'"):
        ReportParams.from_namespace({"study": "quick", "stduy": "x"})


"""The model factory: the three families, head swap counts, freezing and pretrained weights offline."""
import urllib.error

import pytest
import torch

from studylib.errors import ParameterError, PretrainedWeightsUnavailable
from studylib.models import count_parameters, create_model, gmacs, size_mb


def test_parameter_counts_match_published_ones():
    # reference study 002's table (1000 ImageNet classes)
    assert count_parameters(create_model("shufflenet_v2_x1_0", 1000))[0] == 2_278_604
    assert count_parameters(create_model("mobilenet_v3_small", 1000))[0] == 2_542_856
    assert size_mb(create_model("mnasnet0_5", 1000)) == pytest.approx(8.87, abs=0.1)
    # torchvision's resnet18 with a 10-class head: 11,689,512 - 512*990 - 990
    assert count_parameters(create_model("resnet18", 10))[0] == 11_181_642


def test_head_finetuning_freezes_the_backbone():
    m = create_model("resnet18", 10, finetune="head", head="mlp")
    total, trainable = count_parameters(m)
    assert trainable == 512 * 256 + 256 + 256 * 10 + 10 and total > trainable
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("name, classes", [("smallvgg1", 10), ("smallvgg3_bn", 10), ("smallvgg2_bn_dropout", 4),
                                           ("tiny_vit_5m_224", 10), ("mobilenet_v3_small", 3), ("fastvgg32", 10)])
def test_every_family_builds_and_runs(name, classes):
    m = create_model(name, classes, image_size=64).eval()
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, classes)
    assert gmacs(m, 64) > 0


def test_smallvgg_flattens_into_a_dense_128_as_study_003():
    """003: the last block's 128 x 4 x 4 maps at 32 px flattened into a dense layer of 128, then the classes."""
    m = create_model("smallvgg3", 10, image_size=32)
    dense = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(128 * 4 * 4, 128), (128, 10)]
    assert not any(isinstance(x, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)) for x in m.modules())
    one_block = create_model("smallvgg1", 10, image_size=32)
    assert one_block(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert [x for x in one_block.modules() if isinstance(x, torch.nn.Linear)][0].in_features == 32 * 16 * 16


def test_vgg_variants_differ_as_named():
    def kinds(m):
        return {type(x).__name__ for x in m.modules()}

    assert "BatchNorm2d" not in kinds(create_model("smallvgg3", 10))
    assert "BatchNorm2d" in kinds(create_model("smallvgg3_bn", 10))
    assert "Dropout" in kinds(create_model("smallvgg3_bn_dropout", 10))
    with pytest.raises(ParameterError, match="pretrained"):
        create_model("smallvgg3", 10, pretrained=True)


def test_pretrained_weights_offline_name_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("shufflenet_v2_x0_5", 10, pretrained=True)
    msg = str(info.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg and "shufflenetv2_x0.5" in msg


def test_pretrained_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """A checkpoint placed in the cache (as a user would copy one) is used with no network."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("shufflenet_v2_x0_5").DEFAULT
    reference = torchvision.models.shufflenet_v2_x0_5()
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    ckpt.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), ckpt)
    m = create_model("shufflenet_v2_x0_5", 7, pretrained=True)
    assert torch.equal(m.conv1[0].weight, reference.conv1[0].weight)
    assert m.fc.out_features == 7


@pytest.mark.parametrize("name", ["mnasnet0_5", "mobilenet_v3_small", "shufflenet_v2_x0_5", "smallvgg3_bn", "fastvgg64"])
def test_from_scratch_models_start_near_chance(name):
    # a 10-class head must start with small logits: torchvision's mnasnet head init (fan_out) gave a
    # first-batch loss near 10 and a model that never trained in the quick study
    torch.manual_seed(0)
    model = create_model(name, 10, image_size=64).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(32, 3, 64, 64)), torch.randint(0, 10, (32,)))
    assert loss.item() < 3.0


def test_a_frozen_backbone_keeps_batchnorm_in_eval_mode_and_its_copies_too():
    """finetune=head: model.train() leaves the backbone's BatchNorm in eval mode (running statistics frozen),
    also in the deep copies that profiling and the bench step."""
    import copy
    m = create_model("smallvgg2_bn", 10, finetune="head", head="mlp", image_size=32).train()
    for model in (m, copy.deepcopy(m).train()):
        bns = [x for x in model.modules() if isinstance(x, torch.nn.BatchNorm2d)]
        assert bns and not any(x.training for x in bns) and model.classifier.training
        before = bns[0].running_mean.clone()
        model(torch.randn(4, 3, 32, 32))
        assert torch.equal(bns[0].running_mean, before)
    assert create_model("smallvgg2_bn", 10, image_size=32).train().features[2].training   # not frozen: trains

"""Exports of a trained run: torch.export, ONNX and int8 ONNX, each checked against PyTorch on the test split."""
import json
import os

import numpy as np
import onnx
import pytest
import torch

from deploy_helpers import exported_run, trained_run
from studylib.data.loader import TensorBatches
from studylib.errors import ParameterError
from studylib.serve import export


@pytest.fixture(scope="module")
def exported(study_env):
    return exported_run()


def test_exports_agree_with_pytorch(exported):
    s = exported.summary
    assert s["test_images"] == 18
    for fmt in ("torch_export", "onnx"):
        assert s["checks"][fmt]["max_abs_diff"] < 1e-4, fmt
        assert s["checks"][fmt]["top1_agreement"] == 1.0, fmt
        assert s["checks"][fmt]["top1"] == s["checks"]["pytorch"]["top1"], fmt
    q = s["checks"]["onnx_int8"]
    assert 0 < q["max_abs_diff"] < 1.0            # quantized: close, but not the same numbers
    assert 0 <= q["top1"] <= 1 and 0 <= q["top1_agreement_with_onnx"] <= 1
    assert s["calibration_images"] == 32
    # int8 weights: the file shrinks (smallvgg1's weights dominate its graph)
    assert s["sizes_mb"]["onnx_int8"] < 0.6 * s["sizes_mb"]["onnx"]
    for fmt, path in s["files"].items():
        assert os.path.getsize(path) / 1e6 == pytest.approx(s["sizes_mb"][fmt])
    # offline top-1 per format, in the order of the test split
    assert len(exported.names) == len(exported.labels) == 18
    np.testing.assert_array_equal(exported.offline_top1["onnx"], exported.offline_top1["pytorch"])


def test_exported_files_are_complete_and_loadable(exported):
    folder = exported.files["checkpoint"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["model.int8.onnx", "model.onnx", "model.pt", "model.pt2",
                                                        "record.json"]  # no temporary files left behind
    model = onnx.load(str(exported.files["onnx"]))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [export.INPUT]
    assert [o.name for o in model.graph.output] == [export.OUTPUT]
    sess = export.onnx_session(exported.files["onnx_int8"], threads=1)
    for batch in (1, 5):  # dynamic batch
        assert sess.run(None, {export.INPUT: np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 3)
    program = torch.export.load(str(exported.files["torch_export"])).module()
    assert program(torch.zeros(3, 3, 32, 32)).shape == (3, 3)


def test_normalise_is_the_evaluation_path(exported):
    rid, folder = trained_run()
    record = json.loads((folder / "record.json").read_text())
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    x, _ = next(iter(TensorBatches(images, torch.zeros(7, dtype=torch.int64), 7,
                                   mean=record["data"]["mean"], std=record["data"]["std"])))
    assert torch.equal(export.normalise(images, record["data"]["mean"], record["data"]["std"]), x)
    served = export.Normaliser(record["data"]["mean"], record["data"]["std"])(images.numpy())  # the server's numpy path
    assert served.dtype == np.float32 and np.array_equal(served, x.numpy())


def test_resolve_run(exported, tmp_path):
    rid, folder = trained_run()
    assert export.resolve_run(rid)[0] == folder.resolve()
    assert export.resolve_run(str(folder))[1]["run_id"] == rid
    for bad in ("", "no-such-run", str(tmp_path)):
        with pytest.raises(ParameterError, match="parameter 'run'"):
            export.resolve_run(bad)
    with pytest.raises(ParameterError, match="calibration_images"):
        export.export_run(rid, calibration_images=0)

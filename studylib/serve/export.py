"""Export a trained run for serving and for the edge, and check each export against PyTorch.

A trained run is runs/<run_id>/ with record.json and model.pt. Exports land next to the
checkpoint, each written under a temporary name and renamed into place:

- model.pt2        torch.export program (dynamic batch)
- model.onnx       ONNX, from the same program (dynamic batch; input "images", output "logits")
- model.int8.onnx  ONNX Runtime static int8 post-training quantization (QDQ, per-channel weights),
                   calibrated on train images

Every export is checked on the run's test split against the PyTorch checkpoint: the largest
absolute logit difference and the share of images on which top-1 agrees, plus its own test top-1.
The inputs are the evaluation's: the cached uint8 test tensors normalised with the run's mean/std.
With check_pytorch=False (every other model of the deploy stage's serving table) the two PyTorch passes
are skipped: only the ONNX files run on the test split, for their own test top-1.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.paths import runs_dir
from studylib.train.run import load_checkpoint
from studylib.train.setup import load_run_data
from studylib.util import atomic_write

INPUT, OUTPUT = "images", "logits"
FILES = {"checkpoint": "model.pt", "torch_export": "model.pt2", "onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}


# ---------------------------------------------------------------- runs and files

RECORD_KEYS = ("run_id", "model", "dataset", "classes", "image_size", "data", "params")  # what serving reads


def resolve_run(run: str) -> tuple[Path, dict]:
    """A run id (looked up in runs/) or a run folder -> (folder, train record). ParameterError (one sentence
    naming the file) if neither, or if its record.json is not a finished train run's record."""
    if not run or not str(run).strip():
        raise ParameterError("run", run, "a train run id (a folder in runs/) or a run folder holding record.json and model.pt")
    candidates = [Path(run), runs_dir() / str(run)]
    for folder in candidates:
        path = folder / "record.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ParameterError("run", run, f"a run whose record.json can be read, but {path} cannot ({one_line(err)})") from None
            if not isinstance(record, dict) or record.get("stage", "train") != "train" or record.get("status", "ok") != "ok":
                raise ParameterError("run", run, f"a finished train run (status 'ok'), but {path} is a failed or non-train record")
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                raise ParameterError("run", run, f"a train run's record, but {path} has no {', '.join(missing)}")
            checkpoint = folder / FILES["checkpoint"]
            if not checkpoint.is_file():
                raise ParameterError("run", run, f"a run folder with its checkpoint, but {checkpoint} is missing")
            record["checkpoint"] = str(checkpoint)  # the folder may have moved since training
            return folder.resolve(), record
    raise ParameterError("run", run, f"a train run id in {runs_dir()} or a run folder holding record.json and model.pt")


def one_line(err: BaseException, most: int = 200) -> str:
    """An exception as a short phrase for a one-sentence error: its type and the first line of its text."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= most else text[:most] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_or_refuse(path: Path, load, remedy: str = ""):
    """load() (a session, a checkpoint) or a ParameterError naming the file it could not load."""
    try:
        return load()
    except ParameterError:
        raise
    except Exception as err:
        raise ParameterError("run", str(path.parent), f"a run whose {path.name} loads, but {path} does not "
                                                     f"({one_line(err)}){'; ' + remedy if remedy else ''}") from None


def file_mb(path: Path) -> float:
    """File size in MB (10^6 bytes), the unit of studylib.models.size_mb."""
    return os.path.getsize(path) / 1e6


# ---------------------------------------------------------------- preprocessing

def normalise(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """N x 3 x S x S uint8 -> float32, with exactly the operations of studylib.data.loader.TensorBatches."""
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    return ((images_u8.float() - m) / s).contiguous()


class Normaliser:
    """normalise() in numpy for the serving path: the same float32 operations, bit for bit, without
    calling into torch (whose thread pool would compete with ONNX Runtime's on a small machine)."""

    def __init__(self, mean, std):
        self.m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255)
        self.s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1) * np.float32(255)

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((images_u8.astype(np.float32) - self.m) / self.s)


# ---------------------------------------------------------------- exports

def export_program(model: torch.nn.Module, image_size: int, path: Path):
    """torch.export the model with a dynamic batch dimension; save it to path (.pt2)."""
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    atomic_write(Path(path), lambda tmp: torch.export.save(program, tmp))
    return program


def export_onnx(program, path: Path, opset: int = 18) -> Path:
    """Translate a torch.export program into one self-contained ONNX file (dynamic batch)."""
    onnx_program = torch.onnx.export(program, input_names=[INPUT], output_names=[OUTPUT],
                                     opset_version=opset, dynamo=True, verbose=False)
    return atomic_write(Path(path), lambda tmp: onnx_program.save(tmp, external_data=False))


class _Calibration:
    """ONNX Runtime CalibrationDataReader over normalised uint8 images, in batches."""

    def __init__(self, images: torch.Tensor, batch_size: int = 32):
        self.batches = [images[i:i + batch_size].numpy() for i in range(0, len(images), batch_size)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {INPUT: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_int8(onnx_path: Path, path: Path, calibration: torch.Tensor) -> Path:
    """Static int8 post-training quantization (QDQ, per-channel int8 weights, uint8 activations,
    min/max calibration on the given normalised images)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # lazy: only int8 exports quantize
    from onnxruntime.quantization.shape_inference import quant_pre_process  # lazy: as above

    with tempfile.TemporaryDirectory(prefix="quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))  # shape inference and graph folding first
        atomic_write(Path(path), lambda out: quantize_static(
            str(prepared), out, _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax))
    return Path(path)


# ---------------------------------------------------------------- running and checking

def onnx_session(path: Path, threads: int = 0, spinning: bool = True):
    """An ONNX Runtime CPU session; threads=0 lets ONNX Runtime choose (one per physical core)."""
    import onnxruntime as ort  # lazy: only ONNX checks and the ONNX server need it, not the torch backend
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def logits_of(predict, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Logits of every image, in batches: predict(float32 N x 3 x S x S numpy) -> N x C numpy."""
    return np.concatenate([np.asarray(predict(images[i:i + batch_size].numpy()), dtype=np.float32)
                           for i in range(0, len(images), batch_size)])


def torch_predict(model: torch.nn.Module):
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()
    return predict


def session_predict(session):
    return lambda x: session.run([OUTPUT], {INPUT: x})[0]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(logits) else 0.0


def compare(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Max absolute logit difference, top-1 agreement with the reference, and test top-1."""
    return {
        "max_abs_diff": float(np.abs(reference - logits).max()) if len(logits) else 0.0,
        "top1_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()) if len(logits) else 1.0,
        "top1": top1_accuracy(logits, labels),
    }


@dataclass
class ExportResult:
    summary: dict                 # the `export` part of the deploy record
    files: dict[str, Path]        # format -> file
    offline_top1: dict[str, np.ndarray]  # format (pytorch, onnx, onnx_int8) -> top-1 class index per test image
    labels: np.ndarray
    names: list[str]              # test image names, in the order of offline_top1


def run_data(record: dict):
    """The run's dataset splits as cached uint8 tensors (studylib.train.setup.load_run_data)."""
    return load_run_data(TrainParams.from_mapping(record["params"]))


def export_run(run: str, calibration_images: int = 256, int8: bool = True, data=None,
               check_pytorch: bool = True) -> ExportResult:
    """Export a trained run to torch.export, ONNX and int8 ONNX, and check each on the test split
    (against PyTorch unless check_pytorch is False: then each ONNX file's own test top-1 only)."""
    if calibration_images < 1:
        raise ParameterError("calibration_images", calibration_images, "a positive integer")
    folder, record = resolve_run(run)
    data = data or run_data(record)
    mean, std, size = record["data"]["mean"], record["data"]["std"], record["image_size"]
    test = data.splits["test"]
    x_test = normalise(test.images, mean, std)
    labels = test.labels.numpy()

    model = load_checkpoint(record, "cpu")
    files = {k: folder / v for k, v in FILES.items()}
    summary: dict = {"test_images": len(labels), "files": {}, "checks": {}, "sizes_mb": {}, "seconds": {}}

    if check_pytorch:
        t0 = time.perf_counter()
        reference = logits_of(torch_predict(model), x_test)
        summary["seconds"]["pytorch_test_pass"] = time.perf_counter() - t0
        summary["checks"]["pytorch"] = compare(reference, reference, labels)

    t0 = time.perf_counter()
    program = export_program(model, size, files["torch_export"])
    summary["seconds"]["torch_export"] = time.perf_counter() - t0
    if check_pytorch:
        loaded = torch.export.load(str(files["torch_export"])).module()
        summary["checks"]["torch_export"] = compare(reference, logits_of(torch_predict(loaded), x_test), labels)

    t0 = time.perf_counter()
    export_onnx(program, files["onnx"])
    summary["seconds"]["onnx"] = time.perf_counter() - t0
    fp32 = logits_of(session_predict(onnx_session(files["onnx"])), x_test)
    if check_pytorch:
        summary["checks"]["onnx"] = compare(reference, fp32, labels)
        top1 = {"pytorch": reference.argmax(1), "onnx": fp32.argmax(1)}
    else:
        summary["checks"]["onnx"] = {"top1": top1_accuracy(fp32, labels)}
        top1 = {"onnx": fp32.argmax(1)}

    if int8:
        train = data.splits["train"]
        g = torch.Generator().manual_seed(record["params"].get("seed", 0))
        pick = torch.randperm(len(train), generator=g)[:calibration_images].sort().values
        t0 = time.perf_counter()
        quantize_int8(files["onnx"], files["onnx_int8"], normalise(train.images[pick], mean, std))
        summary["seconds"]["onnx_int8"] = time.perf_counter() - t0
        q = logits_of(session_predict(onnx_session(files["onnx_int8"])), x_test)
        summary["checks"]["onnx_int8"] = compare(reference, q, labels) if check_pytorch else {"top1": top1_accuracy(q, labels)}
        summary["checks"]["onnx_int8"]["top1_agreement_with_onnx"] = float((q.argmax(1) == fp32.argmax(1)).mean())
        summary["calibration_images"] = int(len(pick))
        top1["onnx_int8"] = q.argmax(1)
    else:
        files.pop("onnx_int8")
    for k, p in files.items():
        summary["files"][k] = str(p)
        summary["sizes_mb"][k] = file_mb(p)
    return ExportResult(summary, files, top1, labels, list(test.names))


def ensure_onnx(folder: Path, record: dict, int8: bool = False) -> Path:
    """The run's ONNX file (int8 or fp32). A missing or stale fp32 file (older than the checkpoint) is exported
    from the checkpoint first; anything that would need more (the int8 file: calibration needs the run's train
    images; a folder that cannot be written) is a ParameterError naming the file, with nothing written."""
    path = folder / FILES["onnx_int8" if int8 else "onnx"]
    checkpoint = folder / FILES["checkpoint"]
    if path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime:
        return path
    state = "older than model.pt" if path.is_file() else "missing"
    if int8:
        raise ParameterError("precision", "int8", f"'fp32' unless the run has its int8 model, but {path} is {state} "
                                                  "(the deploy stage calibrates and writes it)")
    if not os.access(folder, os.W_OK):
        raise ParameterError("run", str(folder), f"a run whose {path.name} is newer than model.pt or whose folder can be "
                                                 f"written, but {path} is {state} and {folder} is read-only")
    model = load_or_refuse(checkpoint, lambda: load_checkpoint(record, "cpu"))
    program = export_program(model, record["image_size"], folder / FILES["torch_export"])
    return export_onnx(program, path)

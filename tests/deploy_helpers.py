"""A tiny trained run shared by test_export.py and test_serve.py: trained and exported once per session
(and a second model's run on the same data, for the every-model serving table).

The run lives under the session's study_env folders; later callers find its record.json and reuse it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

from studylib.params import TrainParams
from studylib.record import run_id
from studylib.serve.export import export_run
from studylib.train.run import train_run

CLASSES = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
COUNTS = {"train": 12, "val": 3, "test": 6}


def make_dataset(root: Path) -> Path:
    """root/<split>/<class>/*: noisy colour fields, 80x64 px (large enough for JPEG draft decoding at 32 px);
    a third of the test images are PNG, so both decoders are served."""
    if (root / "test").is_dir():
        return root
    rng = np.random.default_rng(0)
    for split, n in COUNTS.items():
        for cls, colour in CLASSES.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-60, 60, size=(64, 80, 3))
                img = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))
                if split == "test" and i % 3 == 2:
                    img.save(folder / f"{i}.png")
                else:
                    img.save(folder / f"{i}.jpg", quality=90)
    return root


@functools.lru_cache(maxsize=None)
def trained_run(model: str = "smallvgg1") -> tuple[str, Path]:
    """(run id, run folder) of a one-epoch run of `model` (smallvgg1 unless asked) at 32 px on the tiny dataset."""
    base = Path(os.environ["STUDYLIB_RUNS"]).parent
    root = make_dataset(base / "deploy-data")
    params = TrainParams(dataset="imagefolder", root=str(root), model=model, epochs=1, image_size=32,
                         batch_size=16, device="cpu", amp=False)
    rid = run_id("train", params.run_params())
    folder = Path(os.environ["STUDYLIB_RUNS"]) / rid
    if not (folder / "record.json").is_file():
        train_run(params, progress=False)
    return rid, folder


@functools.lru_cache(maxsize=1)
def exported_run():
    """studylib.serve.export.export_run on the tiny run (torch.export, ONNX, int8), once per session."""
    rid, folder = trained_run()
    return export_run(rid, calibration_images=32)

"""Does the training setting change accuracy beyond seed noise? fp32 NCHW, fp32 channels_last and bf16
channels_last, on the quick study's settings.

    .venv/bin/python benchmarks/precision_accuracy.py [--models smallvgg3_bn mobilenet_v3_small] [--seeds 0 1 2]

For each model (its train cell of params/quick.yaml: 64 px, its epochs, lr, batch size, schedule) and
each seed, trains once per setting with `studylib.train.run.train_run` (amp and channels_last fixed,
not "auto"), evaluates the test split once, and prints test top-1 mean ± sample std over seeds per
model and setting, with the median training images/s. Runs go to a temporary folder (nothing lands
in runs/ or results/). The same seed gives the same split, initial weights and batch order in every
setting, so differences between settings of one seed are the setting's, and the spread over seeds
is the noise to compare them with. The defaults make 18 runs (2 models x 3 seeds x 3 settings) at the
quick study's budget: about half an hour on a quiet 2-core CPU (estimated from the quick study's run
times, not measured).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from studylib.params import TrainParams
from studylib.study.expand import load_grid
from studylib.train.run import train_run

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"fp32 NCHW": (False, False), "fp32 channels_last": (False, True), "bf16 channels_last": (True, True)}


def quick_cell(grid: Path, model: str) -> dict:
    """The grid's train parameters for this model (its first cell), without seed and output folder."""
    _, cells = load_grid(grid)
    for c in cells["train"]:
        if c.params["model"] == model:
            return {k: v for k, v in c.params.items() if k not in ("seed", "output_dir")}
    raise SystemExit(f"error: parameter '--models' is '{model}', but it must be a model of {grid}'s train cells")


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(ROOT / "params" / "quick.yaml"))
    ap.add_argument("--models", nargs="+", default=["smallvgg3_bn", "mobilenet_v3_small"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="override the grid's epochs (default: the grid's)")
    ap.add_argument("--train-limit", type=int, default=None, help="at most this many training images (a quick check)")
    args = ap.parse_args()

    bases = {m: quick_cell(Path(args.grid), m) for m in args.models}  # every model checked before any run
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="precision-accuracy-") as out:
        for model, base in bases.items():
            for seed in args.seeds:
                for name, (amp, channels_last) in SETTINGS.items():
                    values = {**base, "seed": seed, "amp": amp, "channels_last": channels_last,
                              "output_dir": str(Path(out) / f"{model}-s{seed}-{name.replace(' ', '-')}")}
                    values.update({k: v for k, v in (("epochs", args.epochs), ("train_limit", args.train_limit)) if v})
                    record = train_run(TrainParams.from_mapping(values), progress=False).record
                    row = {"model": model, "setting": name, "seed": seed, "test_top1": record["test"]["top1"],
                           "images_per_second": statistics.median(h["images_per_second"] for h in record["history"]),
                           "train_seconds": record["train_seconds"]}
                    print(json.dumps(row), flush=True)
                    results.setdefault((model, name), []).append(row)

    print(f"\ntest top-1, mean ± std over seeds {args.seeds} (median training images/s)")
    for (model, name), rows in results.items():
        top1 = [r["test_top1"] for r in rows]
        speed = statistics.median(r["images_per_second"] for r in rows)
        print(f"  {model:22} {name:20} {mean_std(top1):>15}   ({speed:.0f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time data_prep's two object-storage modes on a real S3-protocol server (moto, 127.0.0.1).

    .venv/bin/python benchmarks/storage_modes.py [--dataset-dir data/clothing10] [--image-size 64]

Uploads the folder to a local moto server, then for each mode, with an empty mirror and an empty
tensor cache: list the bucket, (prefetch: copy everything), read and check every image (lazy:
fetching each on first use), build the tensor cache. Prints one JSON line per mode. A local
server measures request overhead and concurrency, not a real network's bandwidth or latency.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from studylib.data.integrity import check_integrity
from studylib.stages import data_prep as dataprep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset-dir", default=str(Path(__file__).resolve().parent.parent / "data" / "clothing10"))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the server in its own process, so that it does not share our interpreter's lock
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import s3fs
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        src = Path(args.dataset_dir)
        t0 = time.perf_counter()
        files = sorted(p for p in src.rglob("*") if p.is_file())
        fs.put([str(p) for p in files], [f"bench/{src.name}/{p.relative_to(src).as_posix()}" for p in files])
        print(f"# uploaded {len(files)} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        dataset = "clothing10" if src.name == "clothing10" else "imagefolder"
        for mode in ("prefetch", "lazy"):
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["STUDYLIB_CACHE"] = f"{tmp}/cache"
                os.environ["STUDYLIB_REMOTE"] = f"{tmp}/remote"
                os.environ["STUDYLIB_SPLITS"] = f"{tmp}/splits"
                t = time.perf_counter()
                p = dataprep.DataPrepParams.from_mapping({"dataset": dataset, "root": f"s3://bench/{src.name}",
                                                          "storage_mode": mode, "image_sizes": [args.image_size],
                                                          "workers": args.workers})
                ds, t_open = dataprep.open_dataset(p)
                integrity = check_integrity(ds, p.workers)
                t_cache = time.perf_counter()
                rows, _ = dataprep.build_cache(ds, p.image_sizes)
                t_cache = time.perf_counter() - t_cache
                rep = ds.store.report()
                print(json.dumps({
                    "mode": mode, "files": rep["files"], "mb": round(rep["bytes"] / 2**20, 1),
                    "list_s": rep["list_seconds"], "prefetch_s": rep["prefetch_seconds"],
                    "first_pass_s": round(integrity.seconds, 3), "fetched_files": rep["fetched_files"],
                    "cache_build_s": round(t_cache, 3), "problems": len(integrity.problems),
                    "total_s": round(time.perf_counter() - t, 3), "workers": integrity.workers,
                    "cpus": os.cpu_count()}))
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

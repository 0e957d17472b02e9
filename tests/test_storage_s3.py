"""Datasets in object storage: a real S3-protocol server (moto's server mode on 127.0.0.1), both modes.

The server, the bucket and the credentials are the test's own; the credentials are distinctive
strings so the tests can show that none of them reaches a record, a card, a notebook or the mirror.
"""
import hashlib
import json
import socket
from pathlib import Path

import papermill as pm
import pytest
import scrapbook as sb
import torch

from studylib.data import storage
from studylib.data.cache import load_split
from studylib.data.registry import load_dataset
from studylib.errors import DatasetUnavailable
from studylib.params import TrainParams
from studylib.record import DataPrepRecord
from studylib.train.setup import load_run_data
from studylib.util import redact_url

from test_data_prep import CLASSES, imagefolder

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "study-data"
KEY_ID = "AKIASTUDYLIBTEST0001"
SECRET = "studylib-test-secret-never-to-be-recorded"
COUNTS = {"train": 6, "val": 2, "test": 2}
IMAGES = sum(COUNTS.values()) * len(CLASSES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 holding s3://study-data/tiny (an imagefolder with a SHA256SUMS)."""
    from moto.server import ThreadedMotoServer
    mp = pytest.MonkeyPatch()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint}.items():
        mp.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(k, raising=False)
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    local = imagefolder(tmp_path_factory.mktemp("upload") / "tiny", counts=COUNTS)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(local).as_posix()}\n" for p in files)
    (local / "SHA256SUMS").write_text(sums)
    for p in files + [local / "SHA256SUMS"]:
        client.upload_file(str(p), BUCKET, f"tiny/{p.relative_to(local).as_posix()}")
    yield {"endpoint": endpoint, "uri": f"s3://{BUCKET}/tiny", "local": local}
    server.stop()
    mp.undo()


def test_both_modes_load_the_bucket_into_the_same_tensors(s3, study_env, tmp_path, monkeypatch):
    loaded = {}
    for mode in ("prefetch", "lazy"):
        monkeypatch.setenv("STUDYLIB_REMOTE", str(tmp_path / f"mirror-{mode}"))
        monkeypatch.setenv("STUDYLIB_CACHE", str(tmp_path / f"cache-{mode}"))
        ds = load_dataset("imagefolder", s3["uri"], storage_mode=mode)
        store = ds.store
        assert ds.root == s3["uri"] and {s: len(i) for s, i in ds.splits.items()} == {k: v * 3 for k, v in COUNTS.items()}
        assert ds.classes == sorted(CLASSES) and len(store.files) == IMAGES + 1
        if mode == "prefetch":  # everything copied before the first image is used
            assert store.fetched_files == IMAGES + 1 and store.prefetch_seconds > 0
        else:                   # nothing copied until an image is used
            assert store.fetched_files == 0
        splits = {s: load_split(ds.cache_key, s, ds.splits[s], 16) for s in ("train", "val", "test")}
        assert store.fetched_files == IMAGES + (mode == "prefetch")  # lazy: each image fetched once, on first use
        assert all(not t.cache_hit and not t.skipped for t in splits.values())
        loaded[mode] = (splits, store.report())
        # a second load of the same root reads the mirror: nothing is fetched again
        again = load_dataset("imagefolder", s3["uri"], storage_mode=mode)
        hit = load_split(again.cache_key, "train", again.splits["train"], 16)
        assert again.store.fetched_files == 0 and hit.cache_hit
        print(f"\n{mode}: {json.dumps(loaded[mode][1])}")
    for s in ("train", "val", "test"):
        assert torch.equal(loaded["prefetch"][0][s].images, loaded["lazy"][0][s].images)
    # the mirror holds the same bytes as the upload
    mirror = Path(loaded["lazy"][1]["local"])
    for p in s3["local"].rglob("*.jpg"):
        assert (mirror / p.relative_to(s3["local"])).read_bytes() == p.read_bytes()


def test_missing_bucket_is_one_clear_error(s3, study_env):
    with pytest.raises(DatasetUnavailable, match="s3://no-such-bucket/x") as info:
        load_dataset("imagefolder", "s3://no-such-bucket/x", storage_mode="lazy")
    assert SECRET not in str(info.value) and KEY_ID not in str(info.value)


@pytest.mark.slow
def test_data_prep_notebook_reads_s3_lazily_and_train_data_is_warm(s3, study_env, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_REMOTE", str(tmp_path / "mirror"))
    out = tmp_path / "data_prep.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "data_prep.ipynb"), str(out),
                        parameters={"dataset": "imagefolder", "root": s3["uri"], "storage_mode": "lazy",
                                    "image_sizes": [32]},
                        cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    scraps = sb.read_notebook(str(out)).scraps
    card, record = scraps["dataset_card"].data, scraps["record"].data
    DataPrepRecord.model_validate(record)
    assert card["sizes"] == {k: v * 3 for k, v in COUNTS.items()} and card["problem_count"] == 0
    assert card["checksums"]["verified"] == IMAGES  # SHA256SUMS fetched from the bucket and checked
    st = card["storage"]
    assert st["mode"] == "lazy" and st["uri"] == s3["uri"] and st["fetched_files"] == IMAGES + 1
    assert st["first_pass_seconds"] > 0 and record["storage"]["fetched_files"] == IMAGES + 1
    # credentials reach nothing the study writes
    written = [out.read_text(), json.dumps(card), json.dumps(record)]
    written += [p.read_text() for p in (tmp_path / "mirror").rglob("*.jsonl")]
    for text in written:
        assert SECRET not in text and KEY_ID not in text
    # a train run on the same root (loading in the default prefetch mode) finds the cache data_prep built
    data = load_run_data(TrainParams(dataset="imagefolder", root=s3["uri"], model="smallvgg1", image_size=32))
    assert all(t.cache_hit for t in data.splits.values()) and data.dataset.root == s3["uri"]
    assert data.dataset.store.fetched_files == 0  # the lazy pass left every file in the mirror


def test_file_uri_works_in_both_modes(study_env, tmp_path, monkeypatch):
    """Any fsspec URI is a root: file:// through the same code path as s3://."""
    root = imagefolder(tmp_path / "local", counts={"train": 3, "val": 1, "test": 1})
    for mode in ("prefetch", "lazy"):
        monkeypatch.setenv("STUDYLIB_REMOTE", str(tmp_path / f"mirror-{mode}"))
        ds = load_dataset("imagefolder", root.as_uri(), storage_mode=mode)
        assert len(ds.splits["train"]) == 9 and ds.store.fetched_files == (15 if mode == "prefetch" else 0)
        img = ds.splits["test"].load(0)
        assert img.size == (32, 32) and ds.store.fetched_files == (15 if mode == "prefetch" else 1)


def test_redact_and_storage_options():
    assert redact_url("s3://AKIA:secret@bucket/dogs?X-Amz-Signature=abc") == "s3://bucket/dogs"
    assert redact_url("file:///data/dogs") == "file:///data/dogs"
    assert redact_url("/data/dogs") == "/data/dogs"
    assert storage.check_storage_options({"endpoint_url": "http://x", "client_kwargs": {"region_name": "eu"}})
    for bad in ({"key": "k"}, {"secret": "s"}, {"token": "t"}, {"client_kwargs": {"aws_secret_access_key": "s"}}):
        with pytest.raises(ValueError):
            storage.check_storage_options(bad)


def test_a_remote_file_that_changed_is_fetched_again(s3, study_env, tmp_path, monkeypatch):
    """The mirror follows the bucket: an object rewritten with other bytes of the same size is fetched
    again on its next use; an unchanged one is not."""
    import boto3
    client = boto3.client("s3", endpoint_url=s3["endpoint"])
    files = sorted(p for p in s3["local"].rglob("*.jpg"))
    for p in files:
        client.upload_file(str(p), BUCKET, f"changing/{p.relative_to(s3['local']).as_posix()}")
    monkeypatch.setenv("STUDYLIB_REMOTE", str(tmp_path / "mirror"))
    uri = f"s3://{BUCKET}/changing"
    changed, kept = (p.relative_to(s3["local"]).as_posix() for p in files[:2])

    first = storage.open_root(uri, "lazy")
    for rel in (changed, kept):
        first.ensure(first.local_path(rel))
    assert first.fetched_files == 2

    new = bytearray(files[0].read_bytes())
    new[len(new) // 2] ^= 0xFF                 # other content, same size
    client.put_object(Bucket=BUCKET, Key=f"changing/{changed}", Body=bytes(new))

    second = storage.open_root(uri, "lazy")
    assert second.ensure(second.local_path(changed)).read_bytes() == bytes(new)
    assert second.ensure(second.local_path(kept)).read_bytes() == files[1].read_bytes()
    assert second.fetched_files == 1           # only the changed object crossed the network


def test_object_keys_cannot_leave_the_mirror_and_only_images_under_the_cap_are_fetched(s3, study_env, tmp_path,
                                                                                        monkeypatch):
    """Issue 14 item 3: a key with '../' wrote outside the local mirror; every object was fetched, any size."""
    import boto3
    client = boto3.client("s3", endpoint_url=s3["endpoint"])
    images = sorted(p for p in s3["local"].rglob("*.jpg"))
    for p in images:
        client.upload_file(str(p), BUCKET, f"hostile/{p.relative_to(s3['local']).as_posix()}")
    small = max(p.stat().st_size for p in images)
    client.put_object(Bucket=BUCKET, Key="hostile/../../../../escaped.jpg", Body=images[0].read_bytes())
    client.put_object(Bucket=BUCKET, Key="hostile/train/a/../../../../../escaped2.jpg", Body=images[0].read_bytes())
    client.put_object(Bucket=BUCKET, Key="hostile/train/a/payload.sh", Body=b"#!/bin/sh\necho hi\n")
    client.put_object(Bucket=BUCKET, Key="hostile/train/a/huge.png", Body=b"\x89PNG" + b"\0" * (small + 100))
    monkeypatch.setattr(storage, "MAX_FILE_BYTES", small + 50)
    for mode in ("prefetch", "lazy"):
        mirror = tmp_path / f"deep/er/mirror-{mode}"
        monkeypatch.setenv("STUDYLIB_REMOTE", str(mirror))
        root = storage.open_root(f"s3://{BUCKET}/hostile", mode)
        if mode == "lazy":
            for rel in root.files:
                root.ensure(root.local_path(rel))
        assert set(root.files) == {p.relative_to(s3["local"]).as_posix() for p in images}
        assert root.report()["skipped"] == {"unsafe path": 2, "not an image": 1, "over the size cap": 1}
        assert not list(tmp_path.rglob("escaped*.jpg")) and not list(tmp_path.rglob("payload.sh"))
        assert not list(tmp_path.rglob("huge.png"))
        with pytest.raises(ValueError, match="a path inside"):
            root.local_path("../../escaped.jpg")

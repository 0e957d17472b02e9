"""Dataset roots in object storage: any fsspec URI (s3://, gs://, file://, ...) read through a local mirror.

Two modes, as in reference study 002:
- `prefetch`: list the remote tree and copy every file into the local mirror first (concurrently),
  then read locally;
- `lazy`: list the remote tree; each file is fetched the first time it is used and kept in the
  mirror, so a later use (or a later run) reads the local copy. This was study 002's "future work".

Both modes share one mirror per root (under `remote_dir()`), keep a log of which remote version
(size, ETag or mtime) each local file came from, and give every file a signature from the remote
listing, so the tensor cache is keyed the same way whichever mode fetched the bytes. A partly
downloaded file never appears under its own name (temp name, then os.replace).

Credentials never pass through here: the storage library reads them from its usual places
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, instance roles,
GOOGLE_APPLICATION_CREDENTIALS, ...). `storage_options` may carry only settings that are not
secret (endpoint_url, region_name, anon, ...); the endpoint can also come from AWS_ENDPOINT_URL.
URIs are recorded and shown without any user:password part or query string.

What crosses into the mirror is bounded: an object whose key would leave the mirror ('..', an absolute
or empty part) is never fetched, nor (for an image dataset) anything but images and the checksum list,
nor a file over MAX_FILE_BYTES; each is counted in the report's `skipped`. Every local path is built
by studylib.paths.inside, which refuses one outside the mirror.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from studylib.errors import DatasetUnavailable, ParameterError, check_no_secret, redact_url
from studylib.paths import cache_dir, inside

MODES = ("prefetch", "lazy")
LOG_NAME = ".studylib-fetched.jsonl"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")   # as data.sources reads
CHECKSUM_LIST = re.compile(r"(sha256|sha512|sha1|md5)sums(\.txt)?", re.IGNORECASE)       # as data.integrity reads
MAX_FILE_BYTES = 64 * 2**20      # no image the study reads comes near it; a bigger object is never fetched


def remote_dir() -> Path:
    """Where local mirrors of remote roots live (STUDYLIB_REMOTE overrides it)."""
    return Path(os.environ.get("STUDYLIB_REMOTE", cache_dir().parent / "remote"))


def check_storage_options(options) -> dict:
    """Validate `storage_options`: a mapping of fsspec settings that are not secrets (no credential-named key,
    no URL with a password, at any depth); credentials stay in the environment or a credentials file."""
    if options in (None, ""):
        return {}
    if not isinstance(options, dict):
        raise ParameterError("storage_options", type(options).__name__,
                             "a mapping of fsspec settings such as {'endpoint_url': 'http://...'}")
    check_no_secret("storage_options", options)
    return dict(options)


def _options(protocol: str, options: dict) -> dict:
    """fsspec options for a protocol: the given ones plus, for S3, the endpoint from AWS_ENDPOINT_URL[_S3]."""
    opts = dict(options)
    if protocol in ("s3", "s3a") and "endpoint_url" not in opts:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    return opts


def filesystem(uri: str, storage_options: dict | None = None):
    """(fsspec filesystem, path within it) for a URI, with a clear error when its library is missing."""
    import fsspec  # lazy: only a root in object storage needs the storage library
    protocol = urlsplit(uri).scheme
    try:
        return fsspec.core.url_to_fs(uri, **_options(protocol, check_storage_options(storage_options)))
    except (ImportError, ValueError) as err:
        raise ParameterError("root", redact_url(uri), f"a URI whose fsspec filesystem is installed and configured "
                             f"({type(err).__name__}: {err})") from None


def _signature(info: dict) -> str:
    """What identifies one remote version of a file: its size and whichever of ETag/hash/mtime the store gives."""
    parts = [str(info.get("size"))]
    for k in ("ETag", "etag", "md5Hash", "crc32c", "generation", "LastModified", "mtime", "updated"):
        if info.get(k) is not None:
            parts.append(f"{k}={info[k]}")
    return ";".join(parts)


def mirror_path(uri: str, storage_options: dict | None = None) -> Path:
    """The local mirror's folder for a root: readable name plus a hash of the URI and endpoint."""
    clean = redact_url(uri)
    protocol = urlsplit(clean).scheme
    endpoint = _options(protocol, storage_options or {}).get("endpoint_url", "")
    digest = hashlib.sha256(f"{clean}|{endpoint}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", clean.split("://", 1)[1]).strip("_")[-60:] or "root"
    return remote_dir() / protocol / f"{slug}-{digest}"


def skip_reason(rel: str, size, only_images: bool, max_bytes: int) -> str | None:
    """Why a listed object stays out of the mirror ('unsafe path', 'not an image', 'over the size cap'), or None."""
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        return "unsafe path"
    if only_images and not (rel.lower().endswith(IMAGE_SUFFIXES) or (len(parts) == 1 and CHECKSUM_LIST.fullmatch(rel))):
        return "not an image"
    if isinstance(size, int) and size > max_bytes:
        return "over the size cap"
    return None


@dataclass
class RemoteRoot:
    """A remote dataset root and its local mirror. `files` maps each relative path to its remote signature."""
    uri: str                        # redacted
    mode: str
    local: Path
    files: dict[str, str]
    list_seconds: float = 0.0
    prefetch_seconds: float = 0.0   # prefetch: wall time of the bulk copy
    fetched_files: int = 0
    fetched_bytes: int = 0
    fetch_seconds: float = 0.0      # prefetch: the bulk copy; lazy: summed time of the per-item fetches
    skipped: dict = field(default_factory=dict)   # reason -> objects listed but never fetched (skip_reason)
    max_bytes: int = MAX_FILE_BYTES
    _fs: object = field(default=None, repr=False)
    _base: str = field(default="", repr=False)
    _have: dict = field(default_factory=dict, repr=False)   # relpath -> signature of the local copy
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- paths --------------------------------------------------------------------------
    def relative(self, local_path) -> str:
        return Path(local_path).relative_to(self.local).as_posix()

    def local_path(self, rel: str) -> Path:
        return inside(self.local, rel)

    def signature(self, local_path) -> str:
        return self.files[self.relative(local_path)]

    def present(self, rel: str) -> bool:
        return self._have.get(rel) == self.files.get(rel) and self.local_path(rel).exists()

    # --- fetching -----------------------------------------------------------------------
    def _log(self, rels: list[str]) -> None:
        with self._lock:
            with open(self.local / LOG_NAME, "a") as f:
                for rel in rels:
                    self._have[rel] = self.files[rel]
                    f.write(json.dumps({"path": rel, "sig": self.files[rel]}) + "\n")

    def ensure(self, local_path) -> Path:
        """Make sure the file is in the mirror (fetching it now if it is not) and return its local path."""
        rel = self.relative(local_path)
        if rel not in self.files:
            raise FileNotFoundError(f"{rel} is not under {self.uri}")
        if self.present(rel):
            return self.local_path(rel)
        t0 = time.perf_counter()
        dest = self.local_path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}-{threading.get_ident()}")
        try:
            self._fs.get_file(f"{self._base}/{rel}", str(tmp))
            if tmp.stat().st_size > self.max_bytes:   # grew since it was listed
                self._too_big(rel)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        size = dest.stat().st_size
        self._log([rel])
        with self._lock:
            self.fetched_files += 1
            self.fetched_bytes += size
            self.fetch_seconds += time.perf_counter() - t0
        return dest

    def prefetch(self) -> None:
        """Copy every file not yet in the mirror, concurrently, each under a temp name first."""
        t0 = time.perf_counter()
        todo = [rel for rel in self.files if not self.present(rel)]
        if todo:
            tmps = []
            for rel in todo:
                dest = self.local_path(rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmps.append(dest.with_name(f"{dest.name}.part-{os.getpid()}"))
            try:
                self._fs.get([f"{self._base}/{rel}" for rel in todo], [str(t) for t in tmps])
                for rel, tmp in zip(todo, tmps):
                    if tmp.stat().st_size > self.max_bytes:   # grew since it was listed
                        self._too_big(rel)
                    os.replace(tmp, self.local_path(rel))
            finally:
                for tmp in tmps:
                    if tmp.exists():
                        tmp.unlink()
            self._log(todo)
            self.fetched_files += len(todo)
            self.fetched_bytes += sum(self.local_path(rel).stat().st_size for rel in todo)
        self.prefetch_seconds = time.perf_counter() - t0
        self.fetch_seconds = self.prefetch_seconds

    def _too_big(self, rel: str):
        raise DatasetUnavailable(f"'{rel}' under '{self.uri}' is larger than the {self.max_bytes} bytes a file of a "
                                 "dataset may have; it was listed smaller and changed while being fetched.")

    def total_bytes(self) -> int:
        sizes = (sig.split(";", 1)[0] for sig in self.files.values())
        return sum(int(x) for x in sizes if x.isdigit())

    def report(self) -> dict:
        """What the card and the record show: no credentials, no endpoint secrets, only what happened."""
        return {"uri": self.uri, "mode": self.mode, "local": str(self.local), "files": len(self.files),
                "bytes": self.total_bytes(), "list_seconds": round(self.list_seconds, 4),
                "prefetch_seconds": round(self.prefetch_seconds, 4) if self.mode == "prefetch" else None,
                "fetched_files": self.fetched_files, "fetched_bytes": self.fetched_bytes,
                "fetch_seconds": round(self.fetch_seconds, 4), "skipped": dict(self.skipped)}


def _read_log(local: Path) -> dict:
    have = {}
    try:
        with open(local / LOG_NAME) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    have[entry["path"]] = entry["sig"]
                except (ValueError, KeyError):
                    continue  # a torn last line from an interrupted run
    except FileNotFoundError:
        pass
    return have


def open_root(uri: str, mode: str = "prefetch", storage_options: dict | None = None,
              only_images: bool = True) -> RemoteRoot:
    """List a remote root and set up its mirror; in `prefetch` mode also copy everything now.

    only_images: fetch images and the checksum list only (an image folder); False for a dataset copied whole
    with its metadata files. Either way no object leaves the mirror or exceeds MAX_FILE_BYTES."""
    if mode not in MODES:
        raise ParameterError("storage_mode", mode, f"one of {', '.join(MODES)}")
    options = check_storage_options(storage_options)
    fs, base = filesystem(uri, options)
    base = base.rstrip("/")
    t0 = time.perf_counter()
    try:
        listing = fs.find(base, detail=True)
    except FileNotFoundError:
        listing = {}
    except Exception as err:  # permission, endpoint, network: one sentence, no credentials
        raise DatasetUnavailable(f"root '{redact_url(uri)}' could not be listed ({type(err).__name__}: "
                                 f"{err}); check the endpoint and the credentials in the environment.") from None
    files, skipped = {}, {}
    for name, info in listing.items():
        if info.get("type", "file") != "file":
            continue
        rel = name[len(base):].lstrip("/") if name.startswith(base) else name
        if rel and not rel.endswith("/") and LOG_NAME not in rel:
            why = skip_reason(rel, info.get("size"), only_images, MAX_FILE_BYTES)
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                files[rel] = _signature(info)
    if not files:
        raise DatasetUnavailable(f"root '{redact_url(uri)}' holds no files; expected root/<split>/<class>/<image> "
                                 "or root/<class>/<image> there.")
    local = mirror_path(uri, options)
    local.mkdir(parents=True, exist_ok=True)
    root = RemoteRoot(uri=redact_url(uri), mode=mode, local=local, files=dict(sorted(files.items())),
                      list_seconds=time.perf_counter() - t0, skipped=skipped, max_bytes=MAX_FILE_BYTES,
                      _fs=fs, _base=base, _have=_read_log(local))
    if mode == "prefetch":
        root.prefetch()
    return root

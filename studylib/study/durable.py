"""A study's files through kill -9: one grid at a time, tables replaced together, stale temporaries swept.

- `study_lock`: an fcntl lock on results/<study>/.grid.lock for as long as a grid runs the study; a second
  grid is refused with one sentence naming the lock and its holder. The kernel drops the lock when its
  process dies, however it dies, so a rerun after kill -9 is never refused by a stale lock.
- `replace_together`: several files of one folder written in full beside their targets, a journal naming
  them, then each renamed into place; `roll_forward` (run by every reader and writer) finishes the renames a
  killed writer left, so a reader sees all the old files or all the new ones, never a mix of generations.
- `sweep`: the temporary files (`*.tmp`, `<run-id>.running.ipynb`) that a killed process left behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from studylib.errors import StudyError
from studylib.paths import check_name, inside, results_dir
from studylib.util import atomic_write_json, now

LOCK = ".grid.lock"
JOURNAL = ".replace-together.json"


class StudyLocked(StudyError):
    """Another grid runs this study now."""


@contextmanager
def study_lock(study: str) -> Iterator[Path]:
    """Hold results/<study>/.grid.lock while the block runs; StudyLocked when another process holds it."""
    path = inside(results_dir(), check_name("study", study), LOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
            raise StudyLocked(f"study '{study}' is being run by another grid ({holder}), which holds the lock "
                              f"{path}: wait for it to finish or stop it, then run this again.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now()}".encode(), 0)
        yield path
    finally:
        os.close(fd)   # the file stays: removing a lock file races with the next process opening it


def replace_together(writes: dict[Path, Callable[[str], object]]) -> None:
    """Write each file with write(tmp) beside its target (all in one folder), then put them in place as one.

    A failure while writing leaves the old files and no temporary; a process killed after the journal is
    written has its renames finished by the next `roll_forward`."""
    folders = {Path(p).parent for p in writes}
    if len(folders) != 1:
        raise ValueError("replace_together writes the files of one folder")
    folder = folders.pop()
    folder.mkdir(parents=True, exist_ok=True)
    roll_forward(folder)   # a killed writer's generation first, so it cannot land after this one
    generation = uuid.uuid4().hex[:12]
    staged = {Path(p).name: f".{Path(p).name}.{generation}.tmp" for p in writes}
    try:
        for path, write in writes.items():
            write(str(folder / staged[Path(path).name]))
        atomic_write_json(folder / JOURNAL, {"generation": generation, "files": staged})
    except BaseException:
        for tmp in staged.values():
            (folder / tmp).unlink(missing_ok=True)
        raise
    roll_forward(folder)


def roll_forward(folder: Path) -> None:
    """Finish the renames of the journal in `folder`, if one is left (a writer killed between its renames)."""
    journal = Path(folder) / JOURNAL
    try:
        data = json.loads(journal.read_text())
    except FileNotFoundError:
        return
    for name, tmp in data["files"].items():
        try:
            os.replace(journal.parent / tmp, journal.parent / name)
        except FileNotFoundError:   # in place already (by the writer, or by another reader)
            pass
    try:   # the journal goes only if it is still this generation's
        if json.loads(journal.read_text()).get("generation") == data["generation"]:
            journal.unlink()
    except FileNotFoundError:
        pass


def sweep(folder: Path, names: tuple[str, ...] = ("*",)) -> list[Path]:
    """Remove the temporaries that killed processes left in `folder`: `.<name>.*.tmp` (util.atomic_write,
    replace_together) and `<name>.running.ipynb`, for each name pattern. A journal is rolled forward first.
    Call it only where no live process writes (under the study's lock). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    roll_forward(folder)
    gone = []
    for name in names:
        for path in [*folder.glob(f".{name}.*tmp"), *folder.glob(f"{name}.running.ipynb")]:
            if path.is_file():
                path.unlink(missing_ok=True)
                gone.append(path)
    return gone

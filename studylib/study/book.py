"""The Jupyter Book's moving parts: the report pages and the table of contents, from what ran.

`write_report(study)` executes notebooks/decision.ipynb, methods.ipynb and results.ipynb for the
study into book/results/ (and a study's own chapters where they apply: study003.ipynb for a study that
trains reference study 003's VGG arms on CIFAR-10, transfer.ipynb for a study with fine-tuned runs), then
regenerates book/_toc.yml.

The book holds every study that has run into it (each results/<study>/cells.json whose book is this
one): the intro, then per study its report pages (decision, methods, the reference studies once,
results, its own chapters) and every executed notebook grouped by stage (failed runs last). Running
one study never drops another's pages. `jupyter-book build book/` then renders it offline
(execute_notebooks is "off" in _config.yml: papermill already ran everything).
"""
from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from studylib.errors import ParameterError
from studylib.paths import book_dir, inside, project_root, results_dir
from studylib.study.execute import hide_injected_parameters, run_notebook
from studylib.study.manifest import STAGES, failed_path, read_manifest, running_path, source_notebook
from studylib.util import atomic_write, atomic_write_text, read_yaml_file

STAGE_CAPTIONS = {"data_prep": "Data preparation", "train": "Training runs", "tune": "Tuning",
                  "deploy": "Deployment", "cost": "Cost"}
REPORT_PAGES = ("decision", "methods", "results")   # notebooks/<page>.ipynb -> book/results/<page>-<study>.ipynb
HAND_WRITTEN = ("intro.md", "reference_studies.md")
HAND_WRITTEN_PAGES = ("reference_studies",)   # the chapters among CHAPTERS that are hand-written, not executed
# A study's chapters after the intro, in order: a report page where it was executed, or a hand-written page.
CHAPTERS = ("decision", "methods", "reference_studies", "results", "study003", "transfer")
DEFAULT_STUDY = "quick"   # first in the book; the other studies follow by name


def _trains_study003_arms(cells: list[dict]) -> bool:
    return any(c["stage"] == "train" and c["params"].get("dataset") == "cifar10"
               and str(c["params"].get("model", "")).startswith("smallvgg") for c in cells)


def _fine_tunes(cells: list[dict]) -> bool:
    return any(c["stage"] == "train" and c["params"].get("pretrained", False) is not False for c in cells)


# Report pages that only some studies have: the page, and which studies (by their cells) it is for.
OWN_PAGES = {"study003": _trains_study003_arms, "transfer": _fine_tunes}


def report_pages(study: str) -> list[str]:
    """The report notebooks executed for a study: every study's, then those of OWN_PAGES that apply."""
    cells = read_manifest(study)["cells"]
    return [*REPORT_PAGES, *(page for page, applies in OWN_PAGES.items() if applies(cells))]


def report_path(page: str, study: str) -> Path:
    return inside(book_dir(), "results", f"{page}-{study}.ipynb")


def sync_sources() -> None:
    """When the book lives elsewhere (STUDYLIB_BOOK), copy the hand-written pages and _config.yml there."""
    src = project_root() / "book"
    dst = book_dir()
    dst.mkdir(parents=True, exist_ok=True)
    if dst.resolve() == src.resolve():
        return
    for name in HAND_WRITTEN:
        shutil.copy2(src / name, dst / name)
    if (src / "_static").is_dir():   # the book's stylesheet
        shutil.copytree(src / "_static", dst / "_static", dirs_exist_ok=True)
    shutil.copy2(project_root() / "_config.yml", dst / "_config.yml")


def execute_page(page: str, study: str, log=print) -> bool:
    """Run one report notebook for the study (atomically); a failure is logged and kept as .failed.ipynb."""
    out = report_path(page, study)
    out.parent.mkdir(parents=True, exist_ok=True)
    running, failed = running_path(out), failed_path(out)
    error = run_notebook(source_notebook(page), running, {"study": study}, project_root())
    if error:
        log(f"[report] FAILED {page} page of study {study}: {error} (see {failed})")
        if running.exists():
            running.replace(failed)
        out.unlink(missing_ok=True)   # no stale page from an earlier run
        return False
    publish(running, out)
    failed.unlink(missing_ok=True)
    log(f"[report] {page} page of study {study}: {out}")
    return True


def publish(running: Path, out: Path) -> None:
    """The executed page as `out`, without papermill's injected cell (the report pages only take the study's name)."""
    import nbformat  # lazy: only the grid and `studylib collect` write report pages

    nb = nbformat.read(running, as_version=4)
    hide_injected_parameters(nb)
    atomic_write(out, lambda path: nbformat.write(nb, path))
    running.unlink()


def studies_in_book(study: str) -> list[str]:
    """`study` and every other study whose manifest names this book: the default study first, then by name."""
    here = str(book_dir())
    found = {study}
    for path in results_dir().glob("*/cells.json"):
        try:
            if json.loads(path.read_text()).get("book") == here:
                found.add(path.parent.name)
        except (OSError, ValueError):
            continue   # a manifest being written, or damaged: that study is left out until it is whole
    return sorted(found, key=lambda s: (s != DEFAULT_STUDY, s))


def study_title(study: str) -> str:
    """The grid file's title for a study, or "" when the grid file is gone."""
    grid = Path(read_manifest(study).get("grid", ""))
    try:
        content = read_yaml_file(grid, "grid", "a grid file")
    except ParameterError:   # a grid file gone or unreadable only costs the part its title
        return ""
    return str(content.get("title") or "") if isinstance(content, dict) else ""


def toc(study: str) -> dict:
    """The book's table of contents: the intro, then each study in the book (`studies_in_book`)."""
    names = studies_in_book(study)
    parts = []
    for i, name in enumerate(names):
        parts += study_parts(name, with_reference=i == 0, label=None if len(names) == 1 else name)
    return {"format": "jb-book", "root": "intro", "parts": parts}


def study_parts(study: str, with_reference: bool = True, label: str | None = None) -> list[dict]:
    """A study's parts: its chapters, then one page per executed notebook by stage, failed runs last.

    label: None when the book holds this study alone (captions as "The study"); else the study's
    name, which every caption then carries."""
    book = book_dir()
    manifest = read_manifest(study)
    chapters = [{"file": f"results/{page}-{study}"} if page not in HAND_WRITTEN_PAGES else {"file": page}
                for page in CHAPTERS
                if (page in HAND_WRITTEN_PAGES and with_reference) or report_path(page, study).exists()]
    if label is None:
        caption, suffix = "The study", ""
    else:
        title = study_title(study)
        caption, suffix = f"Study {label}" + (f": {title}" if title else ""), f" ({label})"
    parts = [{"caption": caption, "chapters": chapters}]
    failed = []
    for stage in STAGES:
        pages = []
        for cell in manifest["cells"]:
            if cell["stage"] != stage:
                continue
            nb = Path(cell["notebook"])
            if (book / nb).exists():
                pages.append({"file": str(nb.with_suffix("")), "title": cell["title"] or cell["run_id"]})
            elif (book / failed_path(nb)).exists():
                failed.append({"file": str(failed_path(nb).with_suffix("")),
                               "title": f"{stage}: {cell['title'] or cell['run_id']}"})
        if pages:
            parts.append({"caption": STAGE_CAPTIONS[stage] + suffix, "chapters": pages})
    if failed:
        parts.append({"caption": "Failed runs" + suffix, "chapters": failed})
    return parts


def write_toc(study: str) -> Path:
    header = ("# Generated by studylib from the cells of every study in this book (results/<study>/cells.json);\n"
              "# regenerated by every `studylib grid` / `studylib collect`, so edits here are lost.\n")
    return atomic_write_text(book_dir() / "_toc.yml", header + yaml.safe_dump(toc(study), sort_keys=False))


def write_report(study: str, log=None) -> int:
    """Report pages for the study, then the table of contents. Returns 0, or 1 if a page failed."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    sync_sources()
    pages = report_pages(study)
    with ThreadPoolExecutor(len(pages)) as pool:   # each page is its own kernel: run them side by side
        ok = all(pool.map(lambda page: execute_page(page, study, log), pages))
    path = write_toc(study)
    log(f"[report] table of contents: {path}; build the book with `jupyter-book build {book_dir()}`")
    return 0 if ok else 1

"""One book for every study: running one study never drops another's pages (issue 15, part 5)."""
import json

from studylib.study import book


def write_manifest(results, book_dir, study, cells, title=None, tmp=None):
    d = results / study
    d.mkdir(parents=True, exist_ok=True)
    grid = ""
    if title and tmp:
        grid = str(tmp / f"{study}.yaml")
        (tmp / f"{study}.yaml").write_text(f"study: {study}\ntitle: {title}\n")
    (d / "cells.json").write_text(json.dumps({"study": study, "grid": grid, "book": str(book_dir), "cells": cells}))


def train_cell(run_id, dataset="clothing10", model="mnasnet0_5"):
    return {"stage": "train", "run_id": run_id, "params": {"dataset": dataset, "model": model}, "title": run_id,
            "notebook": f"train/{run_id}.ipynb"}


def test_every_study_in_the_book_keeps_its_pages(tmp_path, monkeypatch):
    results, bk = tmp_path / "results", tmp_path / "book"
    monkeypatch.setenv("STUDYLIB_RESULTS", str(results))
    monkeypatch.setenv("STUDYLIB_BOOK", str(bk))
    write_manifest(results, bk, "quick", [train_cell("train-a")], "Six small models", tmp_path)
    write_manifest(results, bk, "cifar10", [train_cell("train-b", "cifar10", "smallvgg3")], "Study 003", tmp_path)
    write_manifest(results, tmp_path / "elsewhere", "other", [train_cell("train-c")])   # another book's study
    (bk / "train").mkdir(parents=True)
    for rid in ("train-a", "train-b", "train-c"):
        (bk / "train" / f"{rid}.ipynb").write_text("{}")
    for page, study in (("results", "quick"), ("results", "cifar10"), ("study003", "cifar10")):
        book.report_path(page, study).parent.mkdir(parents=True, exist_ok=True)
        book.report_path(page, study).write_text("{}")

    for just_ran in ("cifar10", "quick"):   # whichever study ran last, the book is the same
        toc = book.toc(just_ran)
        files = [c["file"] for p in toc["parts"] for c in p["chapters"]]
        assert files == ["reference_studies", "results/results-quick", "train/train-a",
                         "results/results-cifar10", "results/study003-cifar10", "train/train-b"]
        assert [p["caption"] for p in toc["parts"]] == [
            "Study quick: Six small models", "Training runs (quick)", "Study cifar10: Study 003", "Training runs (cifar10)"]


def test_a_study_alone_keeps_the_plain_captions(tmp_path, monkeypatch):
    results, bk = tmp_path / "results", tmp_path / "book"
    monkeypatch.setenv("STUDYLIB_RESULTS", str(results))
    monkeypatch.setenv("STUDYLIB_BOOK", str(bk))
    write_manifest(results, bk, "quick", [train_cell("train-a")])
    (bk / "train").mkdir(parents=True)
    (bk / "train" / "train-a.ipynb").write_text("{}")
    assert [p["caption"] for p in book.toc("quick")["parts"]] == ["The study", "Training runs"]


def test_the_study003_chapter_is_executed_only_for_studies_with_its_arms(tmp_path, monkeypatch):
    results, bk = tmp_path / "results", tmp_path / "book"
    monkeypatch.setenv("STUDYLIB_RESULTS", str(results))
    monkeypatch.setenv("STUDYLIB_BOOK", str(bk))
    write_manifest(results, bk, "quick", [train_cell("train-a", "clothing10", "smallvgg3_bn")])
    write_manifest(results, bk, "cifar10", [train_cell("train-b", "cifar10", "smallvgg1")])
    assert book.report_pages("quick") == list(book.REPORT_PAGES)
    assert book.report_pages("cifar10") == [*book.REPORT_PAGES, "study003"]

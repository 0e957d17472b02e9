"""The built book in a real headless Chromium: every page opens offline, figures load, no console errors,
and every table a reader sees fits its column and holds values."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser import needs_browser

ROOT = Path(__file__).resolve().parent.parent

# Every visible table: how wide it is against the element it sits in and the article's column, and how many
# of its body cells hold a value (a row's first cell is its label, so it does not count).
TABLES_JS = """() => Array.from(document.querySelectorAll('main table')).filter(t => t.offsetParent !== null).map(t => {
    const article = t.closest('article') || document.querySelector('main');
    const heading = Array.from(document.querySelectorAll('main h1, main h2, main h3'))
        .filter(h => h.compareDocumentPosition(t) & Node.DOCUMENT_POSITION_FOLLOWING).pop();
    const cells = Array.from(t.querySelectorAll('tbody tr'))
        .flatMap(r => Array.from(r.children).slice(1).filter(c => c.tagName === 'TD'));
    return {under: heading ? heading.innerText.trim() : '', header: t.querySelector('thead') ? t.querySelector('thead').innerText.slice(0, 120) : '',
            width: t.scrollWidth, container: t.parentElement.clientWidth,
            overhang: Math.round(t.getBoundingClientRect().right - article.getBoundingClientRect().right),
            cells: cells.length, values: cells.filter(c => c.innerText.trim() !== '').length};
})"""


def open_page(page, url: str) -> dict:
    """Load a page, then report its content figures, its tables and every console error or uncaught exception."""
    errors = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text} ({m.location.get('url')})") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} {r.failure}"))
    page.goto(url)
    if url.endswith("/index.html"):   # the book's index redirects to its first page
        page.wait_for_url("**/intro.html")
    page.wait_for_load_state("load")
    page.wait_for_timeout(300)   # let the theme's scripts run
    figures = page.evaluate("""Array.from(document.querySelectorAll('img[src*="_images/"]'))
        .map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}))""")
    return {"errors": errors, "figures": figures, "title": page.title(), "text": page.inner_text("main"),
            "tables": page.evaluate(TABLES_JS)}


def table_problems(tables: list[dict]) -> list[str]:
    """A table wider than its column (cut at the right edge or behind a scroll bar), or one with no values."""
    out = []
    for t in tables:
        where = f"table under '{t['under']}' ({t['header']!r})"
        if t["width"] > t["container"] + 1 or t["overhang"] > 1:
            out.append(f"{where} is {t['width']} px wide in a column of {t['container']} px")
        if t["values"] == 0:
            out.append(f"{where} has no values ({t['cells']} value cells, all empty)")
    return out


def book_pages(html: Path) -> list[Path]:
    """Every page of a built book: its HTML files, less Sphinx's own (index, search, the general index)."""
    skip = {"index.html", "search.html", "genindex.html"}
    return sorted(p for p in html.rglob("*.html") if p.name not in skip
                  and not any(part.startswith("_") for part in p.relative_to(html).parts))


@pytest.fixture(scope="session")
def book_with_cost(smoke_study, tmp_path_factory):
    """The smoke study's book with its cost page: a copy of the book, cost.ipynb run on the study, rebuilt."""
    import papermill as pm

    assert smoke_study.build.returncode == 0, smoke_study.build.stderr[-3000:]
    book = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(smoke_study.book, book, ignore=shutil.ignore_patterns("_build"))
    out = book / "cost" / "cost-smoke.ipynb"
    out.parent.mkdir(exist_ok=True)
    old = {k: os.environ.get(k) for k in smoke_study.env if k.startswith("STUDYLIB_")}
    os.environ.update({k: v for k, v in smoke_study.env.items() if k.startswith("STUDYLIB_")})
    try:
        pm.execute_notebook(str(ROOT / "notebooks" / "cost.ipynb"), str(out), parameters={"study": "smoke", "this_machine_price": 0.1},
                            cwd=str(ROOT), progress_bar=False, kernel_name="python3")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    toc["parts"].append({"caption": "Cost", "chapters": [{"file": "cost/cost-smoke", "title": "Cost"}]})
    (book / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    jb = Path(sys.executable).parent / "jupyter-book"
    done = subprocess.run([str(jb), "build", str(book)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return book / "_build" / "html"


@pytest.mark.slow
@needs_browser
def test_book_in_a_browser(browser, book_with_cost):
    html = book_with_cost
    pages = book_pages(html)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        # offline: the book must not reach for anything outside its folder
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort())
        index = open_page(context.new_page(), (html / "index.html").as_uri())
        opened = {str(f.relative_to(html)): open_page(context.new_page(), f.as_uri()) for f in pages}
    finally:
        context.close()
    # every part the grid made is there: the report pages, training runs (a failed one too), the cost page
    assert {"intro.html", "reference_studies.html", "results/results-smoke.html", "results/methods-smoke.html",
            "cost/cost-smoke.html"} <= set(opened)
    assert sum(name.startswith("train/") and not name.endswith(".failed.html") for name in opened) == 2
    assert sum(name.endswith(".failed.html") for name in opened) == 1
    for name, page in {"index": index, **opened}.items():
        assert page["errors"] == [], f"{name}: {page['errors']}"
        assert all(f["complete"] and f["width"] > 0 for f in page["figures"]), f"{name}: {page['figures']}"
    problems = {name: table_problems(page["tables"]) for name, page in opened.items()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    assert sum(len(page["tables"]) for page in opened.values()) >= 10   # the checks above saw tables
    assert "Small image classifiers, measured" in index["title"] and "How to read it" in index["text"]
    results = opened["results/results-smoke.html"]
    assert len(results["figures"]) == 3, results["figures"]   # accuracy per epoch, vs time, vs params
    assert "Results on clothing10 (test split)" in results["text"]
    train = next(page for name, page in opened.items() if name.startswith("train/train-clothing10-"))
    assert len(train["figures"]) >= 3, train["figures"]       # learning curves, confusion matrix, mistakes
    assert "Train one model" in train["text"]
    methods = opened["results/methods-smoke.html"]["text"]
    assert "CPU model" in methods and "PyTorch" in methods and "git commit" in methods   # the machines, with values
    cost = opened["cost/cost-smoke.html"]
    assert "The whole study cost" in cost["text"] and len(cost["figures"]) == 2
    assert "import " not in cost["text"]   # no code on the page


def test_table_checks_catch_a_wide_and_an_empty_table():
    wide = {"under": "x", "header": "", "width": 900, "container": 700, "overhang": 0, "cells": 4, "values": 4}
    cut = {**wide, "width": 700, "overhang": 200}
    empty = {**wide, "width": 300, "values": 0}
    labels_only = {**empty, "cells": 0}
    fine = {**wide, "width": 700}
    assert table_problems([fine]) == []
    assert [len(table_problems([t])) for t in (wide, cut, empty, labels_only)] == [1, 1, 1, 1]


def test_the_machines_table_shows_every_value():
    from studylib.views.methods import setups_table

    # CPU runs have no GPU name: the table once dropped those rows and showed its labels with no values
    cpu = {"status": "ok", "device": "cpu", "hardware": {"cpu_model": "AMD EPYC", "cpu_count": 2, "torch_threads": 2,
                                                        "gpu_name": None},
           "versions": {"python": "3.11.7", "torch": "2.15.0", "torchvision": "0.30.0", "timm": None, "studylib": "0.1.0",
                        "git_sha": "f5e3311"}}
    one = setups_table([cpu, cpu, {"status": "failed", "error": "boom"}])
    assert list(one.columns) == ["value"]
    assert one.loc["CPU model", "value"] == "AMD EPYC" and one.loc["GPU", "value"] == "none"
    assert one.loc["timm", "value"] == "unknown" and one.loc["git commit", "value"] == "f5e3311"
    assert one.loc["train runs", "value"] == "2" and (one["value"] != "").all()
    two = setups_table([cpu, {**cpu, "hardware": {**cpu["hardware"], "torch_threads": 1}}])
    assert list(two.columns) == ["setup 1", "setup 2"] and set(two.loc["PyTorch threads"]) == {"1", "2"}
    # runs across two commits: git's short form (a full sha in two columns overflowed the page)
    full = "0123456789abcdef0123456789abcdef01234567"
    commits = setups_table([cpu, {**cpu, "versions": {**cpu["versions"], "git_sha": full}}])
    assert set(commits.loc["git commit"]) == {"f5e3311", full[:12]}
    assert setups_table([]).empty

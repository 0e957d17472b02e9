"""The built book in a real headless Chromium: pages open offline, figures load, no console errors."""
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def open_page(page, url: str) -> dict:
    """Load a page, then report its content figures and every console error or uncaught exception."""
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
    return {"errors": errors, "figures": figures, "title": page.title(), "text": page.inner_text("main")}


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)")
def test_book_in_a_browser(smoke_study):
    from playwright.sync_api import sync_playwright

    assert smoke_study.build.returncode == 0, smoke_study.build.stderr[-3000:]
    html = smoke_study.html
    train_page = next(p for p in sorted((html / "train").glob("train-clothing10-*.html")))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context()
            # offline: the book must not reach for anything outside its folder
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort())
            index = open_page(context.new_page(), (html / "index.html").as_uri())
            results = open_page(context.new_page(), (html / "results" / "results-smoke.html").as_uri())
            train = open_page(context.new_page(), train_page.as_uri())
            # and the first page of every other part the grid made (methods, other stages, failed runs)
            others = {str(f.relative_to(html)): open_page(context.new_page(), f.as_uri())
                      for f in [html / "results" / "methods-smoke.html", html / "reference_studies.html"]
                      + [sorted(d.glob("*.html"))[0] for d in sorted(html.iterdir())
                         if d.is_dir() and d.name in ("data_prep", "tune", "deploy", "cost")]
                      + sorted((html / "train").glob("*.failed.html"))[:1]}
        finally:
            browser.close()
    for name, page in {"index": index, "results": results, "train": train, **others}.items():
        assert page["errors"] == [], f"{name}: {page['errors']}"
        assert all(f["complete"] and f["width"] > 0 for f in page["figures"]), f"{name}: {page['figures']}"
    assert "Small image classifiers, measured" in index["title"] and "How to read it" in index["text"]
    assert len(results["figures"]) == 3, results["figures"]   # accuracy per epoch, vs time, vs params
    assert "Results on clothing10 (test split)" in results["text"]
    assert len(train["figures"]) >= 3, train["figures"]       # learning curves, confusion matrix, mistakes
    assert "Train one model" in train["text"]

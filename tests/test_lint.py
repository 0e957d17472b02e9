"""Static checks in `make test`: ruff finds no error, and vulture finds no dead code in studylib.

Dead code means a function, class, method or variable of studylib that neither studylib, the
notebooks nor the tests use. Names that only frameworks call (pydantic validators and fields,
FastAPI routes, Dask plugins) are listed in tests/vulture_whitelist.py with the reason.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import vulture

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                          "studylib", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def notebook_code(folder: Path, out: Path) -> list[Path]:
    """The code cells of each notebook as a .py file (magics dropped), so vulture sees what notebooks use."""
    paths = []
    for nb in sorted(folder.glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        lines = [line for src in code for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))]
        path = out / f"{nb.stem}_notebook.py"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def schema_fields(folder: Path) -> set[tuple[str, int]]:
    """(file, line) of every field declared in a class body (pydantic models, dataclasses, model_config):
    a record's or a parameter's field is read by validation and serialisation, not by name."""
    out = set()
    for path in folder.rglob("*.py"):
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                for node in cls.body:
                    if isinstance(node, ast.AnnAssign) or (
                            isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "model_config" for t in node.targets)):
                        out.add((str(path), node.lineno))
    return out


def test_no_dead_code_in_studylib(tmp_path):
    v = vulture.Vulture(ignore_decorators=["@field_validator", "@model_validator", "@register_dataset", "@app.*", "@router.*"])
    v.scavenge([str(ROOT / "studylib"), str(ROOT / "tests"), str(ROOT / "benchmarks"),  # tests/vulture_whitelist.py too
                *map(str, notebook_code(ROOT / "notebooks", tmp_path))])
    fields = schema_fields(ROOT / "studylib")
    dead = [f"{Path(item.filename).relative_to(ROOT)}:{item.first_lineno}: {item.message}"
            for item in v.get_unused_code(min_confidence=60)
            if Path(item.filename).is_relative_to(ROOT / "studylib") and (str(item.filename), item.first_lineno) not in fields]
    assert not dead, "unused code (delete it, or list it in tests/vulture_whitelist.py with why):\n" + "\n".join(dead)

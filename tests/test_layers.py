"""studylib's layers, read from the source: imports point downwards, none hides in a function, no cycle.

The layers are written in studylib/__init__.py's docstring; LAYERS below is the same list as data.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "studylib"

# Lowest first. A module may import its own layer's modules and any layer below, never above.
LAYERS = [
    ("studylib", "studylib.errors", "studylib.paths", "studylib.util"),
    ("studylib.environment", "studylib.record", "studylib.uncertainty"),
    ("studylib.nets",),
    ("studylib.models", "studylib.data"),
    ("studylib.params",),
    ("studylib.train",),
    ("studylib.serve",),
    ("studylib.stages",),
    ("studylib.views",),
    ("studylib.study", "studylib.bench"),
    ("studylib.cli",),
]

# Imports that may sit inside a function: heavy or optional libraries that most callers never need.
# Each such import carries a comment on its line saying why (checked below).
LAZY_ALLOWED = ("matplotlib", "onnxruntime", "onnx", "onnxscript", "optuna", "dask", "distributed", "papermill",
                "scrapbook", "sklearn", "scipy", "torchvision", "timm", "fsspec", "uvicorn", "fastapi", "tqdm",
                "pynvml", "huggingface_hub", "plotly", "sqlalchemy", "IPython", "nbformat", "nbclient", "jupyter_book", "thop", "fvcore")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} is in no layer of tests/test_layers.py"
    return rank


def imported(node: ast.AST, module: str) -> list[str]:
    """The studylib modules an import statement names (`from studylib.x import y` may name module x.y)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "studylib"]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "studylib":
        out = []
        for a in node.names:
            sub = f"{node.module}.{a.name}"
            out.append(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else node.module)
        return out
    return []


def function_imports(tree: ast.Module):
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def edges() -> dict[str, set[str]]:
    out = {}
    for name, tree in modules().items():
        out[name] = {m for node in ast.walk(tree) for m in imported(node, name)} - {name}
    return out


def test_no_relative_imports():
    bad = [f"{name}:{n.lineno}" for name, tree in modules().items() for n in ast.walk(tree)
           if isinstance(n, ast.ImportFrom) and n.level]
    assert not bad, f"relative imports (write studylib.x): {bad}"


def test_imports_point_downwards():
    bad = []
    for name, targets in edges().items():
        for t in targets:
            if t != "studylib" and layer_of(t) > layer_of(name):
                bad.append(f"{name} (layer {layer_of(name)}) imports {t} (layer {layer_of(t)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_studylib_import_inside_a_function():
    bad = [f"{name}:{node.lineno}" for name, tree in modules().items() for node in function_imports(tree)
           if imported(node, name)]
    assert not bad, f"studylib imports inside functions (move them to the top): {bad}"


def test_lazy_imports_are_heavy_optional_libraries_with_a_reason():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in function_imports(ast.parse("\n".join(lines))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            top = {n.split(".")[0] for n in names}
            line = lines[node.lineno - 1]
            if top == {"studylib"}:
                continue  # reported by the test above
            if not top <= set(LAZY_ALLOWED) or "#" not in line:
                bad.append(f"{module_name(path)}:{node.lineno}: {line.strip()}")
    assert not bad, ("imports inside functions must be heavy optional libraries "
                     f"({', '.join(LAZY_ALLOWED)}) with a one-line reason as a comment:\n" + "\n".join(bad))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_module_says_its_job_and_stays_small(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path} has no docstring saying its one job"
    lines = len(path.read_text().splitlines())
    assert lines < 400, f"{path} has {lines} lines; split it by job (under 400)"

"""The package's layers: no module imports a layer above its own (see docs/architecture.md).

A module may import its own package and any package of a lower layer. Imports inside functions count too.
"""

import ast
from pathlib import Path

import kmim

LAYERS = [
    {"__init__", "errors", "argtypes", "progress"},
    {"config", "runinfo", "paths", "digest", "spec", "dist"},
    {"data", "models", "metrics", "tokenizers", "tracking", "runs"},
    {"engine"},
    {"eval"},
    {"fit"},
    {"resolve", "theory"},
    {"launch"},
    {"studies"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
ROOT = Path(kmim.__file__).parent


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "kmim" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kmim":  # `from kmim import x`
                out.update(f"kmim.{a.name}" for a in node.names)
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if _top(m) is not None}


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py")
        for module in _imports(path):
            other = _top(module)
            if other == own or other not in LAYER_OF:
                continue
            if LAYER_OF[other] >= LAYER_OF[own]:
                bad.append(f"{rel} imports {module} ({other}, layer {LAYER_OF[other]} >= {LAYER_OF[own]})")
    return bad


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py")}
    assert packages | modules <= set(LAYER_OF), sorted((packages | modules) - set(LAYER_OF))


def test_no_import_runs_up_a_layer():
    assert violations() == []


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """A lower layer (tokenizers) importing a higher one (engine) is reported."""
    pkg = tmp_path / "kmim"
    (pkg / "tokenizers").mkdir(parents=True)
    (pkg / "engine").mkdir()
    (pkg / "tokenizers" / "x.py").write_text("def f():\n    from kmim.engine.loop import run_epoch\n")
    (pkg / "engine" / "y.py").write_text("from kmim.tokenizers import Tokenizer\n")
    monkeypatch.setattr("tests.test_layers.ROOT", pkg)
    assert violations() == ["tokenizers/x.py imports kmim.engine.loop (engine, layer 3 >= 2)"]

"""Interfaces stay readable at the call site: no function in kmim/ takes more than three positional parameters
(self and cls not counted); the rest are keyword-only. `nn.Module.forward` is exempt (modules are called
positionally by torch)."""

import ast
from pathlib import Path

KMIM = Path(__file__).resolve().parents[1] / "kmim"


def _too_positional(path: Path, root: Path = KMIM.parent) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "forward":
            args = node.args
            pos = [a.arg for a in args.posonlyargs + args.args if a.arg not in ("self", "cls")]
            if len(pos) > 3 and args.vararg is None:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}({', '.join(pos)})")
    return out


def test_no_function_takes_more_than_three_positional_parameters():
    found = [hit for path in sorted(KMIM.rglob("*.py")) for hit in _too_positional(path)]
    assert found == [], "make the parameters after the third keyword-only (`*,`):\n" + "\n".join(found)


def test_the_check_finds_a_four_positional_function(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(a, b, c, d):\n    return a\n\n\ndef g(a, b, c, *, d):\n    return a\n")
    assert _too_positional(bad, tmp_path) == ["bad.py:1 f(a, b, c, d)"]

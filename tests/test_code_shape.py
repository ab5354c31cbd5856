"""Code a newcomer can change without fear (issue #28): no function longer than ~50 lines or taking more than
6 positional parameters, unless a comment on its `def` line says why. Checked on every Python source of the
package: lmforge/ (its node_modules aside), flows/ and tasks/."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

CHECKED = ["lmforge", "flows", "tasks"]
MAX_LINES, MAX_POSITIONAL = 50, 6


def oversized(path: Path) -> list[str]:
    """`file:line name (why)` for each function past a bound whose def line carries no `#` comment."""
    text = path.read_text(encoding="utf-8")
    lines, found = text.splitlines(), []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = node.args.posonlyargs + node.args.args
        positional = len(args) - (1 if args and args[0].arg in ("self", "cls") else 0)
        length = node.end_lineno - node.lineno + 1
        header = lines[node.lineno - 1:node.body[0].lineno - 1]  # the def line(s), before the body
        if (length > MAX_LINES or positional > MAX_POSITIONAL) and not any("#" in h for h in header):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines, {positional} "
                         f"positional)")
    return found


def files() -> list[Path]:
    out = []
    for entry in CHECKED:
        p = REPO / entry
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return [p for p in out if "node_modules" not in p.parts]


def test_functions_are_short_and_take_few_positional_parameters():
    assert [bad for path in files() for bad in oversized(path)] == []


def test_the_shape_check_finds_a_long_function_with_many_parameters(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    bad = REPO / "tests" / f".shape-probe-{id(tmp_path)}.py"  # inside REPO, as the checked files are
    bad.write_text(f"def f(a, b, c, d, e, f, g):\n{body}\n\n\ndef ok(a, b, c, d, e, f, g):  # 7: why\n    pass\n")
    try:
        assert [s.split(" ", 1)[1] for s in oversized(bad)] == ["f (61 lines, 7 positional)"]
    finally:
        bad.unlink()

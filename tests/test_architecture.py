"""The layering docs/architecture.md describes, checked on the source: each package imports only the layers
below it, no import cycles (lazy imports inside functions count too), the runtime imports nothing but
onnxruntime, numpy, tokenizers and the standard library, Prefect only where orchestration lives, tasks stay
thin, and every module is in docs/architecture.md."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGES = ("lmforge", "tasks", "flows")  # tasks/ and flows/ install as lmforge.tasks and lmforge.flows
# what each layer may import (besides itself), lowest layer first; an arrow may only point down
_BASE = {"core", "runtime", "data", "models"}
LAYERS = {
    "core": set(),
    "runtime": {"core"},
    "data": {"core"},
    "models": {"core"},
    "training": {"core", "data", "models", "runtime"},
    "export": {"core", "data", "models", "runtime", "training"},
    "registry": _BASE | {"training", "export"},
    "web": {"core", "runtime"},
    "serving": {"core", "runtime"},
    "ops": _BASE | {"training", "export", "registry"},
    "tasks": _BASE | {"training", "export", "registry", "ops"},
    "flows": _BASE | {"training", "export", "registry", "ops", "tasks"},
    "cli": _BASE | {"training", "export", "registry", "ops", "tasks", "flows", "web", "serving"},
}
RUNTIME_THIRD_PARTY = {"onnxruntime", "numpy", "tokenizers"}
# Prefect's home: the tasks and flows, and the library modules that drive a Prefect server
PREFECT_MODULES = {"lmforge.ops.orchestration", "lmforge.ops.doctor", "lmforge.ops.schedule", "lmforge.ops.runner",
                   "lmforge.ops.alerts", "lmforge.ops.follow"}
TASK_BODY_MAX_LINES = 25  # a task logs and hands on; the work is a library function


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if pkg != "lmforge":
                parts = ("lmforge", *parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Every module name this file imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for guard in [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]:
        guard.body = []  # annotations only: not imported when the program runs
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for imp in imports_of(name, path):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not name.startswith(imp + "."):  # a package's own __init__ is not a cycle
                targets.add(imp)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


def layer(module: str) -> str:
    """lmforge.data.prepare -> data; lmforge.cli -> cli; lmforge (the package's __init__) -> core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"


def test_each_package_imports_only_the_layers_below_it():
    mods = modules()
    assert {layer(m) for m in mods} == set(LAYERS), "a package with no layer rule: add it to LAYERS and the docs"
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if layer(b) != layer(a) and layer(b) not in LAYERS[layer(a)]]
    assert wrong == []


def test_the_layer_rule_finds_an_upward_import():
    edges = {"lmforge.core.config": {"lmforge.data.archive"}, "lmforge.data.archive": set()}
    assert [(a, b) for a, ts in edges.items() for b in ts if layer(b) not in LAYERS[layer(a)] | {layer(a)}] == [
        ("lmforge.core.config", "lmforge.data.archive")]


def test_every_module_is_in_docs_architecture():
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for name, path in modules().items():
        if path.name == "__init__.py" and path.stat().st_size < 400:  # a package docstring, no code
            continue
        rel = path.relative_to(REPO).as_posix()
        if f"`{rel}`" not in doc:
            missing.append(rel)
    assert missing == [], "modules missing from docs/architecture.md's module table"


def test_the_runtime_imports_only_onnxruntime_numpy_tokenizers_and_the_standard_library():
    """Followed through every lmforge module the runtime reaches (lmforge.core.atomic, say)."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    mods, edges = modules(), graph()
    todo = [m for m in mods if m == "lmforge.runtime" or m.startswith("lmforge.runtime.")]
    reached = set(todo)
    while todo:
        name = todo.pop()
        for imp in imports_of(name, mods[name]):
            top = imp.split(".")[0]
            assert top in stdlib | RUNTIME_THIRD_PARTY | {"lmforge"}, f"{name} imports {imp}"
        for dep in edges[name] - reached:
            reached.add(dep)
            todo.append(dep)
    assert {"lmforge.runtime.generator", "lmforge.runtime.session"} <= reached


def test_importing_the_runtime_loads_no_torch_and_no_prefect():
    probe = ("import sys, lmforge.runtime, lmforge.runtime.generator; "
             "print(sorted(m for m in ('torch', 'prefect', 'mlflow', 'pandas', 'onnx') if m in sys.modules))")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert got.stdout.strip() == "[]"


def test_prefect_is_imported_only_by_tasks_flows_and_the_orchestration_modules():
    for name, path in modules().items():
        if any(imp.split(".")[0] == "prefect" for imp in imports_of(name, path)):
            assert layer(name) in ("tasks", "flows") or name in PREFECT_MODULES, name


def test_tasks_are_thin():
    for path in (REPO / "tasks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(
                    "task" in ast.unparse(d) for d in node.decorator_list):
                lines = node.end_lineno - node.body[0].lineno + 1
                assert lines <= TASK_BODY_MAX_LINES, f"{path.name}:{node.name} is {lines} lines"


def test_docs_architecture_lists_every_config_key_where_its_section_is_read():
    import dataclasses
    import re

    from lmforge.core.config import SECTIONS, Config

    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `(\w+)` \| ([\w, ]+) \| (.+) \|$", doc, re.M)}
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name in SECTIONS}
    assert set(rows) == set(sections)
    for section, (keys, readers) in rows.items():
        fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
        assert {k.strip() for k in keys.split(",")} == fields, section
        for module in re.findall(r"`([\w/.]+\.py)`", readers):
            text = (REPO / module).read_text(encoding="utf-8")
            assert re.search(rf"\b(cfg|config)\.{section}\b", text), f"{module} does not read cfg.{section}"

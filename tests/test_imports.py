"""The import graph of the package has no cycle: every import counts, lazy and TYPE_CHECKING ones too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "layer_recycling"


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports} (``pkg.sub`` names; a package's ``__init__`` is never a target)."""
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for mod, f in mods.items():
        here = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]) if node.level else node.module
                targets = [f"{base.rstrip('.')}.{a.name}" for a in node.names]  # a module, or a name in ``base``
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod and "." in t:  # "layer_recycling" alone is the package's __init__
                    deps.add(t)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["layer_recycling.model"] >= {"layer_recycling.pipeline", "layer_recycling.fill"}
    assert cycles(graph) == []


def test_the_stages_never_import_the_model():
    graph = import_graph()
    for stage in ("fill", "serve", "loader", "stack", "pipeline", "saving", "surgery"):
        assert "layer_recycling.model" not in graph[f"layer_recycling.{stage}"], stage
    assert graph["layer_recycling.surgery"] == set()  # a leaf


def test_the_pipeline_imports_no_stage_and_examples_in_import_no_batch_code():
    graph = import_graph()
    stages = {f"layer_recycling.{m}" for m in ("fill", "serve", "loader", "stack", "columns", "model", "plan")}
    assert graph["layer_recycling.pipeline"] & stages == set()
    assert "layer_recycling.batches" not in graph["layer_recycling.data"]  # batches build on data, not back


def test_the_key_checks_live_in_the_pipeline():
    """Only the pipeline reads the digests stored beside user-keyed entries (``checks_many``) or says what goes
    beside an entry: the stages reach the key checks through its verbs, never around them."""
    readers = set()
    for f in PACKAGE.rglob("*.py"):
        if "stores" in f.relative_to(PACKAGE).parts:
            continue
        calls = {n.func.attr for n in ast.walk(ast.parse(f.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        if calls & {"checks_many", "put_many"}:
            readers.add(f.relative_to(PACKAGE).as_posix())
    assert readers == {"pipeline.py", "integrations/ray_data.py"}  # Ray's sink writes what its actors computed


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


EDGE = ("layer_recycling.bench", "layer_recycling.integrations")  # the harness and the framework modules


def core_modules(graph: dict[str, set[str]]) -> list[str]:
    """The library's own modules: all but the harness, the integrations and the command line on top of them."""
    return sorted(m for m in graph if not m.startswith(EDGE) and m != "layer_recycling.cli")


def test_the_core_imports_neither_the_harness_nor_the_integrations():
    graph = import_graph()
    core = core_modules(graph)
    assert len(core) > 30 and "layer_recycling.saving" in core and "layer_recycling.stores.disk" in core
    upward = {m: sorted(d for d in graph[m] if d.startswith(EDGE)) for m in core}
    assert {m: d for m, d in upward.items() if d} == {}
    assert "layer_recycling.bench.runner" not in graph["layer_recycling.cli"]  # fill and train run the library


def test_the_cli_imports_the_harness_only_inside_the_commands_that_use_it():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    named = [a.name for n in top_level for a in n.names] + [n.module or "" for n in top_level
                                                            if isinstance(n, ast.ImportFrom)]
    assert named and not [n for n in named if "bench" in n or "integrations" in n]


def test_importing_the_core_and_the_cli_loads_no_harness_or_integration_module_and_registers_no_exit_hook():
    """Run in a fresh interpreter: whatever this test session imported before does not count. An exit hook of
    ours (DiskStore's commit at exit was one, over every store) would outlive every call."""
    import subprocess
    import sys

    core = core_modules(import_graph())
    code = ("import atexit, importlib, sys\n"
            "ours, register = [], atexit.register\n"
            "def spy(f, *a, **k):\n"
            "    ours.append(getattr(f, '__module__', None) or '')\n"
            "    return register(f, *a, **k)\n"
            "atexit.register = spy\n"
            f"for m in {core + ['layer_recycling.cli']!r}: importlib.import_module(m)\n"
            "assert not [m for m in ours if m.startswith('layer_recycling')], ours\n"
            f"print(sorted(m for m in sys.modules if m.startswith({EDGE!r})))")
    env = {**__import__("os").environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

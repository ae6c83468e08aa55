"""The layout rules of docs/contributing.md, checked on the source: no import circles
between the project's modules (lazy imports inside functions count too), no private
name (``_x``) used across a module boundary, nothing at run time importing the
scripts/ folder, and the click commands in one place."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("longcat_convert", "reference", "parity", "fixes")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]):
    """module -> {imported project module: line}, and the private names each module takes
    from another module of the project."""
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    private: list[str] = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        graph[mod].setdefault(a.name, node.lineno)
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, node, path.name == "__init__.py")
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:                       # from package import module
                        graph[mod].setdefault(sub, node.lineno)
                        aliases[a.asname or a.name] = sub
                    elif target in mods:
                        graph[mod].setdefault(target, node.lineno)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            private.append(f"{mod}:{node.lineno} imports {target}.{a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != mod
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return graph, private


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
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
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_edges_removed(graph):
    # A package's __init__ importing its own submodules is not a circle of the design.
    return {m: {t: ln for t, ln in deps.items() if not (t.startswith(m + ".") or m.startswith(t + "."))}
            for m, deps in graph.items()}


def test_no_import_circles():
    graph, _ = _imports(_modules())
    assert _cycles(_package_edges_removed(graph)) == []


def test_no_private_name_crosses_a_module_boundary():
    _, private = _imports(_modules())
    assert private == []


def test_nothing_installed_imports_the_scripts_folder():
    hits = []
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            hits += [f"{mod}:{node.lineno} {n}" for n in names if n == "scripts" or n.startswith("scripts.")]
    assert hits == []


def test_nothing_installed_loads_a_module_by_file_path():
    """Modules are imported by name (golden-check's upstream adapter is parity/upstream.py)."""
    hits = [f"{mod}: {word}" for mod, path in _modules().items() for word in ("spec_from_file_location",
                                                                             "SourceFileLoader", "run_path")
            if word in path.read_text()]
    assert hits == []


# The reference describes the original model by itself: from the converter it takes only
# the shared strict reader and the error type, never the mapping table it is checked against.
REFERENCE_MAY_USE = {"longcat_convert.errors", "longcat_convert.shards", "longcat_convert.jsonfile"}


def test_the_reference_stands_alone():
    graph, _ = _imports(_modules())
    used = {f"{mod} -> {dep}" for mod, deps in graph.items() if mod.split(".")[0] == "reference"
            for dep in deps if dep.split(".")[0] in ("longcat_convert", "parity", "fixes")
            and dep not in REFERENCE_MAY_USE}
    assert used == set()


def test_every_click_command_lives_in_longcat_convert_commands():
    places = []
    for mod, path in _modules().items():
        text = path.read_text()
        if "@click.command" in text or "@cli.command" in text:
            places.append(mod)
    assert places and all(m.startswith("longcat_convert.commands.") for m in places), places


def test_the_checks_above_can_fail(tmp_path):
    """A planted circle and a planted private import are found."""
    graph = {"a": {"b": 1}, "b": {"a": 2}, "c": {}}
    assert _cycles(graph) == [["a", "b"]]
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "x.py").write_text("from .y import _hidden\n")
    (pkg / "y.py").write_text("import p.x as x\nv = x._z\n")
    mods = {"p.x": pkg / "x.py", "p.y": pkg / "y.py"}
    g, private = _imports(mods)
    assert g["p.x"] == {"p.y": 1} and len(private) == 2


IMPORT_ALL = """
import importlib, json, os, sys
import torch
names = sys.argv[1:]
env, threads, dtype = dict(os.environ), torch.get_num_threads(), torch.get_default_dtype()
for m in names:
    importlib.import_module(m)
print(json.dumps({"env": {k: [env.get(k), os.environ.get(k)] for k in set(env) | set(os.environ)
                          if env.get(k) != os.environ.get(k)},
                  "threads": [threads, torch.get_num_threads()], "dtype": [str(dtype), str(torch.get_default_dtype())],
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("fastvideo", "triton", "diffusers"))}))
"""


def test_importing_a_module_changes_nothing():
    """Importing every module of the project (in a fresh process) sets no environment variable,
    changes no torch setting and imports neither FastVideo nor triton nor diffusers, so nothing of
    theirs is patched: a run sets up what it needs when it starts (parity.native.prepare_process)."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL, *sorted(_modules())], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["env"] == {} and seen["heavy"] == []
    assert seen["threads"][0] == seen["threads"][1] and seen["dtype"][0] == seen["dtype"][1]

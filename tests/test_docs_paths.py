"""Docs and docstrings name only what exists: every repository path written in README.md,
docs/, the folders' READMEs and the docstrings of the project's Python files is there, every
relative link of a page resolves, and docs/engine.md names every module of the engine
(parity/) and of fixes/."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("longcat_convert", "reference", "parity", "fixes", "scripts", "tests", "bench", "golden", "docs",
       "requirements", ".ci")
# a path of this repository: a top-level folder, then names; placeholders (<x>, {i}, *, DIR) are not paths
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w.+-]+(?:/[\w.+-]+)*/?)(?![\w.+*<{|-])" % "|".join(re.escape(t) for t in TOP))
PLACEHOLDER = re.compile(r"(^|/)[A-Z][A-Z_]+(\.|/|$)")        # CASE.safetensors, DIR/...
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md")),
         *sorted(ROOT.glob("golden/*/README.md"))]
SOURCES = sorted(p for top in ("longcat_convert", "reference", "parity", "fixes", "scripts", "bench", "tests")
                 for p in (ROOT / top).rglob("*.py"))


def named_paths(text: str) -> set[str]:
    return {m.rstrip(".").rstrip("/") for m in PATH.findall(text) if not PLACEHOLDER.search(m)}


def exists(p: str) -> bool:
    """There, or a case named by its stem (``cases/t2v`` for t2v.safetensors + t2v.json)."""
    path = ROOT / p
    return path.exists() or any(path.parent.glob(path.name + ".*"))


def missing(paths) -> list[str]:
    return sorted(p for p in paths if not exists(p))


def docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                 ast.ClassDef))]
    return "\n".join(d for d in (ast.get_docstring(n, clean=False) for n in nodes) if d)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_path_a_page_names_exists(page):
    text = page.read_text()
    assert missing(named_paths(text)) == []
    links = [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
    assert sorted(t for t in links if not (page.parent / t).exists()) == []


def test_every_path_a_docstring_names_exists():
    bad = {str(p.relative_to(ROOT)): missing(named_paths(docstrings(p))) for p in SOURCES}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_engine_page_names_every_module():
    text = (ROOT / "docs" / "engine.md").read_text()
    modules = [p for top in ("parity", "fixes") for p in sorted((ROOT / top).glob("*.py")) if p.name != "__init__.py"]
    assert [str(p.relative_to(ROOT)) for p in modules if f"`{p.relative_to(ROOT)}`" not in text
            and f"`{p.name}`" not in text] == []


def test_the_checks_above_can_fail(tmp_path):
    assert named_paths("see parity/distributed.py and `parity/report.py`, not DIR/pictures/x.png") == {
        "parity/distributed.py", "parity/report.py"}
    assert missing({"parity/distributed.py", "parity/report.py"}) == ["parity/distributed.py"]
    f = tmp_path / "m.py"
    f.write_text('"""Uses parity/trajectory.py."""\ndef f():\n    """and reference/nothere.py"""\n')
    assert missing(named_paths(docstrings(f))) == ["parity/trajectory.py", "reference/nothere.py"]

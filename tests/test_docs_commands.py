"""Every `longcat-convert` command written in README.md and docs/*.md runs as written.

Commands are read from the pages (fenced blocks, and inline code that carries
arguments); each page's commands run in its order, in a scratch working directory
that holds the bundled `golden/` and the state `make demo` leaves
(`out/tiny-a-native`), so a command that only works from one folder, or after
another page's commands, fails here. A command exits 0 unless its line says
`# exits 1`. Commands that need what CI does not have are skipped by name, with the
reason: placeholders (SOURCE, CASE, ...), hub ids, CUDA, and `gate` (CI runs it as
`make gate` right after this suite)."""
from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from parity_support import ROOT, cli, needs_native

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_PREFIX = re.compile(r"^(?:\.venv/bin/)?longcat-convert\s+")
_PLACEHOLDER = re.compile(r"\b(SOURCE|CONVERTED|OUTPUT|NATIVE|CHECKPOINT|CASE|FILE|DIR|PATH|REV|KNOWN_ID|"
                          r"YOUR_GOLDEN|N|S|T,H,W)\b|\[|\.\.\.|<")


def _commands(page: Path) -> list[tuple[str, int]]:
    """(command line, expected exit code) in page order."""
    text = page.read_text()
    out = []
    for block in re.findall(r"```(?:sh|bash|text)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if _PREFIX.match(line):
                cmd, _, comment = line.partition("#")
                out.append((" ".join(cmd.split()), 1 if "exits 1" in comment else 0))
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:\.venv/bin/)?longcat-convert [^`]+)`", outside):
        out.append((" ".join(span.split()), 0))
    return out


def _skip_reason(cmd: str) -> str | None:
    args = _PREFIX.sub("", cmd)
    if not args or len(args.split()) == 1 and args.split()[0] in ("convert", "verify", "golden-check", "parity",
                                                                  "gate", "plan", "export", "features"):
        return "a command name, not a command"
    if _PLACEHOLDER.search(args):
        return "a synopsis with placeholders"
    if "meituan-longcat/" in args or "ci-golden" in args:
        return "needs the released weights or a team's golden folder"
    if "--device cuda" in args:
        return "needs CUDA (tests marked gpu run it on a GPU)"
    if args.split()[0] == "gate":
        return "the gate runs in CI as `make gate` (.ci/run), right after this suite"
    return None


def _expand(word: str) -> list[str]:
    """The shell's brace expansion of one word (``cases/{a,b}.safetensors``)."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not m:
        return [word]
    return list(itertools.chain.from_iterable(
        _expand(word[: m.start()] + alt + word[m.end():]) for alt in m.group(1).split(",")))


def _argv(cmd: str) -> list[str]:
    return [w for word in shlex.split(_PREFIX.sub("", cmd)) for w in _expand(word)]


def test_commands_are_found_and_the_runnable_ones_are_many():
    found = [c for p in PAGES for c, _ in _commands(p)]
    runnable = [c for c in found if _skip_reason(c) is None]
    assert len(found) >= 25 and len(runnable) >= 10, runnable


@pytest.fixture
def scratch(tmp_path, monkeypatch, converted):
    """A working directory with golden/ and what `make demo` made (out/tiny-a-native)."""
    (tmp_path / "golden").symlink_to(ROOT / "golden")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny-a-native").symlink_to(converted["tiny-a"])
    monkeypatch.chdir(tmp_path)
    return tmp_path


@needs_native
@pytest.mark.parametrize("page", [p for p in PAGES if any(_skip_reason(c) is None for c, _ in _commands(p))],
                         ids=lambda p: p.name)
def test_every_command_of_the_page_runs_as_written(page, scratch):
    failures = []
    for cmd, want in _commands(page):
        if _skip_reason(cmd) is not None:
            continue
        argv = _argv(cmd)
        if argv[:1] == ["convert"] and "--force" not in argv and Path(argv[2]).exists():
            # the page converts into a folder an earlier line (or make demo) made: as a user
            # following the page from a clean checkout would not have it, start from scratch
            import shutil
            p = Path(argv[2])
            p.unlink() if p.is_symlink() else shutil.rmtree(p)
        rc = cli(*argv)
        if rc != want:
            failures.append(f"{page.name}: `{cmd}` exited {rc}, expected {want}")
    assert failures == []

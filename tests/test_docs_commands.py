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


# ----------------------------------------------------------------------------- one vocabulary

def _synopsis() -> dict[str, str]:
    """README's synopsis block: command name -> its lines joined."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```text\n(.*?)```", text, re.S) if "longcat-convert plan SOURCE" in b)
    out: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        m = re.match(r"^longcat-convert (fixes \S+|\S+)", line)
        if m:
            name = m.group(1)
        if name:
            out[name] = out.get(name, "") + " " + line.split("#")[0]
    return out


def _commands_by_name():
    from longcat_convert.cli import _register_all, cli as group
    _register_all()
    import click
    out = {}
    for n in group.list_commands(None):
        cmd = group.get_command(None, n)
        if isinstance(cmd, click.Group):          # `fixes export|build|list`: each a command of its own
            out.update({f"{n} {s}": cmd.get_command(None, s) for s in cmd.list_commands(None)})
        else:
            out[n] = cmd
    return out


def test_the_readme_synopsis_is_the_commands_own_options():
    """Every command is in README's synopsis with every option it has (and no other), each
    choice list written as the command's own choices."""
    import click
    syn = _synopsis()
    cmds = _commands_by_name()
    assert set(syn) == set(cmds), (set(syn) ^ set(cmds))
    for name, cmd in cmds.items():
        written = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b", syn[name]))
        own = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
        assert written == own, (name, "README lacks", sorted(own - written), "README adds", sorted(written - own))
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.type, click.Choice):
                m = re.search(re.escape(p.opts[0]) + r" ([\w.|:-]+\|[\w.|:-]+)", syn[name])
                if m:
                    assert m.group(1).split("|") == list(p.type.choices), (name, p.opts[0], m.group(1))


def test_every_command_speaks_the_same_words():
    """The same dtype spellings on every command with --dtype, -q/--quiet with help on every
    command, --device worded the same wherever it is."""
    import click
    from longcat_convert import dtypes
    devices, quiet = set(), set()
    for name, cmd in _commands_by_name().items():
        opts = {p.name: p for p in cmd.params if isinstance(p, click.Option)}
        q = next((p for p in opts.values() if "--quiet" in p.opts), None)
        assert q is not None and "-q" in q.opts and q.help, name
        quiet.add(name)
        if "dtype" in opts:
            assert list(opts["dtype"].type.choices) == list(dtypes.CHOICES), name
        if "device" in opts:
            devices.add(opts["device"].help)
    assert len(devices) == 1 and "cpu, cuda or cuda:N" in next(iter(devices)), devices
    assert len(quiet) == 11


def test_convert_takes_every_spelling_and_records_one(tmp_path):
    import json
    for spelling, code in (("bfloat16", "BF16"), ("bf16", "BF16"), ("float16", "F16")):
        out = tmp_path / spelling
        assert cli("convert", ROOT / "golden" / "tiny-a", out, "--dtype", spelling, "--quiet", "--no-fsync") == 0
        rec = json.loads((out / "conversion.json").read_text())
        assert rec["options"]["dtype"] == {"BF16": "bf16", "F16": "fp16"}[code]
        header = (out / "transformer").glob("*.safetensors")
        first = next(iter(header)).read_bytes()
        n = int.from_bytes(first[:8], "little")
        meta = json.loads(first[8:8 + n])
        assert any(v.get("dtype") == code for k, v in meta.items() if k != "__metadata__")


def test_one_dtype_spelling_table_in_the_packages():
    """No module but longcat_convert/dtypes.py maps dtype spellings (fp32 -> float32 and the
    like): the other places call it."""
    pat = re.compile(r"""["'](?:fp32|bf16|fp16|float32|bfloat16|float16)["']\s*:\s*(?:["'](?:fp32|bf16|fp16|float32|"""
                     r"""bfloat16|float16|F32|BF16|F16)["']|torch\.)""")
    found = []
    for pkg in ("longcat_convert", "parity", "reference", "fixes"):
        for f in (ROOT / pkg).rglob("*.py"):
            if f == ROOT / "longcat_convert" / "dtypes.py":
                continue
            found += [f"{f.relative_to(ROOT)}:{i}" for i, line in enumerate(f.read_text().splitlines(), 1)
                      if pat.search(line)]
    assert found == [], found

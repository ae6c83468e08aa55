"""The fixes as a patch series for FastVideo, generated at run time from FastVideo's own source.

The repository holds no FastVideo code. Each fix (fixes/<name>.py) declares its
upstream change as a ``Patch``: a pull-request description and ``Edit``s, each an
anchor in a FastVideo file -- the function or class by name (``"<module>"`` for the
file), plus the short expression it replaces (or the line it goes before or after) --
and our replacement. New files (a test in FastVideo's test layout, say) are
``NewFile``s. ``series(root)`` reads FastVideo's tree at ``root`` (the folder that
holds ``fastvideo/``), applies the patches in order in memory and returns one unified
diff per patch, each computed against the tree as the patches before it leave it, so
the series applies in order with ``patch -p1`` or ``git apply`` at ``root``.

``build_patched(dest, root)`` writes a patched COPY of ``root/fastvideo`` into
``dest/fastvideo`` (the tree at ``root`` is only read) and ``dest/PATCHES.json`` naming
the patches; ``fixes.in_fastvideo()`` reads that file beside the imported package.

Refusals (one line, BadInput, exit 2): a root without ``fastvideo/``, a FastVideo
version the series is not written for, a file a patch names that is not there, an
anchor or expression not found (or found twice).
"""
from __future__ import annotations

import ast
import difflib
import json
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from longcat_convert.errors import BadInput

# The FastVideo trees the series is written for: the release (fastvideo/version.py 0.2.1) and
# the repository's HEAD at commit 2f3d40740 (2026-08-21), whose version.py still says 0.2.0.
SUPPORTED_VERSIONS = ("0.2.1", "0.2.0")
HEAD_COMMIT = "2f3d4074064e4d86f99dc784ebbaa296e6f5925f"
MARKER = "PATCHES.json"


@dataclass(frozen=True)
class Edit:
    file: str            # path from the root: "fastvideo/models/dits/longcat.py"
    anchor: str          # "Class.method", "function", "Class" or "<module>"
    find: str            # the lines it replaces (or goes before/after), matched without their indentation
    replace: object      # ours (a str, or a function -> str: the source of a function of ours), indented
                         # relative to the first found line ("after-scope": to the anchor's)
    where: str = "replace"      # "replace" | "before" | "after" (the statement that starts on the last line of
                                # ``find``; earlier lines, a comment say, only pin which one) |
                                # "guard" (``replace`` is an ``if ...: ... else:`` put over the statement that
                                # starts with ``find``, which goes under the ``else``) | "after-scope" |
                                # "span" (``find`` is two lines, the first of the span and the start of its last
                                # statement: everything from the one to that statement's end is replaced)


@dataclass(frozen=True)
class NewFile:
    file: str
    text: str


@dataclass(frozen=True)
class Patch:
    name: str                      # the fix's name (fixes.FIXES)
    title: str                     # the pull request's title
    description: str               # its body: what, why, evidence, what it leaves alone
    edits: tuple = ()
    new_files: tuple = ()
    test: str = ""                 # the FastVideo test file it adds (one of new_files)
    after: tuple = ()              # patches it applies after (when FIXES lists it earlier)


@dataclass
class Result:
    number: int
    patch: Patch
    text: str                      # the .patch file: header (the PR description) + unified diffs
    files: dict = field(default_factory=dict)      # path -> new text (after this patch)

    @property
    def filename(self) -> str:
        return f"{self.number:04d}-{self.patch.name}.patch"


def fastvideo_version(root: Path) -> str:
    p = Path(root) / "fastvideo" / "version.py"
    if not (Path(root) / "fastvideo").is_dir():
        raise BadInput(f"{root}: no fastvideo/ folder there; --against takes the folder that holds fastvideo/")
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", p.read_text()) if p.is_file() else None
    if m is None:
        raise BadInput(f"{p}: no __version__; the series is written for FastVideo "
                       f"{' / '.join(SUPPORTED_VERSIONS)} (HEAD {HEAD_COMMIT[:9]})")
    if m.group(1) not in SUPPORTED_VERSIONS:
        raise BadInput(f"{p}: FastVideo {m.group(1)}; the series is written for FastVideo 0.2.1 and the "
                       f"repository's HEAD {HEAD_COMMIT[:9]} (version.py 0.2.0)")
    return m.group(1)


def _scope(tree: ast.Module, anchor: str):
    """(first line, last line) of ``anchor`` (1-based, decorators included); None if absent."""
    if anchor == "<module>":
        return None
    nodes = tree.body
    found = None
    for part in anchor.split("."):
        found = next((n for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.name == part), None)
        if found is None:
            return False
        nodes = found.body
    first = min([found.lineno] + [d.lineno for d in found.decorator_list])
    return first, found.end_lineno


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _reindent(text: str, prefix: str) -> list[str]:
    lines = textwrap.dedent(text).strip("\n").split("\n")
    return [(prefix + ln) if ln.strip() else "" for ln in lines]


def apply_edit(text: str, edit: Edit, patch_name: str) -> str:
    """``text`` (the file as it stands) with ``edit`` made; refuses where the anchor is not there."""
    where = f"{patch_name}: {edit.file}: anchor {edit.anchor}"
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise BadInput(f"{where}: the file does not parse ({e.msg}, line {e.lineno})") from None
    lines = text.split("\n")
    span = _scope(tree, edit.anchor)
    if span is False:
        raise BadInput(f"{where}: not found (no such function or class in the file)")
    lo, hi = (1, len(lines)) if span is None else span
    replacement = edit.replace() if callable(edit.replace) else edit.replace
    if edit.where == "after-scope":
        prefix = _indent(lines[lo - 1])
        gap = [""] if prefix else ["", ""]          # PEP 8: two blank lines between top-level definitions
        new = lines[:hi] + gap + _reindent(replacement, prefix) + lines[hi:]
        return "\n".join(new)
    want = [ln.strip() for ln in textwrap.dedent(edit.find).strip("\n").split("\n")]
    def same(line: str, w: str) -> bool:          # a trailing comment of FastVideo's does not count
        line = line.strip()
        return line == w or (line.startswith(w) and line[len(w):].lstrip().startswith("#"))
    def found(lines_from: int, lines_to: int, want: list[str]) -> list[int]:
        return [i for i in range(lines_from, lines_to - len(want) + 1)
                if all(same(a, b) for a, b in zip(lines[i:i + len(want)], want))]
    first = want                                   # the lines that place the edit
    if edit.where == "span":
        if len(want) != 2:
            raise ValueError(f"{where}: a span's find is two lines, its first and its last statement's start")
        first, want = want[:1], want[1:]
    hits = found(lo - 1, hi, first)
    if len(hits) != 1:
        raise BadInput(f"{where}: {'expression not found' if not hits else 'expression found %d times' % len(hits)}"
                       f": {first[0][:60]!r}")
    i = hits[0]
    prefix = _indent(lines[i])
    body = _reindent(replacement, prefix) if replacement.strip() else []     # nothing: the lines go
    end = i + len(want)
    if edit.where == "span":                       # from the first line to the end of the statement that starts
        last = found(i + 1, hi, want)              # at the first match of the second, after it
        if not last:
            raise BadInput(f"{where}: expression not found after {first[0][:40]!r}: {want[0][:60]!r}")
        stmt = next((n for n in ast.walk(tree) if isinstance(n, ast.stmt) and n.lineno == last[0] + 1), None)
        if stmt is None:
            raise BadInput(f"{where}: {want[0][:60]!r} does not start a statement")
        return "\n".join(lines[:i] + body + lines[stmt.end_lineno:])
    if edit.where in ("after", "guard"):           # to the end of the statement that starts on find's last line
        start = i + len(want)                      # (1-based)
        stmt = next((n for n in ast.walk(tree) if isinstance(n, ast.stmt) and n.lineno == start), None)
        if stmt is None and edit.where == "guard":
            raise BadInput(f"{where}: {want[-1][:60]!r} does not start a statement")
        end = max(end, stmt.end_lineno) if stmt is not None else end     # "after" a parameter line: that line
    if edit.where == "replace":
        new = lines[:i] + body + lines[end:]
    elif edit.where == "before":
        new = lines[:i] + body + lines[i:]
    elif edit.where == "after":
        new = lines[:end] + body + lines[end:]
    elif edit.where == "guard":
        new = lines[:i] + body + [("    " + ln) if ln.strip() else ln for ln in lines[i:end]] + lines[end:]
    else:
        raise ValueError(f"{where}: where={edit.where!r}")
    return "\n".join(new)


def _diff(path: str, old: str | None, new: str) -> str:
    a = [] if old is None else old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    head = f"diff --git a/{path} b/{path}\n" + ("new file mode 100644\n" if old is None else "")
    out = []
    for ln in difflib.unified_diff(a, b, "/dev/null" if old is None else f"a/{path}", f"b/{path}", n=3):
        out.append(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n")
    return head + "".join(out) if out else ""


def _header(number: int, total: int, patch: Patch) -> str:
    return (f"From: longcat-convert <fixes/series.py>\nSubject: [PATCH {number}/{total}] {patch.title}\n\n"
            f"{textwrap.dedent(patch.description).strip()}\n\nFastVideo test: {patch.test or '(none)'}\n---\n")


def ordered(patches: list[Patch]) -> list[Patch]:
    """``patches`` in FIXES order, except that a patch comes after those its ``after`` names."""
    out, waiting, present = [], list(patches), {p.name for p in patches}
    while waiting:
        done = {p.name for p in out}
        ready = next(p for p in waiting if all(a in done or a not in present for a in p.after))
        out.append(ready)
        waiting.remove(ready)
    return out


def series(root: Path, names: list[str] | None = None) -> list[Result]:
    """The series for the FastVideo tree at ``root``: one Result per patch, in order."""
    import fixes
    root = Path(root)
    fastvideo_version(root)
    patches = ordered([f.patch for n, f in fixes.FIXES.items() if f.patch is not None and (names is None or n in names)])
    tree: dict[str, str | None] = {}
    results = []
    for k, p in enumerate(patches, 1):
        before: dict[str, str | None] = {}
        for e in p.edits:
            if e.file not in tree:
                f = root / e.file
                if not f.is_file():
                    raise BadInput(f"{p.name}: {e.file}: no such file in {root} (is it FastVideo's source tree?)")
                tree[e.file] = f.read_text()
            before.setdefault(e.file, tree[e.file])
            tree[e.file] = apply_edit(tree[e.file], e, p.name)
        for nf in p.new_files:
            if (root / nf.file).exists() or tree.get(nf.file) is not None:
                raise BadInput(f"{p.name}: {nf.file}: already exists in {root}; the series adds it")
            before[nf.file] = None
            tree[nf.file] = textwrap.dedent(nf.text).lstrip("\n")
        diffs = "".join(_diff(path, before[path], tree[path]) for path in before)
        results.append(Result(k, p, "", {path: tree[path] for path in before}))
        results[-1].text = diffs
    for r in results:
        r.text = _header(r.number, len(results), r.patch) + r.text + "-- \nlongcat-convert\n"
    return results


def export(dest: Path, root: Path) -> list[Path]:
    """Write the series into ``dest`` as NNNN-<fix>.patch -> the files written."""
    results = series(root)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results:
        p = dest / r.filename
        p.write_text(r.text)
        written.append(p)
    return written


def build_patched(dest: Path, root: Path, series_dir: Path | None = None) -> dict:
    """A patched copy of ``root/fastvideo`` in ``dest/fastvideo`` -> what PATCHES.json says.
    ``series_dir``: apply the NNNN-*.patch files there with ``patch -p1`` (refusing, with the
    patch and the file, where one does not apply) instead of the series computed here."""
    root, dest = Path(root), Path(dest)
    version = fastvideo_version(root)
    if (dest / "fastvideo").resolve() == (root / "fastvideo").resolve():
        raise BadInput(f"{dest}: would overwrite the FastVideo at {root}; name another folder")
    if series_dir is not None:
        files = sorted(Path(series_dir).glob("[0-9][0-9][0-9][0-9]-*.patch"))
        if not files:
            raise BadInput(f"{series_dir}: no NNNN-<fix>.patch files there (write them with `fixes export`)")
        results = None
    else:
        results = series(root)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".building"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(root / "fastvideo", tmp / "fastvideo", ignore=shutil.ignore_patterns("__pycache__"))
    try:
        if results is not None:
            for r in results:
                for path, text in r.files.items():
                    f = tmp / path
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(text)
            names = [r.filename for r in results]
        else:
            for f in files:
                apply_patch_file(f, tmp)
            names = [f.name for f in files]
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = {"source": str(root.resolve()), "version": version, "patches": names,
            "fixes": [re.sub(r"^\d{4}-|\.patch$", "", n) for n in names]}
    if (dest / "fastvideo").exists():
        shutil.rmtree(dest / "fastvideo")
    (tmp / "fastvideo").rename(dest / "fastvideo")
    (dest / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(tmp)
    return info


def apply_patch_file(patch_file: Path, root: Path) -> None:
    """``patch -p1`` of one .patch file at ``root``, checked first (--dry-run): one line naming
    the patch and the file where it does not apply."""
    import subprocess
    patch_file = Path(patch_file)
    text = patch_file.read_text(errors="replace")
    targets = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    if not targets:
        raise BadInput(f"{patch_file.name}: no file in it (+++ b/...); is it a unified diff?")
    for t in targets:
        if not t.startswith("fastvideo/"):
            raise BadInput(f"{patch_file.name}: {t}: not a path under fastvideo/ (the series patches FastVideo "
                           "at the folder that holds fastvideo/, with -p1)")
    for check in (True, False):
        cmd = ["patch", "-p1", "--batch", "--forward", "-d", str(root), "-i", str(patch_file.resolve())]
        run = subprocess.run(cmd + (["--dry-run"] if check else []), capture_output=True, text=True)
        if run.returncode != 0:
            current, bad = targets[0], None
            for line in (run.stdout + run.stderr).splitlines():
                m = re.match(r"(?:checking|patching) file (\S+)", line)
                if m:
                    current = m.group(1)
                if "FAILED" in line or "can't find file" in line or "No file to patch" in line \
                        or "Reversed (or previously applied)" in line:
                    bad = bad or (current, line.strip())
            where, why = bad or (current, (run.stdout + run.stderr).strip().splitlines()[-1:] or ["failed"])
            why = why if isinstance(why, str) else why[0]
            raise BadInput(f"{patch_file.name}: {where}: does not apply ({why})")


def patched_info(package_file: str | None) -> dict | None:
    """PATCHES.json beside the imported ``fastvideo`` package (``fastvideo.__file__``), or None
    for an unpatched FastVideo."""
    if not package_file:
        return None
    marker = Path(package_file).resolve().parent.parent / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except ValueError:
        return None


def _package_file() -> str | None:
    import importlib.util
    import sys
    mod = sys.modules.get("fastvideo")
    where = getattr(mod, "__file__", None) if mod is not None else None
    if where is None:
        try:
            spec = importlib.util.find_spec("fastvideo")
        except (ImportError, ValueError):
            spec = None
        where = spec.origin if spec is not None else None
    return where


def patched_fixes() -> list[str]:
    """The fixes whose patches the importable FastVideo holds ([] for stock)."""
    return list((patched_info(_package_file()) or {}).get("fixes", []))


def identity() -> dict:
    """Which FastVideo this process runs (for a report's environment): its version as its
    package says, where the package is, and the patches of this series it holds ("none"
    for stock FastVideo). Imports FastVideo's package only if it is already imported."""
    where = _package_file()
    if where is None:
        return {"fastvideo_path": None, "fastvideo_patches": None}
    root = Path(where).resolve().parent.parent
    try:
        version = fastvideo_version(root)
    except BadInput:
        version = None
    info = patched_info(where) or {}
    out = {"fastvideo_path": str(Path(where).resolve().parent),
           "fastvideo_patches": ", ".join(info.get("patches", [])) or "none (stock)"}
    if version is not None:
        out["fastvideo"] = version
    return out

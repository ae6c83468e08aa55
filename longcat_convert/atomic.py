"""All-or-nothing output folders: build in a hidden temporary folder beside
OUTPUT, rename it into place at the end, and remove it on any failure
(including Ctrl-C, SIGTERM and a full disk). A failure while writing -- an
OSError -- becomes a one-line BadInput (exit 2); an interruption becomes
Interrupted (exit 130)."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from .errors import BadInput, Interrupted


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    return a == b or b in a.parents


def check_output(output: Path, sources: list[Path], force: bool) -> Path:
    """Resolve OUTPUT and refuse the dangerous cases before anything is written."""
    out = output.expanduser().resolve()
    for src in sources:
        s = src.resolve()
        if _inside(out, s) or _inside(s, out):
            raise BadInput(f"OUTPUT {output}: must lie outside the source folder {src} (and not contain it)")
    if out.exists() or out.is_symlink():
        if not force:
            raise BadInput(f"OUTPUT {output}: already exists; choose another OUTPUT or pass --force to replace it")
        if not out.is_dir():
            raise BadInput(f"OUTPUT {output}: exists and is not a folder; remove it yourself")
    base = existing_ancestor(out.parent)
    if not base.is_dir():
        raise BadInput(f"OUTPUT {output}: {base} is not a folder")
    if not os.access(base, os.W_OK):
        raise BadInput(f"OUTPUT {output}: folder {base} is not writable")
    return out


def existing_ancestor(p: Path) -> Path:
    """``p`` or its nearest ancestor that exists (where missing parents will be created)."""
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


class AtomicFolder:
    """``with AtomicFolder(out) as tmp: ...write into tmp...`` then ``commit()``.

    Leaving the block without commit() (an exception, an interrupt) removes tmp. An interrupt
    (Ctrl-C, SIGTERM) that arrives once tmp has been renamed into place does not undo or
    misreport a complete output: the block ends normally (the command exits 0).
    """

    def __init__(self, output: Path, *, force: bool = False, fsync: bool = True):
        self.output = output
        self.force = force
        self.fsync = fsync
        self.tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
        self.committed = False
        self.committing = False

    @property
    def complete(self) -> bool:
        """OUTPUT is in place: committed, or interrupted after tmp's rename."""
        return self.committed or (self.committing and not self.tmp.exists() and self.output.is_dir())

    def __enter__(self) -> Path:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def _clear_stale(self) -> None:
        """Remove temporary folders left by runs that were killed outright (kill -9, power loss)."""
        prefix = f".{self.output.name}.partial-"
        for p in self.output.parent.glob(prefix + "*"):
            pid = p.name[len(prefix):]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except PermissionError:
                pass  # alive, someone else's

    def commit(self) -> None:
        self.committing = True
        if self.fsync:
            fsync_tree(self.tmp)
        old = None
        if self.output.exists():
            old = self.output.parent / f".{self.output.name}.replaced-{os.getpid()}"
            os.rename(self.output, old)
        os.rename(self.tmp, self.output)
        if self.fsync:
            fsync_dir(self.output.parent)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, KeyboardInterrupt) and self.complete:
            self.committed = True
            for old in self.output.parent.glob(f".{self.output.name}.replaced-{os.getpid()}"):
                shutil.rmtree(old, ignore_errors=True)
            return True                          # the output is whole: the interrupt came too late to stop it
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, BadInput):
            raise os_error(exc, self.output) from exc
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM via sigterm_as_interrupt
            raise Interrupted(f"{self.output}: interrupted while writing; nothing was left behind "
                              "and the source is untouched") from exc
        return False


def os_error(e: OSError, output: Path) -> BadInput:
    """An OSError while writing, as the one-line message the CLI prints (exit 2)."""
    where = f"{e.filename} (writing {output})" if e.filename else str(output)
    if e.errno == errno.ENOSPC:
        return BadInput(f"{where}: no space left on device; free some space (or use --components "
                        "link/skip) and retry; nothing was left behind")
    if e.errno == errno.EDQUOT:
        return BadInput(f"{where}: disk quota exceeded while writing {output}; nothing was left behind")
    return BadInput(f"{where}: {e.strerror or e}; nothing was left behind")

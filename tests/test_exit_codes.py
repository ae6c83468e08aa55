"""The exit-code contract, one mapping for every command (errors.invoke):
0 ok, 1 a check ran and failed, 2 bad input or usage (one line), 130 interrupted
(Ctrl-C or SIGTERM at any point, nothing half-written left behind)."""
from __future__ import annotations

import errno
import shutil

import pytest

from convert_support import TINY_A, leftovers, one_line, run, run_subprocess, tree_digest

GATE_MISSING = "gate"


@pytest.fixture
def model(tmp_path):
    return shutil.copytree(TINY_A, tmp_path / "model")


def test_ok_is_0(converted, tmp_path):
    rc, _, err = run("verify", TINY_A, converted["tiny-a"])
    assert rc == 0, err


def test_a_failed_check_is_1(converted, tmp_path):
    out = shutil.copytree(converted["tiny-a"], tmp_path / "native")
    shard = sorted((out / "transformer").glob("*.safetensors"))[0]
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0x01                      # one bit of one tensor
    shard.write_bytes(bytes(blob))
    rc, _, err = run("verify", TINY_A, out)
    assert rc == 1, err
    assert "failed:" in err


@pytest.mark.parametrize("argv", [
    ["convert", "{missing}", "{out}"], ["verify", "{missing}", "{out}"], ["export", "{missing}", "{out}"],
    ["plan", "{missing}"], ["golden-check", "{missing}", "{missing}/c.safetensors"],
    ["parity", "{missing}", "{missing}"], ["gate", "--golden", "{missing}", "--report", "{out}"],
], ids=lambda a: a[0])
def test_bad_input_is_2_and_one_line(tmp_path, argv):
    argv = [a.format(missing=tmp_path / "nope", out=tmp_path / "out") for a in argv]
    rc, _, err = run(*argv)
    assert rc == 2, err
    assert one_line(err).startswith("error:") and str(tmp_path) in err
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("argv", [["convert"], ["convert", "a", "b", "--dtype", "fp8"], ["no-such-command"],
                                  ["verify", "a", "b", "--no-such-option"]])
def test_usage_errors_are_2(argv):
    rc, _, err = run(*argv)
    assert rc == 2 and "Error" in err


def test_markup_in_a_message_is_printed_as_is(tmp_path):
    """Messages carry file names and keys from the input: never read as rich markup."""
    weird = tmp_path / "m[/]odel[bold]"
    rc, _, err = run("plan", weird)
    assert rc == 2
    assert "m[/]odel[bold]" in one_line(err)


def test_an_unwrapped_os_error_is_bad_input(model, monkeypatch):
    import longcat_convert.shards as shards

    def broken(self, p):
        raise OSError(errno.EIO, "Input/output error", str(p))
    monkeypatch.setattr(shards.ShardedReader, "_add_file", broken)
    rc, _, err = run("plan", model)
    assert rc == 2 and "Input/output error" in one_line(err) and "safetensors" in err


def test_a_real_bug_keeps_its_traceback(model, monkeypatch):
    import longcat_convert.shards as shards

    def bug(self, p):
        return 1 / 0
    monkeypatch.setattr(shards.ShardedReader, "_add_file", bug)
    with pytest.raises(ZeroDivisionError):
        run("plan", model)


def test_interrupt_in_process_is_130(model, monkeypatch):
    import longcat_convert.shards as shards

    def interrupted(self, p):
        raise KeyboardInterrupt
    monkeypatch.setattr(shards.ShardedReader, "_add_file", interrupted)
    rc, _, err = run("convert", model, model.parent / "out", "--quiet")
    assert rc == 130 and "interrupted" in one_line(err)
    assert leftovers(model.parent, "out") == []


# A real signal, in a real process, at several points of a command's life.
_AT = {
    "reading headers": ("longcat_convert.shards", "read_header"),
    "planning": ("longcat_convert.plan", "build"),
    "after the weights": ("longcat_convert.config_map", "dump"),
    "copying components": ("longcat_convert.components", "place"),
    "committing": ("longcat_convert.atomic", "fsync_tree"),
    "verifying": ("longcat_convert.commands.verify", "verify"),
}


# each point with one of the two signals, alternating (both reach the same handler path)
_CASES = [(point, ("SIGINT", "SIGTERM")[i % 2]) for i, point in enumerate(_AT)] + [("after the weights", "SIGINT")]


@pytest.mark.parametrize("point,sig", _CASES)
def test_a_signal_at_any_point_is_130_and_leaves_nothing(model, converted, sig, point):
    module, func = _AT[point]
    out = model.parent / "out"
    argv = (["verify", str(TINY_A), str(converted["tiny-a"])] if point == "verifying"
            else ["convert", str(model), str(out), "--quiet"])
    code = f"""
import os, signal, sys, importlib
m = importlib.import_module({module!r})
real = getattr(m, {func!r})
def hooked(*a, **k):
    os.kill(os.getpid(), signal.{sig})
    return real(*a, **k)
setattr(m, {func!r}, hooked)
from longcat_convert.cli import main
sys.exit(main({argv!r}))
"""
    before = tree_digest(model)
    proc = run_subprocess(code)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted" in one_line(proc.stderr) and "Traceback" not in proc.stderr
    assert leftovers(model.parent, "out") == []
    assert tree_digest(model) == before

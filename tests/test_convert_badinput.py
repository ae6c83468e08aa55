"""Every bad input: a one-line error naming the file or key, exit code 2, no OUTPUT and
no temporary folder left behind, the source untouched."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct

import pytest

from convert_support import TINY_A, TINY_B, leftovers, one_line, run, run_subprocess, tree_digest, write_raw
from scripts.synth import build_checkpoint
from longcat_convert.table import Dims

DIT = "dit/diffusion_pytorch_model-0000{}-of-00002.safetensors"
INDEX = "dit/diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture
def model(tmp_path):
    return shutil.copytree(TINY_A, tmp_path / "model")


def _expect_bad(model_dir, *extra, match, out_name="out", source=None) -> str:
    source = source if source is not None else model_dir
    parent = model_dir.parent
    before = tree_digest(model_dir) if model_dir.exists() else {}
    rc, stdout, err = run("convert", source, parent / out_name, "--quiet", *extra)
    assert rc == 2, (rc, err)
    line = one_line(err)
    assert line.startswith("error:") and match in line, line
    assert leftovers(parent, out_name) == []
    if model_dir.exists():
        assert tree_digest(model_dir) == before
    return line


def _rewrite(path, drop=(), add=None, rename=None):
    """Rewrite a safetensors file without ``drop`` keys / with ``add`` tensors / renamed keys."""
    from longcat_convert.shards import ShardedReader
    r = ShardedReader(path)
    items = {}
    for k in r.keys():
        if k in drop:
            continue
        info = r.info(k)
        items[(rename or {}).get(k, k)] = (info.dtype, info.shape, r.read_bytes(k))
    items.update(add or {})
    write_raw(path, items)


def _index_set(model, key, fname=None):
    p = model / INDEX
    idx = json.loads(p.read_text())
    if fname is None:
        idx["weight_map"].pop(key, None)
    else:
        idx["weight_map"][key] = fname
    p.write_text(json.dumps(idx))


def test_no_dit_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("hi")
    _expect_bad(tmp_path / "empty", match="no dit/ folder")


def test_missing_source(tmp_path):
    _expect_bad(tmp_path / "nope", match="no such folder", source=tmp_path / "nope")


def test_missing_index(model):
    (model / INDEX).unlink()
    _expect_bad(model, match="no *.safetensors.index.json")


def test_missing_shard(model):
    (model / DIT.format(2)).unlink()
    _expect_bad(model, match="diffusion_pytorch_model-00002-of-00002.safetensors' is missing")


def test_index_naming_a_file_outside(model, tmp_path):
    shutil.copy(model / DIT.format(2), tmp_path / "outside.safetensors")
    _index_set(model, "final_layer.linear.weight", "../../outside.safetensors")
    _expect_bad(model, match="lies outside")


def test_truncated_shard(model):
    p = model / DIT.format(2)
    p.write_bytes(p.read_bytes()[:-100])
    line = _expect_bad(model, match="truncated")
    assert "00002-of-00002" in line


def test_corrupt_header(model):
    p = model / DIT.format(1)
    data = bytearray(p.read_bytes())
    data[8:40] = b"\x00garbage garbage garbage garbag"
    p.write_bytes(bytes(data))
    _expect_bad(model, match="corrupt safetensors header")


def test_not_a_safetensors_file(model):
    p = model / DIT.format(1)
    p.write_bytes(b"\xff" * 64)
    _expect_bad(model, match="00001-of-00002.safetensors")


def test_duplicate_key_across_shards(model):
    from longcat_convert.shards import ShardedReader
    r = ShardedReader(model / DIT.format(1))
    key = "x_embedder.proj.bias"
    info = r.info(key)
    _rewrite(model / DIT.format(2), add={key: (info.dtype, info.shape, r.read_bytes(key))})
    _expect_bad(model, match=f"duplicate key '{key}'")


def test_missing_key(model):
    _rewrite(model / DIT.format(2), drop={"final_layer.linear.bias"})
    _index_set(model, "final_layer.linear.bias")
    _expect_bad(model, match="1 missing key(s): final_layer.linear.bias")


def test_unknown_key(model):
    _rewrite(model / DIT.format(2), add={"blocks.0.extra.weight": ("F32", (2,), bytes(8))})
    _index_set(model, "blocks.0.extra.weight", DIT.format(2).split("/")[1])
    _expect_bad(model, match="1 unknown key(s): blocks.0.extra.weight")


def test_renamed_key_is_both_missing_and_unknown(model):
    _rewrite(model / DIT.format(2), rename={"final_layer.linear.bias": "final_layer.linear.b"})
    _index_set(model, "final_layer.linear.bias")
    _index_set(model, "final_layer.linear.b", DIT.format(2).split("/")[1])
    _expect_bad(model, match="missing key(s): final_layer.linear.bias; 1 unknown key(s): final_layer.linear.b")


def test_shape_inconsistent_with_config(model):
    cfg = json.loads((model / "dit/config.json").read_text())
    cfg["num_heads"] = 4   # head_dim 64: q_norm/k_norm weights should be [64], they are [128]
    (model / "dit/config.json").write_text(json.dumps(cfg))
    _expect_bad(model, match="q_norm.weight' has shape [128] but config.json implies [64]")


def test_config_missing_a_key(model):
    cfg = json.loads((model / "dit/config.json").read_text())
    del cfg["hidden_size"]
    (model / "dit/config.json").write_text(json.dumps(cfg))
    _expect_bad(model, match="missing key 'hidden_size'")


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch UNPICKLED_MARKER",))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth"])
def test_pickle_checkpoint_is_refused_never_unpickled(tmp_path, suffix):
    model = tmp_path / "model"
    (model / "dit").mkdir(parents=True)
    shutil.copy(TINY_A / "dit/config.json", model / "dit/config.json")
    (model / "dit" / f"diffusion_pytorch_model{suffix}").write_bytes(pickle.dumps(_Boom()))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        _expect_bad(model, match="pickle checkpoints are refused")
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "UNPICKLED_MARKER").exists()


def test_pickle_named_by_the_index(model):
    (model / "dit/evil.bin").write_bytes(pickle.dumps(_Boom()))
    _index_set(model, "final_layer.linear.bias", "evil.bin")
    _expect_bad(model, match="pickle checkpoints are refused")


def test_pickle_lora(model):
    (model / "lora/extra.pt").write_bytes(pickle.dumps(_Boom()))
    _expect_bad(model, match="pickle LoRA files are refused")


def _plant_nan(model):
    from longcat_convert.shards import ShardedReader
    p = model / DIT.format(2)
    r = ShardedReader(p)
    info = r.info("final_layer.linear.weight")
    data = bytearray(p.read_bytes())
    data[info.start + 40: info.start + 44] = struct.pack("<f", float("nan"))
    p.write_bytes(bytes(data))


def test_nonfinite_values_warn(model, tmp_path):
    _plant_nan(model)
    rc, _, err = run("convert", model, tmp_path / "out", "--quiet")
    assert rc == 0
    assert "non-finite" in err and "final_layer.linear.weight" in err
    rec = json.loads((tmp_path / "out/conversion.json").read_text())
    assert rec["nonfinite"] == ["final_layer.linear.weight"]
    rc, _, err = run("verify", model, tmp_path / "out", "--quiet")
    assert rc == 0, err  # copied as they are


def test_nonfinite_values_strict_fails(model):
    _plant_nan(model)
    _expect_bad(model, "--strict", match="'final_layer.linear.weight' holds NaN or Inf values")


def test_fp16_cast_overflow_is_reported(tmp_path):
    dims = Dims(hidden=64, heads=1, depth=1, cin=4, cout=4, caption=16, adaln=16, freq=32, mlp_ratio=4.0,
                patch=(1, 2, 2))
    src = build_checkpoint(tmp_path / "m", dims, "fp32", 1)
    from longcat_convert.shards import ShardedReader
    r = ShardedReader(src / "dit")
    info = r.info("blocks.0.ffn.w2.weight")
    data = bytearray(info.file.read_bytes())
    data[info.start: info.start + 4] = struct.pack("<f", 1e6)   # finite in fp32, inf in fp16
    info.file.write_bytes(bytes(data))
    rc, _, err = run("convert", src, tmp_path / "out", "--quiet", "--dtype", "fp16")
    assert rc == 0 and "after the cast to F16" in err
    _expect_bad(src, "--dtype", "fp16", "--strict", match="'blocks.0.ffn.w2.weight' cast to F16 holds NaN or Inf",
                out_name="out2")


def test_output_exists(model, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("mine")
    rc, _, err = run("convert", model, tmp_path / "out", "--quiet")
    assert rc == 2 and "already exists" in one_line(err) and "--force" in err
    assert (tmp_path / "out/keep.txt").read_text() == "mine"
    rc, _, err = run("convert", model, tmp_path / "out", "--quiet", "--force")
    assert rc == 0, err
    assert not (tmp_path / "out/keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_inside_source(model):
    rc, _, err = run("convert", model, model / "converted", "--quiet", "--force")
    assert rc == 2 and "outside the source folder" in one_line(err)
    assert not (model / "converted").exists()


def test_bad_shard_size(model):
    _expect_bad(model, "--max-shard-size", "lots", match="--max-shard-size")


def test_hub_id_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = run("convert", "some-org/not-cached", tmp_path / "out", "--quiet")
    assert rc == 2 and "some-org/not-cached" in one_line(err) and "HF_HUB_OFFLINE" in err
    assert leftovers(tmp_path, "out") == []


# -- failures while writing ---------------------------------------------------

def _fail_pwrite_after(monkeypatch, n, exc):
    import longcat_convert.stream as stream
    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, off):
        calls["n"] += 1
        if calls["n"] > n:
            raise exc
        return real(fd, data, off)
    monkeypatch.setattr(stream.os, "pwrite", pwrite)
    return calls


def _small_chunks(monkeypatch):
    import longcat_convert.convert as conv
    monkeypatch.setattr(conv.Options, "chunk", 4096)  # many writes, so "mid-write" is mid-write


def test_disk_full_mid_write(model, monkeypatch):
    _small_chunks(monkeypatch)
    calls = _fail_pwrite_after(monkeypatch, 20, OSError(errno.ENOSPC, "No space left on device"))
    line = _expect_bad(model, match="no space left on device")
    assert calls["n"] > 20
    assert "nothing was left behind" in line


def test_disk_full_at_reservation(model, monkeypatch):
    import ctypes
    import longcat_convert.stream as stream

    def fallocate(fd, mode, off, n):
        ctypes.set_errno(errno.ENOSPC)
        return -1
    monkeypatch.setattr(stream, "_fallocate", fallocate)
    _expect_bad(model, match="no space left on device")


def test_not_enough_space_is_found_before_writing(model, monkeypatch):
    import longcat_convert.convert as conv
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(conv.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    _expect_bad(model, match="only 0.00 GB is free")


def test_interrupted_mid_write_in_process(model, monkeypatch):
    _small_chunks(monkeypatch)
    _fail_pwrite_after(monkeypatch, 20, KeyboardInterrupt())
    before = tree_digest(model)
    rc, _, err = run("convert", model, model.parent / "out", "--quiet")
    assert rc == 130, err
    assert "interrupted while writing; nothing was left behind" in one_line(err)
    assert leftovers(model.parent, "out") == [] and tree_digest(model) == before


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_by_a_signal_subprocess(model, sig):
    """A real signal to a real process, delivered mid-write."""
    code = f"""
import os, signal, sys
import longcat_convert.stream as stream, longcat_convert.convert as conv
conv.Options.chunk = 4096
real, n = os.pwrite, [0]
def pwrite(fd, data, off):
    n[0] += 1
    if n[0] == 20:
        os.kill(os.getpid(), signal.{sig})
    return real(fd, data, off)
stream.os.pwrite = pwrite
from longcat_convert.cli import main
sys.exit(main(["convert", {str(model)!r}, {str(model.parent / 'out')!r}, "--quiet"]))
"""
    before = tree_digest(model)
    proc = run_subprocess(code)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted while writing" in one_line(proc.stderr)
    assert leftovers(model.parent, "out") == []
    assert tree_digest(model) == before


def test_cli_exit_code_for_bad_input_subprocess(tmp_path):
    proc = run_subprocess("import sys; from longcat_convert.cli import main; "
                          f"sys.exit(main(['convert', {str(tmp_path / 'nope')!r}, {str(tmp_path / 'o')!r}]))")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such folder" in proc.stderr


def test_tiny_b_untouched_by_a_failed_run(tmp_path, monkeypatch):
    model = shutil.copytree(TINY_B, tmp_path / "b")
    _small_chunks(monkeypatch)
    _fail_pwrite_after(monkeypatch, 5, OSError(errno.EIO, "Input/output error"))
    _expect_bad(model, match="Input/output error")


def test_leftovers_of_a_killed_run_are_cleared(model):
    stale = model.parent / ".out.partial-4194999"   # no such process
    (stale / "transformer").mkdir(parents=True)
    rc, _, err = run("convert", model, model.parent / "out", "--quiet")
    assert rc == 0, err
    assert not stale.exists()
    assert sorted(leftovers(model.parent, "out")) == ["out"]

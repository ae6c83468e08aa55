"""The streaming writer and copy engine: layout, chunking, workers, casts, hashes."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from convert_support import TINY_A, run
from longcat_convert.convert import Options, convert
from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader
from longcat_convert.stream import has_nonfinite
from scripts.synth import build_checkpoint, to_bits
from longcat_convert.table import Dims
from longcat_convert.writer import OutTensor, Piece, encode_header, layout, parse_size

DIMS = Dims(hidden=128, heads=2, depth=2, cin=8, cout=8, caption=32, adaln=32, freq=64, mlp_ratio=4.0,
            patch=(1, 2, 2))


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("1.5kb") == 1500
    assert parse_size("4096") == 4096
    for bad in ("", "five", "-1GB", "0"):
        with pytest.raises(BadInput):
            parse_size(bad)


def test_layout_groups_by_size_and_headers_are_aligned():
    tensors = [OutTensor(f"t{i}", "F32", (n,), [Piece(None, 0, 4 * n, f"s{i}")], "F32")
               for i, n in enumerate([10, 20, 30, 1000, 5])]
    shards = layout(tensors, max_shard_bytes=200)
    assert [[t.key for t in s.tensors] for s in shards] == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
    assert [s.name for s in shards][0] == "diffusion_pytorch_model-00001-of-00004.safetensors"
    for s in shards:
        assert (len(s.header) - 8) % 8 == 0
        body = json.loads(s.header[8:])
        assert body["__metadata__"] == {"format": "pt"}


def test_header_is_what_safetensors_reads(tmp_path):
    from safetensors import safe_open
    p = tmp_path / "x.safetensors"
    p.write_bytes(encode_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
                  + to_bits([1.5, -2.0], "F32"))
    with safe_open(str(p), "pt") as f:
        assert f.get_tensor("a").tolist() == [1.5, -2.0]


@pytest.mark.parametrize("chunk,workers", [(4096, 1), (4096, 3), (1 << 20, 2)])
def test_output_bytes_do_not_depend_on_chunk_or_workers(tmp_path, chunk, workers):
    src = build_checkpoint(tmp_path / "m", DIMS, "bf16", 3, seed=3)
    convert(str(src), tmp_path / "ref", Options(fsync=False))
    convert(str(src), tmp_path / "out", Options(chunk=chunk, workers=workers, fsync=False, max_shard_size="1MB"))
    a, b = ShardedReader(tmp_path / "ref/transformer"), ShardedReader(tmp_path / "out/transformer")
    assert len(b.files) > 1
    assert all(a.read_bytes(k) == b.read_bytes(k) for k in a.keys())
    ra = json.loads((tmp_path / "ref/conversion.json").read_text())
    rb = json.loads((tmp_path / "out/conversion.json").read_text())
    assert {k: v["sha256"] for k, v in ra["tensors"].items()} == {k: v["sha256"] for k, v in rb["tensors"].items()}
    assert ra["source_files"] == rb["source_files"]   # manifests too


def test_source_sha256_option(tmp_path):
    convert(str(TINY_A), tmp_path / "out", Options(source_sha256=True))
    rec = json.loads((tmp_path / "out/conversion.json").read_text())
    for rel, info in rec["source_files"].items():
        assert info["sha256"] == hashlib.sha256((TINY_A / rel).read_bytes()).hexdigest()


def test_manifest_digest_changes_with_any_byte(tmp_path):
    import shutil
    model = shutil.copytree(TINY_A, tmp_path / "m")
    convert(str(model), tmp_path / "o1", Options(fsync=False))
    p = model / "dit/diffusion_pytorch_model-00002-of-00002.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    convert(str(model), tmp_path / "o2", Options(fsync=False))
    m1 = json.loads((tmp_path / "o1/conversion.json").read_text())["source_files"]
    m2 = json.loads((tmp_path / "o2/conversion.json").read_text())["source_files"]
    key = "dit/diffusion_pytorch_model-00002-of-00002.safetensors"
    assert m1[key]["manifest_sha256"] != m2[key]["manifest_sha256"]
    assert m1[key]["header_sha256"] == m2[key]["header_sha256"]
    other = "dit/diffusion_pytorch_model-00001-of-00002.safetensors"
    assert m1[other] == m2[other]


@pytest.mark.parametrize("dtype,src", [("bf16", "fp32"), ("fp16", "fp32"), ("fp32", "bf16"), ("bf16", "bf16")])
def test_dtype_cast(tmp_path, dtype, src):
    model = build_checkpoint(tmp_path / "m", DIMS, src, 2, seed=5)
    rc, out, err = run("convert", model, tmp_path / "out", "--quiet", "--dtype", dtype, "--json")
    assert rc == 0, err
    torch_dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    a, b = ShardedReader(model / "dit"), ShardedReader(tmp_path / "out/transformer")
    w = a.get("blocks.0.attn.qkv.weight")
    k = b.get("blocks.0.self_attn.to_k.weight")
    assert k.dtype == torch_dt[dtype]
    assert torch.equal(k, w[128:256].to(torch_dt[dtype]))
    rec = json.loads((tmp_path / "out/conversion.json").read_text())
    st = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
    if dtype == src:
        assert rec["dtype"]["cast"] == {}
    else:
        assert rec["dtype"]["cast"] == {f"{st[src]}->{st[dtype]}": len(b.keys())}
        assert rec["tensors"]["blocks.0.self_attn.to_k.weight"]["cast_from"] == st[src]
    rc, _, err = run("verify", model, tmp_path / "out", "--quiet")
    assert rc == 0, err


@pytest.mark.parametrize("dtype,bits,bad", [
    ("F32", [1.0, 2.0, float("inf")], True), ("F32", [1.0, -3.0e38], False),
    ("BF16", [1.0, float("nan")], True), ("BF16", [0.0, -1.0e38], False),
    ("F16", [1.0, float("-inf")], True), ("F16", [65504.0], False),
])
def test_nonfinite_scan(dtype, bits, bad):
    assert has_nonfinite(memoryview(to_bits(bits, dtype)), dtype) is bad

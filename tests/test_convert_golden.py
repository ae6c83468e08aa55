"""Converting the golden checkpoints: layout, record, verify, and FastVideo loads it strictly."""
from __future__ import annotations

import hashlib
import json

import pytest

from convert_support import TINY_A, TINY_B, needs_native, read_all, run, tree_digest
from longcat_convert.shards import ShardedReader


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("golden")
    out = {}
    for src in (TINY_A, TINY_B):
        before = tree_digest(src)
        rc, _, err = run("convert", src, base / src.name, "--quiet")
        assert rc == 0, err
        assert tree_digest(src) == before
        out[src.name] = base / src.name
    return out


@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_layout(converted, name):
    out = converted[name]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = ["conversion.json", "model_index.json", "transformer/config.json",
                "transformer/diffusion_pytorch_model-00001-of-00001.safetensors",
                "transformer/diffusion_pytorch_model.safetensors.index.json"]
    if name == "tiny-a":
        expected.append("lora/tiny_lora/tiny_lora.safetensors")
    assert files == sorted(expected)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LongCatPipeline"
    assert index["transformer"] == ["diffusers", "LongCatTransformer3DModel"]
    cfg = json.loads((out / "transformer/config.json").read_text())
    assert cfg["_class_name"] == "LongCatTransformer3DModel"


@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_verify_passes(converted, name):
    src = TINY_A if name == "tiny-a" else TINY_B
    rc, out, err = run("verify", src, converted[name], "--json", "--quiet")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["tensors"] == (95 if name == "tiny-a" else 68)
    assert summary["loras"] == (["tiny_lora.safetensors"] if name == "tiny-a" else [])


@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_conversion_record(converted, name):
    out = converted[name]
    rec = json.loads((out / "conversion.json").read_text())
    from longcat_convert import __version__
    from longcat_convert.table import table_hash
    assert rec["version"] == __version__ and rec["table_hash"] == table_hash()
    assert rec["direction"] == "original->native"
    reader = ShardedReader(out / "transformer")
    assert set(rec["tensors"]) == set(reader.keys())
    for key in reader.keys():
        assert rec["tensors"][key]["sha256"] == hashlib.sha256(reader.read_bytes(key)).hexdigest()
        assert rec["tensors"][key]["dtype"] == reader.info(key).dtype
    src = TINY_A if name == "tiny-a" else TINY_B
    for rel, info in rec["source_files"].items():
        assert info["bytes"] == (src / rel).stat().st_size
        if "sha256" in info:
            assert info["sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        else:
            assert info["header_sha256"] and info["manifest_sha256"]
    assert rec["dtype"] == {"kept": {"F32": len(reader.keys())}, "cast": {}}
    if name == "tiny-b":
        assert any("text_tokens_zero_pad=false" in w for w in rec["warnings"])
        lora = []
    else:
        lora = rec["loras"]
        assert len(lora) == 1 and lora[0]["output"] == "lora/tiny_lora/tiny_lora.safetensors"
        assert all(not d["alpha_folded_into_B"] for d in lora[0]["alpha"])  # 0.5 * 4 = 2


@needs_native
@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_fastvideo_loads_it_strictly(converted, name):
    from parity.native import build_native_model
    out = converted[name]
    model = build_native_model(json.loads((out / "transformer/config.json").read_text()))
    result = model.load_state_dict(read_all(out / "transformer"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@needs_native
@pytest.mark.parametrize("name", ["tiny-a", "tiny-b"])
def test_fastvideo_transformer_loader_loads_the_folder(converted, name, monkeypatch):
    """FastVideo's own loading path (TransformerLoader: config.json -> arch config, shards ->
    its strict safetensors loader), not just load_state_dict."""
    import torch
    from safetensors.torch import load_file
    from parity.native import ensure_runtime
    ensure_runtime()
    import fastvideo.models.loader.component_loader as loader
    from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
    from fastvideo.fastvideo_args import FastVideoArgs
    if not torch.cuda.is_available():  # 0.2.1 reports 'mps' as the local device on a CPU platform
        monkeypatch.setattr(loader, "get_local_torch_device", lambda: torch.device("cpu"))
    out = converted[name]
    args = FastVideoArgs(model_path=str(out), pipeline_config=LongCatT2V480PConfig(), num_gpus=1,
                         dit_cpu_offload=False, use_fsdp_inference=False)
    args.pipeline_config.dit_precision = "fp32"
    model = loader.TransformerLoader().load(str(out / "transformer"), args)
    assert type(model).__name__ == "LongCatTransformer3DModel"
    want = {}
    for f in sorted((out / "transformer").glob("*.safetensors")):
        want.update(load_file(str(f)))
    got = model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k].cpu(), v) for k, v in want.items())

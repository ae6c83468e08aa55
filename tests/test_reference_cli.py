"""``longcat-convert golden-check`` end to end: pass, deliberate faults caught at the right
layer (exit 1), bad input (exit 2, one line), refusals, strict loading, upstream adapter."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import reference.attention as attention_mod
import reference.embedders as embedders_mod
from longcat_convert.cli import main
from longcat_convert.errors import BadInput
from reference import load_reference

ROOT = Path(__file__).resolve().parent.parent
A, B = ROOT / "golden/tiny-a", ROOT / "golden/tiny-b"
T2V, I2V, VARLEN = A / "cases/t2v.safetensors", A / "cases/i2v.safetensors", B / "cases/varlen.safetensors"
KV = ROOT / "golden/extra/tiny-c/cases/kv_continue.safetensors"


def cli(*args):
    return main([str(a) for a in args])


def test_pass_writes_reports(tmp_path, capsys):
    assert cli("golden-check", A, T2V, I2V, "--report", tmp_path) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["kind"] == "golden-check" and rep["passed"] and rep["first_divergent"] is None
    assert {c["case"] for c in rep["cases"]} == {"t2v", "i2v"}
    rows = [ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("| ") and "`" in ln]
    assert len(rows) == len(rep["layers"]) and all(ln.endswith("| pass |") for ln in rows)


def test_dit_folder_is_accepted_too():
    assert cli("golden-check", A / "dit", A / "cases/t2v_lora.safetensors", "--quiet") == 0


def _broken_caption_act(monkeypatch):
    orig = embedders_mod.CaptionEmbedder.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self.y_proj[1] = torch.nn.SiLU()               # GELU(tanh) swapped for SiLU
    monkeypatch.setattr(embedders_mod.CaptionEmbedder, "__init__", init)


def _swapped_q_k(monkeypatch):
    orig = attention_mod.SelfAttention._qkv

    def qkv(self, x):
        q, k, v = orig(self, x)
        return k, q, v
    monkeypatch.setattr(attention_mod.SelfAttention, "_qkv", qkv)


def _swapped_cross_k_v(monkeypatch):
    orig = attention_mod.CrossAttention._attend

    def attend(self, x, text, lens):
        w = self.kv_linear.weight.data
        h = w.shape[0] // 2
        saved = w.clone()
        w.copy_(torch.cat([w[h:], w[:h]]))
        try:
            return orig(self, x, text, lens)
        finally:
            w.copy_(saved)
    monkeypatch.setattr(attention_mod.CrossAttention, "_attend", attend)


def _cache_positions_from_zero(monkeypatch):
    orig = attention_mod.SelfAttention.forward_cached

    def fwd(self, x, grid, num_cond_latents, kv_cache):
        tables = self.rope.tables
        self.rope.tables = lambda g, dev: tuple(torch.cat([t[: kv_cache[0].shape[2]], t[: t.shape[0] - kv_cache[0].shape[2]]])
                                                for t in tables(g, dev))
        try:
            return orig(self, x, grid, num_cond_latents, kv_cache)
        finally:
            del self.rope.tables
    monkeypatch.setattr(attention_mod.SelfAttention, "forward_cached", fwd)


@pytest.mark.parametrize("breakage,ckpt,case,first", [
    (_broken_caption_act, A, T2V, "y_embedder"),
    (_swapped_q_k, A, T2V, "blocks.0.attn"),
    (_swapped_q_k, B, VARLEN, "blocks.0.attn"),
    (_swapped_cross_k_v, B, VARLEN, "blocks.0.cross_attn"),
    (_cache_positions_from_zero, ROOT / "golden/extra/tiny-c", KV, "blocks.0.cross_attn"),
])
def test_deliberate_faults_fail_at_the_right_layer(monkeypatch, tmp_path, breakage, ckpt, case, first):
    breakage(monkeypatch)
    assert cli("golden-check", ckpt, case, "--report", tmp_path, "--quiet") == 1
    rep = json.loads((tmp_path / "report.json").read_text())
    assert not rep["passed"] and rep["first_divergent"] == first
    earlier = [r for r in rep["layers"][: [r["name"] for r in rep["layers"]].index(first)]]
    assert earlier and all(r["passed"] for r in earlier)


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("args,needle", [
    (("golden-check", ROOT / "nope", T2V), "no such checkpoint folder"),
    (("golden-check", A, A / "cases/missing.safetensors"), "no such case file"),
    (("golden-check", A, A / "dit/config.json"), "a golden case is a .safetensors file"),
    (("golden-check", A, VARLEN), "varlen.safetensors: recorded for another model: input.hidden_states has 8 channels"),
    (("golden-check", B, T2V), "t2v.safetensors: recorded for another model"),
    (("golden-check", A, T2V, "--attention", "flash2"), "flash"),
    (("golden-check", A, T2V, "--reference", "upstream"), "needs --upstream-path"),
    (("golden-check", A, T2V, "--reference", "upstream", "--upstream-path", ROOT), "not a LongCat-Video checkout"),
    (("golden-check", A, T2V, "--reference", "upstream", "--upstream-path", ROOT / "nope"), "no such directory"),
    (("golden-check", A, T2V, "--upstream-path", ROOT), "only used with --reference upstream"),
    (("golden-check", A, T2V, "--device", "cuda"), "CUDA"),
])
def test_bad_input_exit_2_one_line(capsys, args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here; the no-CUDA message cannot be produced")
    if "flash2" in args:
        try:
            import flash_attn  # noqa: F401
            pytest.skip("flash_attn is installed here; the missing-backend message cannot be produced")
        except ImportError:
            pass
    assert cli(*args) == 2
    assert needle in _one_line_error(capsys)


def _copy_checkpoint(tmp_path, src=B):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("edit,needle", [
    (lambda t: t.pop("blocks.1.ffn.w3.weight"), "missing key(s): blocks.1.ffn.w3.weight"),
    (lambda t: t.__setitem__("blocks.1.extra.weight", torch.zeros(2)), "unknown key(s): blocks.1.extra.weight"),
    (lambda t: t.__setitem__("blocks.0.attn.q_norm.weight", torch.ones(32)), "'blocks.0.attn.q_norm.weight' has shape [32]"),
])
def test_strict_keys_and_shapes(tmp_path, capsys, edit, needle):
    dst = _copy_checkpoint(tmp_path)
    dit = dst / "dit"
    # rewrite as a single file holding every tensor, edited
    tensors = {}
    for f in sorted(dit.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
        f.unlink()
    (dit / "diffusion_pytorch_model.safetensors.index.json").unlink()
    edit(tensors)
    save_file(tensors, str(dit / "diffusion_pytorch_model.safetensors"))
    assert cli("golden-check", dst, VARLEN) == 2
    assert needle in _one_line_error(capsys)


def test_dtype_and_device_choice():
    m = load_reference(B, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    with pytest.raises(BadInput, match="unknown dtype"):
        load_reference(B, dtype="int8")


def test_bf16_golden_check_is_judged_and_explained(tmp_path):
    """bfloat16 vs the float32 golden: judged on the policy's limits, with the noise-ratio
    limit reported as not applicable (the candidate is the reference itself)."""
    rc = cli("golden-check", A, T2V, "--dtype", "bfloat16", "--report", tmp_path, "--quiet")
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rc == 0 and rep["passed"]
    assert any("noise_ratio" in n for n in rep["notes"])
    assert max(r["rel_l2"] for r in rep["layers"]) > 1e-4          # really ran in low precision


def test_upstream_low_precision_on_cpu_is_refused(tmp_path, capsys):
    fake = tmp_path / "checkout"
    (fake / "longcat_video/modules").mkdir(parents=True)
    (fake / "longcat_video/modules/longcat_video_dit.py").write_text("")
    assert cli("golden-check", A, T2V, "--reference", "upstream", "--upstream-path", fake, "--dtype", "bfloat16") == 2
    assert "cannot run in low precision on the CPU" in _one_line_error(capsys)


UPSTREAM = os.environ.get("LONGCAT_UPSTREAM")


@pytest.mark.skipif(not UPSTREAM, reason="set LONGCAT_UPSTREAM to a LongCat-Video checkout to run the real upstream code")
def test_upstream_reference_reproduces_golden(tmp_path):
    assert cli("golden-check", A, T2V, I2V, A / "cases/t2v_lora.safetensors", "--reference", "upstream",
               "--upstream-path", UPSTREAM, "--attention", "math", "--quiet") == 0
    assert cli("golden-check", ROOT / "golden/extra/tiny-c", KV, ROOT / "golden/extra/tiny-c/cases/two_loras.safetensors",
               "--reference", "upstream", "--upstream-path", UPSTREAM, "--quiet") == 0

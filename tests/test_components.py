"""Components around the DiT: the tiny bundle, convert --workload, FastVideo's own loaders
(strictly), per-component parity of the text encoder and the VAE, and one full
prompt-to-frames run of FastVideo's LongCat pipeline against the original."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from parity_support import GOLDEN, cli, needs_native, plant, policy_limit, read_report

BUNDLE = GOLDEN / "tiny-bundle"
CASES = BUNDLE / "cases"
TEXT, VAE, PIPE = (CASES / f"{n}.safetensors" for n in ("text_encoder", "vae", "pipeline_t2v"))
WORKLOAD_CLASS = {"t2v": "LongCatPipeline", "i2v": "LongCatImageToVideoPipeline",
                  "vc": "LongCatVideoContinuationPipeline", "refine": "LongCatPipeline"}


@pytest.fixture(scope="module")
def bundle_out(tmp_path_factory) -> dict[str, Path]:
    """The tiny bundle converted once per workload by the real converter."""
    base = tmp_path_factory.mktemp("bundle")
    out = {}
    for w in WORKLOAD_CLASS:
        assert cli("convert", BUNDLE, base / w, "--workload", w, "--quiet", "--no-fsync") == 0
        out[w] = base / w
    return out


def _row(rep, name, case=None):
    return next(r for r in rep["layers"] if r["name"] == name and (case is None or r["case"] == case))


# ----------------------------------------------------------------------------- the bundle

def test_bundle_is_laid_out_like_the_release_and_reproducible(tmp_path):
    for sub in ("dit", "lora", "text_encoder", "tokenizer", "vae", "scheduler"):
        assert (BUNDLE / sub).is_dir(), sub
    assert json.loads((BUNDLE / "scheduler/scheduler_config.json").read_text())["shift"] == 12.0
    te = json.loads((BUNDLE / "text_encoder/config.json").read_text())
    dit = json.loads((BUNDLE / "dit/config.json").read_text())
    assert te["architectures"] == ["UMT5EncoderModel"] and te["d_model"] == dit["caption_channels"] == 64
    vae = json.loads((BUNDLE / "vae/config.json").read_text())
    assert vae["_class_name"] == "AutoencoderKLWan" and vae["z_dim"] == 16 and len(vae["latents_std"]) == 16
    assert vae["dim_mult"] == [1, 2, 4, 4] and vae["temperal_downsample"] == [False, True, True]
    # The script reproduces every committed component byte for byte. Bit equality with files made
    # in another run holds here by construction: no CPU-dependent float kernel runs. The tokenizer and the JSON
    # files hold no computed floats; the weights are a seeded Mersenne Twister stream through torch's
    # Box-Muller kernel, scaled by IEEE multiplications, additions and divisions (correctly rounded
    # everywhere) and cast to bfloat16 (round to nearest even). Box-Muller is vectorised code of
    # its own (log/sin/cos as AVX2 polynomials), the same on every x86-64 CPU with AVX2 (AVX-512
    # ones run it too); a torch that runs without it (ATEN_CPU_CAPABILITY=default, another
    # architecture) draws other last bits, so there the weights are compared within float tolerance.
    from scripts.make_tiny_bundle import build
    again = build(tmp_path / "b")
    same_box_muller = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    for sub in ("text_encoder", "tokenizer", "vae", "scheduler"):
        for f in sorted((BUNDLE / sub).iterdir()):
            if f.suffix == ".safetensors" and not same_box_muller:
                from safetensors.torch import load_file
                want, got = load_file(str(f)), load_file(str(again / sub / f.name))
                assert list(got) == list(want), f"{sub}/{f.name}"
                for k, v in want.items():
                    torch.testing.assert_close(got[k], v, msg=f"{sub}/{f.name}: {k}")
                continue
            assert (again / sub / f.name).read_bytes() == f.read_bytes(), f"{sub}/{f.name}"


# ----------------------------------------------------------------------------- convert --workload

def test_workload_names_fastvideos_pipeline_and_verify_checks_it(bundle_out, tmp_path):
    for w, cls in WORKLOAD_CLASS.items():
        assert json.loads((bundle_out[w] / "model_index.json").read_text())["_class_name"] == cls
        assert json.loads((bundle_out[w] / "conversion.json").read_text())["options"]["workload"] == w
        assert cli("verify", BUNDLE, bundle_out[w], "--quiet") == 0
    bad = shutil.copytree(bundle_out["i2v"], tmp_path / "bad")
    mi = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps(dict(mi, _class_name="LongCatPipeline")))
    assert cli("verify", BUNDLE, bad, "--quiet") == 1


def test_bad_workload_is_one_line_exit_2(tmp_path, capsys):
    assert cli("convert", BUNDLE, tmp_path / "x", "--workload", "t2i") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workload" in err[0] and "t2i" in err[0]
    assert not (tmp_path / "x").exists()


@needs_native
def test_fastvideo_builds_each_workloads_pipeline_from_the_bundle(bundle_out):
    """FastVideo's registry resolves the class model_index.json names, and its
    build_pipeline loads every component of the converted folder."""
    from parity.native import fastvideo_args
    from fastvideo.pipelines import build_pipeline
    for w, cls in WORKLOAD_CLASS.items():
        if w == "refine":
            continue                                  # the same class as t2v
        pipe = build_pipeline(fastvideo_args(bundle_out[w]))
        assert type(pipe).__name__ == cls
        assert {"text_encoder", "tokenizer", "vae", "transformer", "scheduler"} <= set(pipe.modules)


# ----------------------------------------------------------------------------- FastVideo's loaders, strictly

@needs_native
def test_text_encoder_and_tokenizer_load_strictly(bundle_out):
    from parity.components import load_native_text
    from parity.native import fastvideo_args
    from parity.weights_check import tokenizer_check
    root = bundle_out["t2v"]
    tok, enc, (m, problems) = load_native_text(root, fastvideo_args(root))
    assert type(enc).__module__ == "fastvideo.models.encoders.t5" and problems == [] and m["max_abs"] == 0
    assert m["tensors"] == 22
    assert tokenizer_check(tok, root / "tokenizer")[1] == []


@needs_native
def test_vae_loads_strictly_and_the_check_catches_what_the_loader_skips(bundle_out, tmp_path):
    from parity.components import load_native_vae
    from parity.native import fastvideo_args
    root = bundle_out["t2v"]
    vae, (m, problems) = load_native_vae(root, fastvideo_args(root))
    assert type(vae).__module__ == "fastvideo.models.vaes.wanvae" and problems == [] and m["max_abs"] == 0
    # FastVideo's VAELoader loads with strict=False: a renamed tensor goes unnoticed by it, not by us.
    bad = shutil.copytree(root, tmp_path / "bad")

    def rename(t):
        t["decoder.conv_out.weight_renamed"] = t.pop("decoder.conv_out.weight")
        return ["decoder.conv_out.weight_renamed"]
    from safetensors.torch import load_file, save_file
    f = bad / "vae/diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    rename(sd)
    save_file(sd, str(f))
    _, (_, problems) = load_native_vae(bad, fastvideo_args(bad))
    assert any("decoder.conv_out.weight" in p for p in problems)


@needs_native
def test_scheduler_loads_with_shift_12(bundle_out):
    from parity.native import fastvideo_args
    from fastvideo.models.loader.component_loader import SchedulerLoader
    root = bundle_out["t2v"]
    sched = SchedulerLoader().load(str(root / "scheduler"), fastvideo_args(root))
    assert type(sched).__name__ == "FlowMatchEulerDiscreteScheduler" and sched.config.shift == 12.0


# ----------------------------------------------------------------------------- component parity

@needs_native
def test_text_encoder_parity_names_the_padding_difference(bundle_out, tmp_path):
    rc = cli("parity", BUNDLE, bundle_out["t2v"], "--component", "text_encoder", "--case", TEXT,
             "--report", tmp_path / "r", "--quiet")
    rep = read_report(tmp_path / "r")
    assert rc == 1 and rep["first_divergent"] == "prompt_embeds"
    # The original side against the data recorded from the upstream pipeline in another run: within
    # the policy (bit equality held on the recording machine only; other CPUs differ in the last bits).
    lim = policy_limit()
    golden = [r for r in rep["layers"] if r["case"] == "text_encoder:golden"]
    assert len(golden) == 7 and all(r["passed"] and r["rel_l2"] <= lim for r in golden)
    native = [r for r in rep["layers"] if r["case"] == "text_encoder"]
    names = [r["name"] for r in native]
    assert names[:2] == ["weights.text_encoder", "weights.tokenizer"]
    assert "encoder.block.1.layer.0" in names and names[-1] == "prompt_embeds"
    for r in native[:-1]:
        assert r["passed"], r["name"]
    assert _row(rep, "input_ids", "text_encoder")["rel_l2"] == 0          # integers: two tokenizers, one vocabulary
    assert _row(rep, "prompt_embeds.valid_tokens")["rel_l2"] <= lim        # two encoders' float kernels: the policy
    assert _row(rep, "prompt_embeds", "text_encoder")["rel_l2"] == pytest.approx(0.9925, rel=0.02)


@needs_native
def test_vae_parity_passes_block_by_block(bundle_out, tmp_path):
    rc = cli("parity", BUNDLE, bundle_out["t2v"], "--component", "vae", "--case", VAE, "--report",
             tmp_path / "r", "--quiet")
    rep = read_report(tmp_path / "r")
    assert rc == 0 and rep["passed"]
    native = {r["name"]: r for r in rep["layers"] if r["case"] == "vae"}
    for name in ("encoder.down_blocks.10", "encoder.mid_block", "quant_conv", "encoder.feat_cache.0",
                 "latents.sample", "latents.normalized", "decoder.up_blocks.3", "decoder.feat_cache.31", "frames"):
        assert name in native, name
    # FastVideo's VAE against diffusers' (two implementations): within the policy on every row.
    lim = policy_limit()
    assert all(r["passed"] and r["rel_l2"] <= lim for n, r in native.items() if not n.startswith("weights."))
    assert 0 < native["latents.normalized"]["rel_l2"] <= lim        # (x - m) / s vs (x - m) * (1 / s)
    # diffusers' VAE (the original repo's copy of it) against the upstream recording of another run
    golden = [r for r in rep["layers"] if r["case"] == "vae:golden"]
    assert len(golden) == 88 and all(r["passed"] and r["rel_l2"] <= lim for r in golden)


@needs_native
def test_planted_faults_are_located(bundle_out, tmp_path):
    conv = shutil.copytree(bundle_out["t2v"], tmp_path / "c")

    def ff(t):
        t["encoder.block.1.layer.1.DenseReluDense.wo.weight"] *= 1.01
        return ["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    plant(conv / "text_encoder", ff)
    rc = cli("parity", BUNDLE, conv, "--component", "text_encoder", "--case", TEXT, "--report", tmp_path / "t",
             "--quiet")
    assert rc == 1 and read_report(tmp_path / "t")["first_divergent"] == "encoder.block.1.layer.1"

    def up(t):
        t["decoder.up_blocks.2.resnets.0.conv1.weight"] *= 1.01
        return ["decoder.up_blocks.2.resnets.0.conv1.weight"]
    plant(conv / "vae", up)
    rc = cli("parity", BUNDLE, conv, "--component", "vae", "--case", VAE, "--report", tmp_path / "v", "--quiet")
    assert rc == 1 and read_report(tmp_path / "v")["first_divergent"] == "decoder.up_blocks.2"


# ----------------------------------------------------------------------------- the full run

@needs_native
def test_full_run_prompt_to_frames(bundle_out, tmp_path):
    rc = cli("parity", BUNDLE, bundle_out["t2v"], "--component", "pipeline", "--case", PIPE, "--sigmas",
             "original", "--report", tmp_path / "r", "--quiet")
    rep = read_report(tmp_path / "r")
    assert rc == 1 and rep["first_divergent"] == "step.0.dit_in"
    golden = [r for r in rep["layers"] if r["case"] == "pipeline_t2v:golden"]
    assert len(golden) == 33 and all(r["passed"] for r in golden)    # the original side = upstream generate_t2v
    native = [r for r in rep["layers"] if r["case"] == "pipeline_t2v"]
    names = [r["name"] for r in native]
    assert names[0] == "text.input_ids" and names[-1] == "output.frames"
    # Text, masks, initial noise from the seed and the schedule agree; the first step's DiT input
    # is FastVideo's bfloat16 rounding (rel L2 ~1.7e-3). Exact by construction: token ids and masks
    # (integers) and the initial noise (one torch.randn, same seed, shape and dtype on both sides, in
    # this process); the schedule is two implementations' float arithmetic: the policy.
    for n in ("text.input_ids", "text.negative_attention_mask", "latents.initial"):
        assert _row(rep, n, "pipeline_t2v")["rel_l2"] == 0, n
    for n in ("timesteps", "sigmas"):
        r = _row(rep, n, "pipeline_t2v")
        assert r["passed"] and r["rel_l2"] <= policy_limit(), n
    assert _row(rep, "text.prompt_embeds.valid_tokens", "pipeline_t2v")["passed"]
    assert _row(rep, "step.0.dit_in", "pipeline_t2v")["rel_l2"] == pytest.approx(1.668e-3, rel=0.02)
    (fr,) = rep["frames"]
    assert fr["pipeline"] == "LongCatPipeline" and fr["shape"] == [1, 3, 9, 32, 48]
    assert 25 < fr["psnr_db"] < 45 and 0 < fr["max_abs"] < 0.5


@needs_native
def test_golden_check_of_component_cases(tmp_path, capsys):
    assert cli("golden-check", BUNDLE, TEXT, VAE, "--report", tmp_path / "g", "--quiet") == 0
    rep = read_report(tmp_path / "g")
    assert rep["kind"] == "golden-check" and {c["case"] for c in rep["cases"]} == {"text_encoder", "vae"}
    assert cli("golden-check", BUNDLE, TEXT, GOLDEN / "tiny-a/cases/t2v.safetensors") == 2


@needs_native
def test_bad_component_input_is_exit_2(bundle_out, tmp_path, capsys):
    assert cli("parity", BUNDLE, bundle_out["t2v"], "--component", "vae", "--case", TEXT) == 2
    assert cli("parity", BUNDLE, bundle_out["t2v"], "--component", "vae", "--dtype", "bf16") == 2
    skipped = tmp_path / "skip"
    assert cli("convert", BUNDLE, skipped, "--components", "skip", "--quiet", "--no-fsync") == 0
    capsys.readouterr()
    assert cli("parity", BUNDLE, skipped, "--component", "text_encoder", "--case", TEXT) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text_encoder" in err[0]

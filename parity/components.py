"""Component parity (``parity SOURCE CONVERTED --component text_encoder|vae|pipeline``):
the ORIGINAL pipeline's text encoder and VAE against the ones FastVideo loads
from the converted bundle, layer by layer, through the one report schema.

Sides:

* original: transformers' ``UMT5EncoderModel`` and tokenizer from SOURCE, with
  the original pipeline's cleaning / padding / masking, and diffusers'
  ``AutoencoderKLWan`` from SOURCE with the pipeline's latent normalisation
  (reference/components.py);
* native: FastVideo 0.2.1's own loaders (``TokenizerLoader``,
  ``TextEncoderLoader`` -> its ``UMT5EncoderModel`` in
  fastvideo/models/encoders/t5.py, ``VAELoader`` -> its Wan VAE in
  fastvideo/models/vaes/wanvae.py) on CONVERTED's folders, run through its own
  stage code: ``TextEncodingStage.encode_text`` (LongCat's text preprocessing,
  tokenizer settings and ``umt5_postprocess_text``),
  ``LongCatImageVAEEncodingStage``'s ``retrieve_latents`` / ``normalize_latents``
  and ``DecodingStage.decode`` (denormalisation, decode, frames).

A golden case (``--case``, made by reference/make_component_golden.py from the
ORIGINAL code) adds rows "<case>:golden": the original side against the data
recorded from the upstream pipeline and its own VAE copy, so the original side
is shown to be the original. Without a case, inputs are generated.

Rows (forward order, the same module names on both sides, where the two share
structure): text encoder -- ``input_ids``, ``attention_mask``,
``encoder.embed_tokens``, each block's ``layer.0`` (self-attention) / ``layer.1``
(feed-forward) and output, ``encoder.final_layer_norm``, the pipeline's
``prompt_embeds`` on the valid tokens and in full; VAE -- every encoder block
(outputs of the per-chunk causal calls concatenated along time), ``quant_conv``,
the causal-conv feature caches after the last chunk, the posterior, the seeded
sample, the normalised latent; then the denormalised latent, every decoder
block, the decoder's caches, the decoded video and the frames. Each component
also gets a ``weights`` row: FastVideo's loader must have loaded every tensor of
the folder, bit for bit, and nothing else (its loaders skip unknown keys
silently: this row is the strict check).

Run-time adjustment (fastvideo 0.2.1 on a CPU, as for the DiT): every fastvideo
module's ``get_local_torch_device`` answers ``mps`` on a CPU platform and is
pointed at the CPU; the loaders are asked for float32 and no CPU offload through
the public ``FastVideoArgs`` / pipeline-config fields.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from . import report as R
from .policy import dtype_name
from .trajectory import judge_rows

COMPONENTS = ("text_encoder", "vae", "pipeline")
MAX_SEQUENCE_LENGTH = 512
GENERATED_PROMPTS = ["A red cat walks on the street at night.", ""]


# --------------------------------------------------------------------------- cases

@dataclass
class ComponentCase:
    name: str
    path: Path | None
    meta: dict
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)      # input.* without the prefix
    golden: dict[str, torch.Tensor] = field(default_factory=dict)      # row -> recorded tensor

    @property
    def component(self) -> str:
        return self.meta["component"]


def component_of(path) -> str | None:
    """The ``component`` a case JSON names, or None (a DiT or trajectory case)."""
    p = Path(path).with_suffix(".json")
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (ValueError, RecursionError):   # not JSON (or nested too deeply): the case readers say so
        return None
    return meta.get("component") if isinstance(meta, dict) else None


def load_case(path) -> ComponentCase:
    from safetensors.torch import load_file
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise BadInput(f"{path}: no such case file")
    if not meta_path.is_file():
        raise BadInput(f"{meta_path}: a component case needs its JSON beside it")
    from longcat_convert.jsonfile import load
    meta = load(meta_path, "a component case's JSON object")
    if not isinstance(meta, dict) or meta.get("component") not in COMPONENTS:
        raise BadInput(f"{meta_path}: 'component' must be one of {', '.join(COMPONENTS)}")
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise BadInput(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    case = ComponentCase(str(meta.get("case", path.stem)), path, meta)
    for k, v in tensors.items():
        if k.startswith("input."):
            case.inputs[k[len("input."):]] = v
        elif k.startswith("golden."):
            case.golden[k[len("golden."):]] = v
        elif meta["component"] == "pipeline":
            case.golden[k] = v          # pipeline cases keep the trajectory-case key names
        else:
            raise BadInput(f"{path}: unexpected key {k!r} (input.* and golden.*)")
    need = {"text_encoder": ["prompts"], "vae": [], "pipeline": ["prompt", "height", "width", "num_frames",
                                                                   "steps", "guidance_scale", "seed"]}
    for k in need[meta["component"]]:
        if k not in meta:
            raise BadInput(f"{meta_path}: missing {k!r}")
    if meta["component"] == "vae":
        for k in ("video", "latents"):
            if k not in case.inputs:
                raise BadInput(f"{path}: missing 'input.{k}'")
    return case


def generated_case(component: str, seed: int) -> ComponentCase:
    if component == "text_encoder":
        return ComponentCase("generated", None, {"component": component, "prompts": GENERATED_PROMPTS,
                                                 "max_sequence_length": MAX_SEQUENCE_LENGTH})
    if component == "vae":
        from reference.components import smooth_video
        g = torch.Generator().manual_seed(seed)
        video = smooth_video(g, (1, 3, 9, 32, 32))
        return ComponentCase("generated", None, {"component": component, "sample_seed": seed + 1},
                             {"video": video, "latents": torch.randn(1, 16, 3, 4, 4, generator=g)})
    from reference.components import GENERATED_PIPELINE
    meta = dict(GENERATED_PIPELINE, component="pipeline", mode="t2v",
                steps=GENERATED_PIPELINE["num_inference_steps"], seed=seed,
                max_sequence_length=MAX_SEQUENCE_LENGTH)
    return ComponentCase("generated", None, meta)


# --------------------------------------------------------------------------- FastVideo side

def point_fastvideo_at(device) -> None:
    """fastvideo 0.2.1 answers ``mps`` from get_local_torch_device() on a CPU platform
    (distributed/parallel_state.py); every fastvideo module imported so far that holds
    that function gets one answering the CPU instead. Nothing changes on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return
    import fastvideo.distributed.parallel_state as ps
    import fastvideo.models.loader.component_loader  # noqa: F401
    import fastvideo.pipelines  # noqa: F401
    import fastvideo.pipelines.stages  # noqa: F401
    original = getattr(ps, "_lcc_original_get_local_torch_device", ps.get_local_torch_device)
    ps._lcc_original_get_local_torch_device = original

    def cpu() -> torch.device:
        return torch.device("cpu")
    cpu._lcc_cpu = True
    for name, mod in list(sys.modules.items()):
        if name.startswith("fastvideo") and mod is not None:
            f = getattr(mod, "get_local_torch_device", None)
            if f is original or getattr(f, "_lcc_cpu", False):
                mod.get_local_torch_device = cpu


def fastvideo_args(converted: Path, *, dtype=torch.float32, device="cpu"):
    """FastVideoArgs for CONVERTED with its LongCat pipeline config (resolved from
    model_index.json as FastVideo's registry does), every component in ``dtype`` and
    no CPU offload (offload would wrap modules with FSDP, which needs CUDA)."""
    from . import native as nat
    nat.ensure_runtime(device)
    from fastvideo.fastvideo_args import FastVideoArgs
    from fastvideo.registry import get_pipeline_config_cls_from_name
    prec = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype_name(dtype)]
    try:
        cfg_cls = get_pipeline_config_cls_from_name(str(converted))
    except Exception as e:
        raise BadInput(f"{converted}: FastVideo finds no pipeline config for it ({e}); convert a model folder "
                       "(model_index.json names the LongCat pipeline)") from None
    pc = cfg_cls()
    pc.dit_precision = pc.vae_precision = prec
    pc.text_encoder_precisions = tuple(prec for _ in pc.text_encoder_precisions)
    args = FastVideoArgs(model_path=str(converted), pipeline_config=pc, text_encoder_cpu_offload=False,
                         dit_cpu_offload=False, vae_cpu_offload=False, image_encoder_cpu_offload=False)
    point_fastvideo_at(device)
    return args


def converted_root(converted: Path) -> Path:
    converted = Path(converted)
    root = converted.parent if converted.name == "transformer" else converted
    if not (root / "model_index.json").is_file():
        raise BadInput(f"{converted}: no model_index.json; CONVERTED must be a folder written by convert")
    return root


def component_dir(root: Path, name: str, side: str) -> Path:
    d = root / name
    if not d.is_dir():
        raise BadInput(f"{d}: the {side} folder has no {name}/ (convert with --components copy or link)")
    return d


def _file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BadInput(f"{folder}: no .safetensors weights")
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def strict_text_encoder(model, folder: Path) -> tuple[dict, list[str]]:
    """FastVideo's UMT5 after its TextEncoderLoader vs the folder's tensors: every file
    tensor landed (q/k/v in the fused qkv_proj, in that order), bit for bit; every model
    parameter came from the file. -> (metrics, problems)."""
    files = {k: v for k, v in _file_tensors(folder).items() if "decoder" not in k and "lm_head" not in k}
    params = dict(model.named_parameters())
    covered, problems, worst = set(), [], 0.0
    fused: dict[str, list] = {}
    for k, v in sorted(files.items()):
        for sfx in (".q.weight", ".k.weight", ".v.weight"):
            if k.endswith(sfx):
                fused.setdefault(k[: -len(sfx)] + ".qkv_proj.weight", []).append((sfx[1], v))
                break
        else:
            if k not in params:
                if k == "encoder.embed_tokens.weight" and "shared.weight" in files:
                    continue            # tied to shared.weight (one module in FastVideo)
                problems.append(f"{k}: in the folder, no such parameter in FastVideo's model")
                continue
            p = params[k].detach()
            got = p[: v.shape[0]] if p.shape[0] > v.shape[0] and p.shape[1:] == v.shape[1:] else p
            if tuple(got.shape) != tuple(v.shape):
                problems.append(f"{k}: shape {list(v.shape)} in the folder, {list(p.shape)} loaded")
                continue
            worst = max(worst, float((got.float() - v.float()).abs().max()) if v.numel() else 0.0)
            covered.add(k)
    for name, parts in fused.items():
        if name not in params:
            problems.append(f"{name}: q/k/v in the folder, no fused parameter in FastVideo's model")
            continue
        order = dict(parts)
        if set(order) != {"q", "k", "v"}:
            problems.append(f"{name}: the folder has {sorted(order)} of q/k/v")
            continue
        want = torch.cat([order["q"], order["k"], order["v"]])
        got = params[name].detach()
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{name}: shape {list(want.shape)} from the folder, {list(got.shape)} loaded")
            continue
        worst = max(worst, float((got.float() - want.float()).abs().max()))
        covered.add(name)
    missing = sorted(set(params) - covered)
    if missing:
        problems.append(f"not from the folder: {', '.join(missing[:5])}")
    if worst:
        problems.append(f"loaded values differ from the folder's (max abs {worst:g})")
    return {"tensors": len(files), "max_abs": worst}, problems


def strict_vae(model, folder: Path) -> tuple[dict, list[str]]:
    """FastVideo's Wan VAE after its VAELoader (which loads with strict=False) vs the folder."""
    files = _file_tensors(folder)
    state = model.state_dict()
    problems, worst = [], 0.0
    missing, unexpected = sorted(set(state) - set(files)), sorted(set(files) - set(state))
    if missing:
        problems.append(f"not in the folder: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"in the folder, not in FastVideo's model: {', '.join(unexpected[:5])}")
    for k in sorted(set(state) & set(files)):
        if tuple(state[k].shape) != tuple(files[k].shape):
            problems.append(f"{k}: shape {list(files[k].shape)} in the folder, {list(state[k].shape)} loaded")
            continue
        worst = max(worst, float((state[k].float() - files[k].float()).abs().max()))
    if worst:
        problems.append(f"loaded values differ from the folder's (max abs {worst:g})")
    return {"tensors": len(files), "max_abs": worst}, problems


def load_native_text(root: Path, args):
    from fastvideo.models.loader.component_loader import TextEncoderLoader, TokenizerLoader
    te_dir, tok_dir = component_dir(root, "text_encoder", "converted"), component_dir(root, "tokenizer", "converted")
    tok = TokenizerLoader().load(str(tok_dir), args)
    enc = TextEncoderLoader().load(str(te_dir), args)
    return tok, enc, strict_text_encoder(enc, te_dir)


def load_native_vae(root: Path, args):
    from fastvideo.models.loader.component_loader import VAELoader
    d = component_dir(root, "vae", "converted")
    vae = VAELoader().load(str(d), args)
    return vae, strict_vae(vae, d)


def tokenizer_check(tok, folder: Path) -> tuple[dict, list[str]]:
    """The tokenizer FastVideo's TokenizerLoader built vs the folder's: same vocabulary and specials."""
    from reference.components import load_tokenizer
    ref = load_tokenizer(folder)
    problems = []
    if tok.get_vocab() != ref.get_vocab():
        problems.append("vocabulary differs from the folder's tokenizer")
    for k in ("pad_token_id", "eos_token_id", "unk_token_id"):
        if getattr(tok, k, None) != getattr(ref, k, None):
            problems.append(f"{k}: {getattr(tok, k, None)} loaded, {getattr(ref, k, None)} in the folder")
    return {"tensors": len(ref.get_vocab()), "max_abs": 0.0}, problems


# --------------------------------------------------------------------------- hooks

class Recorder:
    """Forward hooks keeping each named module's outputs (first element of a tuple), per call."""

    def __init__(self, model, names):
        self.calls: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        missing = [n for n in names if not _has(model, n)]
        if missing:
            raise BadInput(f"{type(model).__name__} has no module {missing[0]!r}: the two implementations no "
                           "longer share this structure")
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(_m, _a, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            self.calls[name].append(t.detach().float().cpu().clone())
        return hook

    def rows(self, dim: int | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for n, ts in self.calls.items():
            if ts:
                out[n] = ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def _has(model, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _cache_rows(feat_map, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{j}": c.detach().float().cpu().clone() for j, c in enumerate(feat_map or [])
            if torch.is_tensor(c)}


# --------------------------------------------------------------------------- text encoder

def text_rows(n_blocks: int) -> list[str]:
    rows = ["encoder.embed_tokens"]
    for i in range(n_blocks):
        rows += [f"encoder.block.{i}.layer.0", f"encoder.block.{i}.layer.1", f"encoder.block.{i}"]
    return rows + ["encoder.final_layer_norm"]


def run_reference_text(src_root: Path, case: ComponentCase, device) -> dict[str, torch.Tensor]:
    from reference.components import load_text_encoder, load_tokenizer, tokenize, encode_tokens
    tok = load_tokenizer(component_dir(src_root, "tokenizer", "source"))
    enc = load_text_encoder(component_dir(src_root, "text_encoder", "source"), device=device)
    rec = Recorder(enc, text_rows(len(enc.encoder.block)))
    try:
        ids, mask = tokenize(tok, list(case.meta["prompts"]), int(case.meta.get("max_sequence_length",
                                                                             MAX_SEQUENCE_LENGTH)))
        emb = encode_tokens(enc, ids, mask)
    finally:
        rec.close()
    rows = {"input_ids": ids, "attention_mask": mask}
    rows.update(rec.rows())
    rows["prompt_embeds"] = emb.float().cpu()
    return rows


def run_native_text(tok, enc, case: ComponentCase, args) -> dict[str, torch.Tensor]:
    """FastVideo's TextEncodingStage.encode_text on the case's prompts (LongCat's preprocess
    function, its T5 tokenizer settings, the encoder, umt5_postprocess_text)."""
    from fastvideo.pipelines.stages.text_encoding import TextEncodingStage
    stage = TextEncodingStage(text_encoders=[enc], tokenizers=[tok])
    seen = {}
    pre = enc.register_forward_pre_hook(lambda _m, a, kw: seen.update(ids=kw["input_ids"].clone(),
                                                                      mask=kw["attention_mask"].clone()),
                                        with_kwargs=True)
    rec = Recorder(enc, text_rows(len(enc.encoder.block)))
    try:
        with torch.no_grad():
            embeds, masks = stage.encode_text(list(case.meta["prompts"]), args, return_attention_mask=True)
    finally:
        pre.remove()
        rec.close()
    rows = {"input_ids": seen["ids"].cpu(), "attention_mask": seen["mask"].cpu()}
    rows.update(rec.rows())
    rows["prompt_embeds"] = embeds[0].float().cpu()
    rows["stage_attention_mask"] = masks[0].cpu()
    return rows


def judge_text(report, case: ComponentCase, ref: dict, nat: dict, *, policy, dtype, device) -> None:
    name = case.name
    if case.golden:
        judge_golden(report, case, ref, ["input_ids", "attention_mask",
                                         *[r for r in ref if r.startswith("encoder.")], "prompt_embeds"], policy=policy)
    mask = ref["attention_mask"].bool()
    r_emb = ref["prompt_embeds"][:, 0]                   # [B, 1, L, C] -> the native [B, L, C]
    n_emb = nat["prompt_embeds"]
    cand = {k: v for k, v in nat.items() if k not in ("prompt_embeds", "stage_attention_mask")}
    refs = {k: v for k, v in ref.items() if k != "prompt_embeds"}
    if n_emb.shape == r_emb.shape:
        cand["prompt_embeds.valid_tokens"] = n_emb * mask[..., None]
        refs["prompt_embeds.valid_tokens"] = r_emb * mask[..., None]
    cand["prompt_embeds"], refs["prompt_embeds"] = n_emb, r_emb
    order = ["input_ids", "attention_mask", *[r for r in ref if r.startswith("encoder.")],
             "prompt_embeds.valid_tokens", "prompt_embeds"]
    _judge_in_order(report, name, cand, refs, order, policy=policy, names=("FastVideo", "original"))
    if not torch.equal(nat["stage_attention_mask"], ref["attention_mask"]):
        report["notes"].append(f"{name}: the attention mask FastVideo's text stage returns differs from the "
                               "tokenizer's")


# --------------------------------------------------------------------------- VAE

def vae_rows(vae) -> tuple[list[str], list[str]]:
    enc = ["encoder.conv_in"] + [f"encoder.down_blocks.{i}" for i in range(len(vae.encoder.down_blocks))]
    enc += ["encoder.mid_block", "encoder.norm_out", "encoder.conv_out", "quant_conv"]
    dec = ["post_quant_conv", "decoder.conv_in", "decoder.mid_block"]
    dec += [f"decoder.up_blocks.{i}" for i in range(len(vae.decoder.up_blocks))]
    return enc, dec + ["decoder.norm_out", "decoder.conv_out"]


def _vae_run(vae, case: ComponentCase, encode, decode, enc_cache, dec_cache) -> dict[str, torch.Tensor]:
    """Shared driver: hooks, encode(video) -> (mean, std, sample, normalized), decode(latents) -> (z, video, frames)."""
    enc_rows, dec_rows = vae_rows(vae)
    caches: dict = {}
    rec = Recorder(vae, enc_rows)
    h = vae.encoder.register_forward_hook(lambda *_: caches.__setitem__("enc", _cache_rows(enc_cache(), "encoder.feat_cache")))
    try:
        with torch.no_grad():
            mean, std, sample, normalized = encode(case.inputs["video"])
    finally:
        rec.close()
        h.remove()
    rows = rec.rows(dim=2)
    rows.update(caches.get("enc", {}))
    rows.update({"latent_dist.mean": mean, "latent_dist.std": std, "latents.sample": sample,
                 "latents.normalized": normalized})
    rec = Recorder(vae, dec_rows)
    h = vae.decoder.register_forward_hook(lambda *_: caches.__setitem__("dec", _cache_rows(dec_cache(), "decoder.feat_cache")))
    try:
        with torch.no_grad():
            z, video, frames = decode(case.inputs["latents"])
    finally:
        rec.close()
        h.remove()
    rows["decode.latents"] = z
    rows.update(rec.rows(dim=2))
    rows.update(caches.get("dec", {}))
    rows.update({"decode.video": video, "frames": frames})
    return {k: v.detach().float().cpu() for k, v in rows.items()}


def run_reference_vae(src_root: Path, case: ComponentCase, device) -> dict[str, torch.Tensor]:
    from reference.components import load_vae, to_frames, vae_decode, vae_encode
    vae = load_vae(component_dir(src_root, "vae", "source"), device=device)
    seed = int(case.meta.get("sample_seed", 0))

    def encode(video):
        dist, sample, normalized = vae_encode(vae, video.to(device), torch.Generator().manual_seed(seed))
        return dist.mean, dist.std, sample, normalized

    def decode(latents):
        z, video = vae_decode(vae, latents.to(device))
        return z, video, to_frames(video)
    return _vae_run(vae, case, encode, decode, lambda: vae._enc_feat_map, lambda: vae._feat_map)


def run_native_vae(vae, case: ComponentCase, args, device) -> dict[str, torch.Tensor]:
    """FastVideo's Wan VAE through its LongCat image-encoding stage's retrieve_latents /
    normalize_latents and its DecodingStage.decode."""
    from fastvideo.pipelines.stages.decoding import DecodingStage
    from fastvideo.pipelines.stages.longcat_image_vae_encoding import LongCatImageVAEEncodingStage
    enc_stage, dec_stage = LongCatImageVAEEncodingStage(vae=vae), DecodingStage(vae=vae)
    seed = int(case.meta.get("sample_seed", 0))

    def encode(video):
        dist = vae.encode(video.to(device))
        sample = enc_stage.retrieve_latents(dist, torch.Generator().manual_seed(seed))
        return dist.mean, dist.std, sample, enc_stage.normalize_latents(sample)

    seen = {}
    original_decode = vae.decode

    def observed_decode(z, *a, **kw):
        seen["z"] = z.detach().clone()
        out = original_decode(z, *a, **kw)
        seen["video"] = out.detach().clone()
        return out

    def decode(latents):
        vae.decode = observed_decode                    # an instance attribute: records only
        try:
            frames = dec_stage.decode(latents.to(device), args)
        finally:
            del vae.decode
        return seen["z"], seen["video"], frames
    return _vae_run(vae, case, encode, decode, lambda: getattr(vae, "_enc_feat_map", None),
                    lambda: getattr(vae, "_feat_map", None))


def judge_vae(report, case: ComponentCase, ref: dict, nat: dict, *, policy) -> None:
    order = list(ref)                                      # the reference's recording order is forward order
    order += [k for k in nat if k not in ref]
    if case.golden:
        judge_golden(report, case, ref, order, policy=policy)
    _judge_in_order(report, case.name, nat, ref, order, policy=policy, names=("FastVideo", "original"))


# --------------------------------------------------------------------------- common

def judge_golden(report, case: ComponentCase, ours: dict, order: list[str], *, policy) -> None:
    """Rows "<case>:golden": the original side against what the upstream code recorded
    (every golden row must be produced; rows the golden data does not hold are not judged here)."""
    _judge_in_order(report, f"{case.name}:golden", {k: v for k, v in ours.items() if k in case.golden},
                    case.golden, order, policy=policy, names=("original", "golden data"))


def _judge_in_order(report, case: str, cand: dict, refs: dict, order: list[str], *, policy, names) -> None:
    """One judge_rows call per row, in ``order`` (judge_rows sorts the rows it is handed by the
    denoising loop's order; component rows keep their forward order this way)."""
    seen = set()
    for row in order + sorted((set(cand) | set(refs)) - set(order)):
        if row in seen or (row not in cand and row not in refs):
            continue
        seen.add(row)
        c = {row: cand[row]} if row in cand else {}
        r = {row: refs[row]} if row in refs else {}
        judge_rows(report, case, {k: v.float() for k, v in c.items()}, {k: v.float() for k, v in r.items()},
                   policy=policy, dtype="float32", device="cpu", names=names)


def add_weights_row(report, case: str, component: str, metrics: dict, problems: list[str]) -> None:
    R.add_layer(report, name=f"weights.{component}", case=case,
                metrics={"max_abs": metrics["max_abs"], "tensors": metrics["tensors"]},
                passed=not problems, failures=problems)


def run_component(setup, component: str, case_paths, *, seed: int = 0, sigmas: str = "fastvideo") -> dict:
    """-> a parity report for ``component`` over the given cases (or one generated case)."""
    from longcat_convert.sources import resolve
    if component not in COMPONENTS:
        raise BadInput(f"--component {component!r}: choose {', '.join(COMPONENTS)}")
    if dtype_name(setup.dtype) != "float32":
        raise BadInput("--component runs in float32 (low-precision component parity is not implemented)")
    cases = [load_case(p) for p in case_paths] if case_paths else [generated_case(component, seed)]
    for c in cases:
        if c.component != component:
            raise BadInput(f"{c.path}: a {c.component} case; this run is --component {component}")
    src = resolve(str(setup.source))
    if src.root is None:
        raise BadInput(f"{setup.source}: component parity needs the model folder (with text_encoder/, vae/, ...), "
                       "not a bare dit/ folder")
    root = converted_root(setup.converted)
    device = torch.device(setup.device)
    env = R.environment(device=str(device), dtype="float32", attention=setup.attention)
    env.update(source=str(setup.source), converted=str(setup.converted), component=component)
    title = f"parity {component}: original vs FastVideo (float32, {device})"
    report = R.new_report("parity", title, mode=f"component {component}", policy=setup.policy, dtype="float32",
                          device=str(device), env=env)
    if component == "pipeline":
        from .pipeline_run import run_pipeline_parity
        return run_pipeline_parity(setup, report, src.root, root, cases, sigmas=sigmas)
    args = fastvideo_args(root, dtype=torch.float32, device=device)
    if component == "text_encoder":
        tok, enc, (m, problems) = load_native_text(root, args)
        enc = enc.to(device)
        for case in cases:
            add_weights_row(report, case.name, "text_encoder", m, problems)
            tm, tp = tokenizer_check(tok, component_dir(root, "tokenizer", "converted"))
            add_weights_row(report, case.name, "tokenizer", tm, tp)
            ref = run_reference_text(src.root, case, device)
            nat = run_native_text(tok, enc, case, args)
            judge_text(report, case, ref, nat, policy=setup.policy, dtype="float32", device=str(device))
        report["notes"].append(
            "prompt_embeds: the original hands the DiT the encoder's output at every one of the 512 positions "
            "(padding included) and the mask beside it; FastVideo's umt5_postprocess_text keeps the first "
            "sum(mask) positions and zero-fills the rest. prompt_embeds.valid_tokens compares the unpadded "
            "positions only; the original's own [B, 1, L, C] is compared as [B, L, C]")
    else:
        vae, (m, problems) = load_native_vae(root, args)
        vae = vae.to(device)
        for case in cases:
            add_weights_row(report, case.name, "vae", m, problems)
            ref = run_reference_vae(src.root, case, device)
            nat = run_native_vae(vae, case, args, device)
            judge_vae(report, case, ref, nat, policy=setup.policy)
        report["notes"].append(
            "VAE rows: a module called once per causal chunk (encode: 1 frame, then 4 at a time; decode: one "
            "latent frame at a time) is recorded as its chunk outputs concatenated along time; feat_cache.<j>: "
            "the j-th causal conv's cached frames after the last chunk")
    if any(c.golden for c in cases):
        report["notes"].append("rows of case '<case>:golden': the original side against data recorded from the "
                               "upstream LongCat-Video pipeline and its own AutoencoderKLWan copy "
                               "(reference/make_component_golden.py)")
    return R.finalize(report)


def golden_check_components(checkpoint, case_paths, *, dtype="float32", device="cpu", policy=None) -> dict:
    """golden-check of component cases: the original side (reference/components.py, transformers'
    UMT5, diffusers' Wan VAE, our reference sampler and DiT) against the data recorded from the
    upstream pipeline. -> a report of kind "golden-check"."""
    from longcat_convert.sources import resolve
    from .policy import Policy
    if dtype_name(dtype) != "float32":
        raise BadInput("component cases are checked in float32")
    cases = [load_case(p) for p in case_paths]
    src = resolve(str(checkpoint))
    if src.root is None:
        raise BadInput(f"{checkpoint}: component cases need the model folder (with text_encoder/, vae/, ...)")
    policy = policy or Policy.load()
    device = torch.device(device)
    env = R.environment(device=str(device), dtype="float32", attention="sdpa")
    env.update(reference="ours", checkpoint=str(checkpoint))
    report = R.new_report("golden-check", f"golden-check (original components, float32, {device}) "
                          f"{Path(checkpoint).name}", mode=None, policy=policy, dtype="float32",
                          device=str(device), env=env)
    for case in cases:
        if not case.golden:
            raise BadInput(f"{case.path}: no golden rows to check")
        if case.component == "text_encoder":
            ref = run_reference_text(src.root, case, device)
            order = ["input_ids", "attention_mask", *[r for r in ref if r.startswith("encoder.")], "prompt_embeds"]
        elif case.component == "vae":
            ref = run_reference_vae(src.root, case, device)
            order = list(ref)
        else:
            from .pipeline_run import _order, golden_rows, run_reference_pipeline
            ref = run_reference_pipeline(src.root, case, device)
            gold = golden_rows(case)
            _judge_in_order(report, case.name, {k: v for k, v in ref.items() if k in gold}, gold,
                            _order(set(ref) | set(gold)), policy=policy, names=("original", "golden data"))
            continue
        _judge_in_order(report, case.name, {k: v for k, v in ref.items() if k in case.golden}, case.golden,
                        order, policy=policy, names=("original", "golden data"))
    R.finalize(report)
    for c in report["cases"]:
        c["description"] = next((k.meta.get("description", "") for k in cases if k.name == c["case"]), "")
    return report

"""The strict weights checks of the component sides: FastVideo's loaders skip unknown
keys silently, so each component FastVideo loaded is held against its folder, tensor
by tensor (the report's ``weights.<component>`` row)."""
from __future__ import annotations

from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from . import report as R


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


def add_weights_row(report, case: str, component: str, metrics: dict, problems: list[str]) -> None:
    R.add_layer(report, name=f"weights.{component}", case=case,
                metrics={"max_abs": metrics["max_abs"], "tensors": metrics["tensors"]},
                passed=not problems, failures=problems)

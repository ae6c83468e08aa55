"""Every kind of case, read in one place, and told apart by ``kind`` (decided by
parity/case_kind.py).

* ``dit``: a golden DiT case (``act.*`` recorded activations of one forward;
  reference/golden.py reads the file) -> :class:`parity.inputs.Inputs`;
* ``trajectory``: a golden sampling run (``traj.*`` rows, ``output.latents``, the
  loop's settings in its JSON) -> :class:`TrajectoryCase`, run as a
  :class:`LoopCase`;
* ``component``: a text-encoder, VAE or prompt-to-frames case (its JSON names the
  ``component``) -> :class:`ComponentCase`.

Formats: golden/README.md. Generated counterparts (seeded) come from
:func:`generate_loop` and :func:`generated_component`; DiT inputs from
:func:`parity.inputs.generate`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

from .case_kind import kind_of
from .inputs import Inputs
from .rows import is_loop_row, ordered

COMPONENTS = ("text_encoder", "vae", "pipeline")
REQUIRED = ("input.latents", "input.prompt_embeds", "input.prompt_attention_mask")
MAX_SEQUENCE_LENGTH = 512
GENERATED_PROMPTS = ["A red cat walks on the street at night.", ""]


def load(path):
    """Any case -> Inputs | TrajectoryCase | ComponentCase."""
    kind = kind_of(path)
    if kind == "component":
        return load_component(path)
    return load_trajectory(path) if kind == "trajectory" else load_dit(path)


# --------------------------------------------------------------------------- DiT cases

def load_dit(path: str | Path) -> Inputs:
    """A golden case (``<name>.safetensors`` with ``<name>.json``), read and
    validated by the reference's case reader, as parity inputs."""
    from reference.golden import load_case as read_case
    case = read_case(Path(path))
    loras = case.loras()
    ehs = case.inputs["input.encoder_hidden_states"]
    mask = case.inputs.get("input.encoder_attention_mask")
    if mask is None:
        mask = torch.ones(ehs.shape[0], ehs.shape[-2], dtype=torch.int64)
    kw = case.forward_kwargs()
    return Inputs(
        name=case.name, hidden_states=kw["hidden_states"], timestep=kw["timestep"], encoder_hidden_states=ehs,
        encoder_attention_mask=mask, num_cond_latents=kw["num_cond_latents"], return_kv=kw["return_kv"],
        skip_crs_attn=kw["skip_crs_attn"], kv_cache=dict(case.kv_cache),
        loras=list(loras), bsa=case.bsa(),
        description=case.description,
        golden={k[len("act."):]: v for k, v in case.acts.items()})



# --------------------------------------------------------------------------- trajectory cases

@dataclass
class TrajectoryCase:
    name: str
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]       # input.* (float32; masks int64)
    expected: dict[str, torch.Tensor]      # row name -> recorded tensor, in loop order

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))

    def settings(self, model_dir: Path | None = None):
        from reference.sampling import Settings
        return Settings.from_meta(self.meta, str(self.path.with_suffix(".json")), model_dir)

    def loop_inputs(self):
        from reference.sampling import Inputs
        t = self.tensors
        return Inputs(latents=t["input.latents"], prompt_embeds=t["input.prompt_embeds"],
                      prompt_attention_mask=t["input.prompt_attention_mask"],
                      negative_prompt_embeds=t.get("input.negative_prompt_embeds"),
                      negative_prompt_attention_mask=t.get("input.negative_prompt_attention_mask"))

    def loras(self) -> list[tuple[str, float]]:
        """(path relative to the model folder, multiplier) of every LoRA the case applies."""
        from reference.golden import lora_entries
        return lora_entries(self.meta, self.path.with_suffix(".json"))

    def bsa(self) -> dict | None:
        """The block-sparse attention the loop ran with (``enable_bsa``/``bsa_params``, as in
        DiT cases): None off, {} the checkpoint config's, else the checked params."""
        from reference.golden import bsa_entry
        return bsa_entry(self.meta, self.path.with_suffix(".json"))


def load_trajectory(path) -> TrajectoryCase:
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise BadInput(f"{meta_path}: a trajectory case needs its JSON (mode, steps, scheduler, ...) beside it")
    from longcat_convert.jsonfile import load_object
    meta = load_object(meta_path, "a trajectory case's JSON object")
    if not isinstance(meta.get("case", ""), str):
        raise BadInput(f"{meta_path}: case is {json.dumps(meta['case'])[:60]}; expected a name (string)")
    reader = ShardedReader(path)
    tensors, expected = {}, {}
    for key in reader.keys():
        if key.startswith("input."):
            tensors[key] = reader.get(key)
        elif key.startswith("traj.") or key == "output.latents":
            row = key[len("traj."):] if key.startswith("traj.") else key
            if not is_loop_row(row):
                raise BadInput(f"{path}: unexpected key {key!r} (rows are timesteps, sigmas, kv_cache.<i>.k/v, "
                               "step.<i>.<timestep|dit_in|dit_out|noise_pred|latents>, output.latents)")
            expected[row] = reader.get(key)
        else:
            raise BadInput(f"{path}: unexpected key {key!r} in a trajectory case (input.*, traj.*, output.latents)")
    for need in REQUIRED:
        if need not in tensors:
            raise BadInput(f"{path}: missing {need!r}; is this a trajectory case?")
    for key, t in tensors.items():
        if "mask" not in key and not t.is_floating_point():
            raise BadInput(f"{path}: {key!r} must be a floating tensor, not {t.dtype}")
    if tensors["input.latents"].dim() != 5:
        raise BadInput(f"{path}: input.latents has shape {list(tensors['input.latents'].shape)}; "
                       "expected [B, C, T, H, W]")
    _check_text(path, tensors)
    in_order = {k: expected[k] for k in ordered(expected)}
    return TrajectoryCase(str(meta.get("case", path.stem)), path, meta, tensors, in_order)


def _check_text(path: Path, t: dict) -> None:
    """Prompt embeddings [B, 1, L, C] with an integer mask [B, L], the negative ones
    (when given, both) of the same shape: the loop concatenates them."""
    B = t["input.latents"].shape[0]
    pairs = [("input.prompt_embeds", "input.prompt_attention_mask")]
    neg = ("input.negative_prompt_embeds", "input.negative_prompt_attention_mask")
    if (neg[0] in t) != (neg[1] in t):
        raise BadInput(f"{path}: {neg[0]} and {neg[1]} come together (or neither)")
    if neg[0] in t:
        pairs.append(neg)
    for ek, mk in pairs:
        e, m = t[ek], t[mk]
        if e.dim() != 4 or e.shape[0] != B or e.shape[1] != 1:
            raise BadInput(f"{path}: {ek} has shape {list(e.shape)}; expected [{B}, 1, L, C]")
        if m.is_floating_point() or m.is_complex() or tuple(m.shape) != (B, e.shape[2]):
            raise BadInput(f"{path}: {mk} is {m.dtype} {list(m.shape)}; expected an integer mask [{B}, {e.shape[2]}]")
        if e.shape[1:] != t[pairs[0][0]].shape[1:]:
            raise BadInput(f"{path}: {ek} has shape {list(e.shape)}, {pairs[0][0]} {list(t[pairs[0][0]].shape)}; "
                           "they must agree")


@dataclass
class LoopCase:
    """One sampling comparison: the loop settings and what it starts from."""
    name: str
    settings: object                          # reference.sampling.Settings
    inputs: object                            # reference.sampling.Inputs
    loras: list[tuple[str, float]] = field(default_factory=list)
    description: str = ""
    golden: dict = field(default_factory=dict)
    bsa: dict | None = None                   # block-sparse attention on both sides (parity/inputs.py)


def from_trajectory(case: TrajectoryCase, model_dir: Path | None) -> LoopCase:
    return LoopCase(case.name, case.settings(model_dir), case.loop_inputs(), case.loras(), case.description,
                    dict(case.expected), case.bsa())


def generate_loop(dims, settings, *, shape=(3, 4, 6), text_len=12, valid=None, batch=1, seed=0,
             name="generated") -> LoopCase:
    """Seeded loop inputs: noise latents (clean-looking conditioning frames are
    just more noise here), positive and negative text with ``valid`` tokens."""
    from reference.sampling import Inputs
    from .inputs import generate as generate_forward
    fwd = generate_forward(dims, shape=shape, text_len=text_len, valid=valid, batch=batch, seed=seed, name=name)
    g = torch.Generator().manual_seed(seed + 1)
    neg = torch.randn(fwd.encoder_hidden_states.shape, generator=g)
    inp = Inputs(latents=fwd.hidden_states, prompt_embeds=fwd.encoder_hidden_states,
                 prompt_attention_mask=fwd.encoder_attention_mask,
                 negative_prompt_embeds=neg if settings.cfg else None,
                 negative_prompt_attention_mask=fwd.encoder_attention_mask.clone() if settings.cfg else None)
    s = settings
    desc = (f"generated {s.mode}: latents {list(fwd.hidden_states.shape)}, {s.steps} steps, guidance "
            f"{s.guidance_scale}, shift {s.scheduler.shift}, seed {seed}")
    return LoopCase(name, settings, inp, description=desc)



# --------------------------------------------------------------------------- component cases

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


def load_component(path) -> ComponentCase:
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


def generated_component(component: str, seed: int) -> ComponentCase:
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



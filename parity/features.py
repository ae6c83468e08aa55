"""The feature matrix (``longcat-convert features SOURCE CONVERTED``): FastVideo's own
runtime features, each run through FastVideo's own entry point and compared with the
same run without it.

Every row is one FastVideo field (``FastVideoArgs``, its ``PipelineConfig`` or a
``SamplingParam`` field) or LoRA method (``set_lora_adapter``, ``unmerge_lora_weights``)
at one setting. The native side is ``fastvideo.pipelines.build_pipeline`` on
CONVERTED (a whole model folder), built from ``FastVideoArgs.from_kwargs`` the
way FastVideo's own ``VideoGenerator`` builds it, and run by ``pipeline.forward``
on the tiny bundle's pipeline case. Each run records:

- its rows (text embeddings, schedule, every DiT call and scheduler step, the
  decoded video, the frames; parity/capture.py ``LoopObserver``),
- what FastVideo actually built (``inspect``): each module's parameter dtypes
  and devices, the attention backend of every attention layer (and how many
  calls each ran), the wrappers installed (``torch.compile``'s OptimizedModule,
  FSDP, layerwise-offload hooks, LoRA layers, quantised linears), where the
  weights sat during the first DiT call,
- its wall time and peak resident memory above the start of the run.

Verdicts (the one judge, ``parity.judge.judge``, and the policy decide):
``exact`` (every row bit for bit, the built objects differ), ``no_op`` (rows bit
for bit and nothing in the built objects differs), ``within_tolerance``,
``diverges`` (first divergent row and its size), ``unsupported`` (FastVideo
refused it; its message), ``crashes`` (where, one line), ``not_run`` (why).
The baseline is the same FastVideo run without the feature at the same
precision; each row also carries its verdict against the reference (the
original pipeline, reference/, on SOURCE), beside the baseline's own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from longcat_convert.errors import BadInput

from . import native as nat
from . import report as R
from .judge import judge
from .pipeline import CPU_BASE, MATRIX_FRAMES, MATRIX_STEPS, Run, matrix_case, run_fastvideo
from .policy import dtype_name
from .verdicts import LEGEND, check_pins, headline

# --------------------------------------------------------------------------- KEY=VALUE

# --fastvideo KEY=VALUE, typed by FastVideo's own fields (read from its source, before torch): parity/overrides.py
from .overrides import field_owner, parse_overrides, parse_value, split_overrides  # noqa: E402,F401


# --------------------------------------------------------------------------- one FastVideo run

# --------------------------------------------------------------------------- the matrix

CUDA_AUTOCAST = ("needs CUDA: the LongCat stages run the model under torch.autocast(device_type=\"cuda\", ...) "
                 "(pipelines/stages/longcat_denoising.py LongCatDenoisingStage.forward, decoding.py "
                 "DecodingStage.decode), which is inactive on a CPU, so the low-precision module meets float32 inputs")
CPU_ATTENTION = ("needs CUDA: FastVideo 0.2.1's CpuPlatform defines no get_attn_backend_cls (the tool's one CPU "
                 "adjustment, parity/native.py ensure_runtime, answers SDPA for every request, so a CPU run would "
                 "only measure SDPA); {name} resolves in CudaPlatform.get_attn_backend_cls (platforms/cuda.py)")


@dataclass
class Feature:
    feature: str                     # FastVideo's own field or method name
    setting: str
    kwargs: dict = field(default_factory=dict)       # FastVideoArgs.from_kwargs keywords
    sampling: dict = field(default_factory=dict)     # SamplingParam fields
    before: Callable | None = None   # (pipe, run) -> None: FastVideo methods called on the built pipeline
    baseline: str = "plain"          # plain | lora:<strength> | lora_b
    cpu_needs: str | None = None     # why a failure on a CPU is not_run (the run is still tried)
    skip_on_cpu: str | None = None   # not tried on a CPU at all (why)
    note: str = ""
    runner: str = "process"          # process | fsdp-mesh-on-cpu (one process, FSDP's mesh on the CPU) | fsdp


def lora_files(converted: Path, source: Path) -> tuple[Path | None, Path | None]:
    """(the converted FastVideo-format LoRA, the original-format one) of the tiny bundle, if present."""
    conv = sorted((Path(converted) / "lora").glob("*/*.safetensors")) + sorted((Path(converted) / "lora").glob(
        "*.safetensors"))
    orig = sorted((Path(source) / "lora").glob("*.safetensors"))
    return (conv[0] if conv else None), (orig[0] if orig else None)


def lora_format(path: Path) -> str:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    if keys and all(k.endswith((".lora_A.weight", ".lora_B.weight", ".lora_alpha")) for k in keys):
        return "fastvideo"
    return "original"


def write_scaled_lora(src: Path, dst: Path, factor: float = 2.0) -> Path:
    """A second adapter for switching: the same A, B times ``factor`` (FastVideo format)."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(src))
    save_file({k: (v * factor if k.endswith(".lora_B.weight") else v) for k, v in sd.items()}, str(dst))
    return dst


def unmerge_evidence(pipe, converted: Path, dtype) -> dict:
    """After unmerge_lora_weights: every LoRA layer's base weight against the checkpoint, bit for bit."""
    from longcat_convert.shards import ShardedReader
    from fastvideo.layers.lora.linear import BaseLayerWithLoRA
    reader = ShardedReader(nat.transformer_dir(converted))
    keys = set(reader.keys())
    same = total = 0
    bad = []
    for name, m in pipe.modules["transformer"].named_modules():
        if isinstance(m, BaseLayerWithLoRA) and not m.disable_lora and f"{name}.weight" in keys:
            total += 1
            w = reader.get(f"{name}.weight").to(m.base_layer.weight.dtype)
            if torch.equal(m.base_layer.weight.detach().cpu(), w):
                same += 1
            else:
                bad.append(name)
    active = sum(1 for _n, m in pipe.modules["transformer"].named_modules()
                 if isinstance(m, BaseLayerWithLoRA) and not m.merged and not m.disable_lora)
    return {"weights_restored": f"{same}/{total} bit for bit", "not_restored": bad[:6],
            "layers_applying_lora_unmerged": active}


SECOND_LORA = "doubled_lora.safetensors"


def delta_evidence(pipe, converted: Path, adapter: Path, strength: float) -> dict:
    """How much of one adapter the transformer's weights hold: per adapted layer the projection
    c = <W - W0, E> / <E, E> of the weight change on the adapter's delta E (strength *
    int(alpha) / rank * B @ A, what FastVideo's merge adds); 1.0 = exactly that adapter merged."""
    from safetensors.torch import load_file
    from longcat_convert.shards import ShardedReader
    from fastvideo.layers.lora.linear import BaseLayerWithLoRA
    reader = ShardedReader(nat.transformer_dir(converted))
    sd = load_file(str(adapter))
    cs = []
    for name, m in pipe.modules["transformer"].named_modules():
        if not isinstance(m, BaseLayerWithLoRA) or f"{name}.lora_A.weight" not in sd:
            continue
        A, B = sd[f"{name}.lora_A.weight"].double(), sd[f"{name}.lora_B.weight"].double()
        alpha = sd.get(f"{name}.lora_alpha")
        scale = (int(float(alpha)) / A.shape[0]) if alpha is not None else 1.0
        E = strength * scale * (B @ A)
        dW = m.base_layer.weight.detach().double().cpu() - reader.get(f"{name}.weight").double()
        if float(E.square().sum()) > 0:
            cs.append(float((dW * E).sum() / E.square().sum()))
    cs.sort()
    return {"merged_over_expected": round(cs[len(cs) // 2], 4) if cs else None, "adapted_layers": len(cs)}


def matrix(converted: Path, source: Path, tmp: Path, *, device: str = "cpu") -> list[Feature]:
    """The features and settings the command runs (what LongCat declares and one it does not)."""
    from .fsdp import fastvideo_defaults
    conv_lora, orig_lora = lora_files(converted, source)
    rows = [
        Feature("dit_cpu_offload", "True"),
        Feature("dit_layerwise_offload", "True"),
        Feature("text_encoder_cpu_offload", "True", runner="fsdp-mesh-on-cpu"),
        Feature("vae_cpu_offload", "True"),
        Feature("image_encoder_cpu_offload", "True"),
        Feature("pin_cpu_memory", "True"),
        Feature("FastVideo defaults", "every offload flag and pin_cpu_memory as VideoGenerator.from_pretrained "
                "sets them", kwargs=fastvideo_defaults(converted), runner="fsdp-mesh-on-cpu"),
        Feature("use_fsdp_inference", "True, 2 processes (hsdp_shard_dim 2)", kwargs=dict(use_fsdp_inference=True),
                runner="fsdp"),
        Feature("enable_torch_compile", "True"),
        Feature("inference_torch_compile", "True"),
        Feature("attention_backend", "TORCH_SDPA"),
        Feature("attention_backend", "FLASH_ATTN", skip_on_cpu=CPU_ATTENTION.format(name="FLASH_ATTN")),
        Feature("attention_backend", "SAGE_ATTN", note="not among the backends LongCat's layers declare"),
        Feature("attention_backend", "NO_SUCH_BACKEND"),
        Feature("transformer_quant", "FP8"),
        Feature("transformer_quant", "NVFP4"),
        Feature("enable_teacache", "True", sampling=dict(enable_teacache=True)),
        Feature("vae_tiling", "True"),
        Feature("vae_tiling", "True, tiles of 32x32 px at stride 16 (vae_config.tile_sample_*)",
                kwargs={"vae_tiling": True, "vae_config.tile_sample_min_height": 32,
                        "vae_config.tile_sample_min_width": 32, "vae_config.tile_sample_stride_height": 16,
                        "vae_config.tile_sample_stride_width": 16}),
        Feature("dit_precision", "bf16", cpu_needs=CUDA_AUTOCAST),
        Feature("text_encoder_precisions", "('bf16',)", kwargs=dict(text_encoder_precisions=("bf16",)),
                cpu_needs=CUDA_AUTOCAST),
        Feature("vae_precision", "bf16", cpu_needs=CUDA_AUTOCAST),
    ]
    for f in rows:
        if not f.kwargs and not f.sampling and f.feature != "FastVideo defaults":
            f.kwargs = {f.feature: parse_value(f.setting)}
    if conv_lora is not None:
        neg = write_scaled_lora(conv_lora, tmp / SECOND_LORA)

        def switch_to_b(pipe, run):
            pipe.set_lora_adapter("doubled", str(neg), strength=1.0)
            run.built_extra = {"weights_hold_the_doubled_adapter_times": delta_evidence(pipe, converted, neg, 1.0)[
                "merged_over_expected"]}

        def switch_back(pipe, run):
            pipe.set_lora_adapter("doubled", str(neg), strength=1.0)
            pipe.set_lora_adapter("default")
            run.built_extra = {"weights_hold_the_first_adapter_times": delta_evidence(pipe, converted, conv_lora, 1.0)[
                "merged_over_expected"]}

        def unmerge(pipe, run):
            pipe.unmerge_lora_weights()
            run.built_extra = unmerge_evidence(pipe, converted, next(pipe.modules["transformer"].parameters()).dtype)
            run.built_extra["weights_still_hold_the_adapter_times"] = delta_evidence(pipe, converted, conv_lora, 1.0)[
                "merged_over_expected"]
        a = str(conv_lora)
        rows += [
            Feature("lora_path", f"converted {conv_lora.parent.name}, lora_strength 1.0", kwargs=dict(lora_path=a),
                    baseline="lora:1.0"),
            Feature("lora_strength", "0.5 (with lora_path)", kwargs=dict(lora_path=a, lora_strength=0.5),
                    baseline="lora:0.5"),
            Feature("set_lora_adapter", "switch to a second adapter (B doubled)", kwargs=dict(lora_path=a), before=switch_to_b,
                    baseline="lora_b"),
            Feature("set_lora_adapter", "switch to a second adapter and back", kwargs=dict(lora_path=a),
                    before=switch_back, baseline="lora:1.0"),
            # Unmerged, FastVideo's LoRA layers add the adapter in forward (BaseLayerWithLoRA.forward:
            # not merged and not disable_lora), so the expected result is the adapter at strength 1.0.
            Feature("unmerge_lora_weights", "after lora_path", kwargs=dict(lora_path=a), before=unmerge,
                    baseline="lora:1.0"),
        ]
    if orig_lora is not None:
        rows.append(Feature("lora_path", f"unconverted original-format {orig_lora.name}",
                            kwargs=dict(lora_path=str(orig_lora))))
    return rows


# --------------------------------------------------------------------------- verdicts

def _bit_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def compare(report: dict, label: str, candidate: dict, reference: dict, *, truth: dict | None, policy, dtype,
            device, names) -> dict:
    """Their common rows judged by the one judge into ``report`` (case ``label``), then summed up:
    a verdict among exact / within_tolerance / diverges, the first divergent row and its size,
    the frames' rel L2, and the smallest margin. ``truth``: the original's float32 rows, which
    judge the rows both runs computed in a lower precision (parity/precision.py)."""
    common = [k for k in candidate if k in reference]
    before = len(report["layers"])
    judge(report, label, {k: candidate[k] for k in common}, {k: reference[k] for k in common}, policy=policy,
          dtype=dtype, device=device, names=names, rows=common, truth=truth)
    rows = report["layers"][before:]
    first = next((r for r in rows if not r["passed"]), None)
    frames = next((r for r in rows if r["name"] == "output.frames"), {})
    exact = bool(common) and all(torch.equal(candidate[k], reference[k]) for k in common
                                 if candidate[k].shape == reference[k].shape)
    out = {"verdict": "exact" if exact and first is None else ("within_tolerance" if first is None else "diverges"),
           "rows": len(common), "frames_rel_l2": frames.get("rel_l2"), "frames_max_abs": frames.get("max_abs")}
    if first is not None:
        out.update(first_divergent=first["name"], rel_l2=first.get("rel_l2"), max_abs=first.get("max_abs"),
                   failures=first["failures"][:2], precision=first.get("precision"), margin=first.get("margin"))
    elif not exact:
        worst = max((r for r in rows if r.get("margin")), key=lambda r: r["margin"]["ratio"], default=None)
        if worst is not None:
            out.update(margin=dict(worst["margin"], row=worst["name"]), precision=worst.get("precision"))
    lowered = sorted({r["precision"]["why"] for r in rows if r.get("precision", {}).get("dtype") != dtype_name(dtype)})
    if lowered:
        out["judged_below_asked"] = lowered[0].split(" (")[0] + " and later rows" if len(lowered) > 1 else lowered[0]
    return out


def _built_view(run: Run, other: Run) -> dict:
    """The built objects as compared: attention calls only where both runs counted them (none are
    counted inside regions FastVideo compiles)."""
    import copy
    view = copy.deepcopy(run.built)
    if not run.built.get("attention_calls") or not other.built.get("attention_calls"):
        view.pop("attention_calls", None)
    # The recorded request is bookkeeping; what acts is each layer's implementation (attention_layers).
    view.get("modules", {}).get("transformer", {}).pop("attention_request", None)
    return view


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [f"{path}: {b!r} -> {a!r}"]


def _only_unread_tiling(changed: list[str], run: Run) -> bool:
    """The only built difference is the VAE's tiling settings, and the VAE decodes through its
    feature-cache path, which reads none of them (models/vaes/wanvae.py AutoencoderKLWan.decode)."""
    vae = run.built.get("modules", {}).get("vae", {})
    return vae.get("use_feature_cache") is True and all(
        c.startswith(("modules.vae.use_tiling", "modules.vae.tile_sample_min_hw")) for c in changed)


def is_refusal(err: dict) -> bool:
    """FastVideo refused the setting (argument validation, an explicit raise naming it)
    rather than failing somewhere in a run."""
    return err["phase"] == "args" or err["type"] == "NotImplementedError"


def decide(f: Feature, run: Run, base: Run, *, report: dict, truth: dict | None, policy, dtype, device) -> dict:
    """A row's verdict against its baseline run, with the evidence."""
    row = {"feature": f.feature, "setting": f.setting, "baseline": base_label(f.baseline),
           "wall_s": run.wall_s, "peak_mib": run.peak_mib, "baseline_wall_s": base.wall_s,
           "baseline_peak_mib": base.peak_mib, "fastvideo_warnings": run.warnings[:4]}
    if run.error:
        e = run.error
        line = f"{e['type']}: {e['message']} (at {e['where']}, {e['phase']})"
        if f.cpu_needs and str(device).startswith("cpu"):
            row.update(verdict="not_run", message=f"{f.cpu_needs}; on this CPU it fails: {line}", error=e)
        elif is_refusal(e):
            row.update(verdict="unsupported", message=f"FastVideo refuses it: {e['type']}: {e['message']}", error=e)
        else:
            row.update(verdict="crashes", message=line, error=e)
        if run.built:               # what FastVideo built before it failed (FSDP's wrapping, dtypes)
            row["built"] = run.built
        if run.built_extra:
            row["evidence"] = run.built_extra
            row["message"] += "; " + ", ".join(f"{k} {v}" for k, v in run.built_extra.items() if v not in ([], None))
        return row
    if base.error:
        row.update(verdict="not_run", message=f"its baseline did not run: {base.error['message']}")
        return row
    cmp = compare(report, f"{f.feature}={f.setting}", run.rows, base.rows, truth=truth, policy=policy, dtype=dtype,
                  device=device, names=(f"{f.feature}={f.setting}", row["baseline"]))
    changed = _diff(_built_view(run, base), _built_view(base, run))
    verdict = cmp["verdict"]
    lora = run.built.get("lora") or {}
    inert_lora = bool(lora) and lora.get("targets_reached") == 0     # wrappers installed, none applies
    inert_tiling = bool(changed) and _only_unread_tiling(changed, run)
    if verdict == "exact" and f.baseline == "plain" and (not changed or inert_lora or inert_tiling):
        verdict = "already_default" if not changed and already_in_use(f, base) else "no_op"
    row.update(verdict=verdict, against_baseline=cmp, built=run.built, built_changes=changed[:12])
    if cmp.get("margin"):
        row["margin"] = cmp["margin"]
    if run.built_extra:
        row["evidence"] = run.built_extra
    if lora:
        row["lora_targets"] = {k: lora.get(k) for k in ("targets_present", "targets_reached", "n_skipped")}
    keys = sorted({c.split(":")[0] for c in changed})
    if verdict == "no_op" and inert_tiling:
        row["message"] = ("accepted; every row bit for bit: the VAE's use_tiling (and tile sizes) are set, but "
                          "AutoencoderKLWan.decode with use_feature_cache decodes frame by frame without reading them")
    elif verdict == "no_op" and inert_lora:
        row["message"] = (f"accepted; every row bit for bit: LoRA layers installed ({lora.get('lora_layers')}) but "
                          "none applies an adapter")
    elif verdict == "no_op":
        row["message"] = "accepted; the built objects and every row are the same as without it"
    elif verdict == "already_default":
        row["message"] = ("the setting already in use: the baseline's attention layers run "
                          + ", ".join(sorted(_attention_impls(base))) + "; every row bit for bit")
    elif verdict == "exact":
        row["message"] = "every row bit for bit; built objects differ in " + ", ".join(keys[:4])
    elif verdict == "diverges":
        row["message"] = (f"first divergent {cmp['first_divergent']} (rel L2 {_g(cmp.get('rel_l2'))}, max abs "
                          f"{_g(cmp.get('max_abs'))}); frames rel L2 {_g(cmp['frames_rel_l2'])}")
    else:
        row["message"] = f"within the policy; frames rel L2 {_g(cmp['frames_rel_l2'])}"
    if keys and verdict != "exact":
        row["message"] += "; built objects differ in " + ", ".join(keys[:4])
    if run.built_extra:
        row["message"] += "; " + ", ".join(f"{k} {v}" for k, v in run.built_extra.items() if v not in ([], None))
    req = run.built.get("modules", {}).get("transformer", {}).get("attention_request")
    if req != base.built.get("modules", {}).get("transformer", {}).get("attention_request"):
        layers = run.built["modules"]["transformer"].get("attention_layers", {})
        row["message"] += (f"; the transformer's config records the request {req}, its attention layers run "
                           + ", ".join(f"{k} x{n}" for k, n in layers.items()))
    if run.warnings:
        more = f" (+{len(run.warnings) - 1} more)" if len(run.warnings) > 1 else ""
        row["message"] += f"; FastVideo logged: \"{run.warnings[0][:160]}\"{more}"
    return row


def _attention_impls(run: Run) -> set[str]:
    layers = run.built.get("modules", {}).get("transformer", {}).get("attention_layers", {})
    return {k.split(":")[-1] for k in layers}


def already_in_use(f: Feature, base: Run) -> bool:
    """The row asks for what the baseline already runs with (an attention backend whose
    implementation every attention layer of the baseline already has)."""
    if f.feature != "attention_backend":
        return False
    want = f.setting.upper().replace("TORCH_", "").replace("_", "")
    impls = _attention_impls(base)
    return bool(impls) and all(want in i.upper().replace("_", "") for i in impls)


def _g(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def base_label(baseline: str) -> str:
    if baseline == "plain":
        return "FastVideo without the feature"
    if baseline == "lora_b":
        return "FastVideo with the second adapter merged by FastVideo's LoRA layer (parity/native.py apply_lora)"
    return (f"FastVideo with the LoRA merged at strength {baseline.split(':')[1]} by FastVideo's LoRA layer "
            "(parity/native.py apply_lora)")


# --------------------------------------------------------------------------- the run

def features_report(source, converted, *, policy, dtype=torch.float32, device="cpu", case_path=None,
                    only: tuple[str, ...] = (), overrides: dict | None = None, progress=None,
                    pins: dict | None = None) -> dict:
    """Run the matrix; one report with its ``features`` rows. ``only``: feature names to run.
    ``overrides``: --fastvideo KEY=VALUE applied to every run, baselines included. ``pins``
    (``load_pins``): the verdicts the matrix must reproduce; the report says what changed."""
    import tempfile
    from .cases import generated_component, load_component
    from .components import pipeline_root
    from .pipeline import run_reference_pipeline
    from .policy import dtype_name
    from longcat_convert.sources import resolve
    src_root = resolve(str(source)).root
    if src_root is None:
        raise BadInput(f"{source}: the feature matrix needs the model folder (text_encoder/, vae/, ...), not a "
                       "bare dit/ folder")
    root = pipeline_root(converted)
    base_case = load_component(Path(case_path)) if case_path else generated_component("pipeline", 42)
    if base_case.component != "pipeline":
        raise BadInput(f"{case_path}: a {base_case.component} case; the feature matrix runs a pipeline case")
    case = matrix_case(base_case)
    overrides = dict(overrides or {})
    okw, osp = split_overrides(overrides)
    report = R.start("features", f"FastVideo feature matrix ({dtype_name(dtype)}, {device})", mode="features",
                     policy=policy, dtype=dtype, device=device, source=source, converted=converted,
                     case=f"{case.name} ({MATRIX_STEPS} steps, {MATRIX_FRAMES} frames, "
                          f"{case.meta['height']}x{case.meta['width']})",
                     fastvideo_overrides=overrides or "none")
    say = progress or (lambda *_: None)
    t_all = time.perf_counter()

    def run(f_kwargs=None, sampling=None, before=None, keep=False):
        return run_fastvideo(root, case.meta, kwargs={**okw, **(f_kwargs or {})}, sampling={**osp, **(sampling or {})},
                             dtype=dtype, device=device, before=before, keep_pipe=keep)
    nat.ensure_runtime(device)          # FastVideo's import, outside every row's time
    say("warm-up run (not timed)")
    run()
    say("baseline")
    base = run()
    if base.error:
        raise BadInput(f"the baseline FastVideo run fails ({base.error['type']}: {base.error['message']} at "
                       f"{base.error['where']}); nothing can be judged")
    say("reference (original pipeline)")
    ref_rows = run_reference_pipeline(src_root, case, torch.device(device))
    ref_rows = {k: v for k, v in ref_rows.items() if k.startswith(("step.", "output.frames"))}
    cmp_kw = dict(policy=policy, dtype=dtype, device=device)
    base_vs_ref = compare(report, "baseline vs reference", base.rows, ref_rows, truth=None,
                          names=("FastVideo baseline", "reference"), **cmp_kw)
    report["features_baseline"] = {"wall_s": base.wall_s, "peak_mib": base.peak_mib, "built": base.built,
                                   "against_reference": base_vs_ref,
                                   "fastvideo_args": {**{k: v for k, v in CPU_BASE.items()}, **okw}}
    rows = []
    lora_bases: dict = {}
    with tempfile.TemporaryDirectory(prefix="lcc-features-") as tmp:
        feats = matrix(root, src_root, Path(tmp), device=device)
        if only:
            feats = [f for f in feats if f.feature in only or f"{f.feature}={f.setting}" in only]
        for f in feats:
            say(f"{f.feature} = {f.setting}")
            if f.skip_on_cpu and not str(device).startswith("cuda"):
                rows.append({"feature": f.feature, "setting": f.setting, "verdict": "not_run",
                             "baseline": base_label(f.baseline), "message": f.skip_on_cpu})
                continue
            b = base
            if f.baseline != "plain":
                if f.baseline not in lora_bases:
                    lora_bases[f.baseline] = _tool_lora_run(run, f, Path(tmp), root)
                b = lora_bases[f.baseline]
            r = run_row(f, run, root, case.meta, okw, osp, dtype=dtype, device=device)
            # The original's float32 run is the truth of a row whose baseline is the plain run;
            # the reference pipeline holds no LoRA, so it is no truth for a LoRA baseline.
            row = decide(f, r, b, report=report, truth=ref_rows if f.baseline == "plain" else None, **cmp_kw)
            if f.note:
                row["note"] = f.note
            if not r.error and r.rows and f.baseline == "plain":
                # The reference pipeline runs without LoRA: rows whose baseline holds one are checked
                # against their FastVideo baseline only (the LoRA itself: parity --lora, e2e).
                vs = compare(report, f"{f.feature}={f.setting} vs reference", r.rows, ref_rows, truth=None,
                             names=(f"{f.feature}={f.setting}", "reference"), **cmp_kw)
                vs["same_as_baseline"] = all(vs.get(k) == base_vs_ref.get(k) for k in
                                             ("verdict", "first_divergent", "rel_l2", "frames_rel_l2"))
                row["against_reference"] = vs
            if f.feature == "lora_path" and "original-format" in f.setting:
                row["message"] = _original_lora_message(row, r, f)
            rows.append(row)
    report["features"] = rows
    report["features_findings"] = lora_findings(rows)
    if any(r.get("evidence", {}).get("run_time_adjustment") for r in rows):
        report["notes"].append(f"run-time adjustment on this CPU: {nat.FSDP_MESH_ON_CPU} (rows "
                               + ", ".join(f"{r['feature']}" for r in rows
                                           if r.get("evidence", {}).get("run_time_adjustment")) + ")")
    report["features_wall_s"] = round(time.perf_counter() - t_all, 1)
    report["notes"].append(FEATURES_NOTE)
    R.finalize(report)
    # The matrix's verdicts are findings, not failures: the report passes when the matrix ran and,
    # with pins, every verdict is the pinned one. Its headline is the matrix, never PASSED.
    report["legend"] = dict(LEGEND)
    report["pins"] = check_pins(rows, base_vs_ref, pins) if pins is not None else None
    report["passed"] = not (report["pins"] or {}).get("changed")
    report["headline"] = headline(rows, report["pins"])
    return report


FSDP_WORLD = 2        # use_fsdp_inference's processes (gloo on a CPU, NCCL on GPUs)


def run_row(f: Feature, run, root: Path, meta: dict, okw: dict, osp: dict, *, dtype, device) -> Run:
    """One row's FastVideo run: in this process, or with FastVideo's FSDP device mesh made on the
    CPU (the one named run-time adjustment, parity/native.py fsdp_mesh_on_cpu; nothing else
    changes), or over FSDP_WORLD processes (parity/fsdp.py)."""
    if f.runner == "process" or str(device).startswith("cuda") and f.runner == "fsdp-mesh-on-cpu":
        return run(f.kwargs, f.sampling, f.before)
    from . import fsdp
    kwargs, sampling = {**okw, **f.kwargs}, {**osp, **f.sampling}
    if f.runner == "fsdp-mesh-on-cpu":
        return fsdp.run_single(root, meta, kwargs=kwargs, sampling=sampling, dtype=dtype, device=device)
    res = fsdp.run_fsdp(root, meta, kwargs=kwargs, sampling=sampling, world_size=FSDP_WORLD, dtype=dtype,
                        device=device)
    r = res.as_run()
    r.built["fsdp_run"] = {k: v for k, v in res.summary().items() if k not in ("ranks",)}
    r.built_extra["fsdp_computes_in_bf16"] = fsdp.findings(res, dtype).get("fsdp_computes_in_bf16")
    return r


def lora_findings(rows: list[dict]) -> dict:
    """What the LoRA rows' evidence shows, as the booleans the known-differences catalogue's
    findings point at (``features_findings.<key>``); a key is absent when its row did not run."""
    out = {}
    for r in rows:
        ev = r.get("evidence") or {}
        if r["feature"] == "unmerge_lora_weights" and "weights_restored" in ev:
            done, total = ev["weights_restored"].split()[0].split("/")
            out["lora_unmerge_restores_nothing"] = int(total) > 0 and int(done) < int(total)
        if r["feature"] == "use_fsdp_inference" and ev.get("fsdp_computes_in_bf16") is not None:
            out["fsdp_computes_in_bf16"] = bool(ev["fsdp_computes_in_bf16"])
        times = [v for k, v in ev.items() if k.startswith("weights_hold_the_")]
        if r["feature"] == "set_lora_adapter" and times and times[0] is not None:
            out["lora_switch_accumulates"] = out.get("lora_switch_accumulates", False) or abs(times[0] - 1.0) > 0.01
    return out


FEATURES_NOTE = ("features: each row is one FastVideo run built by FastVideoArgs.from_kwargs -> build_pipeline on "
                 "CONVERTED and run by pipeline.forward, judged against its baseline (the same run without the "
                 "feature at the same precision, or the LoRA merged by FastVideo's LoRA layer code directly) and "
                 "against the reference (the original pipeline on SOURCE, with the original's sigmas); verdicts: "
                 "exact (bit for bit, the built objects differ), no_op (bit for bit and the same built objects), "
                 "within_tolerance, diverges, unsupported (refused), crashes, not_run (why); wall time and peak RSS "
                 "above the run's start beside the baseline's")


def _tool_lora_run(run, f: Feature, tmp: Path, root: Path) -> Run:
    """The baseline of a LoRA row: FastVideo without lora_path, the adapter merged into the built
    transformer by FastVideo's LoRA layer code (parity/native.py apply_lora)."""
    conv, _ = lora_files(root, root)
    if f.baseline == "lora_b":
        path, strength = tmp / SECOND_LORA, 1.0
    else:
        path, strength = conv, float(f.baseline.split(":")[1])

    def merge(pipe, _run):
        nat.apply_lora(pipe.modules["transformer"], path, strength)
    return run(before=merge)


def _original_lora_message(row: dict, r: Run, f: Feature) -> str:
    lora = (r.built or {}).get("lora", {})
    fmt = lora_format(Path(f.kwargs["lora_path"]))
    head = (f"an unconverted original-format LoRA handed to FastVideo (keys are not FastVideo's "
            f"'<module>.lora_A/.lora_B' format: {fmt}); ")
    if r.error:
        return head + row.get("message", "")
    return head + (f"{lora.get('targets_present')} targets present, {lora.get('targets_reached')} reached, "
                   f"{lora.get('n_skipped')} skipped with only a log warning ('LoRA key not loaded'); "
                   + row.get("message", ""))


# --------------------------------------------------------------------------- parity --fastvideo

def check_parity_overrides(specs, *, mode: str, component: str | None, sp) -> dict:
    """``parity --fastvideo KEY=VALUE`` -> the FastVideoArgs / PipelineConfig fields, checked by the
    one check of their combinations (longcat_convert/checks/combos.py); the run carries them
    (``Setup.fastvideo``), so nothing outlives the command."""
    from longcat_convert.checks.combos import fastvideo_combinations
    overrides = parse_overrides(specs)
    fastvideo_combinations(overrides, mode=mode, component=component, sp=sp)
    return split_overrides(overrides)[0]


def record_parity_overrides(report: dict, overrides: dict, built: list[dict]) -> None:
    """The report records the overrides and what FastVideo built with them."""
    if not overrides:
        return
    report["fastvideo"] = {"overrides": overrides, "built": built}
    report["environment"]["fastvideo_overrides"] = ", ".join(f"{k}={v}" for k, v in overrides.items())
    report["notes"].append(
        "--fastvideo " + " ".join(f"{k}={v}" for k, v in overrides.items()) + ": applied through "
        "FastVideoArgs.from_kwargs (FastVideoArgs and PipelineConfig fields); the DiT built by FastVideo's "
        "TransformerLoader, or the pipeline by build_pipeline: " + "; ".join(json_line(b) for b in built))


def json_line(d: dict) -> str:
    import json
    return json.dumps(d, sort_keys=True, default=str)

"""golden-check: run a subject (our reference, or the real upstream model) on
golden cases and judge every recorded quantity against the upstream data.

Two kinds of case: DiT cases (``act.*``: one forward, judged layer by layer)
trajectory cases (``traj.*``: the reference sampler drives the subject
through the original's denoising loop, judged row by row), and component cases
(the original text encoder, VAE and pipeline against the upstream recordings).
Cases are read by parity/cases.py; the one judge, policy and report serve all.
"""
from __future__ import annotations

from pathlib import Path

from longcat_convert.errors import BadInput

from reference.golden import Case, load_case, run_with_hooks
from longcat_convert.dtypes import torch_dtype
from reference.loading import load_reference, parse_device, resolve_checkpoint

from . import report as rep
from .case_kind import kind_of
from .cases import TrajectoryCase, load_component, load_trajectory
from .judge import judge
from .policy import Policy, dtype_name

# Low-precision rules in the policy also bound ``noise_ratio``: a candidate's error
# divided by the reference's own low-precision error. In golden-check the
# candidate IS the reference, so that ratio has no independent yardstick here;
# such runs are judged on the policy's other limits and the report says so.
NOT_APPLICABLE = ("noise_ratio",)


class OursSubject:
    """Our reference behind the small interface run_with_hooks/golden-check use."""

    def __init__(self, model):
        self.model = model

    def get_submodule(self, name):
        return self.model.get_submodule(name)

    def __call__(self, **kw):
        return self.model(**kw)

    def set_bsa(self, params: dict | None) -> None:
        """A case's block-sparse attention (None: as the checkpoint's config.json says)."""
        self.model.set_bsa(params)

    def set_loras(self, loras: list[tuple[Path, float]]) -> None:
        self.model.disable_all_loras()
        self.model.loras.clear()
        keys = []
        for i, (path, mult) in enumerate(loras):
            key = f"lora{i}"
            self.model.load_lora(path, key, mult)
            keys.append(key)
        if keys:
            self.model.enable_loras(keys)


def build_subject(checkpoint, *, dtype, device, attention, reference="ours", upstream_path=None):
    if reference == "upstream":
        from .upstream import load_upstream      # the user's checkout is imported only when asked for
        return load_upstream(checkpoint, upstream_path, dtype=dtype, device=device, attention=attention)
    if reference != "ours":
        raise BadInput(f"--reference {reference!r}: choose ours or upstream")
    if upstream_path is not None:
        raise BadInput("--upstream-path is only used with --reference upstream")
    return OursSubject(load_reference(checkpoint, dtype=dtype, device=device, attention=attention))


def case_loras(case: Case | TrajectoryCase, model_dir: Path) -> list[tuple[Path, float]]:
    out = []
    for rel, mult in case.loras():
        p = model_dir / rel
        if not p.is_file():
            raise BadInput(f"{case.path}: LoRA {rel!r} not found under the model folder {model_dir}")
        out.append((p, mult))
    return out


def golden_check(checkpoint, case_paths, *, dtype="float32", device="cpu", attention="sdpa",
                 reference="ours", upstream_path=None, policy=None, subject=None) -> dict:
    """-> a parity report dict (kind "golden-check"). ``subject`` overrides model building (tests)."""
    tdtype, tdevice = torch_dtype(dtype), parse_device(device)
    dname = dtype_name(tdtype)
    if not case_paths:
        raise BadInput("give at least one golden case (.safetensors)")
    kinds = {kind_of(p) == "component" for p in case_paths}
    if kinds == {True}:          # text encoder / VAE / full-pipeline cases (golden/tiny-bundle/cases)
        return golden_check_components(checkpoint, case_paths, dtype=dtype, device=device, policy=policy)
    if len(kinds) > 1:
        raise BadInput("component cases (text_encoder, vae, pipeline) are checked apart from DiT and trajectory cases")
    # Bad cases fail before any model work.
    cases = [load_trajectory(p) if kind_of(p) == "trajectory" else load_case(p) for p in case_paths]
    seen: dict[str, int] = {}
    for c in cases:                                          # report rows are keyed by case name
        seen[c.name] = seen.get(c.name, 0) + 1
        if seen[c.name] > 1:
            c.name = f"{c.name}#{seen[c.name]}"
    model_dir, _ = resolve_checkpoint(checkpoint)
    loras = [case_loras(c, model_dir) for c in cases]
    settings = {id(c): c.settings(model_dir) for c in cases if isinstance(c, TrajectoryCase)}
    bsa = {id(c): c.bsa() for c in cases}                  # checked before any model work
    policy = policy or Policy.load()
    if subject is None:
        subject = build_subject(checkpoint, dtype=tdtype, device=tdevice, attention=attention,
                                reference=reference, upstream_path=upstream_path)
    title = f"golden-check ({reference} reference, {dname}, {tdevice}) {Path(checkpoint).name}"
    report = rep.start("golden-check", title, mode="golden-check", policy=policy, dtype=dname, device=tdevice,
                       attention=attention, reference=reference, checkpoint=checkpoint)
    skipped_limits = [k for k in policy.limits(dname, str(tdevice), "*") if k in NOT_APPLICABLE]
    if skipped_limits:
        report["notes"].append(f"{', '.join(skipped_limits)} is not applicable in golden-check (the candidate is "
                               "the reference itself); layers are judged on the policy's other limits")

    for case, case_lora in zip(cases, loras):
        subject.set_loras(case_lora)
        subject.set_bsa(bsa[id(case)])
        try:
            if isinstance(case, TrajectoryCase):
                got = run_trajectory(subject, case, settings[id(case)], dtype=tdtype, device=tdevice)
                judge(report, case.name, got, case.expected, policy=policy, dtype=dname, device=str(tdevice),
                      names=("reference", "golden data"), skip_limits=NOT_APPLICABLE)
                continue
            _, got = run_with_hooks(subject, case, move=lambda t: t.to(tdevice))
        except BadInput as e:
            msg = str(e)
            raise BadInput(msg if msg.startswith(str(case.path)) else
                           f"{case.path}: {msg} (is this case for {checkpoint}?)") from None
        # Every recorded activation must be produced; what the subject records beyond them is not judged.
        golden = {act[len("act."):]: t for act, t in case.acts.items()}
        produced = {act[len("act."):]: t for act, t in got.items() if act in case.acts}
        judge(report, case.name, produced, golden, policy=policy, dtype=dname, device=str(tdevice),
              names=("reference", "golden data"), skip_limits=NOT_APPLICABLE)
    rep.finalize(report)
    described = {c.name: c.description for c in cases}
    for c in report["cases"]:
        c["description"] = described.get(c["case"], "")
    return report


def run_trajectory(subject, case: TrajectoryCase, settings, *, dtype, device) -> dict:
    """The original's loop for the case's settings, driven by our sampler, with
    ``subject`` as the DiT -> {row: float32 CPU tensor}."""
    import torch
    from reference.sampling import sample
    got: dict = {}

    def record(name, t):
        got[name] = t.detach().float().cpu().clone()
    with torch.no_grad():
        sample(subject, settings, case.loop_inputs(), dtype=dtype, device=device, record=record)
    return got


def golden_check_components(checkpoint, case_paths, *, dtype="float32", device="cpu", policy=None) -> dict:
    """golden-check of component cases: the original side (reference/components.py, transformers'
    UMT5, diffusers' Wan VAE, our reference sampler and DiT) against the data recorded from the
    upstream pipeline. -> a report of kind "golden-check"."""
    import torch
    from longcat_convert.sources import resolve
    from . import components, pipeline
    from .modes import judge_golden
    if dtype_name(dtype) != "float32":
        raise BadInput("component cases are checked in float32")
    cases = [load_component(p) for p in case_paths]
    src = resolve(str(checkpoint))
    if src.root is None:
        raise BadInput(f"{checkpoint}: component cases need the model folder (with text_encoder/, vae/, ...)")
    policy = policy or Policy.load()
    device = torch.device(device)
    report = rep.start("golden-check", f"golden-check (original components, float32, {device}) "
                       f"{Path(checkpoint).name}", mode="golden-check", policy=policy, dtype="float32", device=device,
                       reference="ours", checkpoint=checkpoint)
    for case in cases:
        if not case.golden:
            raise BadInput(f"{case.path}: no golden rows to check")
        if case.component == "text_encoder":
            judge_golden(report, case, components.run_reference_text(src.root, case, device), case.golden,
                         policy=policy, label=case.name)
        elif case.component == "vae":
            judge_golden(report, case, components.run_reference_vae(src.root, case, device), case.golden,
                         policy=policy, label=case.name)
        else:
            judge_golden(report, case, pipeline.run_reference_pipeline(src.root, case, device),
                         pipeline.golden_rows(case), policy=policy, label=case.name)
    rep.finalize(report)
    for c in report["cases"]:
        c["description"] = next((k.meta.get("description", "") for k in cases if k.name == c["case"]), "")
    return report

"""Inputs checked first: each command's arguments checked before torch or FastVideo is
imported, before anything heavy runs. One function per command (``parity``,
``features``, ``golden_check``, ``gate``, ``convert``, ``export``, ``verify``), called
at the top of it; a problem is one ``BadInput`` line (exit 2) naming the flag or file at
fault and what to do.

The checks themselves live by concern in longcat_convert/checks/, each fact in one place:

* ``checks/paths.py``: what a folder holds (SOURCE an original checkpoint, CONVERTED what
  ``convert`` wrote, "these look swapped"), component and LoRA folders, and every output
  path (``--report``, ``--junit``, OUTPUT: a folder that is there and writable, or can be
  made in a writable one — tried for real, not by permission bits);
* ``checks/cases.py``: case files, their kind (DiT, trajectory, component) and the model
  they were recorded for, from the safetensors headers only;
* ``checks/flags.py``: every flag's value on its own (ranges, ``--device``, ``--dtype``
  in the one vocabulary of longcat_convert/dtypes.py, LoRA specs, ``--bsa-*``, and
  ``--fastvideo KEY=VALUE`` typed by FastVideo's own field, parity/overrides.py);
* ``checks/combos.py``: the flags together and with the model (modes, ``--sp`` against
  the attention heads, block-sparse grids, the sampling loop flags, low precision with
  BSA on a CPU, ``--fastvideo`` with the modes).

Nothing here imports torch; ``tests/test_inputs_first.py`` holds that.
"""
from __future__ import annotations

from pathlib import Path

from . import config_map, sources
from .checks import combos, flags as F
from .checks.cases import KIND_WORDS, CaseInfo, case_for_mode, case_for_model, case_loras, read_case
from .checks.paths import (COMPONENT_FOLDERS, component_folders, converted, here, layout, lora_present, lora_stem,
                           native_dims, no_such_folder, original, output_file, output_folder, report_dir, swapped)
from .errors import BadInput

__all__ = ["CaseInfo", "read_case", "layout", "parity", "features", "golden_check", "gate", "convert", "export",
           "verify"]


# --------------------------------------------------------------------------- parity

def parity(source, converted_spec, o: dict) -> None:
    """``longcat-convert parity SOURCE CONVERTED [options]``, checked before torch is imported."""
    mode, component = o.get("mode", "e2e"), o.get("component")
    flags = F.parity_values(o)
    combos.flag_combinations(o, flags)
    if o.get("tolerances") is not None:
        from parity.policy import Policy       # plain JSON; no torch
        Policy.load(o["tolerances"])
    if o.get("known_file") is not None or o.get("expect"):
        from parity import known               # plain JSON; no torch
        known.Catalogue.load(o.get("known_file")).check_ids(o.get("expect"))
    if o.get("fixes_spec") is not None:
        import fixes                            # names only; no torch
        fixes.parse(o["fixes_spec"])
    if o.get("report_dir") is not None:
        report_dir(o["report_dir"])
    # Where both are local, their roles first (swapped?), then CONVERTED, then a hub SOURCE.
    if layout(source) == "converted" and layout(converted_spec) == "original":
        raise swapped("parity", "SOURCE", source, "CONVERTED", converted_spec)
    conv = converted("parity", "CONVERTED", converted_spec, other=source, other_role="SOURCE",
                     transformer=component is None)
    src = original("parity", "SOURCE", source, other=converted_spec, other_role="CONVERTED",
                   components=component is not None)
    cases = [read_case(c) for c in o.get("cases") or ()]
    for c in cases:
        case_for_mode(c, mode=mode, component=component)
    if component is not None:
        component_folders(component, src, conv)
        for c in cases:
            case_for_model(c, src)
        return
    native_dims(conv, src)
    for c in cases:
        case_for_model(c, src)
    if not cases:
        combos.generated(o, flags, src)
    kv = o.get("kv_cache_frames") or 0
    for c in cases:
        T = c.frames
        if kv and T is not None and not 1 <= kv < T:
            raise BadInput(f"--kv-cache-frames {kv}: must be in [1, T={T}) for --case {c.path} (its latents have "
                           f"{T} frames), or 0")
    # LoRAs: --lora replaces the ones cases name.
    if flags["loras"]:
        for name, _ in flags["loras"]:
            lora_present(lora_stem(name), src, conv, f"--lora {name}")
    else:
        for c in cases:
            for rel, _ in case_loras(c):
                lora_present(lora_stem(rel), src, conv, f"--case {c.path} (its JSON names {rel})")
    if mode == "blocks" and any(case_loras(c) for c in cases):
        raise BadInput("--mode blocks does not apply LoRAs (the case names one); use --mode e2e or layer for "
                       "LoRA parity")
    combos.sp_heads(o.get("sp"), src)
    combos.bsa_low_precision_on_cpu(o, flags["bsa"], cases, src)


# --------------------------------------------------------------------------- features

def features(source, converted_spec, *, case=None, device_name: str = "cpu", tolerances=None, report=None,
             fixes_spec=None, dtype: str = "fp32", overrides=()) -> None:
    """``longcat-convert features SOURCE CONVERTED``: the flags and files, the two folders'
    roles (swapped?), the pipeline's component folders on both sides, the case's kind."""
    F.device("--device", device_name)
    F.dtype("--dtype", dtype)
    F.fastvideo(overrides)
    if fixes_spec is not None:
        import fixes                            # names only; no torch
        fixes.parse(fixes_spec)
    if tolerances is not None:
        from parity.policy import Policy       # plain JSON; no torch
        Policy.load(tolerances)
    if report is not None:
        report_dir(report)
    if layout(source) == "converted" and layout(converted_spec) == "original":
        raise swapped("features", "SOURCE", source, "CONVERTED", converted_spec)
    conv = converted("features", "CONVERTED", converted_spec, other=source, other_role="SOURCE", transformer=False)
    src = original("features", "SOURCE", source, other=converted_spec, other_role="CONVERTED", components=True)
    if case is not None:
        c = read_case(case)
        if c.kind != "component" or c.component != "pipeline":
            kind = f"{c.component} case" if c.kind == "component" else KIND_WORDS[c.kind]
            raise BadInput(f"--case {c.path}: a {kind}; the feature matrix runs a pipeline case (a .json naming "
                           "\"component\": \"pipeline\", as golden/tiny-bundle/cases/pipeline_t2v.safetensors)")
        case_for_model(c, src)
    component_folders("pipeline", src, conv, "the feature matrix")



# --------------------------------------------------------------------------- golden-check

def golden_check(checkpoint, case_paths, *, report=None, dtype: str = "fp32", device_name: str = "cpu",
                 reference: str = "ours", upstream_path=None) -> None:
    """``longcat-convert golden-check CHECKPOINT CASE...``, checked before torch is imported."""
    F.device("--device", device_name)
    if reference == "ours" and upstream_path is not None:
        raise BadInput("--upstream-path is only used with --reference upstream")
    if reference == "upstream" and upstream_path is None:
        raise BadInput("--reference upstream needs --upstream-path (a LongCat-Video git checkout)")
    if upstream_path is not None and not Path(str(upstream_path)).expanduser().is_dir():
        raise BadInput(f"--upstream-path {upstream_path}: no such directory{here(Path(str(upstream_path)))}; "
                       "expected a LongCat-Video git checkout")
    if report is not None:
        report_dir(report)
    cases = [read_case(c, "CASE") for c in case_paths]
    kinds = {c.kind == "component" for c in cases}
    if len(kinds) > 1:
        raise BadInput("component cases (text_encoder, vae, pipeline) are checked apart from DiT and trajectory "
                       "cases; run golden-check once for each")
    comp = kinds == {True}
    text = str(checkpoint)
    if comp and not Path(text).expanduser().exists() and sources.is_repo_id(text):
        return            # a hub model folder: resolved (and checked) by the run
    src = original("golden-check", "CHECKPOINT", checkpoint, hub=False)
    for c in cases:
        case_for_model(c, src, "CHECKPOINT")
    if comp:
        if F.dtype("--dtype", dtype) != "float32":
            raise BadInput(f"component cases are checked in float32; drop --dtype {dtype}")
        if src.bare:
            raise BadInput(f"CHECKPOINT {checkpoint}: component cases need the model folder (with text_encoder/, "
                           "vae/, ...), not a bare dit/ folder")
        for c in cases:
            if c.component not in COMPONENT_FOLDERS:
                raise BadInput(f"{c.path.with_suffix('.json')}: 'component' is {c.component!r}; expected one of "
                               f"{', '.join(COMPONENT_FOLDERS)}")
            lacks = [n for n in COMPONENT_FOLDERS[c.component] if not (src.model_dir / n).is_dir()]
            if lacks:
                raise BadInput(f"CHECKPOINT {checkpoint}: no {', '.join(f'{n}/' for n in lacks)} folder, which the "
                               f"{c.component} case {c.path} needs; give the model folder that holds it")
        return
    for c in cases:
        for rel, _ in case_loras(c):
            if not (src.model_dir / rel).is_file():
                raise BadInput(f"{c.path}: LoRA {rel!r} not found under the model folder {src.model_dir}")




# --------------------------------------------------------------------------- gate

def gate(golden, report, junit, known_file=None) -> None:
    """``gate``: the golden folder holds gate.json, the output paths can be written, the
    catalogue reads; the manifest itself is checked by parity/gate.py's loader."""
    g = Path(str(golden)).expanduser()
    if not (g / "gate.json").is_file():
        what = "a folder" if g.is_dir() else "no such folder"
        raise BadInput(f"--golden {golden}: {what}{here(g)} without gate.json; pass --golden DIR (the golden "
                       "folder with gate.json), run from the project folder (which holds golden/), or use "
                       "--bundled for the matrix installed with the package")
    output_folder(report, "--report", files=("summary.md", "junit.xml", "margins.json"), what="the gate summary")
    if junit is not None:
        output_file(junit, "--junit")
    if known_file is not None:
        from parity import known               # plain JSON; no torch
        known.Catalogue.load(known_file)


# --------------------------------------------------------------------------- converter commands

def convert(source, output) -> None:
    """``convert SOURCE OUTPUT``: SOURCE is not a converted folder (swapped with OUTPUT?)."""
    if layout(source) == "converted":
        if layout(output) == "original":
            raise swapped("convert", "SOURCE", source, "OUTPUT", output)
        raise BadInput(f"SOURCE {source}: a converted (FastVideo-layout) folder; convert takes the original "
                       f"checkpoint (to write the original layout back from it: longcat-convert export {source} "
                       "OUTPUT)")
    if layout(output) == "file":
        raise BadInput(f"OUTPUT {output}: an existing file; OUTPUT is the folder to write")
    output_folder(output, "OUTPUT", files=(), what="the output")


def export(native, output) -> None:
    """``export NATIVE OUTPUT``: NATIVE is a converted folder (swapped with OUTPUT?)."""
    kind = layout(native)
    if kind == "missing":
        raise no_such_folder("NATIVE", native, "expected a FastVideo LongCat folder (with transformer/) or its "
                                               "transformer/ folder")
    if kind == "original":
        if layout(output) == "converted":
            raise BadInput(f"NATIVE and OUTPUT look swapped: {native} is an original LongCat-Video checkpoint and "
                           f"{output} a converted (FastVideo-layout) folder; give the converted folder first: "
                           f"longcat-convert export {output} {native}")
        raise BadInput(f"NATIVE {native}: an original LongCat-Video checkpoint (its config.json does not name "
                       f"{config_map.NATIVE_CLASS}); export writes the original layout from a converted folder (to "
                       f"convert this one: longcat-convert convert {native} OUTPUT)")
    if layout(output) == "file":
        raise BadInput(f"OUTPUT {output}: an existing file; OUTPUT is the folder to write")
    output_folder(output, "OUTPUT", files=(), what="the output")


def verify(source, output, direction: str, recorded: bool) -> None:
    """``verify SOURCE OUTPUT``: the roles fit the direction OUTPUT was written in.

    ``direction``: what OUTPUT's conversion.json says, else what its layout suggests;
    ``recorded``: whether OUTPUT has a conversion.json."""
    s, o = layout(source), layout(output)
    if direction == "native->original":
        if not recorded and s == "converted" and o == "original":
            raise BadInput(f"SOURCE and OUTPUT look swapped: {source} is a converted (FastVideo-layout) folder and "
                           f"{output} an original checkpoint that `export` did not write (no conversion.json); to "
                           f"check a conversion give the original first: longcat-convert verify {output} {source}")
        if s == "original" and recorded:
            raise BadInput(f"SOURCE {source}: an original checkpoint, but OUTPUT {output} was written by export "
                           "(its conversion.json says native->original); SOURCE must be the converted folder it was "
                           "exported from")
        if s == "original" and o == "original":
            raise BadInput(f"SOURCE {source} and OUTPUT {output} are both original checkpoints; OUTPUT must be the "
                           f"folder `longcat-convert convert {source} OUTPUT` wrote")
        if s == "original":
            raise BadInput(f"OUTPUT {output}: no transformer/ folder; expected the folder `longcat-convert convert "
                           f"{source} OUTPUT` wrote")
    elif s == "converted":
        raise BadInput(f"SOURCE {source}: a converted (FastVideo-layout) folder, but OUTPUT {output} is a "
                       "conversion; SOURCE must be the original checkpoint it was converted from")

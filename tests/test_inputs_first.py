"""Inputs checked first, blamed rightly (longcat_convert/precheck.py): every refusal that
needs no model is made before torch or FastVideo is imported, exits 2 with one line
naming the flag or file at fault, and leaves nothing written; swapped SOURCE/CONVERTED
(or OUTPUT) are named as swapped; a relative path that is not there says so, Hub
lookup or not. And the other way: nothing the gate runs is refused."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convert_support import ROOT, leftovers, one_line, run
from parity_support import TINY_A, TINY_B, cli

GOLDEN = ROOT / "golden"
BUNDLE = GOLDEN / "tiny-bundle"
CASES = TINY_A / "cases"
CLI = [sys.executable, "-c",
       "import sys; from longcat_convert.cli import main; rc = main(sys.argv[1:]); "
       "print('heavy:', sorted(m for m in ('torch', 'fastvideo') if m in sys.modules)); sys.exit(rc)"]


def in_subprocess(*argv, cwd: Path = ROOT, env: dict | None = None) -> tuple[int, str, str]:
    """The CLI in a fresh process (so what it imported is its own): (exit code, stdout, stderr)."""
    e = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    e.update(env or {})
    p = subprocess.run(CLI + [str(a) for a in argv], cwd=cwd, env=e, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def bundle_converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny-bundle-native"
    assert cli("convert", BUNDLE, out, "--quiet") == 0
    return out


def _refusals(converted: dict, bundle: Path, tmp: Path):
    """(id, argv, words the one-line message must hold): the observed cases of the issue."""
    a, b = converted["tiny-a"], converted["tiny-b"]
    (tmp / "a-file").write_text("x")
    return [
        ("sp-heads", ["parity", TINY_A, a, "--sp", "3"], ["--sp 3", "2 attention heads"]),
        ("lora-name", ["parity", TINY_A, a, "--lora", "nope"], ["--lora nope", "nope.safetensors"]),
        ("source-lacks-vae", ["parity", TINY_A, bundle, "--component", "vae"], ["SOURCE", "no vae/"]),
        ("converted-lacks-vae", ["parity", BUNDLE, a, "--component", "vae"], ["CONVERTED", "no vae/", "--components"]),
        ("bf16-bsa-cpu", ["parity", TINY_A, a, "--dtype", "bf16", "--case", CASES / "bsa_t2v.safetensors"],
         ["--dtype bf16", "bsa_t2v.json", "enable_bsa", "--device cuda"]),
        ("bf16-bsa-flag", ["parity", TINY_A, a, "--dtype", "bf16", "--bsa-sparsity", "0.5", "--shape", "4,8,8"], ["--bsa-sparsity"]),
        ("report-is-a-file", ["parity", TINY_A, a, "--report", tmp / "a-file"], ["--report", "a-file", "existing file"]),
        ("batch", ["parity", TINY_A, a, "--batch", "-1"], ["--batch -1"]),
        ("text-len", ["parity", TINY_A, a, "--text-len", "0"], ["--text-len 0"]),
        ("valid", ["parity", TINY_A, a, "--valid", "13"], ["--valid 13", "--text-len"]),
        ("shape-zero", ["parity", TINY_A, a, "--shape", "0,4,6"], ["--shape 0,4,6"]),
        ("shape-patch", ["parity", TINY_A, a, "--shape", "3,5,4"], ["--shape 3,5,4", "patch size"]),
        ("num-cond", ["parity", TINY_A, a, "--num-cond-latents", "3"], ["--num-cond-latents 3", "T=3"]),
        ("kv-frames", ["parity", TINY_A, a, "--kv-cache-frames", "3"], ["--kv-cache-frames 3", "T=3"]),
        ("seed", ["parity", TINY_A, a, "--seed", str(2**70)], ["--seed"]),
        ("timestep-nan", ["parity", TINY_A, a, "--timestep", "nan"], ["--timestep nan"]),
        ("guidance-inf", ["parity", TINY_A, a, "--mode", "sampling", "--guidance", "inf"], ["--guidance inf"]),
        ("shift-zero", ["parity", TINY_A, a, "--mode", "sampling", "--shift", "0"], ["--shift 0"]),
        ("steps-zero", ["parity", TINY_A, a, "--mode", "sampling", "--steps", "0"], ["--steps 0"]),
        ("lora-nan", ["parity", TINY_A, a, "--lora", "tiny_lora:nan"], ["--lora", "finite"]),
        ("sp-timeout", ["parity", TINY_A, a, "--sp", "2", "--sp-timeout", "inf"], ["--sp-timeout inf"]),
        ("bsa-grid", ["parity", TINY_A, a, "--bsa-sparsity", "0.5"], ["--shape 3,4,6", "chunk_3d_shape_q [4, 4, 4]"]),
        ("bsa-cdf-nan", ["parity", TINY_A, a, "--bsa-cdf", "nan"], ["--bsa-cdf nan"]),
        ("huge-batch", ["parity", TINY_A, a, "--batch", str(10**9)], ["--batch 1000000000", "GiB"]),
        ("wrong-kind-for-component", ["parity", BUNDLE, bundle, "--component", "vae", "--case", CASES / "t2v.safetensors"],
         ["--case", "t2v.safetensors", "DiT case", "--component vae"]),
        ("component-case-without-flag", ["parity", BUNDLE, bundle, "--case", BUNDLE / "cases" / "vae.safetensors"],
         ["vae.safetensors", "--component vae"]),
        ("case-of-another-model", ["parity", TINY_A, a, "--case", TINY_B / "cases" / "varlen.safetensors"],
         ["varlen.safetensors", "another model", "in_channels 16"]),
        ("case-of-another-model-gc", ["golden-check", TINY_A, TINY_B / "cases" / "varlen.safetensors"],
         ["varlen.safetensors", "another model"]),
        ("converted-of-another-model", ["parity", TINY_A, b, "--case", CASES / "t2v.safetensors"],
         ["does not match", "transformer/config.json"]),
        ("parity-swapped", ["parity", a, TINY_A], ["look swapped", f"parity {TINY_A} {a}"]),
        ("features-swapped", ["features", bundle, BUNDLE], ["look swapped", f"features {BUNDLE} {bundle}"]),
        ("golden-check-converted", ["golden-check", a, CASES / "t2v.safetensors"], ["CHECKPOINT", "converted"]),
        ("missing-case", ["parity", TINY_A, a, "--case", tmp / "nope.safetensors"], ["--case", "nope.safetensors"]),
        # --fastvideo KEY=VALUE typed by FastVideo's own field (read from its source, not imported)
        ("fastvideo-bool", ["parity", TINY_A, a, "--fastvideo", "dit_cpu_offload=maybe"],
         ["--fastvideo dit_cpu_offload=maybe", "FastVideoArgs.dit_cpu_offload", "'maybe'", "accepted: true or false"]),
        ("fastvideo-int", ["parity", TINY_A, a, "--fastvideo", "num_gpus=two"],
         ["--fastvideo num_gpus=two", "FastVideoArgs.num_gpus", "accepted: an integer"]),
        ("fastvideo-precision", ["parity", TINY_A, a, "--fastvideo", "dit_precision=fp64"],
         ["--fastvideo dit_precision=fp64", "PipelineConfig.dit_precision", "one of fp32, fp16, bf16"]),
        ("fastvideo-enum", ["parity", TINY_A, a, "--fastvideo", "attention_backend=FAST"],
         ["attention_backend=FAST", "TORCH_SDPA"]),
        ("fastvideo-sampling-in-parity", ["parity", TINY_A, a, "--fastvideo", "enable_teacache=true"],
         ["enable_teacache", "SamplingParam", "features --fastvideo"]),
        ("fastvideo-blocks", ["parity", TINY_A, a, "--mode", "blocks", "--fastvideo", "vae_tiling=true"],
         ["--fastvideo with --mode blocks"]),
        ("features-fastvideo", ["features", BUNDLE, bundle, "--fastvideo", "vae_tiling=yes"],
         ["--fastvideo vae_tiling=yes", "PipelineConfig.vae_tiling", "true or false"]),
        ("features-fastvideo-unknown", ["features", BUNDLE, bundle, "--fastvideo", "no_such=1"],
         ["--fastvideo no_such", "not a field"]),
        # every output path, before any work, naming its flag
        ("parity-report-proc", ["parity", TINY_A, a, "--report", "/proc/lcc-report"], ["--report /proc/lcc-report"]),
        ("golden-check-report-proc", ["golden-check", TINY_A, CASES / "t2v.safetensors", "--report",
                                      "/proc/lcc-report"], ["--report /proc/lcc-report"]),
        ("features-report-proc", ["features", BUNDLE, bundle, "--report", "/proc/lcc-report"],
         ["--report /proc/lcc-report"]),
        ("gate-report-proc", ["gate", "--golden", GOLDEN, "--report", "/proc/lcc-gate"], ["--report /proc/lcc-gate"]),
        ("gate-junit-folder", ["gate", "--golden", GOLDEN, "--report", tmp / "gate", "--junit", tmp],
         ["--junit", "a folder"]),
        ("gate-junit-proc", ["gate", "--golden", GOLDEN, "--report", tmp / "gate", "--junit", "/proc/x/j.xml"],
         ["--junit /proc/x/j.xml"]),
        ("gate-no-manifest", ["gate", "--golden", tmp, "--report", tmp / "gate"], ["--golden", "gate.json"]),
        ("convert-output-proc", ["convert", TINY_A, "/proc/lcc-out"], ["OUTPUT /proc/lcc-out"]),
        ("export-output-proc", ["export", a, "/proc/lcc-out"], ["OUTPUT /proc/lcc-out"]),
    ]


REFUSE_ALL = """
import contextlib, io, json, sys
from longcat_convert.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    out.append([rc, err.getvalue(), sorted(m for m in ("torch", "fastvideo") if m in sys.modules)])
print(json.dumps(out))
"""


def test_each_refusal_names_its_culprit_before_torch_is_imported(converted, bundle_converted, tmp_path):
    """All the refusals in one fresh process, one after another: after each, neither torch
    nor FastVideo has been imported (a refusal that needed them would show it)."""
    cases = _refusals(converted, bundle_converted, tmp_path)
    p = subprocess.run([sys.executable, "-c", REFUSE_ALL, json.dumps([[str(a) for a in c[1]] for c in cases])],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    assert len(results) == len(cases) >= 30
    for (name, _, words), (rc, err, heavy) in zip(cases, results):
        assert rc == 2, (name, err)
        line = one_line(err)
        assert line.startswith("error:") and "Traceback" not in err, (name, err)
        for w in words:
            assert str(w) in line, (name, w, line)
        assert heavy == [], (name, heavy)               # refused before torch / FastVideo were imported


def test_a_refused_report_leaves_nothing(converted, tmp_path):
    rep = tmp_path / "deep" / "report"
    rc, _, err = run("parity", TINY_A, converted["tiny-a"], "--report", rep, "--batch", "0")
    assert rc == 2 and "--batch 0" in one_line(err) and not (tmp_path / "deep").exists()
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    rc, _, err = run("golden-check", TINY_A, CASES / "t2v.safetensors", "--report", blocker / "r")
    assert rc == 2 and "is a file" in one_line(err) and blocker.read_text() == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: an unwritable --report cannot be made here")
def test_an_unwritable_report_parent_is_refused(converted, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, _, err = run("parity", TINY_A, converted["tiny-a"], "--report", ro / "r")
        assert rc == 2 and "not writable" in one_line(err)
    finally:
        ro.chmod(0o700)


def test_verify_refuses_swapped_arguments(converted):
    rc, _, err = run("verify", converted["tiny-a"], TINY_A)
    line = one_line(err)
    assert rc == 2 and "look swapped" in line and f"verify {TINY_A} {converted['tiny-a']}" in line
    assert run("verify", TINY_A, converted["tiny-a"], "--quiet")[0] == 0
    rc, _, err = run("verify", TINY_A, TINY_B)
    assert rc == 2 and "both original checkpoints" in one_line(err)


def test_verify_of_an_export_keeps_working_and_names_a_wrong_source(converted, tmp_path):
    exp = tmp_path / "exported"
    assert run("export", converted["tiny-a"], exp, "--quiet")[0] == 0
    assert run("verify", converted["tiny-a"], exp, "--quiet")[0] == 0
    rc, _, err = run("verify", TINY_A, exp)
    assert rc == 2 and "written by export" in one_line(err)


def test_convert_and_export_name_a_folder_in_the_wrong_place(converted, tmp_path):
    a = converted["tiny-a"]
    rc, _, err = run("convert", a, tmp_path / "out")
    assert rc == 2 and "converted (FastVideo-layout)" in one_line(err) and f"export {a}" in one_line(err)
    assert leftovers(tmp_path, "out") == []
    rc, _, err = run("export", TINY_A, tmp_path / "out")
    assert rc == 2 and "original LongCat-Video checkpoint" in one_line(err) and f"convert {TINY_A}" in one_line(err)
    assert leftovers(tmp_path, "out") == []
    rc, _, err = run("export", TINY_A, a, "--force")
    assert rc == 2 and "look swapped" in one_line(err)
    assert (a / "transformer" / "config.json").is_file()            # the converted folder untouched


def test_a_missing_relative_path_says_so_with_or_without_a_hub_lookup(tmp_path):
    """`convert golden/tiny-a out/x` run from another folder: golden/tiny-a looks like a
    repo id, so the Hub may be asked; the message still says the local path is not there."""
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}):
        rc, _, err = in_subprocess("convert", "golden/tiny-a", "out/x", cwd=tmp_path,
                                   env=dict(env, HF_HUB_CACHE=str(tmp_path / "hf")))
        line = one_line(err)
        assert rc == 2 and "golden/tiny-a: no such folder" in line and str(tmp_path) in line, (env, line)
        assert "Hugging Face" in line and not (tmp_path / "out").exists()
    rc, _, err = in_subprocess("convert", "no/such/model", "out/x", cwd=tmp_path)    # not a repo id: no lookup
    assert rc == 2 and "no such folder" in one_line(err) and "Hugging Face" not in one_line(err)
    rc, out, err = in_subprocess("parity", "golden/tiny-a", "out/tiny-a-native", cwd=tmp_path)
    line = one_line(err)
    assert rc == 2 and "no such folder" in line and str(tmp_path) in line and "heavy: []" in out


def test_importing_the_parity_commands_does_not_import_torch():
    code = ("import sys, longcat_convert.commands.parity, longcat_convert.precheck, longcat_convert.cli as c; "
            "c._register_all(); print(sorted(m for m in ('torch', 'fastvideo') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr


def test_nothing_the_gate_runs_is_refused(tmp_path):
    """Every parity and golden-check step of golden/gate.json passes the checks (and every
    convert and verify step runs), so the checks refuse only what would fail anyway."""
    from longcat_convert import precheck
    from longcat_convert.cli import _register_all, cli as group
    from parity.gate import DEFAULT_GOLDEN, load_manifest, plan_steps
    _register_all()
    steps = plan_steps(DEFAULT_GOLDEN, tmp_path, load_manifest(DEFAULT_GOLDEN))
    checked = 0
    for s in steps:
        argv = [str(a) for a in s.argv]
        if argv[0] in ("convert", "verify"):
            assert cli(*argv) == 0, argv
            continue
        if argv[0] == "fixes":              # fixes build: no input of a user's to check
            continue
        params = dict(group.get_command(None, argv[0]).make_context(argv[0], argv[1:]).params)
        if argv[0] == "parity":
            precheck.parity(params.pop("source"), params.pop("converted"), params)
        elif argv[0] == "features":
            precheck.features(params["source"], params["converted"], case=params["case_path"],
                              device_name=params["device"], tolerances=params["tolerances"],
                              report=params["report_dir"], dtype=params["dtype"], overrides=params["overrides"])
        else:
            precheck.golden_check(params["checkpoint"], params["cases"], report=params["report_dir"],
                                  dtype=params["dtype"], device_name=params["device"], reference=params["reference"],
                                  upstream_path=params["upstream_path"])
        checked += 1
    assert checked > 50


def test_case_kind_and_model_come_from_headers_only(tmp_path, monkeypatch):
    """A case's kind and model are read from its JSON and safetensors header, never its
    tensor data: with the data zeroed and every tensor read refused, they are still told."""
    from longcat_convert import precheck
    from longcat_convert.shards import ShardedReader

    def no_data(*a, **k):
        raise AssertionError("tensor data read")
    monkeypatch.setattr(ShardedReader, "get", no_data)
    monkeypatch.setattr(ShardedReader, "read_bytes", no_data)
    case = tmp_path / "varlen.safetensors"
    blob = (TINY_B / "cases" / "varlen.safetensors").read_bytes()
    n = 8 + int.from_bytes(blob[:8], "little")
    case.write_bytes(blob[:n] + bytes(len(blob) - n))
    shutil.copy(TINY_B / "cases" / "varlen.json", tmp_path / "varlen.json")
    info = precheck.read_case(case)
    assert info.kind == "dit" and info.shapes["input.hidden_states"][1] == 8 and info.frames == 2
    meta = json.loads((BUNDLE / "cases" / "vae.json").read_text())
    assert precheck.read_case(BUNDLE / "cases" / "vae.safetensors").component == meta["component"]
    assert precheck.read_case(CASES / "traj_t2v_cfg.safetensors").kind == "trajectory"


def test_gate_runs_the_working_folders_golden_or_says_what_to_pass(tmp_path):
    """`gate` from a folder without golden/ refuses at once (no bundled matrix run by
    surprise), naming --golden, --bundled and the project; --bundled reaches the matrix
    installed with the tool (here refused a moment later on its --report, so it resolved)."""
    rc, out, err = in_subprocess("gate", cwd=tmp_path)
    line = one_line(err)
    assert rc == 2 and "--golden golden" in line and "gate.json" in line and "--bundled" in line, line
    assert "heavy: []" in out and not (tmp_path / "reports").exists()
    rc, out, err = in_subprocess("gate", "--bundled", "--report", "/proc/lcc-gate", cwd=tmp_path)
    assert rc == 2 and "--report /proc/lcc-gate" in one_line(err) and "heavy: []" in out
    rc, _, err = in_subprocess("gate", "--bundled", "--golden", ROOT / "golden", cwd=tmp_path)
    assert rc == 2 and "--bundled with --golden" in one_line(err)
    from longcat_convert.cli import _register_all, cli as group
    _register_all()
    help_text = " ".join(group.get_command(None, "gate").get_help(
        group.get_command(None, "gate").make_context("gate", ["--bundled"], resilient_parsing=True)).split())
    assert "./golden in the working folder" in help_text and "--bundled" in help_text
    assert str(ROOT) not in help_text                 # no install path printed as the default


def test_an_output_path_is_probed_for_real_not_by_permission_bits(tmp_path):
    """A folder os.access calls writable but where nothing can be made (/proc) is refused by
    the probe; the probe leaves nothing behind in a folder that is writable."""
    from longcat_convert.checks.paths import output_file, output_folder
    from longcat_convert.errors import BadInput
    with pytest.raises(BadInput, match=r"^--report /proc/x: cannot make it"):
        output_folder("/proc/x")
    with pytest.raises(BadInput, match=r"^--junit /proc/j.xml: cannot write it"):
        output_file("/proc/j.xml", "--junit")
    output_folder(tmp_path / "a" / "b")
    output_folder(tmp_path)
    output_file(tmp_path / "j.xml", "--junit")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

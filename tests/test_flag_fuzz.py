"""Property tests over every flag: no value of any option of parity, golden-check, convert,
verify, export or plan ends in a traceback (exit 0, 1 or 2; a refusal is one line, or
click's usage error naming the option), and a refusal made by the input checks
(longcat_convert/precheck.py) names one of the flags or files it was given.

Values are the hostile ones (negative, zero, huge, NaN, inf, empty, non-numeric, lists
where a number goes, unicode digits) next to ordinary ones. `make test` runs a bounded
set: the flag checks directly; parity as the real command on what the checks refuse
(nothing loads a model), and for real on a few values they pass; the quick commands
(golden-check, convert, verify, export, plan) for real. `LONGCAT_FUZZ=long` (with
`LONGCAT_FUZZ_SCALE`) runs parity for real on more of what the checks let through,
``--sp``, the modes, long sampling runs and ``--fastvideo`` included.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import fuzz_support as F
from convert_support import leftovers, run

TINY_A, GOLDEN = F.TINY_A, F.GOLDEN
CASES = TINY_A / "cases"
LONG = F.PROFILE != "ci"

NUMBERS = ["-1", "0", "1", "2", "3", "-0", "0.5", "1.5", "1e3", "1e400", "-1e400", "nan", "-nan", "inf", "-inf",
           "", " ", "abc", "1_0", "0x10", "\u0969", "\uff11", str(2**31), str(2**63 - 1), str(2**63), str(2**64),
           str(10**30), "1,2", "3,4,6", "0,4,6", "-3,4,6", "1,2,2", "4,4,4", "3,4,6,1", ",", "1,,2", "3, 4, 6"]
PARITY_VALUED = ["--shape", "--text-len", "--valid", "--batch", "--timestep", "--seed", "--num-cond-latents",
                 "--kv-cache-frames", "--lora-multiplier", "--bsa-sparsity", "--bsa-cdf", "--bsa-chunk-q",
                 "--bsa-chunk-k", "--steps", "--guidance", "--shift", "--t-thresh", "--sp", "--sp-timeout"]
CHOICES = {
    "--mode": ["e2e", "layer", "blocks", "sampling", "", "E2E"],
    "--loop": ["t2v", "i2v", "vc", "refine", "x"],
    "--sigmas": ["fastvideo", "original", ""],
    "--sp-start": ["auto", "fork", "spawn", "thread"],
    "--dtype": ["fp32", "bf16", "fp16", "float32", "bfloat16", "int8", ""],
    "--component": ["text_encoder", "vae", "pipeline", "dit"],
    "--attention": ["sdpa", "math", "flash2", "flash3", "banana", ""],
    "--device": ["cpu", "cpu:0", "cuda", "cuda:0", "cuda:99", "cuda:-1", "cuda:", "CPU", "mps", "meta", "", "cpu cuda"],
    "--lora": ["tiny_lora", "tiny_lora:0.5", "tiny_lora:-1", "tiny_lora:nan", "tiny_lora:inf", "tiny_lora:abc",
               "tiny_lora:", "tiny_lora:1e400", "tiny_lora.safetensors", "lora/tiny_lora", "nope", "", ":", ":1"],
}
FLAGS = ["--distill", "--enhance-hf", "--no-kv-cache", "--quiet"]


def _paths(scratch: Path) -> dict[str, list[Path]]:
    (scratch / "a-file").write_text("x")
    (scratch / "empty.safetensors").write_bytes(b"")
    return {
        "--case": [CASES / "t2v.safetensors", CASES / "i2v.safetensors", CASES / "t2v_lora.safetensors",
                   CASES / "bsa_t2v.safetensors", CASES / "traj_t2v_cfg.safetensors", CASES / "t2v.json",
                   GOLDEN / "tiny-b/cases/varlen.safetensors", GOLDEN / "tiny-bundle/cases/vae.safetensors",
                   GOLDEN / "extra/tiny-c/cases/kv_prefill.safetensors", scratch / "nope.safetensors",
                   scratch / "empty.safetensors", scratch],
        "--tolerances": [F.ROOT / "parity/tolerances.json", scratch / "nope.json", scratch / "a-file", scratch,
                         CASES / "t2v.safetensors"],
        "--report": [scratch / "a-file", scratch / "a-file" / "r", scratch / "reports"],
    }


def _pairs(draw, options: dict[str, list], n: int) -> list[tuple[str, str]]:
    names = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=n, unique=True))
    return [(name, draw(st.sampled_from(options[name]))) for name in names]


def pairs_of(options: dict[str, list], n: int):
    """1..n distinct options, each with a value from its list."""
    return st.composite(lambda draw: _pairs(draw, options, n))()


def parity_options(scratch: Path, *, include=None, exclude=()) -> dict[str, list]:
    opts: dict[str, list] = {name: NUMBERS for name in PARITY_VALUED}
    opts.update(CHOICES)
    opts.update({k: [str(p) for p in v] for k, v in _paths(scratch).items()})
    opts.update({f: [None] for f in FLAGS})
    opts["--fastvideo"] = ["", "=", "x", "a=b", "dit_cpu_offload=true", "dit_cpu_offload=maybe", "=1", "k=" + "v" * 300,
                           "num_gpus=two", "num_gpus=1", "dit_precision=fp64", "dit_precision=fp32",
                           "attention_backend=banana", "flow_shift=nan", "vae_tiling=1", "enable_teacache=true"]
    opts["--known"] = [str(scratch / "nope.json"), str(scratch / "a-file"), str(F.ROOT / "parity/known_differences.json")]
    if include is not None:
        opts = {k: v for k, v in opts.items() if k in include}
    return {k: v for k, v in opts.items() if k not in exclude}


def argv_of(pairs) -> list[str]:
    out = []
    for name, value in pairs:
        out += [name] if value is None else [name, value]
    return out


def names_a_culprit(line: str, pairs) -> bool:
    return any(name in line or (value and value in line) for name, value in pairs)


def check_run(argv, pairs=None, out: Path | None = None) -> tuple[int, str]:
    """The real command in this process: 0, 1 or 2 and no traceback; a refusal is one
    line (``error: ...``) or click's usage error naming an option; nothing left behind."""
    rc, _, err = run(*argv)
    assert rc in (0, 1, 2), (rc, argv, err)
    assert "Traceback" not in err, (argv, err)
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
        assert lines, (argv, err)
        if lines[-1].startswith("Error:"):              # click's own usage error
            assert "'" in lines[-1] or "option" in lines[-1].lower(), (argv, err)
        else:
            assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err)
    if out is not None and rc != 0:
        assert leftovers(out.parent, out.name) == [], (argv, err)
    return rc, err


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flagfuzz")


# -- the checks themselves: any value, one BadInput naming a given flag or file -------------

@F.examples(100)
@given(st.data())
def test_parity_checks_refuse_with_a_named_culprit_or_pass(scratch, converted, data):
    from longcat_convert import precheck
    from longcat_convert.cli import _register_all, cli
    from longcat_convert.errors import BadInput
    _register_all()
    pairs = data.draw(pairs_of(parity_options(scratch), 4))
    cmd = cli.get_command(None, "parity")
    try:
        params = dict(cmd.make_context("parity", [str(TINY_A), str(converted["tiny-a"])] + argv_of(pairs)).params)
    except click.exceptions.UsageError:
        event("click refused a value")
        return                                     # click refused the value itself (usage error, exit 2)
    try:
        precheck.parity(params.pop("source"), params.pop("converted"), params)
        event("passed the checks")
    except BadInput as e:
        event("refused by the checks")
        line = str(e)
        assert "\n" not in line and names_a_culprit(line, pairs), (pairs, line)


@F.examples(20)
@given(st.data())
def test_golden_check_checks_refuse_with_a_named_culprit_or_pass(scratch, data):
    from longcat_convert import precheck
    from longcat_convert.errors import BadInput
    opts = {"--device": CHOICES["--device"], "--report": [str(p) for p in _paths(scratch)["--report"]],
            "--upstream-path": [str(scratch / "nope"), str(scratch), ""], "--reference": ["ours", "upstream"],
            "--dtype": ["fp32", "bf16", "float16"]}
    pairs = data.draw(pairs_of(opts, 3))
    cases = data.draw(st.lists(st.sampled_from([str(p) for p in _paths(scratch)["--case"]]), min_size=1, max_size=2))
    o = dict(pairs)
    try:
        precheck.golden_check(str(TINY_A), cases, report=o.get("--report"), dtype=o.get("--dtype", "fp32"),
                              device_name=o.get("--device", "cpu"), reference=o.get("--reference", "ours"),
                              upstream_path=o.get("--upstream-path"))
    except BadInput as e:
        line = str(e)
        assert "\n" not in line and (names_a_culprit(line, pairs) or any(c in line for c in cases)
                                     or "component cases" in line), (pairs, cases, line)


# -- the real commands -------------------------------------------------------------------

@F.examples(40)
@given(st.data())
def test_parity_refusals_come_through_the_real_command_as_one_line(scratch, converted, data):
    """Every parity option through the real command, for the values the checks (or click)
    refuse, so nothing loads a model: exit 2, the checks' own line, never a traceback.
    The values the checks pass run for real in the test below."""
    from longcat_convert import precheck
    from longcat_convert.cli import _register_all, cli
    from longcat_convert.errors import BadInput
    _register_all()
    pairs = data.draw(pairs_of(parity_options(scratch), 4))
    argv = [str(TINY_A), str(converted["tiny-a"]), *argv_of(pairs)]
    try:
        params = dict(cli.get_command(None, "parity").make_context("parity", list(argv)).params)
        precheck.parity(params.pop("source"), params.pop("converted"), params)
    except click.exceptions.UsageError:
        event("click refused a value")
        want = None
    except BadInput as e:
        event("refused by the checks")
        want = f"error: {e}"
    else:
        event("passed the checks (run for real below)")
        return
    rc, err = check_run(["parity", *argv], pairs)
    assert rc == 2, (pairs, err)
    if want is not None:
        assert err.strip() == want, (pairs, err)


@pytest.mark.slow
@F.examples(4 if not LONG else 8)
@given(st.data())
def test_parity_runs_whatever_the_checks_let_through(scratch, converted, data):
    """Parity for real on the values the checks pass: 0, 1 or 2, never a traceback. The
    bounded run leaves out --sp, the modes and the sampling step count (each a long run
    on its own; their values are covered above) and --fastvideo; the long run has everything."""
    exclude = () if LONG else ("--sp", "--steps", "--sp-timeout", "--mode", "--loop", "--component", "--fastvideo")
    pairs = data.draw(pairs_of(parity_options(scratch, exclude=exclude), 3))
    check_run(["parity", TINY_A, converted["tiny-a"], *argv_of(pairs), "--quiet"], pairs)


@F.examples(12)
@given(st.data())
def test_golden_check_flags_never_end_in_a_traceback(scratch, data):
    opts = {"--device": CHOICES["--device"], "--dtype": CHOICES["--dtype"], "--attention": CHOICES["--attention"],
            "--reference": ["ours", "upstream", ""], "--upstream-path": [str(scratch / "nope"), str(scratch)],
            "--report": [str(p) for p in _paths(scratch)["--report"]], "--quiet": [None]}
    pairs = data.draw(pairs_of(opts, 3))
    case = data.draw(st.sampled_from([str(p) for p in _paths(scratch)["--case"]]))
    check_run(["golden-check", TINY_A, case, *argv_of(pairs)], pairs)


SIZES = ["5GB", "1B", "0", "-1", "1e400GB", "nanGB", "infGB", "", "abc", "1", "0.5B", str(10**30) + "GB", "2GiB",
         "1 MB", "1e-9GB"]
WRITE_OPTS = {"--dtype": ["bf16", "fp16", "fp32", "int8", ""], "--max-shard-size": SIZES,
              "--components": ["copy", "link", "skip", ""], "--force": [None], "--strict": [None],
              "--no-fsync": [None], "--source-sha256": [None], "--no-hash": [None], "--quiet": [None],
              "--json": [None]}


@F.examples(12)
@given(st.data())
def test_convert_flags_never_end_in_a_traceback(scratch, data):
    opts = dict(WRITE_OPTS, **{"--no-lora": [None], "--revision": ["main", "", "x" * 300, "../.."],
                              "--workload": ["t2v", "i2v", "vc", "refine", "", "T2V", "x"]})
    pairs = data.draw(pairs_of(opts, 4))
    out = scratch / "converted"
    shutil.rmtree(out, ignore_errors=True)
    check_run(["convert", TINY_A, out, *argv_of(pairs)], pairs, out=out)


@F.examples(8)
@given(st.data())
def test_export_verify_and_plan_flags_never_end_in_a_traceback(scratch, converted, data):
    which = data.draw(st.sampled_from(["export", "verify", "plan"]))
    native = converted["tiny-a"]
    if which == "export":
        pairs = data.draw(pairs_of(WRITE_OPTS, 4))
        out = scratch / "exported"
        shutil.rmtree(out, ignore_errors=True)
        check_run(["export", native, out, *argv_of(pairs)], pairs, out=out)
    elif which == "verify":
        opts = {"--revision": ["main", "", "x" * 300], "--quiet": [None], "--json": [None]}
        pairs = data.draw(pairs_of(opts, 3))
        src, dst = data.draw(st.sampled_from([(TINY_A, native), (native, TINY_A), (TINY_A, TINY_A)]))
        check_run(["verify", src, dst, *argv_of(pairs)], pairs)
    else:
        opts = {"--revision": ["main", "", "x" * 300], "--json": [None]}
        pairs = data.draw(pairs_of(opts, 2))
        src = data.draw(st.sampled_from([TINY_A, native, scratch / "nope"]))
        check_run(["plan", src, *argv_of(pairs)], pairs)

"""Fuzzing every input file the tools read.

1. The safetensors reader against the official ``safetensors`` parser (differential):
   for every mutation of a real golden file, if the official parser refuses it ours
   raises BadInput (one line); if it accepts it, ours reads every tensor byte-identically.
2. Shard indexes, config.json, LoRA files, golden case files and their JSON, gate.json
   and tolerance files, through the real commands: exit 0, 1 or 2, never an exception;
   exit 2 is one line and leaves nothing behind.

``make test`` runs a bounded, deterministic number of examples; ``make fuzz`` runs the
same properties long and randomized (LONGCAT_FUZZ=long). Every failure found is kept
in tests/fuzz_corpus/ and replayed here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

import fuzz_support as F

CORPUS_ST = sorted(F.CORPUS.glob("st-*.safetensors"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- 1. the reader, differentially ----------------------------------------------------------


@F.examples(150)
@given(F.safetensors_files())
def test_reader_agrees_with_the_official_parser(scratch, blob):
    F.check_differential(blob, scratch / "sample.safetensors")


@pytest.mark.parametrize("path", CORPUS_ST, ids=lambda p: p.name)
def test_reader_corpus(scratch, path):
    F.check_differential(path.read_bytes(), scratch / "corpus.safetensors")


def test_corpus_covers_both_outcomes(scratch):
    seen = {F.check_differential(p.read_bytes(), scratch / "c.safetensors") for p in CORPUS_ST}
    assert seen == {"accept", "reject"} and len(CORPUS_ST) >= 50


# -- 2. the other inputs, through the real commands -----------------------------------------


def _convert_and_verify(model: Path, scratch: Path) -> None:
    """plan, convert and (when it converted) verify a model folder: exits 0/1/2 only."""
    import shutil
    F.check_command("plan", model)
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    if F.check_command("convert", model, out, "--quiet", "--no-fsync", out=out) == 0:
        assert F.check_command("verify", model, out, "--quiet") == 0


def _model(scratch: Path, rel: str, blob: bytes) -> Path:
    return F.model_folder(scratch / "model", {rel: blob})


@F.examples(20)
@given(F.config_files())
def test_config_json(scratch, blob):
    _convert_and_verify(_model(scratch, "dit/config.json", blob), scratch)


@F.examples(20)
@given(F.index_files())
def test_shard_index(scratch, blob):
    _convert_and_verify(_model(scratch, F.INDEX, blob), scratch)


@F.examples(10)
@given(F.safetensors_files(seeds=[F.TINY_A / "dit" / F.SHARD_NAMES[0]], small=False))
def test_shard_in_a_model_folder(scratch, blob):
    _convert_and_verify(_model(scratch, "dit/" + F.SHARD_NAMES[0], blob), scratch)


@F.examples(15)
@given(F.lora_files())
def test_lora_file(scratch, blob):
    _convert_and_verify(_model(scratch, "lora/tiny_lora.safetensors", blob), scratch)


_WHERE = {"config": "dit/config.json", "index": F.INDEX, "shard": "dit/" + F.SHARD_NAMES[0],
          "lora": "lora/tiny_lora.safetensors"}
CORPUS_MODEL = sorted(p for p in F.CORPUS.iterdir() if p.name.split("-")[0] in _WHERE)


# corpus files that are valid input (each once crashed the tools); every other one is refused
VALID = {"config-edge-flashattn3-markup.json", "lora-edge-one-module-valid.safetensors",
         "lora-edge-alpha-scale-f32-max.safetensors"}


@pytest.mark.parametrize("path", CORPUS_MODEL, ids=lambda p: p.name)
def test_model_input_corpus(scratch, path):
    from convert_support import one_line, run
    rel = _WHERE[path.name.split("-")[0]]
    model = _model(scratch, rel, path.read_bytes())
    _convert_and_verify(model, scratch)
    rc, _, err = run("plan", model)
    if path.name in VALID:
        assert rc == 0, err
    else:
        assert rc == 2 and Path(rel).name in one_line(err), err


def test_a_lora_cut_to_one_module_still_converts(scratch):
    """The LoRA corpus is cut down to one module; the cut-down file itself is valid."""
    model = _model(scratch, "lora/tiny_lora.safetensors", (F.CORPUS / "lora-edge-one-module-valid.safetensors")
                   .read_bytes())
    assert F.check_command("plan", model) == 0

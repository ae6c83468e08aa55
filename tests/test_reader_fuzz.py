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

"""Session fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import pytest

from parity.native import prepare_process

# The test session runs the engine in this process, as a command would: its environment
# (Triton's interpreter on a CPU) is set before any test module imports diffusers or FastVideo.
prepare_process()

from parity_support import TINY_A, TINY_B, cli  # noqa: E402


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict[str, Path]:
    """tiny-a and tiny-b converted once per session by the real converter."""
    base = tmp_path_factory.mktemp("converted")
    out = {}
    for src in (TINY_A, TINY_B):
        dst = base / src.name
        assert cli("convert", src, dst, "--quiet") == 0
        out[src.name] = dst
    return out

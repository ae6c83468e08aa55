"""What one parity run is asked to do: the two folders, precision, device, mode,
LoRAs and the tolerance policy. Sides, runners and the judge all read it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from .policy import Policy

LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class Setup:
    source: Path                      # original model folder or dit/ folder
    converted: Path                   # converted output folder or its transformer/
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    attention: str = "sdpa"
    mode: str = "e2e"
    loras: tuple[tuple[str, float], ...] = ()   # (LoRA name = file stem in SOURCE/lora, multiplier);
                                                # when empty, each case's own LoRAs apply
    policy: Policy = field(default_factory=Policy.load)
    # parity --fastvideo KEY=VALUE: FastVideoArgs / PipelineConfig fields FastVideo's own loaders
    # build the native side with (native.fastvideo_args), and what they built, for the report.
    fastvideo: dict = field(default_factory=dict)
    built: list = field(default_factory=list)

    def record_built(self, what: str, info: dict) -> None:
        self.built.append({"what": what, **info})

    @property
    def low_precision(self) -> bool:
        """bf16 / fp16: the reference also runs in float32 (the truth)."""
        return self.dtype in LOW_PRECISION


def converted_root(converted) -> Path:
    """CONVERTED is the folder ``convert`` wrote or its transformer/: the former."""
    out = Path(converted)
    return out.parent if out.name == "transformer" else out


def lora_files(setup: Setup, model_dir: Path, name: str) -> tuple[Path, Path]:
    """(original-format file in SOURCE/lora, converted file in CONVERTED/lora/NAME)."""
    stem = Path(name).stem if name.endswith(".safetensors") else Path(name).name
    orig = model_dir / "lora" / f"{stem}.safetensors"
    if not orig.is_file():
        raise BadInput(f"{orig}: no such LoRA in the source model folder (SOURCE must be the model folder "
                       "holding dit/ and lora/)")
    conv = converted_root(setup.converted) / "lora" / stem / f"{stem}.safetensors"
    if not conv.is_file():
        raise BadInput(f"{conv}: the converted folder has no LoRA {stem!r}; convert the model folder again")
    return orig, conv


def by_loras(setup: Setup, items: list) -> dict[tuple, list]:
    """Inputs (or loop cases) grouped by the LoRAs they run with (--lora, else each one's
    own ``loras``), so each group loads the models once."""
    groups: dict[tuple, list] = {}
    for item in items:
        key = setup.loras or tuple((Path(p).stem, float(m)) for p, m in item.loras)
        groups.setdefault(key, []).append(item)
    return groups

"""LoRA in the original LongCat-Video file format, applied the original way.

File keys, per target module M (M's dotted path with '.' -> '___lorahyphen___'):

    lora___lorahyphen___<M>.lora_down.weight            [n*r, in]
    lora___lorahyphen___<M>.lora_up.weight              [out, r]        (n = 1)
    lora___lorahyphen___<M>.lora_up.blocks.<j>.weight   [out/n, r]      (j < n)
    lora___lorahyphen___<M>.alpha_scale                 0-d

Added to M's output: multiplier * alpha_scale * up(down(x)); with n > 1 up blocks
the down output is cut into n equal chunks (last dim), chunk j goes through up
block j, and the results are concatenated. Several active LoRAs sum their deltas.

Precision follows the original: adapter weights are cast to the model dtype when
enabled; x is cast to that dtype for ``down``; the up result is cast to x's dtype
and then scaled. Inside a float32 island (numerics.py) the two matmuls run in
float32 on the already-rounded input, as they do under the original's autocast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

PREFIX = "lora___lorahyphen___"
HYPHEN = "___lorahyphen___"
_SUFFIX = re.compile(r"^(lora_down\.weight|lora_up\.weight|lora_up\.blocks\.(\d+)\.weight|alpha_scale)$")


@dataclass(eq=False)          # identity, not tensor comparison
class LoraAdapter:
    module: str                       # dotted module path in the original model
    down: torch.Tensor                # [n*r, in]
    ups: list[torch.Tensor]           # n x [out/n, r]
    alpha_scale: torch.Tensor         # 0-d
    multiplier: float = 1.0
    enabled: bool = True
    _live: tuple | None = field(default=None, repr=False)   # (down, ups, alpha) cast for the model

    @property
    def rank(self) -> int:
        return self.down.shape[0] // len(self.ups)

    def cast(self, device, dtype) -> None:
        self._live = (self.down.to(device=device, dtype=dtype), [u.to(device=device, dtype=dtype) for u in self.ups],
                      self.alpha_scale.to(device=device, dtype=dtype))

    def delta(self, x: torch.Tensor, fp32: bool = False) -> torch.Tensor:
        down, ups, alpha = self._live if self._live is not None else (self.down, self.ups, self.alpha_scale)
        h = x.to(down.dtype)
        mm = (lambda a, w: F.linear(a.float(), w.float())) if fp32 else F.linear
        h = mm(h, down)
        if len(ups) == 1:
            out = mm(h, ups[0])
        else:
            out = torch.cat([mm(c, u) for c, u in zip(h.chunk(len(ups), dim=-1), ups)], dim=-1)
        return out.to(x.dtype) * self.multiplier * alpha


class LoraNetwork:
    """All adapters of one LoRA file, validated against a model."""

    def __init__(self, adapters: list[LoraAdapter], source: str):
        self.adapters, self.source = adapters, source

    def set_multiplier(self, multiplier: float) -> None:
        for a in self.adapters:
            a.multiplier = float(multiplier)

    def set_enabled(self, enabled: bool) -> None:
        for a in self.adapters:
            a.enabled = bool(enabled)

    def attach(self, model) -> None:
        p = next(model.parameters())
        for a in self.adapters:
            a.cast(p.device, p.dtype)
            model.get_submodule(a.module).lora_adapters.append(a)

    def detach(self, model) -> None:
        for a in self.adapters:
            lst = model.get_submodule(a.module).lora_adapters
            while a in lst:
                lst.remove(a)

    @classmethod
    def from_file(cls, path, model, multiplier: float = 1.0) -> "LoraNetwork":
        from .layers import Linear
        path = Path(path)
        reader = ShardedReader(path)
        groups: dict[str, dict[str, str]] = {}
        for key in reader.keys():
            name, _, suffix = key.partition(".")
            if not name.startswith(PREFIX) or not _SUFFIX.match(suffix):
                raise BadInput(f"{path}: {key!r} is not an original-format LoRA key "
                               f"({PREFIX}<module>.lora_down.weight / .lora_up.weight / .lora_up.blocks.<j>.weight / .alpha_scale)")
            groups.setdefault(name, {})[suffix] = key
        if not groups:
            raise BadInput(f"{path}: no LoRA tensors in this file")
        adapters = []
        for name, parts in sorted(groups.items()):
            module = name[len(PREFIX):].replace(HYPHEN, ".")
            where = f"{path}: {name}"
            try:
                target = model.get_submodule(module)
            except AttributeError:
                raise BadInput(f"{where}: the model has no module {module!r}; is this LoRA for this checkpoint?")
            if not isinstance(target, Linear):
                raise BadInput(f"{where}: {module!r} is not a Linear layer; LoRA can only target Linear layers")
            for need in ("lora_down.weight", "alpha_scale"):
                if need not in parts:
                    raise BadInput(f"{where}: missing {need!r}")
            block_ids = sorted(int(_SUFFIX.match(s).group(2)) for s in parts if s.startswith("lora_up.blocks."))
            if block_ids and "lora_up.weight" in parts:
                raise BadInput(f"{where}: has both lora_up.weight and lora_up.blocks.*; keep one form")
            if not block_ids and "lora_up.weight" not in parts:
                raise BadInput(f"{where}: missing 'lora_up.weight' (or lora_up.blocks.<j>.weight)")
            if block_ids and block_ids != list(range(len(block_ids))):
                raise BadInput(f"{where}: lora_up.blocks indices {block_ids} are not 0..{len(block_ids) - 1}")
            up_keys = [parts[f"lora_up.blocks.{j}.weight"] for j in block_ids] or [parts["lora_up.weight"]]
            down = reader.get(parts["lora_down.weight"])
            ups = [reader.get(k) for k in up_keys]
            alpha = reader.get(parts["alpha_scale"])
            n = len(ups)
            if alpha.dim() != 0 or not alpha.is_floating_point():
                raise BadInput(f"{where}: alpha_scale must be a 0-d float tensor, got shape {list(alpha.shape)} {alpha.dtype}")
            if down.dim() != 2 or down.shape[1] != target.in_features or down.shape[0] % n:
                raise BadInput(f"{where}: lora_down.weight has shape {list(down.shape)}; expected "
                               f"[{n}*rank, {target.in_features}]")
            r = down.shape[0] // n
            if target.out_features % n or any(tuple(u.shape) != (target.out_features // n, r) for u in ups):
                raise BadInput(f"{where}: up weight(s) {[list(u.shape) for u in ups]} do not fit "
                               f"[{target.out_features}/{n}, {r}] for {module!r}")
            adapters.append(LoraAdapter(module, down, ups, alpha, float(multiplier)))
        return cls(adapters, str(path))

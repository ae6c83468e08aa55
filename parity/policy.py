"""The tolerance policy: one versioned file (tolerances.json beside this module)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from longcat_convert.dtypes import name as dtype_name      # the one dtype vocabulary
from longcat_convert.errors import BadInput

DEFAULT_PATH = Path(__file__).with_name("tolerances.json")


@dataclass(frozen=True)
class Policy:
    version: int
    rules: tuple[dict, ...]
    path: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Policy":
        from longcat_convert.jsonfile import load
        p = Path(path) if path else DEFAULT_PATH
        data = load(p, "a tolerance policy (needs 'version' and 'rules' with 'max' limits)")

        def bad(why: str) -> BadInput:
            return BadInput(f"{p}: not a valid tolerance policy: {why} (needs 'version' and 'rules' with 'max' limits)")
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        version, rules = data.get("version", 0), data.get("rules")
        if type(version) is not int:
            raise bad(f"version is {json.dumps(version)[:40]}, not an integer")
        if not isinstance(rules, list):
            raise bad("'rules' is not a list")
        for i, r in enumerate(rules):
            if not isinstance(r, dict):
                raise bad(f"rule {i} is not an object")
            for key in ("dtype", "device", "layer"):
                if not isinstance(r.get(key, "*"), str):
                    raise bad(f"rule {i}: {key} is not a pattern (string)")
            limits = r.get("max")
            if not isinstance(limits, dict) or not limits:
                raise bad(f"rule {i}: 'max' is not an object of limits")
            for name, lim in limits.items():
                if isinstance(lim, bool) or not isinstance(lim, (int, float)) or math.isnan(lim):
                    raise bad(f"rule {i}: limit {name!r} is {json.dumps(lim)[:40]}, not a number")
        return cls(version, tuple(rules), str(p))

    def limits(self, dtype, device: str, layer: str) -> dict[str, float]:
        dt, dev = dtype_name(dtype), str(device).split(":")[0]
        for r in self.rules:
            if (fnmatchcase(dt, r.get("dtype", "*")) and fnmatchcase(dev, r.get("device", "*"))
                    and fnmatchcase(layer, r.get("layer", "*"))):
                return dict(r["max"])
        raise BadInput(f"{self.path}: no tolerance rule for dtype={dt} device={dev} layer={layer}; add one")

    def failures(self, metrics: dict, dtype, device: str, layer: str) -> list[str]:
        """The limits this layer's metrics exceed (empty list: pass).
        A limit whose metric was not measured fails: nothing passes unmeasured."""
        out = []
        for key, lim in self.limits(dtype, device, layer).items():
            v = metrics.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)) or v > lim:
                out.append(f"{key}={v if v is not None else 'unmeasured'} > {lim:g}")
        return out

    def judge(self, metrics: dict, dtype, device: str, layer: str) -> bool:
        return not self.failures(metrics, dtype, device, layer)

    def describe(self, dtype, device: str) -> str:
        lim = self.limits(dtype, device, "*")
        return f"policy v{self.version} ({dtype_name(dtype)}, {device}): " + ", ".join(
            f"{k} <= {v:g}" for k, v in lim.items())

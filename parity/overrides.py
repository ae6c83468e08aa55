"""``--fastvideo KEY=VALUE``: each value typed by its FastVideo field, checked before torch.

FastVideo's dataclasses (``FastVideoArgs``, ``PipelineConfig``, ``SamplingParam``) live in
modules that import torch, and the CLI checks every input before torch is imported. So the
field types are read from FastVideo's installed *source text* with ``ast``, without
importing it: the package is located with ``importlib.util.find_spec("fastvideo")`` (which
reads no module of it), each class's annotated fields are collected (following its base
classes and ``from ... import`` names through FastVideo's modules), and an annotation
becomes a type:

* ``bool``, ``int``, ``float``, ``str``; ``X | None`` / ``Optional[X]`` (then ``none`` too);
* an ``Enum`` class: its members' values (or names, for ``enum.auto()``);
* ``Literal[...]`` (also through an alias such as ``QuantizationMethods``): its values;
* ``list``/``tuple``/``dict``: a JSON value of that shape;
* anything else (``Any``, a tensor, a nested config): taken as before (``parse_value``).

Three facts the annotations do not carry are read from the same source: the choices of an
``add_argument(..., choices=[...])`` in the class's module (``output_type``, the
``*_precision`` flags, ...), the precision names (the keys of ``PRECISION_TO_TYPE`` in
fastvideo/utils.py) for every ``*_precision`` / ``*_precisions`` field, and the attention
backends (the members of ``AttentionBackendEnum``, fastvideo/platforms/interface.py) for
``attention_backend``. ``tests/test_fastvideo_overrides.py`` holds the schema against the
imported dataclasses, so a FastVideo release that moves a field is noticed.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from longcat_convert.errors import BadInput

# Where FastVideo declares what --fastvideo may set (module relative to the package, class).
OWNERS = (("args", "fastvideo_args.py", "FastVideoArgs"),
          ("pipeline", "configs/pipelines/base.py", "PipelineConfig"),
          ("sampling", "api/sampling_param.py", "SamplingParam"))
CLASS_OF = {"args": "FastVideoArgs", "pipeline": "PipelineConfig", "sampling": "SamplingParam"}
SUB_CONFIGS = ("vae_config", "dit_config")       # PipelineConfig.update_config_from_dict applies "<sub>.<field>"
PRECISIONS = ("utils.py", "PRECISION_TO_TYPE")
ATTENTION = ("attention_backend", "platforms/interface.py", "AttentionBackendEnum")
_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def parse_value(text: str):
    """An untyped value: ``true``/``false``/``none``/ints/floats/JSON lists, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


# --------------------------------------------------------------------------- the field types

@dataclass(frozen=True)
class FieldType:
    """What a field takes: ``kinds`` tried in order (bool, int, float, str, choice, list,
    tuple, dict, any), ``choices`` for ``choice``, ``optional`` when None is allowed,
    ``each`` the choices every element of a list/tuple must be one of."""
    text: str                        # the annotation as FastVideo writes it
    kinds: tuple[str, ...]
    choices: tuple = ()
    optional: bool = False
    each: tuple = ()
    fold_case: bool = False          # choices compared upper-cased (as FastVideo's coerce_attn_backend does)

    def accepted(self) -> str:
        words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "any text",
                 "list": "a JSON list", "tuple": "a JSON list", "dict": "a JSON object", "any": "any value"}
        parts = []
        for k in self.kinds:
            if k == "choice":
                parts.append("one of " + ", ".join(str(c) for c in self.choices))
            elif k in ("list", "tuple") and self.each:
                parts.append(f"a JSON list of {', '.join(self.each)}")
            elif words[k] not in parts:
                parts.append(words[k])
        if self.optional:
            parts.append("none")
        return "; ".join(parts)

    def parse(self, text: str):
        """The value FastVideo gets, or ValueError."""
        s = text.strip()
        if self.optional and s.lower() in ("none", "null"):
            return None
        for kind in self.kinds:
            try:
                return _PARSERS[kind](self, s, text)
            except ValueError:
                continue
        raise ValueError(text)


def _bool(_t, s, _raw):
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    raise ValueError(s)


def _int(_t, s, _raw):
    if _INT.match(s):
        return int(s)
    raise ValueError(s)


def _float(_t, s, _raw):
    if _FLOAT.match(s) and math.isfinite(float(s)):
        return float(s)
    raise ValueError(s)


def _choice(t, s, _raw):
    for c in t.choices:
        if s == str(c) or (t.fold_case and s.upper() == str(c).upper()):
            return c
    raise ValueError(s)


def _json(shape):
    def parse(t, s, _raw):
        try:
            v = json.loads(s)
        except (ValueError, RecursionError):
            raise ValueError(s) from None
        if shape == "dict" and not isinstance(v, dict):
            raise ValueError(s)
        if shape in ("list", "tuple"):
            if not isinstance(v, list):
                raise ValueError(s)
            if t.each and not all(isinstance(x, str) and x in t.each for x in v):
                raise ValueError(s)
        return v
    return parse


_PARSERS = {"bool": _bool, "int": _int, "float": _float, "str": lambda _t, _s, raw: raw, "choice": _choice,
            "list": _json("list"), "tuple": _json("tuple"), "dict": _json("dict"),
            "any": lambda _t, _s, raw: parse_value(raw)}


# --------------------------------------------------------------------------- FastVideo's source

def package_root() -> Path:
    """FastVideo's installed package folder, found without importing it."""
    spec = importlib.util.find_spec("fastvideo")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("--fastvideo: FastVideo is not installed in this environment (pip install fastvideo)")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _module(rel: str) -> ast.Module | None:
    p = package_root() / rel
    try:
        return ast.parse(p.read_text(encoding="utf-8"), str(p))
    except (OSError, SyntaxError, ValueError):
        return None


def _rel_of(dotted: str) -> str | None:
    """'fastvideo.configs.models' -> 'configs/models/__init__.py' (or .py)."""
    parts = dotted.split(".")
    if parts[0] != "fastvideo":
        return None
    base = "/".join(parts[1:])
    root = package_root()
    if (root / base / "__init__.py").is_file():
        return f"{base}/__init__.py" if base else "__init__.py"
    if (root / f"{base}.py").is_file():
        return f"{base}.py"
    return None


def _dotted_of(rel: str) -> str:
    mod = rel[:-len("/__init__.py")] if rel.endswith("/__init__.py") else rel[:-3]
    return "fastvideo." + mod.replace("/", ".") if mod != "__init__" else "fastvideo"


def _resolve(rel: str, name: str, depth: int = 0):
    """(module, node) where ``name`` as seen from module ``rel`` is defined: a class or a
    module-level assignment, following ``from ... import`` into FastVideo's modules."""
    tree = _module(rel)
    if tree is None or depth > 8:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return rel, node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return rel, node
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return rel, node
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            orig = next(a.name for a in node.names if (a.asname or a.name) == name)
            if node.level:
                pkg = _dotted_of(rel).split(".")
                if not rel.endswith("__init__.py"):
                    pkg = pkg[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                dotted = ".".join(pkg + ([node.module] if node.module else []))
            else:
                dotted = node.module or ""
            target = _rel_of(dotted)
            if target is not None:
                found = _resolve(target, orig, depth + 1)
                if found is not None:
                    return found
    return None


def _is_enum(node: ast.ClassDef) -> bool:
    return any((isinstance(b, ast.Name) and b.id.endswith("Enum")) or
               (isinstance(b, ast.Attribute) and b.attr.endswith("Enum")) for b in node.bases)


def _enum_choices(node: ast.ClassDef) -> tuple:
    out = []
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
            if isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, (str, int)):
                out.append(stmt.value.value)
            else:
                out.append(name)                   # enum.auto(): the member's name
    return tuple(out)


def _class_fields(rel: str, node: ast.ClassDef, depth: int = 0) -> dict[str, tuple[str, ast.expr]]:
    """name -> (module, annotation) of a dataclass's fields, base classes first."""
    out: dict = {}
    for b in node.bases:
        if isinstance(b, ast.Name) and depth < 8:
            found = _resolve(rel, b.id)
            if found and isinstance(found[1], ast.ClassDef):
                out.update(_class_fields(found[0], found[1], depth + 1))
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            out[stmt.target.id] = (rel, stmt.annotation)
    return out


def _type_of(rel: str, ann: ast.expr, depth: int = 0) -> FieldType:
    text = ast.unparse(ann)
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):        # a forward reference
        try:
            return _type_of(rel, ast.parse(ann.value, mode="eval").body, depth)
        except SyntaxError:
            return FieldType(text, ("any",))
    alts: list[ast.expr] = []

    def flatten(a):
        if isinstance(a, ast.BinOp) and isinstance(a.op, ast.BitOr):
            flatten(a.left)
            flatten(a.right)
        elif isinstance(a, ast.Subscript) and ast.unparse(a.value).split(".")[-1] in ("Optional", "Union"):
            sl = a.slice
            for x in (sl.elts if isinstance(sl, ast.Tuple) else [sl]):
                flatten(x)
            if ast.unparse(a.value).endswith("Optional"):
                alts.append(ast.Constant(None))
        else:
            alts.append(a)
    flatten(ann)
    optional = any(isinstance(a, ast.Constant) and a.value is None for a in alts)
    kinds, choices, each = [], [], ()
    for a in alts:
        if isinstance(a, ast.Constant) and a.value is None:
            continue
        name = ast.unparse(a.value if isinstance(a, ast.Subscript) else a).split(".")[-1]
        if name in ("bool", "int", "float", "str"):
            kinds.append(name)
        elif name in ("list", "List", "Sequence", "tuple", "Tuple", "dict", "Dict", "Mapping"):
            kinds.append({"List": "list", "Sequence": "list", "Tuple": "tuple", "Dict": "dict",
                          "Mapping": "dict"}.get(name, name))
        elif name == "Literal" and isinstance(a, ast.Subscript):
            sl = a.slice
            vals = [x.value for x in (sl.elts if isinstance(sl, ast.Tuple) else [sl]) if isinstance(x, ast.Constant)]
            optional = optional or None in vals
            choices += [v for v in vals if v is not None]
            kinds.append("choice")
        else:
            found = _resolve(rel, name) if isinstance(a, ast.Name) and depth < 4 else None
            if found and isinstance(found[1], ast.ClassDef) and _is_enum(found[1]):
                choices += list(_enum_choices(found[1]))
                kinds.append("choice")
            elif found and isinstance(found[1], (ast.Assign, ast.AnnAssign)) and found[1].value is not None:
                sub = _type_of(found[0], found[1].value, depth + 1)        # an alias
                kinds += list(sub.kinds)
                choices += list(sub.choices)
                optional = optional or sub.optional
            else:
                kinds.append("any")
    kinds = list(dict.fromkeys(kinds)) or ["any"]
    if "choice" in kinds and "str" in kinds:
        kinds.remove("str")
    return FieldType(text, tuple(kinds), tuple(dict.fromkeys(choices)), optional, each)


def _argparse_choices(rel: str) -> dict[str, tuple]:
    """field -> the literal choices its ``add_argument(..., choices=[...])`` gives in module ``rel``."""
    tree = _module(rel)
    out: dict = {}
    if tree is None:
        return out
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args):
            continue
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        ch = kw.get("choices")
        if not isinstance(ch, (ast.List, ast.Tuple)) or not all(isinstance(e, ast.Constant) for e in ch.elts):
            continue
        flag = node.args[0]
        if isinstance(flag, ast.Constant) and isinstance(flag.value, str):
            tail = flag.value
        elif isinstance(flag, ast.JoinedStr) and flag.values and isinstance(flag.values[-1], ast.Constant):
            tail = str(flag.values[-1].value)
        else:
            continue
        out[tail.lstrip("-").replace("-", "_")] = tuple(e.value for e in ch.elts)
    return out


def _precision_names() -> tuple:
    rel, var = PRECISIONS
    found = _resolve(rel, var)
    if found and isinstance(found[1], ast.Assign) and isinstance(found[1].value, ast.Dict):
        return tuple(k.value for k in found[1].value.keys if isinstance(k, ast.Constant))
    return ()


@functools.lru_cache(maxsize=None)
def schema() -> dict[str, tuple[str, FieldType]]:
    """Every key --fastvideo takes -> (owner, type): FastVideoArgs, PipelineConfig and
    SamplingParam fields, and PipelineConfig's ``vae_config.X`` / ``dit_config.X``."""
    out: dict = {}
    precisions = _precision_names()
    _, arel, aclass = ATTENTION
    att = _resolve(arel, aclass)
    backends = _enum_choices(att[1]) if att and isinstance(att[1], ast.ClassDef) else ()
    for owner, rel, cls in OWNERS:
        found = _resolve(rel, cls)
        if found is None or not isinstance(found[1], ast.ClassDef):
            raise BadInput(f"--fastvideo: cannot read {cls} from FastVideo's source ({package_root() / rel}); "
                           "this FastVideo release is laid out differently from the one this tool knows")
        choices = _argparse_choices(rel)
        fields = _class_fields(*found)
        for name, (frel, ann) in fields.items():
            if name in out:
                continue                                   # FastVideoArgs first (from_kwargs's order)
            t = _type_of(frel, ann)
            if name == ATTENTION[0] and backends:
                t = FieldType(t.text, ("choice",), backends, t.optional, fold_case=True)
            elif name.endswith("_precision") and precisions:
                t = FieldType(t.text, ("choice",), precisions, t.optional)
            elif name.endswith("_precisions") and precisions:
                t = FieldType(t.text, ("tuple",), (), t.optional, each=precisions)
            elif name in choices and "choice" not in t.kinds:
                t = FieldType(t.text, ("choice",), choices[name], t.optional)
            out[name] = (owner, t)
        if owner == "pipeline":
            for sub in SUB_CONFIGS:
                if sub not in fields:
                    continue
                srel, sann = fields[sub]
                sfound = _resolve(srel, ast.unparse(sann).split(".")[-1])
                if not (sfound and isinstance(sfound[1], ast.ClassDef)):
                    continue
                sfields = _class_fields(*sfound)
                if "arch_config" in sfields:               # ModelConfig.__getattr__ reads arch_config's fields
                    arel2, aann = sfields["arch_config"]
                    afound = _resolve(arel2, ast.unparse(aann).split(".")[-1])
                    if afound and isinstance(afound[1], ast.ClassDef):
                        for n, v in _class_fields(*afound).items():
                            sfields.setdefault(n, v)
                for n, (frel, ann) in sfields.items():
                    if not n.startswith("_"):
                        out[f"{sub}.{n}"] = ("pipeline", _type_of(frel, ann))
    return out


# --------------------------------------------------------------------------- KEY=VALUE

def field_owner(key: str) -> str:
    """Which of FastVideo's dataclasses declares ``key``: 'args' (FastVideoArgs), 'pipeline'
    (its PipelineConfig, applied by FastVideoArgs.from_kwargs) or 'sampling' (SamplingParam);
    BadInput when none does (FastVideo would drop it silently)."""
    entry = schema().get(key)
    if entry is None:
        raise BadInput(f"--fastvideo {key}=...: not a field of FastVideoArgs, its PipelineConfig or SamplingParam "
                       "(FastVideoArgs.from_kwargs would drop it without a word)")
    return entry[0]


def field_type(key: str) -> FieldType:
    field_owner(key)
    return schema()[key][1]


def parse_one(key: str, text: str):
    """One value by its field's type, or one BadInput line naming the flag, the field, the
    value and what is accepted."""
    owner = field_owner(key)
    t = schema()[key][1]
    try:
        return t.parse(text)
    except ValueError:
        cls = "PipelineConfig" if "." in key else CLASS_OF[owner]
        raise BadInput(f"--fastvideo {key}={text}: {cls}.{key} (declared {t.text}) does not take {text!r}; "
                       f"accepted: {t.accepted()}") from None


def parse_overrides(specs) -> dict:
    """``KEY=VALUE`` strings -> {key: value}, every key a FastVideo field and every value of its type."""
    out = {}
    for spec in specs or ():
        key, eq, val = str(spec).partition("=")
        key = key.strip()
        if not eq or not key:
            raise BadInput(f"--fastvideo {spec!r}: expected KEY=VALUE (a FastVideoArgs, PipelineConfig or "
                           "SamplingParam field, docs/features.md)")
        out[key] = parse_one(key, val)
    return out


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """(FastVideoArgs.from_kwargs keywords, SamplingParam fields)."""
    kw, sp = {}, {}
    for k, v in overrides.items():
        (sp if field_owner(k) == "sampling" else kw)[k] = v
    return kw, sp

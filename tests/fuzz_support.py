"""Generators for the input fuzz tests (test_reader_fuzz.py): mutations of the real
golden files, a JSON writer that can say what json.dumps cannot (repeated keys, -0,
NaN, lone surrogate escapes, deep nesting), and the differential oracle (the official
``safetensors`` parser).

Every generator draws from hypothesis, so failures shrink and replay.
"""
from __future__ import annotations

import copy
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
TINY_A = GOLDEN / "tiny-a"
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"

# -- profiles: a bounded, deterministic run in `make test`; `make fuzz` runs long ----------

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
settings.register_profile("fuzz", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
PROFILE = os.environ.get("LONGCAT_FUZZ", "ci")
settings.load_profile("fuzz" if PROFILE != "ci" else "ci")
# `make fuzz` multiplies every test's example count by this.
SCALE = int(os.environ.get("LONGCAT_FUZZ_SCALE", "1" if PROFILE == "ci" else "50"))


def examples(n: int) -> settings:
    return settings(max_examples=max(1, n * SCALE))


# -- a JSON writer for hostile documents ----------------------------------------------------


class Obj:
    """A JSON object as ordered (key, value) pairs: keys may repeat."""

    def __init__(self, pairs=()):
        self.pairs = [list(p) for p in pairs]

    def get(self, key, default=None):
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def set(self, key, value) -> None:
        for p in self.pairs:
            if p[0] == key:
                p[1] = value
                return
        self.pairs.append([key, value])

    def keys(self):
        return [k for k, _ in self.pairs]


@dataclass(frozen=True)
class Raw:
    """JSON text written as is (a token json.dumps will not produce, or broken JSON)."""
    text: str


def emit(v) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, Obj):
        return "{" + ",".join(f"{emit(k)}:{emit(x)}" for k, x in v.pairs) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(f"{emit(k)}:{emit(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(emit(x) for x in v) + "]"
    if v is None or isinstance(v, (bool, int, float, str)):
        return json.dumps(v)
    raise TypeError(type(v))


def parse_obj(text: str | bytes):
    return json.loads(text, object_pairs_hook=Obj)


# -- JSON values at and past every limit ----------------------------------------------------

LIMIT_INTS = [0, 1, 2, 3, 7, 8, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53, 2**53 + 1, 2**61, 2**62,
              2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -1, -(2**63), -(2**63) - 1]
ODD_NUMBERS = [Raw("-0"), Raw("0.0"), Raw("1.0"), Raw("1e0"), Raw("4e0"), Raw("1e400"), Raw("-1e400"),
               Raw("1e-400"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("9" * 30), Raw("9" * 400),
               Raw("1.5"), Raw("-0.0"), 0.5, 1e308]
ST_DTYPES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
             "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
ST_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
           "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
BAD_DTYPES = ["f32", "F32 ", " F32", "float32", "C128", "F8", "Q4", "", "F32\u0000", "bf16"]
ODD_STRINGS = ["", "__metadata__", "a" * 300, "\u00e9\u4e2d\U0001f600", "\u0001", "x\ny", "[/]", "[bold]x",
               "../../etc/passwd", "\u2028", "\\", "\"", "\ufeff", "NaN"]
ODD_STRING_TOKENS = [Raw('"\\ud800"'), Raw('"\\udc00"'), Raw('"\\ud83d\\ude00"'), Raw('"\\ud800\\u0041"'),
                     Raw('"\\u0000"'), Raw('"\\u005f_metadata__"'), Raw('"bad\\q"'), Raw('"\x01"'),
                     Raw('"\x7f"'), Raw('"unterminated')]


def deep(d: int, opener: str = "[") -> Raw:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return Raw('{"k":' * d + "1" + "}" * d)
    return Raw(opener * d + closer * d)


def json_scalars():
    return st.one_of(st.sampled_from(LIMIT_INTS), st.sampled_from(ODD_NUMBERS), st.sampled_from(ODD_STRINGS),
                     st.sampled_from(ODD_STRING_TOKENS), st.sampled_from([None, True, False]),
                     st.integers(-5, 300), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))


def json_values(max_leaves: int = 6):
    """Any JSON value (and a few that are not quite JSON)."""
    scal = json_scalars()
    return st.one_of(
        st.recursive(scal, lambda ch: st.one_of(st.lists(ch, max_size=4),
                                                st.dictionaries(st.text(max_size=6), ch, max_size=4)),
                     max_leaves=max_leaves),
        st.integers(120, 132).map(deep), st.integers(120, 132).map(lambda d: deep(d, "{")),
        st.sampled_from([deep(2000), deep(100_000)]))


# -- safetensors files: the seeds and their mutations ---------------------------------------

SEED_FILES = [TINY_A / "dit" / "diffusion_pytorch_model-00001-of-00002.safetensors",
              GOLDEN / "tiny-b" / "dit" / "diffusion_pytorch_model-00001-of-00003.safetensors",
              TINY_A / "lora" / "tiny_lora.safetensors",
              TINY_A / "cases" / "t2v.safetensors",
              TINY_A / "cases" / "traj_t2v_cfg.safetensors"]
_seed_cache: dict[Path, tuple[Obj, bytes]] = {}


def seed(path: Path) -> tuple[Obj, bytes]:
    """(header as pairs, data section) of a real file."""
    if path not in _seed_cache:
        blob = path.read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        _seed_cache[path] = (parse_obj(blob[8:8 + n].decode()), blob[8 + n:])
    hdr, data = _seed_cache[path]
    return parse_obj(emit(hdr)), data       # a fresh copy to mutate


def small_seed(path: Path, limit: int = 1024, count: int = 6) -> tuple[Obj, bytes]:
    """A real file cut down to its few smallest tensors (their real bytes and metadata),
    laid out anew: small enough that a failing sample can be kept in the corpus."""
    hdr, data = seed(path)
    ts = sorted(tensor_pairs(hdr), key=lambda p: p[1].get("data_offsets")[1] - p[1].get("data_offsets")[0])
    keep = [p for p in ts if p[1].get("data_offsets")[1] - p[1].get("data_offsets")[0] <= limit][:count]
    out = Obj([p for p in hdr.pairs if p[0] == "__metadata__"])
    blob, pos = b"", 0
    for name, info in keep:
        a, b = info.get("data_offsets")
        info.set("data_offsets", [pos, pos + b - a])
        out.pairs.append([name, info])
        blob += data[a:b]
        pos += b - a
    return out, blob


def tensor_pairs(hdr: Obj) -> list[list]:
    return [p for p in hdr.pairs if p[0] != "__metadata__" and isinstance(p[1], Obj)]


@dataclass
class Sample:
    """A safetensors file under construction: structured edits, then byte edits."""
    hdr: Obj
    data: bytes
    lead: bytes = b""
    trail: bytes = b""
    n_delta: int | None = None        # header length field: replaced by len + delta
    n_value: int | None = None        # ... or by this
    cut: int | None = None            # truncate the file to this many bytes
    append: bytes = b""
    flips: list = field(default_factory=list)   # (position in header, byte)
    notes: list = field(default_factory=list)

    def to_bytes(self) -> bytes:
        body = bytearray(self.lead + emit(self.hdr).encode("utf-8", "surrogatepass") + self.trail)
        for pos, b in self.flips:
            if body:
                body[pos % len(body)] = b
        n = len(body)
        if self.n_value is not None:
            n = self.n_value
        elif self.n_delta is not None:
            n = max(0, n + self.n_delta)
        blob = struct.pack("<Q", n % 2**64) + bytes(body) + self.data + self.append
        return blob[:self.cut] if self.cut is not None else blob


def _relayout(s: Sample, order: list[int], zeros: list[tuple[int, str]]) -> None:
    """Valid file, other layout: tensors' bytes in ``order``; zero-size tensors at boundaries."""
    ts = tensor_pairs(s.hdr)
    chunks = []
    for p in ts:
        a, b = p[1].get("data_offsets")
        chunks.append(s.data[a:b])
    data, pos = b"", 0
    for i in order:
        if i < len(ts):
            p = ts[i]
            p[1].set("data_offsets", [pos, pos + len(chunks[i])])
            data += chunks[i]
            pos += len(chunks[i])
    for at, name in zeros:
        bounds = sorted({0, pos} | {p[1].get("data_offsets")[1] for p in ts})
        where = bounds[at % len(bounds)]
        s.hdr.pairs.append([name, Obj([["dtype", "F16"], ["shape", [3, 0]], ["data_offsets", [where, where]]])])
    s.data = data


@st.composite
def mutation(draw, s: Sample) -> None:
    ts = tensor_pairs(s.hdr)
    kind = draw(st.sampled_from([
        "field_value", "shape_elem", "offsets", "dtype_valid", "relayout", "dup_key", "fields",
        "entry_form", "metadata", "key", "header_len", "truncate", "whitespace", "flip", "top_level",
        "zero_tensor", "extra_field"]))
    s.notes.append(kind)
    try:
        _mutate(draw, s, ts, kind)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError):
        s.notes.append("(not applicable)")   # an earlier edit broke what this one edits


def _mutate(draw, s: Sample, ts: list, kind: str) -> None:
    pick = (lambda: draw(st.sampled_from(ts))) if ts else (lambda: None)
    if kind == "field_value" and ts:
        p = pick()
        fname = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        p[1].set(fname, draw(st.one_of(json_values(), st.sampled_from(ST_DTYPES + BAD_DTYPES),
                                       st.sampled_from([Obj([["F32", None]]), Obj([["F32", 1]]), Obj(),
                                                        Obj([["F32", None], ["F16", None]])]))))
    elif kind == "shape_elem" and ts:
        p = pick()
        shape = list(p[1].get("shape") or [])
        op = draw(st.sampled_from(["set", "append", "drop"]))
        v = draw(st.one_of(st.sampled_from(LIMIT_INTS), st.sampled_from(ODD_NUMBERS), st.integers(0, 64)))
        if op == "set" and shape:
            shape[draw(st.integers(0, len(shape) - 1))] = v
        elif op == "append":
            shape.insert(draw(st.integers(0, len(shape))), v)
        elif shape:
            shape.pop(draw(st.integers(0, len(shape) - 1)))
        p[1].set("shape", shape)
    elif kind == "offsets" and ts:
        p = pick()
        a, b = p[1].get("data_offsets")
        op = draw(st.sampled_from(["nudge", "copy", "swap", "limit", "arity"]))
        if op == "nudge":
            a, b = a + draw(st.integers(-9, 9)), b + draw(st.integers(-9, 9))
            p[1].set("data_offsets", [a, b])
        elif op == "copy":
            p[1].set("data_offsets", list(draw(st.sampled_from(ts))[1].get("data_offsets")))
        elif op == "swap":
            p[1].set("data_offsets", [b, a])
        elif op == "limit":
            p[1].set("data_offsets", [draw(st.sampled_from(LIMIT_INTS + ODD_NUMBERS + [a])),
                                      draw(st.sampled_from(LIMIT_INTS + ODD_NUMBERS + [b]))])
        else:
            p[1].set("data_offsets", draw(st.sampled_from([[a], [a, b, b], [], [[a], [b]], Obj([["0", a]])])))
    elif kind == "dtype_valid" and ts:
        # same bytes, another dtype and a shape that fits them (or not quite)
        p = pick()
        a, b = p[1].get("data_offsets")
        dt = draw(st.sampled_from(ST_DTYPES))
        bits = ST_BITS.get(dt, 8)
        numel = (b - a) * 8 // bits
        numel += draw(st.sampled_from([0, 0, 0, 1, -1]))
        p[1].set("dtype", dt)
        p[1].set("shape", [max(numel, 0)] if draw(st.booleans()) else [1, max(numel, 0)])
    elif kind == "relayout" and ts:
        order = draw(st.permutations(range(len(ts))))
        _relayout(s, list(order), [])
    elif kind == "zero_tensor":
        _relayout(s, list(range(len(ts))), [(draw(st.integers(0, 99)), draw(st.sampled_from(["z0", "z1"])))])
        if draw(st.booleans()):
            z = s.hdr.pairs[-1][1]
            a = draw(st.sampled_from(LIMIT_INTS[:8] + [len(s.data), len(s.data) + 1]))
            z.set("data_offsets", [a, a])
    elif kind == "dup_key" and ts:
        p = pick()
        q = [p[0], copy.deepcopy(p[1])]
        if draw(st.booleans()):
            other = draw(st.sampled_from(ts))
            q[1].set("data_offsets", list(other[1].get("data_offsets")))
            q[1].set("shape", other[1].get("shape"))
            q[1].set("dtype", other[1].get("dtype"))
        s.hdr.pairs.insert(draw(st.integers(0, len(s.hdr.pairs))), q)
    elif kind == "fields" and ts:
        p = pick()
        fname = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        if draw(st.booleans()):
            p[1].pairs = [x for x in p[1].pairs if x[0] != fname]
        else:
            p[1].pairs.append([fname, p[1].get(fname)])
    elif kind == "extra_field" and ts:
        p = pick()
        p[1].pairs.insert(draw(st.integers(0, len(p[1].pairs))),
                          [draw(st.sampled_from(["x", "dtype_", "Shape", ""])), draw(json_values())])
    elif kind == "entry_form" and ts:
        p = pick()
        v = p[1]
        form = draw(st.sampled_from(["seq", "seq2", "seq4", "scalar", "empty"]))
        seq = [v.get("dtype"), v.get("shape"), v.get("data_offsets")]
        p[1] = {"seq": seq, "seq2": seq[:2], "seq4": seq + [0], "scalar": draw(json_scalars()),
                "empty": Obj()}[form]
    elif kind == "metadata":
        op = draw(st.sampled_from(["value", "replace", "dup", "drop", "dupkey"]))
        meta = s.hdr.get("__metadata__")
        if op == "value":
            m = meta if isinstance(meta, Obj) else Obj()
            m.pairs.append([draw(st.sampled_from(["format", "k", ""])), draw(json_values())])
            s.hdr.set("__metadata__", m)
        elif op == "replace":
            s.hdr.set("__metadata__", draw(json_values()))
        elif op == "dup":
            s.hdr.pairs.append(["__metadata__", Obj([["format", "pt"]])])
        elif op == "dupkey":
            s.hdr.set("__metadata__", Obj([["format", "pt"], ["format", "np"]]))
        else:
            s.hdr.pairs = [p for p in s.hdr.pairs if p[0] != "__metadata__"]
    elif kind == "key" and ts:
        p = pick()
        p[0] = draw(st.one_of(st.sampled_from(ODD_STRINGS), st.sampled_from(ODD_STRING_TOKENS),
                              st.text(max_size=10)))
    elif kind == "header_len":
        if draw(st.booleans()):
            s.n_delta = draw(st.integers(-16, 16))
        else:
            s.n_value = draw(st.sampled_from([0, 1, 2, 8, 100_000_000, 100_000_001, 2**63, 2**64 - 1,
                                              100 * 2**20]))
    elif kind == "truncate":
        total = len(s.to_bytes())
        s.cut = draw(st.one_of(st.integers(0, 16), st.integers(0, total), st.just(total - 1)))
        if draw(st.booleans()):
            s.cut, s.append = None, draw(st.binary(min_size=1, max_size=9))
    elif kind == "whitespace":
        ws = st.sampled_from([b" ", b"\t", b"\n", b"\r", b"\x00", b"\x0c", b"\xc2\xa0", b"\xef\xbb\xbf", b"  \n"])
        if draw(st.booleans()):
            s.lead = draw(ws)
        else:
            s.trail = draw(ws)
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            s.flips.append((draw(st.integers(0, 10**6)),
                            draw(st.sampled_from([0x00, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a,
                                                  0xff, 0xc0, 0x80, 0xed, 0xa0, 0x30, 0x2d]))))
    elif kind == "top_level":
        s.hdr = draw(st.sampled_from([Obj(), Obj([["__metadata__", None]])]))
        if draw(st.booleans()):
            s.data = b""
        if draw(st.booleans()):
            s.hdr = draw(st.sampled_from([[], "x", 0, None, deep(130)]))  # type: ignore[assignment]


@st.composite
def safetensors_files(draw, seeds=None, small: bool | None = None) -> bytes:
    """A mutated real file: the whole file, or (``small``) its smallest tensors."""
    path = draw(st.sampled_from(seeds or SEED_FILES))
    if small is None:
        small = draw(st.booleans())
    hdr, data = small_seed(path) if small else seed(path)
    s = Sample(hdr, data)
    for _ in range(draw(st.integers(0, 3))):
        draw(mutation(s))
        if not isinstance(s.hdr, Obj):
            break
    return s.to_bytes()


# -- the oracle -----------------------------------------------------------------------------


def official(blob: bytes) -> dict | None:
    """What the official parser makes of a file: {key: (dtype, shape, bytes)}, or None if it refuses it."""
    from safetensors import deserialize
    try:
        return {k: (v["dtype"], list(v["shape"]), bytes(v["data"])) for k, v in deserialize(blob)}
    except Exception:  # SafetensorError, and whatever else it raises on garbage: it refused
        return None


def ours(path: Path) -> dict:
    """What our reader makes of it (BadInput propagates)."""
    from longcat_convert.shards import ShardedReader
    r = ShardedReader(path)
    return {k: (r.info(k).dtype, list(r.info(k).shape), r.read_bytes(k)) for k in r.keys()}


def check_differential(blob: bytes, path: Path) -> str:
    """The property: the official parser refuses -> ours raises BadInput; it accepts ->
    ours reads every tensor byte-identically. Returns "accept" or "reject"."""
    from longcat_convert.errors import BadInput
    path.write_bytes(blob)
    want = official(blob)
    try:
        got = ours(path)
    except BadInput as e:
        assert want is None, f"the official parser accepts this file, ours refuses it: {e}"
        assert "\n" not in str(e), str(e)
        return "reject"
    assert want is not None, "the official parser refuses this file, ours accepts it"
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k], k
    return "accept"


# -- whole JSON documents: the generic breakages --------------------------------------------

def broken_documents():
    """Byte strings that are not the JSON object a file should hold."""
    return st.sampled_from([
        b"", b" ", b"null", b"[]", b"0", b'"x"', b"{", b"{}}", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"a":NaN}',
        b'{"a":1e400}', b"[" * 100_000 + b"]" * 100_000, b'{"k":' * 5000 + b"1" + b"}" * 5000,
        b'{"\\ud800":1}', b'{"a":"\x01"}', b"\x00" * 8, b'{"a":1,"a":2}'])


def as_json_bytes(draw, doc, cut_ok: bool = True) -> bytes:
    text = emit(doc).encode("utf-8", "surrogatepass")
    if cut_ok and draw(st.integers(0, 9)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text


# -- config.json ----------------------------------------------------------------------------

CONFIG_KEYS = ["hidden_size", "num_heads", "depth", "in_channels", "out_channels", "caption_channels",
               "adaln_tembed_dim", "frequency_embedding_size", "mlp_ratio", "patch_size", "_class_name",
               "text_tokens_zero_pad", "enable_bsa", "bsa_params", "enable_flashattn3", "cp_split_hw",
               "_diffusers_version"]
CONFIG_VALUES = [0, -1, 1, 2, 3, 7, 255, 257, 2**31, 2**31 + 1, 10**9, 2**63, 2**64, 64.0, 2.5, "64", True, False,
                 None, [], {}, [1, 2], [1, 2, 2, 2], [0, 2, 2], [1, 0, 2], [2, 2, 2], [1, 2.0, 2], [1, "2", 2],
                 Raw("NaN"), Raw("Infinity"), Raw("-0"), 1e-9, 1e300, "[/]", "LongCatTransformer3DModel"]


def tiny_config() -> dict:
    return json.loads((TINY_A / "dit" / "config.json").read_text())


@st.composite
def config_files(draw) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(broken_documents())
    cfg = Obj(list(tiny_config().items()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "value", "heads", "drop", "bsa", "dup"]))
        key = draw(st.sampled_from(CONFIG_KEYS))
        if op == "value":
            cfg.set(key, draw(st.one_of(st.sampled_from(CONFIG_VALUES), json_values())))
        elif op == "heads":
            cfg.set("num_heads", draw(st.integers(1, 300)))
        elif op == "drop":
            cfg.pairs = [p for p in cfg.pairs if p[0] != key]
        elif op == "bsa":
            bsa = dict(tiny_config()["bsa_params"])
            bsa[draw(st.sampled_from(list(bsa) + ["x"]))] = draw(st.one_of(st.sampled_from(CONFIG_VALUES),
                                                                          json_values()))
            cfg.set("bsa_params", bsa)
            cfg.set("enable_bsa", draw(st.booleans()))
        else:
            cfg.pairs.append([key, draw(st.sampled_from(CONFIG_VALUES))])
    return as_json_bytes(draw, cfg)


# -- shard indexes --------------------------------------------------------------------------

INDEX = "dit/diffusion_pytorch_model.safetensors.index.json"
SHARD_NAMES = ["diffusion_pytorch_model-00001-of-00002.safetensors",
               "diffusion_pytorch_model-00002-of-00002.safetensors"]
ODD_FILE_NAMES = ["x.safetensors", "../x.safetensors", "../dit/" + SHARD_NAMES[0], "./" + SHARD_NAMES[0],
                  "/etc/passwd", "", ".", "..", "config.json", "model.bin", "\u0000.safetensors",
                  "a" * 300 + ".safetensors", "diffusion_pytorch_model.safetensors.index.json",
                  "sub/x.safetensors", SHARD_NAMES[0] + "/", "[/].safetensors"]


@st.composite
def index_files(draw) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(broken_documents())
    idx = parse_obj((TINY_A / INDEX).read_text())
    wm = idx.get("weight_map")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["file", "file", "drop", "add", "weight_map", "metadata", "dup"]))
        if op == "file":
            p = draw(st.sampled_from(wm.pairs))
            p[1] = draw(st.one_of(st.sampled_from(ODD_FILE_NAMES + SHARD_NAMES), json_scalars()))
        elif op == "drop":
            wm.pairs.remove(draw(st.sampled_from(wm.pairs)))
        elif op == "add":
            wm.pairs.append([draw(st.sampled_from(["extra.weight", "", "blocks.0.attn.qkv.weight"])),
                             draw(st.sampled_from(SHARD_NAMES + ODD_FILE_NAMES))])
        elif op == "weight_map":
            idx.set("weight_map", draw(json_values()))
        elif op == "metadata":
            idx.set("metadata", draw(json_values()))
        else:
            p = draw(st.sampled_from(wm.pairs))
            wm.pairs.append([p[0], draw(st.sampled_from(SHARD_NAMES))])
    return as_json_bytes(draw, idx)


# -- safetensors files as lists of tensors (for edits that keep a valid layout) -------------

def decode(blob: bytes) -> tuple[dict, list[list]]:
    (n,) = struct.unpack("<Q", blob[:8])
    hdr = json.loads(blob[8:8 + n])
    meta = hdr.pop("__metadata__", None) or {}
    data = blob[8 + n:]
    out = [[k, v["dtype"], list(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]]]
           for k, v in hdr.items()]
    return meta, out


def encode(meta: dict, tensors: list[list]) -> bytes:
    hdr, pos, data = Obj([["__metadata__", meta]]), 0, b""
    for k, dt, shape, b in tensors:
        hdr.pairs.append([k, {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(b)]}])
        pos += len(b)
        data += b
    raw = emit(hdr).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


FLOAT_BYTES = {"F32": "<f", "F64": "<d", "F16": "<e"}
ODD_FLOATS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, 3.4e38, 1e-45, 1e300, 0.5, 64.0, 2.0**24 + 1,
              1.0 / 3]


@st.composite
def tensor_edit(draw, tensors: list[list], keys=None) -> None:
    """One semantic edit that keeps the file valid: a key renamed or dropped, a dtype or
    shape changed over the same bytes, a tensor's values replaced."""
    if not tensors:
        return
    t = draw(st.sampled_from(tensors))
    op = draw(st.sampled_from(["rename", "drop", "dtype", "shape", "value", "duplicate_rows"]))
    if op == "rename":
        t[0] = draw(st.sampled_from(keys)) if keys and draw(st.booleans()) else t[0] + draw(
            st.sampled_from(["x", ".weight", "2", ""]))
    elif op == "drop":
        tensors.remove(t)
    elif op == "dtype":
        n = len(t[3])
        dt = draw(st.sampled_from([d for d in ST_DTYPES if (n * 8) % ST_BITS.get(d, 8) == 0] or ["U8"]))
        numel = n * 8 // ST_BITS.get(dt, 8)
        t[1], t[2] = dt, ([numel] if not t[2] or len(t[2]) == 1 or numel % t[2][0] else [t[2][0], numel // t[2][0]])
    elif op == "shape":
        s = list(t[2])
        choice = draw(st.sampled_from(["reverse", "flatten", "unsqueeze", "squeeze"]))
        if choice == "reverse":
            s = s[::-1]
        elif choice == "flatten":
            n = 1
            for x in s:
                n *= x
            s = [n]
        elif choice == "unsqueeze":
            s.insert(draw(st.integers(0, len(s))), 1)
        elif 1 in s:
            s.remove(1)
        t[2] = s
    elif op == "value" and t[1] in FLOAT_BYTES:
        fmt = FLOAT_BYTES[t[1]]
        size = struct.calcsize(fmt)
        v = draw(st.sampled_from(ODD_FLOATS))
        try:
            packed = struct.pack(fmt, v)
        except (OverflowError, struct.error):
            packed = struct.pack(fmt, float("inf"))
        b = bytearray(t[3])
        if len(b) >= size:
            i = draw(st.integers(0, len(b) // size - 1)) * size
            b[i:i + size] = packed if draw(st.booleans()) else packed * (len(b) // size)
            t[3] = bytes(b[:len(t[3])])
    elif op == "duplicate_rows" and t[2]:
        t[2] = [t[2][0] * 2] + list(t[2][1:])
        t[3] = t[3] * 2


# -- LoRA files -----------------------------------------------------------------------------

LORA = TINY_A / "lora" / "tiny_lora.safetensors"
LORA_KEYS = ["lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv.lora_up.blocks."
             "7.weight",
             "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv.lora_up.blocks."
             "\u0663.weight",
             "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___qkv.lora_up.blocks."
             + "9" * 5000 + ".weight",
             "lora___lorahyphen___blocks___lorahyphen___99___lorahyphen___attn___lorahyphen___qkv.alpha_scale",
             "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___mod_norm_attn.alpha_scale",
             "lora___lorahyphen___x_embedder___lorahyphen___proj.lora_down.weight",
             "lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___attn___lorahyphen___q_norm.lora_down.weight",
             "lora___lorahyphen___.alpha_scale", "lora___lorahyphen___", "alpha_scale", "[/]"]


@st.composite
def lora_files(draw) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(safetensors_files(seeds=[LORA]))
    meta, tensors = decode(LORA.read_bytes())
    for _ in range(draw(st.integers(1, 3))):
        draw(tensor_edit(tensors, keys=LORA_KEYS))
    return encode(meta, tensors)


# -- golden case files and their JSON -------------------------------------------------------

CASES = TINY_A / "cases"
CASE_KEYS = ["input.hidden_states", "input.timestep", "input.encoder_hidden_states", "input.encoder_attention_mask",
             "input.kv_cache.0.k", "input.kv_cache.0.v", "input.kv_cache.x.k", "input.kv_cache.0.q",
             "input.kv_cache.99.k", "act.blocks.0", "act.blocks.9", "act.nope", "act.output", "act.kv_cache.0.k",
             "foo", "traj.step.0.latents", "output.latents", "input.latents"]
CASE_META_KEYS = ["case", "description", "lora", "lora_multiplier", "loras", "num_cond_latents", "return_kv",
                  "skip_crs_attn", "offload_kv_cache", "enable_bsa", "bsa_params"]
TRAJ_META_KEYS = ["mode", "steps", "guidance_scale", "use_distill", "scheduler", "seed", "enhance_hf",
                  "use_kv_cache", "num_cond_latents", "t_thresh", "lora", "loras", "enable_bsa", "bsa_params"]
META_VALUES = [0, 1, 2, 3, -1, 99, 2**63, 1.5, "1", "x", True, False, None, [], {}, [{"path": 1}],
               [{"multiplier": 1}], [{"path": "lora/tiny_lora.safetensors", "multiplier": "x"}],
               "lora/tiny_lora.safetensors", "../../../etc/passwd", "lora", Raw("NaN"), Raw("Infinity"),
               {"shift": "x"}, {"_class_name": 1}, {"shift": -1.0, "num_train_timesteps": 0}, "t2v", "i2v", "vc",
               "refine", "[/]"]


@st.composite
def case_blobs(draw, name: str) -> bytes:
    path = CASES / f"{name}.safetensors"
    if draw(st.integers(0, 3)) == 0:
        return draw(safetensors_files(seeds=[path], small=False))
    meta, tensors = decode(path.read_bytes())
    for _ in range(draw(st.integers(1, 3))):
        draw(tensor_edit(tensors, keys=CASE_KEYS))
    return encode(meta, tensors)


@st.composite
def case_json(draw, name: str) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(broken_documents())
    meta = Obj(list(json.loads((CASES / f"{name}.json").read_text()).items()))
    keys = TRAJ_META_KEYS if name.startswith("traj") else CASE_META_KEYS
    for _ in range(draw(st.integers(1, 3))):
        meta.set(draw(st.sampled_from(keys)), draw(st.one_of(st.sampled_from(META_VALUES), json_values())))
    return as_json_bytes(draw, meta)


# -- gate.json ------------------------------------------------------------------------------

GATE_VALUES = [None, 1, "x", [], {}, ["e2e"], ["nope"], [{"mode": 1}], [{"mode": "e2e", "args": "x"}],
               [{"mode": "e2e", "args": [1]}], [{"mode": "e2e", "tag": 5}], [{"mode": "sampling", "args": ["--x"]}],
               {"passed": False}, {"first_divergent": 5, "rel_l2": "x"}, {"rel_l2": Raw("NaN")}, "/abs", "../up",
               "tiny-z", "tiny-z/cases/none", "[/]", [None], [{"case": 1}], [{"case": "tiny-z/c", "parity": "e2e"}]]


@st.composite
def gate_files(draw) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(broken_documents())
    # model and case names point into an empty golden folder: every step fails fast
    doc = {"models": [{"model": "tiny-z", "cases": [{"case": "tiny-z/cases/t2v", "parity": ["e2e"]},
                                                      {"case": "tiny-z/cases/i2v", "parity": [
                                                          {"mode": "sampling", "args": ["--sigmas", "original"],
                                                           "known_difference": {"first_divergent": "x",
                                                                                "rel_l2": 0.1}}]}]}]}
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "models", "model", "cases", "case", "entry", "parity", "known"]))
        v = copy.deepcopy(draw(st.one_of(st.sampled_from(GATE_VALUES), json_values())))
        m = doc["models"][0] if isinstance(doc.get("models"), list) and doc["models"] and isinstance(
            doc["models"][0], dict) else None
        c = m["cases"][0] if m and isinstance(m.get("cases"), list) and m["cases"] and isinstance(
            m["cases"][0], dict) else None
        if where == "top":
            doc = {"models": doc.get("models"), draw(st.sampled_from(["about", "x"])): v} if draw(
                st.booleans()) else v
            if not isinstance(doc, dict):
                break
        elif where == "models":
            doc["models"] = v
        elif where == "model" and m:
            m["model"] = v
        elif where == "cases" and m:
            m["cases"] = v
        elif where == "case" and c:
            c["case"] = v
        elif where == "entry" and m and isinstance(m.get("cases"), list):
            m["cases"].append(v)
        elif where == "parity" and c:
            c["parity"] = v
        elif where == "known" and c:
            c["known_difference"] = v
    return as_json_bytes(draw, doc)


# -- tolerance files ------------------------------------------------------------------------

TOL = ROOT / "parity" / "tolerances.json"
TOL_VALUES = [None, 1, "x", [], {}, {"rel_l2": "x"}, {"rel_l2": Raw("NaN")}, {"rel_l2": Raw("Infinity")},
              {"rel_l2": True}, {"rel_l2": -1}, {"rel_l2": None}, {"": 1}, {"rel_l2": [1]}, 1.5, "2", "v1",
              Raw("1e400"), "[", "*", "float32", "cuda:0", [[]], [{"max": {"rel_l2": 1}}],
              [{"dtype": 1, "max": {"a": 1}}]]


@st.composite
def tolerance_files(draw) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(broken_documents())
    doc = json.loads(TOL.read_text())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["version", "rules", "rule", "field", "max"]))
        v = copy.deepcopy(draw(st.one_of(st.sampled_from(TOL_VALUES), json_values())))
        rules = doc.get("rules") if isinstance(doc, dict) else None
        if where == "version":
            doc["version"] = v
        elif where == "rules":
            doc["rules"] = v
        elif where == "rule" and isinstance(rules, list) and rules:
            rules[draw(st.integers(0, len(rules) - 1))] = v
        elif where in ("field", "max") and isinstance(rules, list) and rules and isinstance(rules[0], dict):
            key = "max" if where == "max" else draw(st.sampled_from(["dtype", "device", "layer", "x"]))
            rules[0][key] = v
    return as_json_bytes(draw, doc)


# -- running the real commands --------------------------------------------------------------


def model_folder(root: Path, files: dict[str, bytes | None]) -> Path:
    """tiny-a's dit/ and lora/ as links to the golden files; ``files`` (paths relative to the
    model folder) replaces some with bytes, or removes them (None)."""
    import shutil
    if root.exists():
        shutil.rmtree(root)
    for src in sorted(TINY_A.rglob("*")):
        rel = src.relative_to(TINY_A)
        if rel.parts[0] not in ("dit", "lora") or not src.is_file() or str(rel) in files:
            continue
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dst)
    for rel, blob in files.items():
        if blob is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(blob)
    return root


def check_command(*argv, out: Path | None = None) -> int:
    """Run a command of the CLI in this process: exit 0, 1 or 2, never an exception (one
    would propagate and fail the test with its traceback); 2 is one line; a failed run
    leaves no OUTPUT and no temporary folder."""
    from convert_support import leftovers, one_line, run
    rc, _, err = run(*argv)
    assert rc in (0, 1, 2), (rc, err)
    assert "Traceback" not in err, err
    if rc == 2:
        assert one_line(err).startswith("error:"), err
    if out is not None and rc != 0:
        assert leftovers(out.parent, out.name) == [], err
    return rc

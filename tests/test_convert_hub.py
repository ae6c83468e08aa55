"""SOURCE as a Hugging Face repo id, resolved offline from a cache laid out as
huggingface_hub lays it out (models--org--name/{refs,snapshots,blobs})."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from convert_support import TINY_A, leftovers, one_line, run, run_subprocess
from longcat_convert.sources import allow_patterns

REPO = "meituan-longcat/LongCat-Video-tiny"
REV = "0123456789abcdef0123456789abcdef01234567"


def build_cache(cache, model=TINY_A, repo=REPO, rev=REV, drop=()):
    """Snapshot files are relative symlinks into blobs/; LFS files are named by their sha256."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs/main").write_text(rev)
    (root / "blobs").mkdir()
    snap = root / "snapshots" / rev
    for p in sorted(model.rglob("*")):
        rel = p.relative_to(model)
        if not p.is_file() or rel.parts[0] == "cases" or str(rel) in drop:
            continue
        data = p.read_bytes()
        etag = hashlib.sha256(data).hexdigest() if p.suffix == ".safetensors" else hashlib.sha1(data).hexdigest()
        (root / "blobs" / etag).write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(root / "blobs" / etag, link.parent), link)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    snap = build_cache(cache)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snap


def test_convert_and_verify_from_the_cache(hub, tmp_path):
    rc, out, err = run("convert", REPO, tmp_path / "out", "--quiet", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["source"] == {"spec": REPO, "kind": "hub", "dit": str(hub / "dit"), "repo_id": REPO,
                                 "revision": REV}
    assert summary["loras"] == ["lora/tiny_lora/tiny_lora.safetensors"]
    rc, _, err = run("verify", REPO, tmp_path / "out", "--quiet")
    assert rc == 0, err
    rec = json.loads((tmp_path / "out/conversion.json").read_text())
    shard = rec["source_files"]["dit/diffusion_pytorch_model-00001-of-00002.safetensors"]
    want = hashlib.sha256((TINY_A / "dit/diffusion_pytorch_model-00001-of-00002.safetensors").read_bytes())
    assert shard["sha256"] == want.hexdigest() and "huggingface cache" in shard["sha256_from"]


def test_explicit_revision(hub, tmp_path):
    rc, _, err = run("convert", REPO, tmp_path / "out", "--quiet", "--revision", REV)
    assert rc == 0, err


def test_cache_via_hf_hub_cache_subprocess(tmp_path):
    """The environment as a user sets it, read by a fresh process."""
    cache = tmp_path / "cache"
    build_cache(cache)
    code = ("import sys; from longcat_convert.cli import main; "
            f"sys.exit(main(['convert', {REPO!r}, {str(tmp_path / 'out')!r}, '--quiet']))")
    proc = run_subprocess(code, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/transformer/config.json").is_file()


def test_incomplete_snapshot_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    build_cache(cache, drop=("dit/diffusion_pytorch_model-00002-of-00002.safetensors",))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = run("convert", REPO, tmp_path / "out", "--quiet")
    assert rc == 2 and "00002-of-00002.safetensors' is missing" in one_line(err)
    assert leftovers(tmp_path, "out") == []


def test_unknown_repo_offline(hub, tmp_path):
    rc, _, err = run("convert", "meituan-longcat/other", tmp_path / "out", "--quiet")
    assert rc == 2 and "not in the Hugging Face cache" in one_line(err)


def test_only_needed_files_are_requested():
    assert allow_patterns(components=False, loras=False) == ["dit/*", "model_index.json"]
    assert set(allow_patterns(components=True, loras=True)) >= {"dit/*", "lora/*", "vae/*", "text_encoder/*",
                                                                "tokenizer/*", "scheduler/*"}


def test_plan_from_the_cache_writes_nothing(hub, tmp_path):
    before = sorted(p for p in (tmp_path / "hf").rglob("*"))
    rc, out, err = run("plan", REPO, "--json")
    assert rc == 0, err
    assert json.loads(out)["tensors"] == {"source": 77, "native": 95, "bytes": 15281920}
    assert sorted(p for p in (tmp_path / "hf").rglob("*")) == before


def test_plan_needs_only_the_json_files(tmp_path, monkeypatch):
    """plan on a repo id fetches dit/*.json only; without cached shards it plans from config + index."""
    cache = tmp_path / "hub"
    drop = tuple(str(p.relative_to(TINY_A)) for p in TINY_A.rglob("*.safetensors"))
    build_cache(cache, drop=drop)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, out, err = run("plan", REPO, "--json")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["tensors"] == {"source": 77, "native": 95, "bytes": None}
    assert plan["ops"][0]["sources"][0]["dtype"] == "?"
    assert any("shards not downloaded" in n for n in plan["config"]["notes"])
    rc, out, err = run("plan", REPO)
    assert rc == 0 and "size unknown" in out

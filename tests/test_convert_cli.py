"""The CLI surface: plan, --json, --quiet, components, verify failures (exit 1, naming keys)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from convert_support import TINY_A, TINY_B, one_line, run
from longcat_convert.shards import ShardedReader
from scripts.synth import build_checkpoint
from longcat_convert.table import Dims

DIMS = Dims(hidden=64, heads=1, depth=1, cin=4, cout=4, caption=16, adaln=16, freq=32, mlp_ratio=4.0,
            patch=(1, 2, 2))


def test_plan_table_and_json_write_nothing(tmp_path):
    model = shutil.copytree(TINY_B, tmp_path / "m")
    before = sorted(os.listdir(tmp_path))
    rc, out, err = run("plan", model)
    assert rc == 0, err
    assert "blocks.1.attn.qkv.weight" in out and "split dim0 [192, 192, 192]" in out
    assert "text_tokens_zero_pad=false" in out
    rc, out, err = run("plan", model, "--json")
    assert rc == 0
    plan = json.loads(out)
    total = json.loads((TINY_B / "dit/diffusion_pytorch_model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert plan["tensors"] == {"source": 56, "native": 68, "bytes": total}
    qkv = next(r for r in plan["ops"] if r["sources"][0]["key"] == "blocks.0.attn.qkv.weight")
    assert [t["key"] for t in qkv["targets"]] == [f"blocks.0.self_attn.to_{x}.weight" for x in "qkv"]
    assert sorted(os.listdir(tmp_path)) == before


def test_plan_shows_lora_decisions():
    rc, out, err = run("plan", TINY_A, "--json")
    plan = json.loads(out)
    (lora,) = plan["loras"]
    assert lora["output"] == "lora/tiny_lora/tiny_lora.safetensors"
    assert len(lora["targets"]) == 3 * 12 + 2


def test_json_summary_and_quiet(tmp_path):
    rc, out, err = run("convert", TINY_A, tmp_path / "out", "--json")
    assert rc == 0
    s = json.loads(out)
    assert s["ok"] and s["tensors"] == 95 and s["shards"] == 1 and s["output"] == str(tmp_path / "out")
    assert err == ""   # --json implies no progress on stderr
    rc, out, err = run("convert", TINY_A, tmp_path / "out2", "--quiet")
    assert rc == 0 and out == ""


def test_progress_goes_to_stderr(tmp_path):
    rc, out, err = run("convert", TINY_A, tmp_path / "out")
    assert rc == 0 and out == ""
    assert "transformer" in err and "converted 95 tensors" in err


@pytest.mark.parametrize("mode", ["copy", "link", "skip"])
def test_components(tmp_path, mode):
    src = build_checkpoint(tmp_path / "m", DIMS, "fp32", 1, components=True)
    rc, _, err = run("convert", src, tmp_path / "out", "--quiet", "--components", mode)
    assert rc == 0, err
    vae = tmp_path / "out/vae/config.json"
    index = json.loads((tmp_path / "out/model_index.json").read_text())
    if mode == "skip":
        assert not vae.exists() and "vae" not in index
    else:
        assert vae.read_bytes() == (src / "vae/config.json").read_bytes()
        same_inode = os.stat(vae).st_ino == os.stat(src / "vae/config.json").st_ino
        assert same_inode == (mode == "link")
        assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
        assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    rec = json.loads((tmp_path / "out/conversion.json").read_text())
    assert rec["components"]["vae"]["mode"] == mode
    rc, _, err = run("verify", src, tmp_path / "out", "--quiet")
    assert rc == 0, err


@pytest.fixture
def converted(tmp_path):
    out = tmp_path / "out"
    assert run("convert", TINY_A, out, "--quiet")[0] == 0
    return out


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_verify_names_a_changed_tensor(converted):
    r = ShardedReader(converted / "transformer")
    info = r.info("blocks.1.self_attn.to_v.weight")
    _flip_byte(info.file, info.start + 12)
    rc, _, err = run("verify", TINY_A, converted, "--quiet")
    assert rc == 1
    line = one_line(err)
    assert line.startswith("failed:") and "blocks.1.self_attn.to_v.weight: bytes differ" in line
    assert "to_q" not in line


def test_verify_swapped_q_and_k(converted):
    """A consistent-looking mistake: right shapes, right dtypes, q and k swapped."""
    r = ShardedReader(converted / "transformer")
    q, k = r.info("blocks.0.self_attn.to_q.weight"), r.info("blocks.0.self_attn.to_k.weight")
    data = bytearray(q.file.read_bytes())
    qb, kb = bytes(data[q.start:q.stop]), bytes(data[k.start:k.stop])
    data[q.start:q.stop], data[k.start:k.stop] = kb, qb
    q.file.write_bytes(bytes(data))
    rc, _, err = run("verify", TINY_A, converted, "--quiet")
    assert rc == 1 and "to_q.weight" in err and "to_k.weight" in err


def test_verify_lora_changed(converted):
    p = converted / "lora/tiny_lora/tiny_lora.safetensors"
    r = ShardedReader(p)
    info = r.info("final_layer.adaln_linear.lora_B.weight")
    _flip_byte(p, info.start)
    rc, _, err = run("verify", TINY_A, converted, "--quiet")
    assert rc == 1 and "final_layer.adaln_linear.lora_B.weight differs" in err


def test_verify_missing_shard_and_config(converted):
    cfg = converted / "transformer/config.json"
    c = json.loads(cfg.read_text())
    c["depth"] = 2
    cfg.write_text(json.dumps(c))
    rc, _, err = run("verify", TINY_A, converted, "--quiet")
    assert rc == 1 and "config.json: differs from the translated source config in depth" in err
    next((converted / "transformer").glob("*-00001-of-*")).unlink()
    rc, _, err = run("verify", TINY_A, converted, "--quiet")
    assert rc == 1 and "is missing" in err


def test_verify_bad_source_is_exit_2(tmp_path, converted):
    rc, _, err = run("verify", tmp_path / "nothing", converted, "--quiet")
    assert rc == 2


def test_export_cli_and_verify_round_trip(tmp_path, converted):
    rc, out, err = run("export", converted, tmp_path / "back", "--quiet", "--json")
    assert rc == 0, err
    assert json.loads(out)["tensors"] == 77
    rc, _, err = run("verify", converted, tmp_path / "back", "--quiet")
    assert rc == 0, err
    a, b = ShardedReader(TINY_A / "dit"), ShardedReader(tmp_path / "back/dit")
    assert all(a.read_bytes(k) == b.read_bytes(k) and a.info(k).dtype == b.info(k).dtype for k in a.keys())
    # the bare transformer/ folder works too
    rc, _, err = run("export", converted / "transformer", tmp_path / "back2", "--quiet")
    assert rc == 0, err


def test_export_refuses_a_non_native_folder(tmp_path):
    rc, _, err = run("export", TINY_A / "dit", tmp_path / "x", "--quiet")
    assert rc == 2 and "LongCatTransformer3DModel" in one_line(err)


def test_bare_dit_folder_and_no_lora(tmp_path):
    rc, out, err = run("convert", TINY_A / "dit", tmp_path / "bare", "--quiet", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["source"]["kind"] == "dit" and s["loras"] == []
    rc, _, err = run("verify", TINY_A / "dit", tmp_path / "bare", "--quiet")
    assert rc == 0, err
    rc, out, err = run("convert", TINY_A, tmp_path / "nolora", "--quiet", "--json", "--no-lora")
    assert rc == 0 and json.loads(out)["loras"] == [] and not (tmp_path / "nolora/lora").exists()
    rc, _, err = run("verify", TINY_A, tmp_path / "nolora", "--quiet")
    assert rc == 0, err


def test_missing_parent_folders_are_created(tmp_path):
    rc, _, err = run("convert", TINY_B, tmp_path / "a/b/out", "--quiet")
    assert rc == 0, err
    rc, _, err = run("convert", tmp_path / "nothing", tmp_path / "c/d/out", "--quiet")
    assert rc == 2 and not (tmp_path / "c").exists()   # nothing created for a failed run


@pytest.mark.parametrize("when", ["after the rename", "while the summary prints"])
def test_an_interrupt_after_convert_finished_leaves_a_complete_output_and_exit_0(tmp_path, monkeypatch, when):
    """Ctrl-C (or SIGTERM) arriving once OUTPUT is in place: exit 0, not 130, and the output
    is the whole conversion (verify passes); before the rename it is still 130 and nothing."""
    from longcat_convert import atomic
    from longcat_convert.commands import convert as convert_cmd
    if when == "after the rename":
        real = atomic.AtomicFolder.commit

        def commit_then_interrupt(self):
            real(self)
            raise KeyboardInterrupt()
        monkeypatch.setattr(atomic.AtomicFolder, "commit", commit_then_interrupt)
    else:
        def emit_interrupted(*a, **k):
            raise KeyboardInterrupt()
        monkeypatch.setattr(convert_cmd, "emit", emit_interrupted)
    out = tmp_path / "out"
    rc, _, err = run("convert", TINY_A, out, "--no-fsync")
    assert rc == 0 and "interrupted" not in err, err
    monkeypatch.undo()
    assert run("verify", TINY_A, out, "--quiet")[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_interrupt_before_the_rename_is_still_130_and_leaves_nothing(tmp_path, monkeypatch):
    from longcat_convert import atomic

    def interrupted(self):
        raise KeyboardInterrupt()
    monkeypatch.setattr(atomic.AtomicFolder, "commit", interrupted)
    rc, _, err = run("convert", TINY_A, tmp_path / "out", "--no-fsync")
    assert rc == 130 and "interrupted" in err and list(tmp_path.iterdir()) == []


def test_verify_takes_converted_transformer_as_parity_does(converted):
    """`verify SOURCE CONVERTED/transformer` checks the conversion CONVERTED is (as parity
    takes CONVERTED/transformer)."""
    rc, _, err = run("verify", TINY_A, converted / "transformer", "--quiet")
    assert rc == 0, err
    rc, out, _ = run("verify", TINY_A, converted / "transformer", "--json")
    import json as _json
    assert rc == 0 and _json.loads(out)["loras"] == _json.loads(run("verify", TINY_A, converted,
                                                                    "--json")[1])["loras"]

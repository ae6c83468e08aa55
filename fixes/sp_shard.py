"""``sp-whole-sequence`` (also closes ``sp-bsa-assert``): a LongCat DiT that shards the
sequence under FastVideo's sequence parallelism.

FastVideo: ``fastvideo/models/dits/longcat.py``. ``LongCatTransformer3DModel.forward``
hands every rank the whole token sequence (other FastVideo DiTs call
``sequence_model_parallel_shard`` first). ``LongCatSelfAttention`` feeds it to
``DistributedAttention``, whose all-to-all concatenates every rank's copy: N·S tokens
with H/N heads per rank, so self-attention does N times one process's work; cross-
attention, the noise half of the i2v split, the K/V-cache continuation (plain SDPA)
and every linear layer run whole on every rank. With block-sparse attention on, the
same forward divides H and W of the latent shape it hands ``flash_attn_bsa_3d`` by
``cp_split_hw`` (the original's per-rank shard) while q/k/v hold all tokens, and the
kernel's assertion ``Tq * Hq * Wq == Sq`` fails on every rank (``sp-bsa-assert``).

Fix, while a forward runs with an SP group of N > 1 ranks and every frame's H·W tokens
divide by N (else the forward runs as stock):

- the patch embedding's output is sharded: rank r keeps the r-th run of H·W/N tokens
  of every frame (frame-major, so the blocks' per-frame modulation and the count of
  conditioning tokens hold as they are); every block runs on these tokens;
- RoPE uses each kept token's global (t, h, w): the rope module is handed its
  frequency rows for exactly those tokens;
- dense self-attention stays FastVideo's ``DistributedAttention`` (its all-to-all now
  brings every token once); the plain-SDPA paths (noise half of the i2v split,
  ``forward_with_kv_cache``) attend to the keys and values of every rank (gathered);
- block-sparse attention gets the same all-to-all, the gathered tokens put in their
  global order, and runs on the whole latent grid (H/N heads per rank), then goes back;
- cross-attention: local tokens against the whole text, as it is;
- the final layer runs on the local tokens and its output is gathered (global order),
  so the model returns what one process returns; a returned K/V cache is gathered
  too, and a given one is sharded like the tokens it belongs to.

Mechanism: wraps ``LongCatTransformer3DModel.forward``, ``PatchEmbed3D.forward``,
``FinalLayer.forward``, ``RotaryPositionalEmbedding3D.forward``; the longcat module's
names ``flash_attn_bsa_3d`` and ``torch`` (which answers
``torch.nn.functional.scaled_dot_product_attention`` with the gathering version and is
torch otherwise). Collectives are FastVideo's (``sequence_model_parallel_all_gather``,
``sequence_model_parallel_all_to_all_4D``). Upstream: call the shard after the patch
embedding, pass global positions to RoPE, route BSA and the SDPA paths through the
all-to-all / gathered keys, and gather before the final layer, as other FastVideo DiTs do.

Proven by the gate steps ``parity e2e-sp2-fixed`` (t2v, i2v, t2v_lora, kv_continue_b2,
bsa_t2v), ``parity layer-sp2-fixed``, ``parity kv-sp2-fixed`` and ``parity sampling-fixed-sp2``:
every row of every rank within the float32 policy, ``every_rank_whole_sequence`` false
and attention work per rank 0.5 of one process at SP 2.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import types

from . import patching
from .base import Fix, undo_all, wrap_method
from .series import Edit, NewFile, Patch, patched_fixes

_LAYOUT = contextvars.ContextVar("longcat_sp_layout", default=None)     # the running forward's token layout


class Layout:
    """Which tokens of a (T, H, W) token grid rank ``rank`` of ``world`` holds: the
    ``rank``-th run of H·W/world tokens of every frame, frame after frame."""

    def __init__(self, grid, world: int, rank: int):
        self.grid = tuple(int(g) for g in grid)
        self.world, self.rank = int(world), int(rank)
        T, H, W = self.grid
        self.tokens = T * H * W
        self.local_tokens = self.tokens // self.world

    def _positions(self, r: int):
        import torch
        T, H, W = self.grid
        per = H * W // self.world
        return (torch.arange(T)[:, None] * (H * W) + r * per + torch.arange(per)[None, :]).reshape(-1)

    @functools.cached_property
    def index(self):
        """Global positions of this rank's tokens, in the order it holds them."""
        return self._positions(self.rank)

    @functools.cached_property
    def rank_order(self):
        """Global position of each token of the ranks' tokens concatenated (rank 0's first)."""
        import torch
        return torch.cat([self._positions(r) for r in range(self.world)])

    @functools.cached_property
    def global_order(self):
        """Where each global position sits in the ranks' concatenation."""
        import torch
        return torch.argsort(self.rank_order)

    def local(self, x, dim: int = 1):
        """This rank's tokens of a whole sequence (global order) along ``dim``."""
        return x.index_select(dim, self.index.to(x.device))

    def whole(self, x, dim: int = 1):
        """Every rank's tokens (a collective: every rank calls it) in global order."""
        from fastvideo.distributed.communication_op import sequence_model_parallel_all_gather
        gathered = sequence_model_parallel_all_gather(x.contiguous(), dim=dim)
        return gathered.index_select(dim, self.global_order.to(x.device))


@functools.lru_cache(maxsize=64)
def _layout(grid: tuple, world: int, rank: int) -> Layout:
    return Layout(grid, world, rank)


def _sp() -> tuple[int, int]:
    """(world size, rank) of FastVideo's SP group; (1, 0) when none is set up."""
    try:
        from fastvideo.distributed.parallel_state import (get_sp_parallel_rank, get_sp_world_size,
                                                          model_parallel_is_initialized)
        if not model_parallel_is_initialized():
            return 1, 0
        return int(get_sp_world_size()), int(get_sp_parallel_rank())
    except Exception:       # noqa: BLE001  (no FastVideo runtime: one process)
        return 1, 0


def layout_for(model, hidden_states) -> Layout | None:
    """The token layout a forward of ``model`` on ``hidden_states`` ([B, C, T, H, W])
    runs with under this fix or its patch (the same layout: ``longcat_sp_shard`` of
    fixes/sp_shard_code.py), or None when it runs as stock (neither in force, one rank,
    or a frame's tokens do not divide among the ranks)."""
    if _model_forward not in patching.layers(type(model), "forward") and not any(
            _model_forward in patching.layers(k, "forward") for k in type(model).__mro__[1:]) \
            and "sp-whole-sequence" not in patched_fixes():       # the patched FastVideo shards the same way
        return None
    world, rank = _sp()
    if world <= 1:
        return None
    pt, ph, pw = model.patch_size
    T, H, W = hidden_states.shape[2] // pt, hidden_states.shape[3] // ph, hidden_states.shape[4] // pw
    if (H * W) % world:
        return None
    return _layout((T, H, W), world, rank)


def holds_local_tokens(module: str, *, output: bool, patched: bool = False) -> bool:
    """Under this fix (``patched``: its upstream patch), does FastVideo's LongCat module
    ``module`` take (``output=False``) or return (``output=True``) this rank's tokens instead
    of the whole sequence? The fix shards the patch embedding's output and gathers the final
    layer's; the patch shards after the patch embedding and gathers after the final layer."""
    if module.startswith("blocks."):
        return True
    if module == "patch_embed":
        return output and not patched
    if module == "final_layer":
        return patched or not output
    return False


# --- the wrapped methods ---------------------------------------------------------------

# FastVideo's LongCatTransformer3DModel.forward parameters, in order (for a wrapper that takes *args).
_FORWARD_PARAMS = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask",
                   "encoder_hidden_states_image", "guidance", "num_cond_latents", "return_kv", "kv_cache_dict")


def _model_forward(original):
    params = list(inspect.signature(original).parameters)[1:]
    names = params if "hidden_states" in params else list(_FORWARD_PARAMS)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        given = dict(zip(names, args), **kwargs)
        layout = layout_for(self, given["hidden_states"])
        if layout is None:
            return original(self, *args, **kwargs)
        cache = given.get("kv_cache_dict")
        if cache:
            T, H, W = layout.grid
            n_cond = next(iter(cache.values()))[0].shape[2]
            if n_cond % (H * W):
                return original(self, *args, **kwargs)
            part = _layout((n_cond // (H * W), H, W), layout.world, layout.rank)
            cache = {i: (part.local(k, 2), part.local(v, 2)) for i, (k, v) in cache.items()}
            if "kv_cache_dict" in kwargs:
                kwargs = dict(kwargs, kv_cache_dict=cache)
            else:
                args = tuple(cache if n == "kv_cache_dict" else a for n, a in zip(names, args))
        token = _LAYOUT.set(layout)
        try:
            out = original(self, *args, **kwargs)
        finally:
            _LAYOUT.reset(token)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            device = given["hidden_states"].device
            out = (out[0], {i: tuple(layout.whole(t.to(device), 2).to(t.device) for t in kv)
                            for i, kv in out[1].items()})
        return out
    return forward


def _patch_embed_forward(original):
    def forward(self, x):
        out = original(self, x)
        layout = _LAYOUT.get()
        if layout is not None and out.shape[1] == layout.tokens:
            out = layout.local(out)
        return out
    return forward


def _final_layer_forward(original):
    def forward(self, x, *args, **kwargs):
        out = original(self, x, *args, **kwargs)
        layout = _LAYOUT.get()
        if layout is not None and x.shape[1] == layout.local_tokens:
            out = layout.whole(out)
        return out
    return forward


def _rope_forward(original):
    def forward(self, q, k, grid_size):
        layout = _LAYOUT.get()
        grid = tuple(int(g) for g in grid_size)
        if layout is None or q.shape[-2] * layout.world != grid[0] * grid[1] * grid[2] or (grid[1] * grid[2]) % layout.world:
            return original(self, q, k, grid_size)
        part = _layout(grid, layout.world, layout.rank)
        self.register_grid_size(grid)
        key = grid + ("sp-rank", part.rank, part.world)
        self.freqs_dict[key] = self.freqs_dict[grid].index_select(0, part.index.to(self.freqs_dict[grid].device))
        try:
            return original(self, q, k, key)
        finally:
            self.freqs_dict.pop(key, None)
    return forward


def _global_grid(given, n_local: int, layout: Layout) -> tuple | None:
    """The whole latent grid of a BSA operand holding ``n_local`` of this rank's tokens:
    ``given`` itself when it is whole, or ``given``'s frames on the forward's H x W
    (FastVideo's own BSA path hands H and W divided by ``cp_split_hw``)."""
    T, h, w = (int(g) for g in given)
    H, W = layout.grid[1:]
    for grid in ((T, h, w), (T, H, W)):
        if grid[0] * grid[1] * grid[2] == n_local * layout.world and (grid[1] * grid[2]) % layout.world == 0:
            return grid
    return None


def _bsa_global(original):
    """``flash_attn_bsa_3d`` as LongCat's self-attention calls it ([B, H, S, D]): under a
    sharded forward, all-to-all (every token, H/N heads), global token order, the
    kernel on the whole latent grids, and back. It keeps the kernel's name and module
    (``functools.wraps``), as code that finds the kernel's module through it expects."""
    @functools.wraps(original)
    def flash_attn_bsa_3d(q, k, v, *args, **kwargs):
        layout = _LAYOUT.get()
        params = dict(zip(("latent_shape_q", "latent_shape_k"), args))
        params.update(kwargs)
        grid_q = grid_k = None
        if layout is not None and "latent_shape_q" in params and "latent_shape_k" in params:
            grid_q = _global_grid(params["latent_shape_q"], q.shape[2], layout)
            grid_k = _global_grid(params["latent_shape_k"], k.shape[2], layout)
        if grid_q is None or grid_k is None:
            return original(q, k, v, *args, **kwargs)
        import torch
        from fastvideo.distributed.communication_op import sequence_model_parallel_all_to_all_4D as all_to_all
        from fastvideo.third_party.longcat_video.block_sparse_attention import bsa_interface
        lay_q, lay_k = _layout(grid_q, layout.world, layout.rank), _layout(grid_k, layout.world, layout.rank)

        def spread(x, lay):      # [b, H, n, D] -> [b, H/N, N, D], every rank's tokens in global order
            x = all_to_all(x.transpose(1, 2).contiguous(), scatter_dim=2, gather_dim=1)
            return x.index_select(1, lay.global_order.to(x.device)).transpose(1, 2).contiguous()

        B = q.shape[0]
        if grid_q == grid_k:
            qkv = spread(torch.cat([q, k, v], dim=0), lay_q)
            q, k, v = qkv[:B], qkv[B:2 * B], qkv[2 * B:]
        else:
            q, kv = spread(q, lay_q), spread(torch.cat([k, v], dim=0), lay_k)
            k, v = kv[:B], kv[B:]
        params.update(latent_shape_q=grid_q, latent_shape_k=grid_k)
        out = bsa_interface.flash_attn_bsa_3d(q, k, v, **params)                # [B, H/N, Nq, D]
        out = out.transpose(1, 2).index_select(1, lay_q.rank_order.to(out.device)).contiguous()
        return all_to_all(out, scatter_dim=1, gather_dim=2).transpose(1, 2)    # [B, H, nq, D]
    return flash_attn_bsa_3d


def _sdpa_all_keys(q, k, v, *args, sdpa=None, **kwargs):
    """LongCat's plain-SDPA self-attention paths under a sharded forward: this rank's
    queries against the keys and values of every rank (no mask: the order of keys
    does not matter)."""
    import torch
    layout = _LAYOUT.get()
    if layout is not None:
        from fastvideo.distributed.communication_op import sequence_model_parallel_all_gather
        if kwargs.get("attn_mask") is not None or (args and args[0] is not None):
            raise NotImplementedError("sp-whole-sequence: a masked SDPA call cannot gather the keys of every rank")
        k = sequence_model_parallel_all_gather(k.contiguous(), dim=2)
        v = sequence_model_parallel_all_gather(v.contiguous(), dim=2)
    return (sdpa or torch.nn.functional.scaled_dot_product_attention)(q, k, v, *args, **kwargs)


class ModuleProxy(types.ModuleType):
    """A module that answers ``overrides`` and is the module ``under`` it otherwise."""

    def __init__(self, name: str, under, overrides: dict):
        super().__init__(name)
        self._under, self._overrides = under, overrides

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._under, name)


def module_proxy(name: str, under, overrides: dict) -> ModuleProxy:
    """A module named ``name`` answering ``overrides`` and otherwise ``under`` (a layer over a
    module's name, e.g. ``torch`` in FastVideo's longcat module, that stacks: fixes/patching.py)."""
    return ModuleProxy(name, under, overrides)


def _torch_over(under):
    """``torch`` for the longcat module (or the layer under this one):
    ``torch.nn.functional.scaled_dot_product_attention`` is the gathering version, every other
    name is the layer under it's."""
    def sdpa(q, k, v, *args, **kwargs):          # the layer under's SDPA, looked up per call
        return _sdpa_all_keys(q, k, v, *args, sdpa=under.nn.functional.scaled_dot_product_attention, **kwargs)
    functional = ModuleProxy("torch.nn.functional", under.nn.functional, {"scaled_dot_product_attention": sdpa})
    return ModuleProxy("torch", under, {"nn": ModuleProxy("torch.nn", under.nn, {"functional": functional})})


def _install():
    import fastvideo.models.dits.longcat as lc
    from fastvideo.layers.rotary_embedding_3d import RotaryPositionalEmbedding3D
    undo = [wrap_method(lc.LongCatTransformer3DModel, "forward", _model_forward),
            wrap_method(lc.PatchEmbed3D, "forward", _patch_embed_forward),
            wrap_method(lc.FinalLayer, "forward", _final_layer_forward),
            wrap_method(RotaryPositionalEmbedding3D, "forward", _rope_forward)]
    undo.append(wrap_method(lc, "flash_attn_bsa_3d", _bsa_global))
    undo.append(wrap_method(lc, "torch", _torch_over))
    return undo_all(undo)


# --- the upstream patch ----------------------------------------------------------------

_LONGCAT = "fastvideo/models/dits/longcat.py"
_ATTN = "LongCatSelfAttention.forward"
_KV = "LongCatSelfAttention.forward_with_kv_cache"
_MODEL = "LongCatTransformer3DModel.forward"
_BACK = """\
    if sp_sharded:  # back to this rank's tokens, with every head
        out = longcat_sp_tokens_to_heads(out, T)"""
_GATHERED = """\
    # Sequence parallelism: this rank holds its share of the tokens (LongCatTransformer3DModel.forward).
    # Exchange heads for tokens: every token, in order, with a share of the heads, so that what follows
    # (RoPE positions, the i2v split, BSA's latent grid, the K/V cache) runs as on one process.
    sp_sharded = longcat_sp_is_sharded(N, latent_shape)
    if sp_sharded:
        q, k, v = longcat_sp_heads_to_tokens(q, k, v, num_frames=T)"""


_TEST = """\
    # SPDX-License-Identifier: Apache-2.0
    \"\"\"LongCat under sequence parallelism on 2 CPU processes (gloo; no download: a tiny model
    built here). Each rank holds half of every frame's tokens through the blocks, and what the
    model returns (t2v, the i2v condition split, block-sparse attention, a K/V cache and the
    continuation that uses it) is what one process returns.\"\"\"
    import os

    import torch
    import torch.multiprocessing as mp

    GRID = (3, 4, 8)  # latent frames, height, width; patch (1, 2, 2): 3 x 2 x 4 tokens


    def _kernel(q, k, v, latent_shape_q, latent_shape_k, **params):
        # The block-sparse kernel's own shape check; its Triton code is not what is tested here.
        assert q.shape[2] == latent_shape_q[0] * latent_shape_q[1] * latent_shape_q[2], (q.shape, latent_shape_q)
        assert k.shape[2] == latent_shape_k[0] * latent_shape_k[1] * latent_shape_k[2], (k.shape, latent_shape_k)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


    def _rank(rank, world, init_file, out_dir):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        from fastvideo.attention import selector
        from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig, LongCatVideoConfig
        from fastvideo.distributed import maybe_init_distributed_environment_and_model_parallel
        from fastvideo.forward_context import set_forward_context
        from fastvideo.models.dits import longcat
        from fastvideo.platforms.cpu import CpuPlatform

        # On a CPU the platform names no attention backend; SDPA is the one it would use.
        CpuPlatform.get_attn_backend_cls = classmethod(
            lambda cls, *a, **k: "fastvideo.attention.backends.sdpa.SDPABackend")
        selector._cached_get_attn_backend.cache_clear()
        longcat.flash_attn_bsa_3d = _kernel
        maybe_init_distributed_environment_and_model_parallel(1, world, distributed_init_method=f"file://{init_file}")

        torch.manual_seed(0)  # the same weights and inputs on every rank and in one process
        arch = LongCatVideoArchConfig(hidden_size=32, depth=2, num_attention_heads=2, in_channels=4, out_channels=4,
                                      caption_channels=8, adaln_tembed_dim=16, frequency_embedding_size=16)
        model = longcat.LongCatTransformer3DModel(LongCatVideoConfig(arch_config=arch), hf_config={}).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.2)
        latents, text, t = torch.randn(1, 4, *GRID), torch.randn(1, 5, 8), torch.tensor([500.0])
        tokens = []
        model.blocks[0].register_forward_pre_hook(lambda module, args: tokens.append(args[0].shape[1]))
        out = {}
        with torch.no_grad(), set_forward_context(current_timestep=0, attn_metadata=None):
            out["t2v"] = model(latents, text, t)
            out["i2v"] = model(latents, text, t, num_cond_latents=1)
            model.enable_bsa()
            out["bsa"] = model(latents, text, t)
            out["bsa_i2v"] = model(latents, text, t, num_cond_latents=1)
            model.disable_bsa()
            _, cache = model(latents[:, :, :1], text, t, return_kv=True, skip_crs_attn=True)
            out["cache_k"], out["cache_v"] = cache[1]
            out["continued"] = model(latents[:, :, 1:], text, t, num_cond_latents=1, kv_cache_dict=cache)
        out["tokens"] = torch.tensor(tokens)
        torch.save(out, os.path.join(out_dir, f"{world}-{rank}.pt"))


    def test_each_rank_holds_half_the_tokens_and_returns_what_one_process_does(tmp_path):
        for world in (1, 2):
            mp.start_processes(_rank, args=(world, str(tmp_path / f"init-{world}"), str(tmp_path)), nprocs=world,
                               start_method="spawn")
        one = torch.load(tmp_path / "1-0.pt")
        for rank in range(2):
            got = torch.load(tmp_path / f"2-{rank}.pt")
            assert (got["tokens"] * 2).tolist() == one["tokens"].tolist()
            for name in ("t2v", "i2v", "bsa", "bsa_i2v", "cache_k", "cache_v", "continued"):
                torch.testing.assert_close(got[name], one[name], rtol=1e-4, atol=1e-5, msg=f"rank {rank}: {name}")
    """


def _code_source() -> str:
    """The functions of fixes/sp_shard_code.py, as source (read, not imported: it imports FastVideo)."""
    import ast
    from pathlib import Path
    text = (Path(__file__).parent / "sp_shard_code.py").read_text()
    return "\n\n\n".join(ast.get_source_segment(text, n) for n in ast.parse(text).body
                          if isinstance(n, ast.FunctionDef))


PATCH = Patch(
    name="sp-whole-sequence",
    title="LongCat: shard the token sequence under sequence parallelism (every mode, dense and BSA)",
    after=("bsa-cond-split-dense", "bsa-kv-cache-dense"),
    description="""\
        What: under sequence parallelism (N > 1 ranks) `LongCatTransformer3DModel.forward`
        keeps on each rank its run of H*W/N tokens of every latent frame (`longcat_sp_shard`,
        frame after frame, so the blocks' per-frame modulation and the count of conditioning
        tokens hold as they are) from the patch embedding to the final layer, and gathers the
        output. `LongCatSelfAttention` exchanges heads for tokens (one all-to-all of q, k and v,
        `longcat_sp_heads_to_tokens`): every token, in order, with H/N heads, so that RoPE, the
        i2v condition split, block-sparse attention on the whole latent grid and the K/V-cache
        continuation run exactly as on one process, on fewer heads; a second all-to-all brings
        each rank its tokens back. Cross-attention, the FFN and the modulation run on the
        rank's tokens. A returned K/V cache is gathered to every head (as one process builds
        it); a given one is split by heads. Where a frame's tokens do not divide among the
        ranks, the forward runs as before.

        Why: the forward hands every rank the whole sequence (other FastVideo DiTs call
        `sequence_model_parallel_shard` first), so `DistributedAttention`'s all-to-all
        concatenates N copies: each rank's self-attention does N times one process's work
        (1.6x per rank at SP 2 on longcat-convert's tiny t2v, 2.0x in self-attention) and every
        linear layer runs whole on every rank. With BSA on, the self-attention divides H and W
        of the latent shape it hands `flash_attn_bsa_3d` by `cp_split_hw` (LongCat-Video's
        per-rank shard) while q, k and v hold every token, and the kernel's assertion
        `Tq * Hq * Wq == Sq` fails on every rank. LongCat-Video shards the tokens per rank and
        exchanges heads for tokens around attention.

        Relation to PR #1862 ("Enable SP for LongCat BSA refinement", open): it fixes the
        assertion on one path, BSA refinement without conditioning frames (a balanced 2-D H/W
        split, global order before RoPE and BSA, a gather before unpatchify), and leaves every
        other mode as it is. This patch shards every LongCat forward under SP (t2v, i2v, video
        continuation with and without the K/V cache, dense and BSA) with one 1-D frame-major
        split, and supersedes it; the two touch the same lines, so one of them is rebased on the
        other.

        Evidence: longcat-convert's gate, `parity e2e-sp2-patched` (tiny t2v, i2v, t2v_lora,
        kv_continue_b2, bsa_t2v, bsa_i2v, bsa_kv_continue), `layer-sp2-patched`,
        `kv-sp2-patched` and `sampling-patched-sp2` (traj_t2v_cfg, traj_i2v, traj_vc_cache):
        every row of every rank within the float32 policy against LongCat-Video, attention work
        per rank 0.5 of one process for every kind (stock 1.6), no rank holding the whole
        sequence; stock with BSA: the kernel's assertion on both ranks.

        Leaves alone: one process (nothing changes: every new branch is under `sp_sharded`),
        the attention backends, cross-attention (each rank's tokens against the whole text),
        grids whose frames do not divide among the ranks (every rank runs every token, as
        before, and BSA there runs on the whole grid instead of asserting; padding them is a
        follow-up).""",
    edits=(
        Edit(_LONGCAT, "<module>", "from fastvideo.attention.layer import DistributedAttention, LocalAttention", """\
            from fastvideo.distributed.communication_op import (sequence_model_parallel_all_gather,
                                                                sequence_model_parallel_all_to_all_4D)
            from fastvideo.distributed.parallel_state import (get_sp_parallel_rank, get_sp_world_size,
                                                              model_parallel_is_initialized)""",
             where="after"),
        Edit(_LONGCAT, "modulate_fp32", "", _code_source, where="after-scope"),
        Edit(_LONGCAT, "LongCatSelfAttention.__init__", "self.attn = DistributedAttention(", """\
            # Under sequence parallelism forward() exchanges heads for tokens itself
            # (longcat_sp_heads_to_tokens): dense attention then runs here, on this rank.
            self.attn_all_tokens = LocalAttention(
                num_heads=num_heads,
                head_size=self.head_dim,
                supported_attention_backends=config._supported_attention_backends,
            )""", where="after"),
        # forward: gather after the norms, attend, give back before the output projection
        Edit(_LONGCAT, _ATTN, "k = self.k_norm(k)", _GATHERED, where="after"),
        Edit(_LONGCAT, _ATTN, "num_cond_tokens = num_cond_latents * (N // T)",
             "num_cond_tokens = num_cond_latents * (q.shape[1] // T)  # q holds every token (under SP too)"),
        Edit(_LONGCAT, _ATTN, "out_cond, _ = self.attn(q_cond, k_cond, v_cond)", """\
            if sp_sharded:  # every token is here already: no second exchange
                out_cond = self.attn_all_tokens(q_cond, k_cond, v_cond)
            else:""", where="guard"),
        Edit(_LONGCAT, _ATTN, "out = torch.cat([out_cond, out_noise], dim=1)", _BACK, where="after"),
        Edit(_LONGCAT, _ATTN, "# Handle SP split: BSA operates on per-rank spatial dimensions\nif sp_size > 1:", """\
            # Every token is here (gathered above under SP): BSA runs on the whole latent grid.
            latent_shape_bsa = latent_shape""", where="span"),
        Edit(_LONGCAT, _ATTN, "# Call BSA with per-rank latent shape", "# Call BSA on the whole latent grid"),
        Edit(_LONGCAT, _ATTN, "out, _ = self.attn(q, k, v)", """\
            if sp_sharded:  # every token is here already: no second exchange
                out = self.attn_all_tokens(q, k, v)
            else:""", where="guard"),
        Edit(_LONGCAT, _ATTN, "# === Attention: BSA or standard ===\nif self.enable_bsa and T > 1:", _BACK,
             where="after"),
        # forward_with_kv_cache: the same, with the cache's heads this rank's (the model splits it)
        Edit(_LONGCAT, _KV, "k = self.k_norm(k)", _GATHERED, where="after"),
        Edit(_LONGCAT, _KV, "q_rope = q_padding[:, :, -N:].contiguous()",
             "q_rope = q_padding[:, :, -q_rope.shape[2]:].contiguous()  # every new token (under SP too)"),
        Edit(_LONGCAT, _KV, "out = out.reshape(B, N, C)", _BACK, where="before"),
        # the model: shard after the patch embedding, gather the caches and the output
        Edit(_LONGCAT, _MODEL, "x = self.patch_embed(hidden_states)", """\
            # Sequence parallelism: each rank keeps its run of every frame's tokens through the
            # blocks (longcat_sp_shard); self-attention exchanges heads for tokens.
            sp_sharded = longcat_sp_can_shard((N_t, N_h, N_w))
            if sp_sharded:
                x = longcat_sp_shard(x, N_t)
                if kv_cache_dict:  # the blocks attend with this rank's share of the heads
                    kv_cache_dict = {i: tuple(longcat_sp_heads_of(c) for c in kv) for i, kv in kv_cache_dict.items()}""",
             where="after"),
        Edit(_LONGCAT, _MODEL, "# 5. Output projection", """\
            if sp_sharded and return_kv:  # the caches with every head, as one process builds them
                kv_cache_dict_ret = {
                    i: tuple(longcat_sp_all_heads(c, x.device) for c in kv)
                    for i, kv in kv_cache_dict_ret.items()
                }
            """, where="before"),
        Edit(_LONGCAT, _MODEL, "output = self.final_layer(x, t, latent_shape=(N_t, N_h, N_w))", """\
            if sp_sharded:  # every rank's tokens, in order: what one process computes
                output = longcat_sp_gather(output, N_t)""", where="after"),
    ),
    new_files=(NewFile("fastvideo/tests/distributed/test_longcat_sp_shard.py", _TEST),),
    test="fastvideo/tests/distributed/test_longcat_sp_shard.py",
)

FIX = Fix("sp-whole-sequence", "under sequence parallelism each rank holds 1/N of the tokens through the blocks "
                               "(global RoPE positions and BSA layout, whole text, sequence gathered before the "
                               "output); also closes sp-bsa-assert", _install, PATCH)

"""FastVideo set up for a run outside the tool: a converted folder to frames, on a CPU or a GPU.

This is the public way to run FastVideo's LongCat pipeline in your own script (with or
without our fixes, fixes/): ``fastvideo_run`` does what the tool does before every
FastVideo run, and nothing else:

* the **runtime**: FastVideo imported with its CPU adjustments (``parity.native.ensure_runtime``:
  the attention backend 0.2.1's CPU platform does not name, Triton's interpreter for the
  block-sparse kernels on a CPU) and its **distributed environment** initialised for one
  process (FastVideo's own ``maybe_init_distributed_environment_and_model_parallel``, on a
  private ``file://`` rendezvous: no ``MASTER_ADDR`` needed);
* the **arguments** as FastVideo needs them on this device: ``FastVideoArgs.from_kwargs``
  (the way ``VideoGenerator`` makes them) with every precision ``dtype`` and, on a CPU, no
  CPU offload, no layerwise offload and no pinned memory (each needs CUDA); your own
  FastVideoArgs / PipelineConfig fields over them;
* the **device**: FastVideo's ``get_local_torch_device`` answers the CPU on a CPU
  (0.2.1 answers ``mps`` there);
* the **batch**: ``FastVideoRun.batch`` builds the ``ForwardBatch`` from a ``SamplingParam``
  as ``VideoGenerator`` does; ``FastVideoRun.generate`` runs ``pipeline.forward`` on it.

On a CPU with a float32 DiT, the built transformer gets a forward pre-hook handing it float32
copies of the bfloat16 latents and text LongCat's denoising stage passes (CUDA's autocast
lets them through on a GPU; the finding ``bf16-dit-input``, docs/known-differences.md).

docs/fixes.md ("Running FastVideo yourself") shows a whole script; ``tests/test_fastvideo_run.py``
runs it as written, and its VideoGenerator counterpart on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from longcat_convert import dtypes
from longcat_convert.errors import BadInput

# FastVideoArgs fields that need CUDA (FSDP offload, pinned memory): off on a CPU.
CPU_ARGS = dict(dit_cpu_offload=False, text_encoder_cpu_offload=False, vae_cpu_offload=False,
                image_encoder_cpu_offload=False, dit_layerwise_offload=False, pin_cpu_memory=False)


def _device_type(device) -> str:
    text = str(device)
    if text != "cpu" and not text.startswith("cuda"):
        raise BadInput(f"device {device!r}: use cpu, cuda or cuda:N")
    return "cpu" if text == "cpu" else "cuda"


def fastvideo_args(converted, *, device="cpu", dtype="fp32", **fields):
    """``FastVideoArgs`` for CONVERTED as FastVideo needs them on ``device``, after the runtime
    and the distributed environment are set up: every precision ``dtype`` (fp32, bf16, fp16),
    on a CPU no offload or pinned memory; ``fields`` (FastVideoArgs / PipelineConfig fields)
    over them, applied by ``FastVideoArgs.from_kwargs`` as FastVideo applies them."""
    from . import native as nat
    kind = _device_type(device)
    prec = dtypes.short(dtype)
    converted = Path(converted)
    if not (converted / "model_index.json").is_file():
        raise BadInput(f"{converted}: no model_index.json; give the folder `longcat-convert convert` wrote "
                       "(with --components copy, so that it holds text_encoder/, tokenizer/ and vae/)")
    nat.ensure_runtime(device)                      # FastVideo imported the tool's way; one-process distributed env
    from fastvideo.fastvideo_args import FastVideoArgs
    kwargs = dict(model_path=str(converted), num_gpus=1, dit_precision=prec, vae_precision=prec,
                  text_encoder_precisions=(prec,))
    if kind == "cpu":
        kwargs.update(CPU_ARGS)
    kwargs.update(fields)
    args = FastVideoArgs.from_kwargs(**kwargs)
    nat.point_fastvideo_at(device)
    return args


@dataclass
class FastVideoRun:
    """FastVideo's LongCat pipeline for one converted folder on one device (``fastvideo_run``)."""
    converted: Path
    device: str
    args: object                                   # FastVideoArgs
    pipeline: object = None                        # built on first use (``build``)
    hooks: list = field(default_factory=list)

    def build(self):
        """``fastvideo.pipelines.build_pipeline(args)``, its stages created; on a CPU with a
        float32 DiT, the transformer handed float32 inputs (see the module's docstring)."""
        if self.pipeline is None:
            import torch
            from fastvideo.pipelines import build_pipeline

            from .capture import cast_inputs_to
            pipe = build_pipeline(self.args)
            pipe.post_init()
            dit = pipe.modules["transformer"]
            dt = next(dit.parameters()).dtype
            if _device_type(self.device) == "cpu" and dt == torch.float32:
                self.hooks.append(dit.register_forward_pre_hook(cast_inputs_to(dt), with_kwargs=True))
            self.pipeline = pipe
        return self.pipeline

    def sampling_param(self, prompt: str, **settings):
        """A ``SamplingParam`` with LongCat's defaults for this folder (``SamplingParam.from_pretrained``),
        ``settings`` (height, width, num_frames, num_inference_steps, guidance_scale, seed,
        negative_prompt, sigmas, ...) over them."""
        from fastvideo.api.sampling_param import SamplingParam
        sp = SamplingParam.from_pretrained(str(self.converted))
        for k, v in settings.items():
            if not hasattr(sp, k):
                raise BadInput(f"{k}={v!r}: not a SamplingParam field")
            setattr(sp, k, v)
        sp.prompt = str(prompt).strip()
        if sp.negative_prompt is not None:
            sp.negative_prompt = sp.negative_prompt.strip()          # as VideoGenerator does
        return sp

    def batch(self, prompt: str, **settings):
        """The ``ForwardBatch`` ``pipeline.forward`` takes, made from the SamplingParam as
        ``VideoGenerator`` makes it."""
        from .pipeline import forward_batch
        return forward_batch(self.sampling_param(prompt, **settings), self.args)

    def generate(self, prompt: str, **settings):
        """Prompt to frames: the pipeline's output video, [B, C, T, H, W] in [0, 1]."""
        import torch
        pipe = self.build()
        with torch.no_grad():
            return pipe.forward(self.batch(prompt, **settings), self.args).output

    def close(self) -> None:
        """Remove the CPU input hook and drop the pipeline."""
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        self.pipeline = None


def fastvideo_run(converted, *, device="cpu", dtype="fp32", **fields) -> FastVideoRun:
    """FastVideo set up to run CONVERTED (a folder ``longcat-convert convert`` wrote) on ``device``
    (cpu, cuda, cuda:N) in ``dtype``: the runtime, the distributed environment, the arguments
    (``.args``); ``.build()`` the pipeline, ``.batch(prompt, ...)`` its ForwardBatch,
    ``.generate(prompt, ...)`` the frames. Install fixes (``fixes.installed``) after this call,
    around ``generate``."""
    args = fastvideo_args(converted, device=device, dtype=dtype, **fields)
    return FastVideoRun(Path(converted), str(device), args)


def generator_kwargs(device="cuda", dtype="bf16", **fields) -> dict:
    """Keyword arguments for ``fastvideo.VideoGenerator.from_pretrained`` on this device: one GPU
    and every precision ``dtype`` (VideoGenerator runs in worker processes it spawns, and needs
    CUDA; on a CPU use ``fastvideo_run``)."""
    if _device_type(device) != "cuda":
        raise BadInput(f"device {device!r}: FastVideo's VideoGenerator needs CUDA; on a CPU use "
                       "parity.fastvideo_run.fastvideo_run")
    prec = dtypes.short(dtype)
    return dict(num_gpus=1, dit_precision=prec, vae_precision=prec, text_encoder_precisions=(prec,), **fields)

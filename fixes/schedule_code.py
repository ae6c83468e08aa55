"""The original's LongCat schedule as FastVideo code: the run-time fix calls these
functions (fixes/schedule.py) and the upstream patch inserts their source into
FastVideo's LongCat pipeline config, so both forms run the same code. torch only;
nothing of reference/."""
from __future__ import annotations

import torch


def longcat_input_sigmas(num_inference_steps: int, use_distill: bool = False) -> list[float]:
    """The sigmas LongCat-Video hands its scheduler, before the scheduler's shift.

    ``linspace(1, 0.001, steps)``; distilled, ``steps`` of the 50-step ladder
    (every 20th of the 1000 training timesteps), picked ``floor(i * 50 / steps)``.
    """
    if use_distill:
        ladder = (torch.arange(1, 51, dtype=torch.float32) * 20).round().long()
        pick = torch.floor(torch.arange(num_inference_steps, dtype=torch.float64) * (50 / num_inference_steps))
        sigmas = torch.flip(ladder, [0])[pick.long()].float() / 1000
    else:
        sigmas = torch.linspace(1, 0.001, num_inference_steps)
    return sigmas.to(torch.float32).tolist()


def longcat_enhance_hf_schedule(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LongCat-Video's video continuation with ``enhance_hf``: the timesteps above 500,
    then 500, 450, ..., 50; sigmas = timesteps / 1000 and a terminal 0."""
    tail = (torch.arange(10, dtype=torch.float64) * -50.0 + 500.0).to(torch.float32)
    timesteps = torch.cat([timesteps[timesteps > 500.0], tail.to(device=timesteps.device, dtype=timesteps.dtype)])
    sigmas = torch.cat([timesteps / 1000, torch.zeros(1, device=timesteps.device, dtype=timesteps.dtype)])
    return timesteps, sigmas

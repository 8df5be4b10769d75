"""Diffusion paths through a reduced schedule: DDIM inversion and the forward-noised path.

Both return the model's noise predictions at every step, batched and deterministic. The
arithmetic follows improved-diffusion's `ddim_reverse_sample` operation for operation (float64
tables cast to float32, same order of operations), so features match DiffPath's numerically.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .schedule import ReducedSchedule
from .unet import UNetModel

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, model timesteps) -> eps


@dataclass
class Path:
    """Per-step tensors, each (K, B, C, H, W)."""

    eps: torch.Tensor  # the model's noise prediction (re-derived after clipping on inversion)
    x0_hat: torch.Tensor  # Tweedie estimate of the clean image at each step
    eps_true: torch.Tensor  # the noise that actually separates x_t from x0


def eps_fn_for(model: UNetModel) -> EpsFn:
    """The UNet as a noise predictor: drops the learned-variance half of the output."""
    c = model.config.in_channels

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t)[:, :c]
    return eps


def _table(values: np.ndarray, device: torch.device) -> list[torch.Tensor]:
    """float64 table -> per-step float32 scalars (improved-diffusion's _extract_into_tensor).
    Cached per device: a CUDA graph capture must not see a host-to-device copy."""
    raw = np.ascontiguousarray(values, dtype=np.float64).tobytes()
    return list(_table_on(raw, torch.device(device)))


@functools.lru_cache(maxsize=None)  # never evicted: a captured CUDA graph points at these
def _table_on(raw: bytes, device: torch.device) -> tuple[torch.Tensor, ...]:
    t = torch.from_numpy(np.frombuffer(raw, dtype=np.float64).copy()).float().to(device)
    return tuple(t)


def _model_t(sched: ReducedSchedule, i: int, batch: int, rescale: bool,
             device: torch.device) -> torch.Tensor:
    value = float(sched.model_timesteps(rescale)[i])
    return torch.full((batch,), value, dtype=torch.float32, device=device)


def ddim_inversion(eps_fn: EpsFn, x0: torch.Tensor, sched: ReducedSchedule,
                   clip_denoised: bool = True, rescale_timesteps: bool = True) -> Path:
    """DDIM inversion (eta = 0) from the clean image x0 along `sched`.

    Step i: evaluate the model at (x_i, tau_i); x0_hat = (x_i - sqrt(1-abar_i) eps) / sqrt(abar_i),
    clipped to [-1, 1] if asked; eps re-derived from the clipped x0_hat; then
    x_{i+1} = sqrt(abar_{i+1}) x0_hat + sqrt(1 - abar_{i+1}) eps  (DDIM eq. 12 run backwards).
    """
    abar = sched.abar
    sra = _table(np.sqrt(1.0 / abar), x0.device)
    srm1 = _table(np.sqrt(1.0 / abar - 1.0), x0.device)
    sqrt_abar = _table(np.sqrt(abar), x0.device)
    sqrt_1m = _table(np.sqrt(1.0 - abar), x0.device)
    abar_next = _table(sched.abar_next, x0.device)
    x, eps_all, x0_all, true_all = x0, [], [], []
    for i in range(sched.k):
        eps_model = eps_fn(x, _model_t(sched, i, x.shape[0], rescale_timesteps, x.device))
        x0_hat = sra[i] * x - srm1[i] * eps_model
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1, 1)
        eps = (sra[i] * x - x0_hat) / srm1[i]
        eps_all.append(eps)
        x0_all.append(x0_hat)
        true_all.append((x - sqrt_abar[i] * x0) / sqrt_1m[i])
        x = x0_hat * torch.sqrt(abar_next[i]) + torch.sqrt(1 - abar_next[i]) * eps
    return Path(torch.stack(eps_all), torch.stack(x0_all), torch.stack(true_all))


@functools.lru_cache(maxsize=None)  # never evicted: a captured CUDA graph points at these
def fixed_noise(shape: tuple[int, ...], seed: int, device: torch.device | None = None) -> torch.Tensor:
    """One seeded noise image shared by every input and step, so a frame's features do not
    depend on its position in the batch. Drawn on the CPU (the same numbers everywhere) and
    cached per device, so that it is a plain constant to the ONNX tracer (which cannot record
    a random generator) and no copy happens inside a CUDA graph. Callers must not modify it."""
    if device is not None and torch.device(device).type != "cpu":
        return fixed_noise(shape, seed).to(device)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def forward_path(eps_fn: EpsFn, x0: torch.Tensor, sched: ReducedSchedule, noise: torch.Tensor,
                 clip_denoised: bool = True, rescale_timesteps: bool = True) -> Path:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) z at every tau with fixed z; the model's eps at each."""
    abar = sched.abar
    sqrt_abar = _table(np.sqrt(abar), x0.device)
    sqrt_1m = _table(np.sqrt(1.0 - abar), x0.device)
    z = noise.to(x0.device, x0.dtype).expand_as(x0)
    eps_all, x0_all = [], []
    for i in range(sched.k):
        xt = sqrt_abar[i] * x0 + sqrt_1m[i] * z
        eps = eps_fn(xt, _model_t(sched, i, x0.shape[0], rescale_timesteps, x0.device))
        x0_hat = (xt - sqrt_1m[i] * eps) / sqrt_abar[i]
        eps_all.append(eps)
        x0_all.append(x0_hat.clamp(-1, 1) if clip_denoised else x0_hat)
    k = sched.k
    return Path(torch.stack(eps_all), torch.stack(x0_all), z.unsqueeze(0).expand(k, *z.shape))


def training_loss(eps_fn: EpsFn, x0: torch.Tensor, abar: torch.Tensor, steps: int,
                  generator: torch.Generator | None = None, rescale_timesteps: bool = True
                  ) -> torch.Tensor:
    """The simple epsilon-prediction loss (Ho et al. L_simple) at uniformly drawn timesteps.

    abar: (T,) float32 cumulative alphas on x0's device.
    """
    b = x0.shape[0]
    t = torch.randint(0, steps, (b,), generator=generator).to(x0.device)
    z = torch.randn(x0.shape, generator=generator).to(x0.device)
    a = abar[t].view(b, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * z
    t_model = t.float() * (1000.0 / steps) if rescale_timesteps else t.float()
    return torch.mean((eps_fn(xt, t_model) - z) ** 2)


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, shape: tuple[int, ...], cfg, steps: int,
                generator: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """Generate images with deterministic DDIM (eta = 0) over `steps` respaced steps."""
    sched = ReducedSchedule.ddim(cfg.noise_schedule, cfg.diffusion_steps, steps)
    abar = torch.tensor(sched.abar, dtype=torch.float32)
    x = torch.randn(shape, generator=generator).to(device)
    for i in reversed(range(sched.k)):
        eps = eps_fn(x, _model_t(sched, i, shape[0], cfg.rescale_timesteps, x.device))
        x0_hat = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-1, 1)
        if i == 0:
            return x0_hat
        eps = (x - abar[i].sqrt() * x0_hat) / (1 - abar[i]).sqrt()
        x = abar[i - 1].sqrt() * x0_hat + (1 - abar[i - 1]).sqrt() * eps
    return x

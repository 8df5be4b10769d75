"""Path statistics: DiffPath's 6-D and 1-D features and the SSIM-amplified family.

Every variant maps a batch of clean images to a (B, D) feature matrix and a (B, H, W)
per-pixel heatmap. Sums over steps, channels and pixels are accumulated in `acc_dtype`
(float64 by default, for agreement with reference numbers; float32 in graphs for TensorRT).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .paths import EpsFn, Path, ddim_inversion, fixed_noise, forward_path
from .schedule import ReducedSchedule
from .ssim import ssim_map

POWER_NAMES = ("eps_sum", "eps_sum_sq", "eps_sum_cb", "deps_dt", "deps_dt_sq", "deps_dt_cb")
SSIM_NAMES = ("ssim_sum", "ssim_sum_sq", "dssim_dt")
VARIANTS = ("diffpath6d", "diffpath1d", "6d+ssim", "error", "amplified-eps")


@dataclass(frozen=True)
class FeatureSpec:
    """Which statistic to take of the path. `lam`, `ssim_sigma` and `trajectory` only matter
    for the SSIM variants; `trajectory` only for `error`."""

    variant: str = "diffpath6d"
    trajectory: str = "inversion"  # or "forward" (fixed seeded noise)
    lam: float = 1.0
    ssim_sigma: float = 1.5  # Gaussian window 11 px
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"feature variant {self.variant!r} is unknown: use one of "
                             f"{', '.join(VARIANTS)}")
        if self.trajectory not in ("inversion", "forward"):
            raise ValueError(f"trajectory {self.trajectory!r}: use 'inversion' or 'forward'")
        if self.trajectory == "forward" and self.variant != "error":
            raise ValueError(f"trajectory 'forward' applies to the 'error' variant only, "
                             f"not {self.variant!r}")

    @property
    def names(self) -> tuple[str, ...]:
        if self.variant == "diffpath1d":
            return ("deps_dt_sq_sqrt",)
        if self.variant == "6d+ssim":
            return POWER_NAMES + SSIM_NAMES
        prefix = {"diffpath6d": "", "error": "err_", "amplified-eps": "amp_"}[self.variant]
        return tuple(prefix + n for n in POWER_NAMES)

    @property
    def label(self) -> str:
        """Short human name, e.g. 'error/forward l=1'."""
        if self.variant in ("diffpath6d", "diffpath1d"):
            return self.variant
        traj = f"/{self.trajectory}" if self.variant == "error" else ""
        return f"{self.variant}{traj} l={self.lam:g} s={self.ssim_sigma:g}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(**d)


def power_sums(v: torch.Tensor, acc_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(K, B, ...) per-step values -> (B, 6): sums of v, v^2, v^3 and of the finite difference
    d_i = (v_{i+1} - v_i) * K, its square and cube, over steps and all per-image axes."""
    k = v.shape[0]
    d = (v[1:] - v[:-1]) * k
    cols = []
    for x in (v, d):
        x = x.to(acc_dtype).transpose(0, 1).reshape(v.shape[1], -1)  # (B, steps*C*H*W)
        cols += [x.sum(1), (x * x).sum(1), (x * x * x).sum(1)]
    return torch.stack(cols, dim=1)


def ssim_dissimilarity(x0: torch.Tensor, x0_hat: torch.Tensor, sigma: float) -> torch.Tensor:
    """w_k = 1 - SSIM(x0, x0_hat_k), averaged over channels: (K, B, C, H, W) -> (K, B, H, W)."""
    k, b, c, h, w = x0_hat.shape
    ref = x0.unsqueeze(0).expand(k, b, c, h, w).reshape(k * b, c, h, w)
    s = ssim_map(ref, x0_hat.reshape(k * b, c, h, w), sigma=sigma)
    return (1 - s.mean(1)).reshape(k, b, h, w)


def _ssim_path_stats(w: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    """s_k = sum of w_k over pixels; then sum s_k, sum s_k^2, sum (s_{k+1} - s_k) * K."""
    s = w.to(acc_dtype).flatten(2).sum(2)  # (K, B)
    ds = (s[1:] - s[:-1]) * s.shape[0]
    return torch.stack([s.sum(0), (s * s).sum(0), ds.sum(0)], dim=1)


def path_for(spec: FeatureSpec, eps_fn: EpsFn, x0: torch.Tensor, sched: ReducedSchedule,
             clip_denoised: bool, rescale_timesteps: bool) -> Path:
    if spec.trajectory == "forward":
        z = fixed_noise(tuple(int(d) for d in x0.shape[1:]), spec.noise_seed, x0.device)
        return forward_path(eps_fn, x0, sched, z, clip_denoised, rescale_timesteps)
    return ddim_inversion(eps_fn, x0, sched, clip_denoised, rescale_timesteps)


def features_from_path(spec: FeatureSpec, x0: torch.Tensor, path: Path,
                       acc_dtype: torch.dtype = torch.float64, w: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, D), heatmap (B, H, W)) of one path. `w`: the path's SSIM dissimilarity
    at spec.ssim_sigma when the caller already has it (several specs share one path)."""
    eps = path.eps
    if spec.variant in ("diffpath6d", "diffpath1d"):
        heat = (eps * eps).sum(0).mean(1)
        feats = power_sums(eps, acc_dtype)
        if spec.variant == "diffpath1d":  # DiffPath-1D: sqrt of sum (d eps/dt)^2
            feats = feats[:, 4:5].sqrt()
        return feats, heat
    if w is None:
        w = ssim_dissimilarity(x0, path.x0_hat, spec.ssim_sigma)
    gain = (1 + spec.lam * w).unsqueeze(2)  # (K, B, 1, H, W)
    if spec.variant == "6d+ssim":
        feats = torch.cat([power_sums(eps, acc_dtype), _ssim_path_stats(w, acc_dtype)], dim=1)
        return feats, w.sum(0)
    if spec.variant == "amplified-eps":
        return power_sums(gain * eps, acc_dtype), w.sum(0)
    # "error": SSIM-amplified squared score error. On the inversion path eps is the noise
    # re-derived from the clipped x0 estimate (the same eps the 6D features use; it equals the
    # model's raw output wherever clipping is inactive); on the forward path it is the raw output.
    err = gain * (eps - path.eps_true) ** 2
    return power_sums(err, acc_dtype), err.sum(0).mean(1)

"""The one source of the path and feature defaults: `pathwatch eval`, `pathwatch export` and the
embedded default model (`default_bundle`) all read `DEFAULTS`.

The values live in `edge/models/default.json`, the default model's card (chosen by
docs/accuracy.md), so the shipped model, its export and the two commands cannot drift apart.
This module does not import torch: the command-line parser reads it for every command.
"""
from __future__ import annotations

from dataclasses import dataclass

from pathwatch.edge.models import default_settings, default_spec


@dataclass(frozen=True)
class PathDefaults:
    variant: str            # feature variant, e.g. "6d+ssim" (or "error/forward")
    k: int                  # DDIM steps along the path
    placement: str          # where the K steps go: "uniform" or "quadratic"
    lam: float              # SSIM amplification lambda
    ssim_sigma: float       # SSIM Gaussian window sigma
    timesteps: tuple[int, ...]  # what k and placement give on the default model's schedule

    @classmethod
    def from_settings(cls, s: dict) -> "PathDefaults":
        spec = default_spec(s)
        return cls(variant=s["variant"], k=int(s["k"]), placement=s["placement"],
                   lam=float(spec["lam"]), ssim_sigma=float(spec["ssim_sigma"]),
                   timesteps=tuple(int(t) for t in s["timesteps"]))

    def spec(self) -> dict:
        """The FeatureSpec arguments (variant, trajectory, lam, ssim_sigma)."""
        variant, _, trajectory = self.variant.partition("/")
        return {"variant": variant, "trajectory": trajectory or "inversion", "lam": self.lam,
                "ssim_sigma": self.ssim_sigma}


DEFAULTS = PathDefaults.from_settings(default_settings())

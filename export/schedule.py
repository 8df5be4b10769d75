"""Noise schedules and the reduced ("respaced") timestep schedule.

Pure numpy, float64 throughout (as improved-diffusion computes its tables), so the edge side
and the manifest can use it without torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def beta_schedule(kind: str, steps: int) -> np.ndarray:
    """Betas of improved-diffusion's named schedules (gaussian_diffusion.get_named_beta_schedule)."""
    if kind == "linear":
        scale = 1000 / steps  # Ho et al.'s schedule stretched to any T
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if kind == "cosine":
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        # Nichol & Dhariwal eq. 17, betas capped at 0.999 to avoid a singularity at t = T.
        return np.array([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999)
                         for i in range(steps)])
    raise ValueError(f"noise schedule {kind!r} is unknown: use 'linear' or 'cosine'")


def ddim_timesteps(steps: int, k: int) -> list[int]:
    """"ddimK": range(0, T, s) with the integer stride s that yields exactly K steps."""
    if not 1 <= k <= steps:
        raise ValueError(f"K={k}: must be between 1 and the {steps} training steps")
    for stride in range(1, steps + 1):
        if len(range(0, steps, stride)) == k:
            return list(range(0, steps, stride))
    raise ValueError(f"K={k}: no integer stride gives exactly {k} of {steps} steps; "
                     "give an explicit timestep list instead")


PLACEMENTS = ("uniform", "quadratic")


def placed_timesteps(steps: int, k: int, placement: str = "uniform") -> list[int]:
    """K timesteps of a T-step schedule. uniform: the ddimK striding; quadratic:
    t_i = floor(T (i/K)^2), denser near the clean image (docs/accuracy.md measures both)."""
    if placement == "uniform":
        return ddim_timesteps(steps, k)
    if placement != "quadratic":
        raise ValueError(f"timestep placement {placement!r}: use one of {', '.join(PLACEMENTS)}")
    if not 1 <= k <= steps:
        raise ValueError(f"K={k}: must be between 1 and the {steps} training steps")
    ts = sorted({steps * i * i // (k * k) for i in range(k)})  # exact integer floor
    if len(ts) != k:
        raise ValueError(f"K={k}: quadratic placement puts two steps on one timestep; "
                         "use fewer steps or uniform placement")
    return ts


@dataclass(frozen=True)
class ReducedSchedule:
    """K timesteps tau_0 < ... < tau_{K-1} of a T-step schedule, with the tables a path needs.

    abar[i] is the cumulative alpha at tau_i; abar_next[i] the one at tau_{i+1}, and 0 after
    the last step (DDIM inversion's convention: the path ends at pure noise).
    """

    kind: str
    steps: int
    timesteps: tuple[int, ...]

    def __post_init__(self) -> None:
        ts = list(self.timesteps)
        if not ts or ts != sorted(set(ts)) or ts[0] < 0 or ts[-1] >= self.steps:
            raise ValueError(f"timesteps {ts}: need a strictly increasing list within "
                             f"0..{self.steps - 1}")

    @classmethod
    def ddim(cls, kind: str, steps: int, k: int) -> "ReducedSchedule":
        return cls(kind, steps, tuple(ddim_timesteps(steps, k)))

    @classmethod
    def placed(cls, kind: str, steps: int, k: int, placement: str = "uniform") -> "ReducedSchedule":
        return cls(kind, steps, tuple(placed_timesteps(steps, k, placement)))

    @property
    def k(self) -> int:
        return len(self.timesteps)

    @property
    def abar(self) -> np.ndarray:
        full = np.cumprod(1.0 - beta_schedule(self.kind, self.steps))
        return full[list(self.timesteps)]

    @property
    def abar_next(self) -> np.ndarray:
        return np.append(self.abar[1:], 0.0)

    def model_timesteps(self, rescale: bool = True) -> np.ndarray:
        """What the network is fed: tau, or tau * 1000 / T when the checkpoint rescales."""
        t = np.asarray(self.timesteps, dtype=np.float32)
        return t * np.float32(1000.0 / self.steps) if rescale else t

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": self.steps, "timesteps": list(self.timesteps)}

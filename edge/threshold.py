"""The alert threshold: the upper tail of normal frame scores, modelled so that a target of
false alerts per hour becomes a score.

Scores are the calibration window's out-of-fold frame scores (each frame scored by densities
that never saw its stretch of the window), in capture order.

1. Peaks over threshold (Siffer et al., "Anomaly Detection in Streams with Extreme Value
   Theory", KDD 2017): above a high quantile u of the scores, the excesses s - u follow a
   generalised Pareto distribution (shape xi, scale sigma), so
   P(S > z) = zeta * (1 + xi (z - u) / sigma) ^ (-1 / xi) for z > u, zeta = P(S > u).
2. Consecutive frames are correlated: exceedances come in clusters (runs separated by at
   least a window of frames under u). theta = clusters / exceedances is the extremal index;
   phi = the share of clusters that hold `trigger` exceedances within `window` frames, i.e.
   that the alert rule would turn into an alert. False alerts per frame ~ P(S > z) theta phi.
3. Solving that for the target rate gives z; it is never set below the largest out-of-fold
   score, since calibration saw those frames as normal.

Everything here is derived from the stored scores, so a changed rate or trigger rule gives a
new threshold without refitting any density.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

TAIL_QUANTILE = 0.8  # u: few calibration frames, so a generous tail (SPOT uses 0.98 of many)
MIN_EXCESSES = 8  # below this a Pareto fit means nothing; the exponential (xi = 0) is used
XI_RANGE = (-0.5, 1.0)  # shapes outside this are fitting noise on tens of points


@dataclass(frozen=True)
class TailFit:
    u: float
    zeta: float  # share of frames over u
    xi: float
    sigma: float
    theta: float  # extremal index of the exceedances over u
    phi: float  # share of exceedance clusters the trigger rule turns into an alert
    frames: int
    max_score: float

    def survival(self, z: float) -> float:
        """P(a normal frame scores over z), for z above u."""
        y = max(z - self.u, 0.0) / self.sigma
        if abs(self.xi) < 1e-9:
            return self.zeta * math.exp(-y)
        base = 1.0 + self.xi * y
        return 0.0 if base <= 0 else self.zeta * base ** (-1.0 / self.xi)

    def quantile(self, p: float) -> float:
        """The score a normal frame exceeds with probability p (p < zeta)."""
        r = p / self.zeta
        if abs(self.xi) < 1e-9:
            return self.u - self.sigma * math.log(r)
        return self.u + self.sigma / self.xi * (r ** (-self.xi) - 1.0)


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    per_frame_exceedance: float
    tail: TailFit

    def to_dict(self) -> dict:
        return {"value": self.value, "method": self.method,
                "per_frame_exceedance": self.per_frame_exceedance, "tail": asdict(self.tail)}


def exceedance_clusters(over: np.ndarray, gap: int) -> list[np.ndarray]:
    """Indices of frames over the level, grouped into runs split by more than `gap` frames."""
    idx = np.flatnonzero(over)
    if len(idx) == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > gap) + 1)


def _triggers(cluster: np.ndarray, trigger: int, window: int) -> bool:
    return any(np.count_nonzero((cluster >= i) & (cluster < i + window)) >= trigger
               for i in cluster)


def _fit_pareto(excesses: np.ndarray) -> tuple[float, float]:
    mean = float(excesses.mean())
    if len(excesses) < MIN_EXCESSES:
        return 0.0, max(mean, 1e-6)
    from scipy.stats import genpareto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimiser chatter on small samples
        xi, _, sigma = genpareto.fit(excesses, floc=0.0)
    if not (math.isfinite(xi) and math.isfinite(sigma) and sigma > 0):
        return 0.0, max(mean, 1e-6)
    if not XI_RANGE[0] <= xi <= XI_RANGE[1]:
        # Refit the scale with the shape held at the nearest plausible value.
        xi = min(max(xi, XI_RANGE[0]), XI_RANGE[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, sigma = genpareto.fit(excesses, f0=xi, floc=0.0)
    return float(xi), float(max(sigma, 1e-6))


def fit_tail(scores: np.ndarray, trigger: int, window: int) -> TailFit:
    s = np.asarray(scores, np.float64)
    u = float(np.quantile(s, TAIL_QUANTILE))
    over = s > u
    xi, sigma = _fit_pareto(s[over] - u) if over.any() else (0.0, 1e-6)
    clusters = exceedance_clusters(over, window)
    theta = len(clusters) / int(over.sum()) if over.any() else 1.0  # ties at the top: no run
    phi = float(np.mean([_triggers(c, trigger, window) for c in clusters])) if clusters else 1.0
    # At least one cluster's worth: a window with no triggering cluster is not proof of none.
    phi = max(phi, 1.0 / max(1, len(clusters)))
    return TailFit(u, float(over.mean()) or 1.0 / len(s), xi, sigma, theta, phi, len(s),
                   float(s.max()))


def choose_threshold(scores: np.ndarray, false_alarms_per_hour: float, fps: float,
                     trigger: int, window: int, least: float | None = None) -> Threshold:
    """`least`: a threshold never below this (passing: ignore, whose window may hold no
    still content at all, and so no tail)."""
    tail = fit_tail(scores, trigger, window)
    frames_per_hour = max(fps, 1e-3) * 3600.0
    p = false_alarms_per_hour / (frames_per_hour * tail.theta * tail.phi)
    p = min(p, tail.zeta)
    z = tail.quantile(p)
    floor = tail.max_score
    how = (f"Pareto tail (xi={tail.xi:.2f}) at p={p:.1e} per frame" if z >= floor
           else "largest out-of-fold score")
    if least is not None and max(z, floor) < least:
        z, how = least, f"the still-content least ({least:g})"
    return Threshold(max(z, floor), f"{how}, for {false_alarms_per_hour:g}/h at {fps:g} fps, "
                     f"{trigger} of {window} (clusters: theta={tail.theta:.2f}, "
                     f"phi={tail.phi:.2f})", p, tail)

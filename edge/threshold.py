"""The alert threshold: the upper tail of normal frame scores, modelled so that a target of
false alerts per hour becomes a score.

Scores are the calibration window's out-of-fold frame scores (each frame scored by densities
that never saw its stretch of the window), in capture order.

1. The alert statistic. An alert starts when `trigger` of the last `window` frames are over
   the threshold, i.e. when M, the trigger-th largest score of the last `window` frames,
   crosses it. So the tail that decides false alerts is M's, not the single frame's: it
   carries how often high scores come together, at every level. (Modelling the frame
   scores and counting how often their exceedances of a lower level u made 3 of 5 held that
   share fixed, but it falls with the level: frames far over the threshold rarely come in
   threes. The thresholds it gave realized 0.3x to 0.04x of their target.)
2. Peaks over threshold (Siffer et al., "Anomaly Detection in Streams with Extreme Value
   Theory", KDD 2017): above a high quantile u of M, the excesses M - u follow a
   generalised Pareto distribution (shape xi, scale sigma), so
   P(M > z) = zeta * (1 + xi (z - u) / sigma) ^ (-1 / xi) for z > u, zeta = P(M > u).
   The shape is held at 0 or above for M: a bounded tail fitted on a window's worth of
   excesses claims an end point that hours of frames go past.
3. M's exceedances come in runs (one alert keeps M over for a few frames): theta =
   runs / exceedances, runs split by more than a window of frames under u. False alerts per
   frame ~ P(M > z) theta. Solving that for the target rate gives z, read predictively: a
   scale fitted on k runs of excesses (5 to 25 in 2 minutes at 1 to 5 fps) is noisy,
   and a plug-in quantile is exceeded more often than its p on average; z is the score
   whose average exceedance, over the windows the fit could have come from, is p. (Counting
   excess frames instead of runs realized 2.1x the 0.5/h target over 60 demo calibrations,
   runs 0.63x: benchmarks/false_alarms.py.) It is never set below
   the window's largest M, since calibration saw those frames as normal. (Not its largest
   frame score: single frames far out, which the rule never turns into an alert, would set
   thresholds about four times what the target asks.)
4. The frame scores' own tail (same fit, its clusters and the share phi of them that the
   rule turns into alerts) is kept for the readable score: how often a normal frame scores
   this high.

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
ALERT_XI_RANGE = (0.0, 1.0)  # the threshold extrapolates beyond the window: no end point
FEW_RUNS = 5  # under this many runs of excesses the predictive read more than doubles the tail


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
        return self._quantile_log(math.log(p / self.zeta))

    def _quantile_log(self, log_r: float) -> float:
        """The quantile at exceedance zeta * exp(log_r), log_r <= 0 (in logs: the predictive
        level can be far below what a float holds)."""
        if abs(self.xi) < 1e-9:
            return self.u - self.sigma * log_r
        return self.u + self.sigma / self.xi * math.expm1(min(-self.xi * log_r, 700.0))

    @property
    def independent_excesses(self) -> int:
        """Excesses over u that carry independent information about the tail: one per run
        (exceedances of a sliding-window statistic come in runs that share frames)."""
        return max(1, round(self.zeta * self.frames * self.theta))

    def predictive_quantile(self, p: float) -> float:
        """The score exceeded with probability p on average over the windows this fit could
        have come from. A quantile read off a scale fitted on k independent excesses is
        exceeded more often than asked (for an exponential tail (1 + log(zeta/p) / k) ^ -k on
        average: twice p at k = 23 for p/zeta = 2.3e-3), so it is read at the level whose
        average exceedance is p: exact for the exponential tail, where excess / (sum of the k
        excesses) is a pivot.
        k counts runs, not frames: the excesses within a run move together."""
        k = self.independent_excesses
        log_r = min(math.log(p / self.zeta), 0.0)
        return self._quantile_log(-k * math.expm1(-log_r / k))


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str
    per_frame_exceedance: float
    tail: TailFit  # of the frame scores (the readable score's P(normal))
    alert_tail: TailFit  # of the alert statistic (the threshold)

    def to_dict(self) -> dict:
        return {"value": self.value, "method": self.method,
                "per_frame_exceedance": self.per_frame_exceedance, "tail": asdict(self.tail),
                "alert_tail": asdict(self.alert_tail)}


def exceedance_clusters(over: np.ndarray, gap: int) -> list[np.ndarray]:
    """Indices of frames over the level, grouped into runs split by more than `gap` frames."""
    idx = np.flatnonzero(over)
    if len(idx) == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > gap) + 1)


def _triggers(cluster: np.ndarray, trigger: int, window: int) -> bool:
    return any(np.count_nonzero((cluster >= i) & (cluster < i + window)) >= trigger
               for i in cluster)


def alert_statistic(scores: np.ndarray, trigger: int, window: int) -> np.ndarray:
    """The trigger-th largest score of every `window` consecutive frames: the alert rule
    fires when it crosses the threshold. A series shorter than a window is one window."""
    s = np.asarray(scores, np.float64)
    w = min(window, len(s))
    k = min(trigger, w)
    frames = np.lib.stride_tricks.sliding_window_view(s, w)
    return np.partition(frames, w - k, axis=1)[:, w - k]


def _fit_pareto(excesses: np.ndarray, xi_range=XI_RANGE) -> tuple[float, float]:
    mean = float(excesses.mean())
    if len(excesses) < MIN_EXCESSES:
        return 0.0, max(mean, 1e-6)
    from scipy.stats import genpareto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimiser chatter on small samples
        xi, _, sigma = genpareto.fit(excesses, floc=0.0)
    if not (math.isfinite(xi) and math.isfinite(sigma) and sigma > 0):
        return 0.0, max(mean, 1e-6)
    if not xi_range[0] <= xi <= xi_range[1]:
        # Refit the scale with the shape held at the nearest plausible value.
        xi = min(max(xi, xi_range[0]), xi_range[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, sigma = genpareto.fit(excesses, f0=xi, floc=0.0)
    return float(xi), float(max(sigma, 1e-6))


def fit_tail(scores: np.ndarray, trigger: int, window: int, xi_range=XI_RANGE) -> TailFit:
    s = np.asarray(scores, np.float64)
    u = float(np.quantile(s, TAIL_QUANTILE))
    over = s > u
    xi, sigma = _fit_pareto(s[over] - u, xi_range) if over.any() else (0.0, 1e-6)
    clusters = exceedance_clusters(over, window)
    theta = len(clusters) / int(over.sum()) if over.any() else 1.0  # ties at the top: no run
    phi = float(np.mean([_triggers(c, trigger, window) for c in clusters])) if clusters else 1.0
    # At least one cluster's worth: a window with no triggering cluster is not proof of none.
    phi = max(phi, 1.0 / max(1, len(clusters)))
    return TailFit(u, float(over.mean()) or 1.0 / len(s), xi, sigma, theta, phi, len(s),
                   float(s.max()))


def tail_threshold(alert_tail: TailFit, false_alarms_per_hour: float,
                   fps: float) -> tuple[float, float]:
    """The alert statistic's tail alone (no floor): the score for the target rate, and the
    per-frame exceedance of the statistic it stands for."""
    frames_per_hour = max(fps, 1e-3) * 3600.0
    p = min(false_alarms_per_hour / (frames_per_hour * alert_tail.theta), alert_tail.zeta)
    return alert_tail.predictive_quantile(p), p


def choose_threshold(scores: np.ndarray, false_alarms_per_hour: float, fps: float,
                     trigger: int, window: int, least: float | None = None) -> Threshold:
    """`scores`: out-of-fold frame scores in capture order. `least`: a threshold never below
    this (passing: ignore, whose window may hold no still content at all, and so no tail)."""
    tail = fit_tail(scores, trigger, window)
    # Every exceedance of the alert statistic is an alert (trigger 1 of 1 on M).
    alert_tail = fit_tail(alert_statistic(scores, trigger, window), 1, window, ALERT_XI_RANGE)
    z, p = tail_threshold(alert_tail, false_alarms_per_hour, fps)
    floor = alert_tail.max_score
    how = (f"Pareto tail of the {trigger}-of-{window} statistic (xi={alert_tail.xi:.2f}) at "
           f"p={p:.1e} per frame" if z >= floor
           else f"the window's largest {trigger}-of-{window} statistic")
    if least is not None and max(z, floor) < least:
        z, how = least, f"the still-content least ({least:g})"
    runs = alert_tail.independent_excesses
    few = (f"; only {runs} run{'s' * (runs != 1)} of high scores in the window: the threshold "
           f"is far out and unsteady; a longer calibration.seconds gives a steadier one"
           if runs < FEW_RUNS else "")
    return Threshold(max(z, floor), f"{how}, for {false_alarms_per_hour:g}/h at {fps:g} fps, "
                     f"{trigger} of {window} (runs: {runs}, theta={alert_tail.theta:.2f}){few}",
                     p, tail,
                     alert_tail)

"""Dynamic steps: the bundle's one-step head on every evaluated tile, the full schedule only on
tiles whose cheap score comes near the cheap head's own calibrated threshold.

The one-step graph costs a third of the K = 3 one, and on a normal stream few tiles come near
a threshold, so most tiles never pay for the full schedule (benchmarks/dynamic_steps.py,
docs/performance.md). Both heads are calibrated on the same window (the camera collects both
heads' features); the cheap head only decides which tiles the full head sees, so an alert is
always the full head's verdict.

A tile that is not escalated is normal by the cheap head. Its score is the cheap score put on
the full head's scale (times the ratio of the alert threshold to the cheap one), so the score
stream and the heatmap stay continuous; it lies below `margin` x the alert threshold. Its features (what an
alert's frames keep for `pathwatch feedback`) are the tile's last full evaluation. Every tile
is escalated while the camera's alert is open (those frames then carry full features), and a
tile that never had a full evaluation is escalated on its first frame.
"""
from __future__ import annotations

import numpy as np

from .calibration import Calibration


class DynamicSteps:
    """Per camera: which evaluated tiles get the full schedule, and every tile's latest result."""

    def __init__(self, calibration: Calibration, margin: float, threshold: float | None = None):
        """`threshold`: the one the camera alerts at (a `threshold:` set in the config or by
        hand may lie below the calibrated one); the escalation level follows it down, so a
        tile the full head would put over it is never spared."""
        if calibration.cheap is None:
            raise ValueError("dynamic steps need a calibration with a one-step head")
        self.full, self.cheap = calibration, calibration.cheap
        alert_at = calibration.threshold if threshold is None else threshold
        # Thresholds are standardised scores, normally positive; a degenerate one escalates
        # every tile rather than guess a scale.
        sane = self.cheap.threshold > 0 and calibration.threshold > 0 and alert_at > 0
        self.level = (margin * self.cheap.threshold * min(1.0, alert_at / calibration.threshold)
                      if sane else -np.inf)
        self.ratio = alert_at / self.cheap.threshold if sane else 1.0
        self.reset()
        self.evaluated = self.escalated = 0

    def reset(self) -> None:
        """Forget every tile's last full evaluation (a new grid)."""
        self.last_full: np.ndarray | None = None
        self.known: np.ndarray | None = None
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def select(self, idx: np.ndarray, cheap_features: np.ndarray, force: bool) -> np.ndarray:
        """Bool mask over the evaluated tiles `idx` (grid indices): those the full head must
        see. `force`: all of them (an alert is open)."""
        z1 = self.cheap.tile_scores(cheap_features, idx)
        up = (z1 >= self.level) | force
        if self.known is not None:
            up |= ~self.known[idx]
        else:
            up[:] = True
        self._pending = (idx, z1, up)
        self.evaluated += len(idx)
        self.escalated += int(up.sum())
        return up

    def merge(self, full_features: np.ndarray, full_maps: np.ndarray,
              cheap_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, maps and scores of the evaluated tiles from this frame's two passes (the
        full pass ran on the tiles `select` chose)."""
        idx, z1, up = self._pending
        n = len(self.full.densities)
        if self.last_full is None:
            self.last_full = np.zeros((n, full_features.shape[1]), np.float32)
            self.known = np.zeros(n, bool)
        self.last_full[idx[up]] = full_features
        self.known[idx[up]] = True
        scores = z1 * self.ratio
        if up.any():
            scores[up] = self.full.tile_scores(full_features, idx[up])
        maps = np.array(cheap_maps, copy=True)
        maps[up] = full_maps
        return self.last_full[idx].copy(), maps, scores

    def share_escalated(self) -> float | None:
        return self.escalated / self.evaluated if self.evaluated else None

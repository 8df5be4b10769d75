"""Change gating: a fixed camera's tiles that did not change need no new inference.

A tile whose pixels differ from the ones last sent to the backend by no more than the camera's
own noise reuses that evaluation's features, up to `max_age_s`; a static scene then costs a
fraction of a busy one. "Changed" is counted in pixels, not averaged: a tile changed when more
than `MIN_CHANGED` of its pixels moved by more than the camera's noise level, so a small object
with contrast is never averaged away by a large unchanged background. The noise level comes
from the calibration window (`noise_level`): between consecutive frames, the difference an
unchanged tile reaches at its (1 - MIN_CHANGED) quantile, typical over tiles and frames (the
median, so what moves in the window does not count), with a margin. Sensor grain, codec
artefacts and exposure steps of the camera are all in it: a grainy, heavily compressed camera
gates at its own level, a clean one at a few grey levels.
"""
from __future__ import annotations

import numpy as np

MIN_CHANGED = 0.003  # share of a tile's pixels that must move for the tile to count as changed
MARGIN = 1.5  # level over the typical unchanged tile's difference
MIN_LEVEL = 4.0  # grey levels: below this a difference is rounding anyway


def pixel_diff(previous: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """(tiles, h, w): how far each pixel moved (its largest channel difference)."""
    diff = np.abs(tiles.astype(np.int16) - previous.astype(np.int16))
    return diff.max(axis=-1) if diff.ndim == 4 else diff


def noise_level(previous: np.ndarray, tiles: np.ndarray) -> float:
    """One frame pair's noise: the median over tiles of each tile's (1 - MIN_CHANGED)
    quantile of pixel differences (a tile a person crossed is outvoted by the still ones)."""
    diff = pixel_diff(previous, tiles).reshape(len(tiles), -1)
    return float(np.median(np.quantile(diff, 1.0 - MIN_CHANGED, axis=1)))


class ChangeGate:
    """Per camera: which tiles of a frame go to the backend, and the features of the others."""

    def __init__(self, noise: float, max_age_s: float = 2.0):
        """`noise`: the calibration's noise level (median of `noise_level` over its window)."""
        self.level = max(MIN_LEVEL, MARGIN * noise)
        self.max_age_s = max_age_s
        self.reset()

    def reset(self) -> None:
        """Forget every tile (a new grid, a reloaded calibration)."""
        self.reference = None  # the tiles as last evaluated
        self.features = self.maps = self.scores = None
        self.evaluated_at = None
        self.sent = self.reused = 0

    def select(self, tiles: np.ndarray, now: float) -> np.ndarray:
        """Bool mask of the tiles to evaluate: changed, too old, or never seen."""
        if self.reference is None or self.reference.shape != tiles.shape:
            return np.ones(len(tiles), bool)
        moved = pixel_diff(self.reference, tiles) > self.level
        changed = moved.mean(axis=(1, 2)) > MIN_CHANGED
        return changed | (now - self.evaluated_at >= self.max_age_s)

    def merge(self, mask: np.ndarray, tiles: np.ndarray, features: np.ndarray,
              maps: np.ndarray, now: float,
              scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every tile's features and maps: new ones where `mask`, kept ones elsewhere.
        `scores` (dynamic steps score tiles as they are evaluated) are kept the same way, in
        `self.scores`."""
        if self.reference is None or self.reference.shape != tiles.shape:
            if not mask.all():
                raise ValueError("the first frame of a grid must evaluate every tile")
            self.reference, self.features, self.maps = tiles.copy(), features.copy(), maps.copy()
            self.evaluated_at = np.full(len(tiles), now)
            self.scores = None if scores is None else np.array(scores, np.float64)
        else:
            self.reference[mask], self.features[mask], self.maps[mask] = \
                tiles[mask], features, maps
            self.evaluated_at[mask] = now
            if scores is not None:
                if self.scores is None:  # dynamic steps came on: unevaluated tiles unknown yet
                    self.scores = np.full(len(tiles), -np.inf)
                self.scores[mask] = scores
        n = int(mask.sum())
        self.sent += n
        self.reused += len(mask) - n
        return self.features.copy(), self.maps.copy()

    def share_sent(self) -> float | None:
        total = self.sent + self.reused
        return self.sent / total if total else None

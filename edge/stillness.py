"""Still content: which tiles hold something new that has stopped moving.

On a camera where people or vehicles pass as part of normal (`passing: ignore`), a person in
a tile where the calibration window saw nobody scores like an object set down there: both are
"a new thing in this tile" to the tile densities. What tells them apart is that passing
traffic moves and a thing left behind stays. A tile counts as holding still content when at
least `min_share` of its pixels (the camera sets it from `stillness.min_area`, a share of the
whole view, so that the same object counts at any tile grid)

- differ from the scene's background (the per-pixel median of one frame every
  `sample_every_s` over the last `background_s`: passers-by are outvoted), and
- have not moved for `still_s` (four frames spread over the last still_s match this one
  there).

Both comparisons are in grey levels over the camera's own noise, measured here as change
gating measures it (edge.gating), from consecutive frames. A tile without still content
cannot raise the frame's score above an ordinary frame's (calibration.still_gated), so a
person walking through a new place is not an alert, while a cat that sits down, a parcel left
by the road or a person who stands still for still_s is. A thing that stays longer than about
half of background_s becomes background: its alert ends.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .gating import MARGIN, MIN_LEVEL, noise_level, pixel_diff

MIN_SAMPLES = 5  # background frames before anything counts as new
NOISE_PAIRS = 200  # recent frame pairs the noise level is the median of
HISTORY_FRAMES = 4  # frames of the last still_s a pixel is compared with (spread over it)
GAIN_STRIDE = 7  # every 7th pixel estimates the gain between two frames


def _grey(tiles: np.ndarray) -> np.ndarray:
    """(tiles, t, t, 3) uint8 -> (tiles, t, t) uint8: stillness is judged in brightness."""
    return (tiles.astype(np.uint16).sum(axis=-1) // 3).astype(np.uint8)


def _gain_matched(reference: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """`reference` scaled to the brightness of `grey`: a camera's auto-exposure moves every
    pixel when something bright or dark enters the view, which must not read as new content
    everywhere. The gain is the median ratio over the pixels, which the minority that really
    changed cannot move."""
    ref = reference.reshape(-1)[::GAIN_STRIDE].astype(np.float32)
    cur = grey.reshape(-1)[::GAIN_STRIDE].astype(np.float32)
    lit = ref > 16.0
    if not lit.any():
        return reference
    gain = float(np.median(cur[lit] / ref[lit]))
    if abs(gain - 1.0) < 0.01:
        return reference
    return np.clip(reference.astype(np.float32) * gain, 0, 255).astype(np.uint8)


class StillContent:
    """Per camera: feed every frame's tiles (all of them, in grid order, without exposure
    normalisation) in capture order."""

    def __init__(self, still_s: float = 4.0, min_share: float = 0.04,
                 background_s: float = 120.0, sample_every_s: float = 2.0):
        self.still_s, self.min_share = still_s, min_share
        self.background_s, self.sample_every_s = background_s, sample_every_s
        self.reset()

    @classmethod
    def for_grid(cls, settings: dict, tiles: int) -> "StillContent":
        """From a camera's `stillness` settings (still_s, min_area, background_s) for a grid
        of `tiles` tiles: min_area is a share of the view, min_share of one tile."""
        return cls(settings["still_s"], min(1.0, settings["min_area"] * tiles),
                   settings["background_s"])

    def reset(self) -> None:
        """Forget the scene (a new grid)."""
        self._recent: deque[tuple[float, np.ndarray]] = deque()  # the last still_s of frames
        self._samples: deque[tuple[float, np.ndarray]] = deque()  # background samples
        self._background: np.ndarray | None = None
        self._noise: deque[float] = deque(maxlen=NOISE_PAIRS)

    @property
    def level(self) -> float:
        """Grey levels a pixel must move by to count: the camera's noise with a margin."""
        return max(MIN_LEVEL, MARGIN * float(np.median(self._noise))) if self._noise \
            else MIN_LEVEL

    def update(self, tiles: np.ndarray, now: float) -> np.ndarray:
        """(tiles, t, t, 3) uint8 -> bool per tile: it holds still content now. False for
        every tile until the background and the still_s history exist."""
        grey = _grey(tiles)
        if self._recent and self._recent[-1][1].shape != grey.shape:
            self.reset()
        if self._recent:
            self._noise.append(noise_level(self._recent[-1][1], grey))
        self._sample(grey, now)
        history = [g for s, g in self._recent if now - s <= self.still_s]
        full = bool(self._recent) and now - self._recent[0][0] >= self.still_s * 0.9
        self._recent.append((now, grey))
        while self._recent and now - self._recent[0][0] > self.still_s:
            self._recent.popleft()
        if self._background is None or not full:
            return np.zeros(len(tiles), bool)
        spread = np.linspace(0, len(history) - 1, min(HISTORY_FRAMES, len(history)))
        return self.shares(grey, [history[int(round(i))] for i in spread]) >= self.min_share

    def shares(self, grey: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        """Per tile, the share of pixels that are new against the background and still
        against every frame of `history` (all in grey)."""
        level = self.level
        new = pixel_diff(_gain_matched(self._background, grey), grey) > level
        for past in history:
            new &= pixel_diff(_gain_matched(past, grey), grey) <= level
        return new.mean(axis=(1, 2))

    def _sample(self, grey: np.ndarray, now: float) -> None:
        if self._samples and now - self._samples[-1][0] < self.sample_every_s:
            return
        self._samples.append((now, grey))
        while now - self._samples[0][0] > self.background_s:
            self._samples.popleft()
        if len(self._samples) >= MIN_SAMPLES:
            stack = np.stack([g for _, g in self._samples])
            self._background = np.median(stack, axis=0).astype(np.uint8)

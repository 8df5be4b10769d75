"""Preprocess: region of interest -> a grid of model-sized RGB tiles, and back to a heatmap.

A fixed camera sees the same thing at the same place, so each tile position keeps its own
density. The ROI is resized once (INTER_AREA, as the bundle's manifest says) to exactly
cols x rows tiles and cut by reshaping; tiles are therefore a little stretched when the ROI's
aspect differs from the grid's, which is harmless because calibration sees the same stretch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1, relative


@dataclass
class TileGrid:
    frame_w: int
    frame_h: int
    tile: int  # model resolution (square)
    cols: int = 4
    rows: int = 3
    roi: Rect = (0.0, 0.0, 1.0, 1.0)
    ignore: list[Rect] = field(default_factory=list)  # relative to the ROI
    exposure: str = "normalize"  # or "off"

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.roi
        self.px = (int(round(x0 * self.frame_w)), int(round(y0 * self.frame_h)),
                   int(round(x1 * self.frame_w)), int(round(y1 * self.frame_h)))
        if self.px[2] - self.px[0] < self.cols or self.px[3] - self.px[1] < self.rows:
            raise ValueError(f"region of interest {self.roi} of a {self.frame_w}x{self.frame_h} "
                             f"frame is too small for {self.cols}x{self.rows} tiles; enlarge roi")
        self.active = np.array([not self._ignored(c, r) for r in range(self.rows)
                                for c in range(self.cols)])
        if not self.active.any():
            raise ValueError("every tile is inside an ignore mask; nothing would be scored")

    @classmethod
    def from_description(cls, d: dict) -> "TileGrid":
        """The grid `describe()` wrote (a calibration file's `grid`)."""
        (w, h), (cols, rows) = d["frame_size"], d["tiles"]
        return cls(int(w), int(h), int(d["tile_size"]), int(cols), int(rows),
                   tuple(d["roi"]), [tuple(r) for r in d["ignore"]], d["exposure"])

    @property
    def count(self) -> int:
        return self.cols * self.rows

    def position(self, index: int) -> tuple[int, int]:
        return index % self.cols, index // self.cols

    def _ignored(self, col: int, row: int) -> bool:
        """A tile is ignored when more than half of it lies inside the ignore rectangles."""
        tx0, ty0 = col / self.cols, row / self.rows
        tx1, ty1 = (col + 1) / self.cols, (row + 1) / self.rows
        area = 0.0
        for x0, y0, x1, y1 in self.ignore:
            w = max(0.0, min(tx1, x1) - max(tx0, x0))
            h = max(0.0, min(ty1, y1) - max(ty0, y0))
            area += w * h
        return area > 0.5 * (tx1 - tx0) * (ty1 - ty0)

    def describe(self) -> dict:
        return {"frame_size": [self.frame_w, self.frame_h], "roi": list(self.roi),
                "tiles": [self.cols, self.rows], "tile_size": self.tile,
                "ignore": [list(r) for r in self.ignore], "exposure": self.exposure}

    def cut(self, frame_bgr: np.ndarray) -> np.ndarray:
        """BGR frame -> uint8 (cols*rows, tile, tile, 3) RGB tiles, row-major."""
        h, w = frame_bgr.shape[:2]
        if (w, h) != (self.frame_w, self.frame_h):
            raise ValueError(f"frame is {w}x{h}, the grid was made for "
                             f"{self.frame_w}x{self.frame_h}")
        x0, y0, x1, y1 = self.px
        roi = frame_bgr[y0:y1, x0:x1]
        if roi.ndim == 2 or roi.shape[2] == 1:
            roi = cv2.cvtColor(roi, cv2.COLOR_GRAY2BGR)
        t = self.tile
        resized = cv2.resize(roi, (self.cols * t, self.rows * t), interpolation=cv2.INTER_AREA)
        if self.exposure == "normalize":
            resized = normalize_exposure(resized)
        rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        tiles = rgb.reshape(self.rows, t, self.cols, t, 3).transpose(0, 2, 1, 3, 4)
        return np.ascontiguousarray(tiles.reshape(self.count, t, t, 3))

    def assemble(self, maps: np.ndarray) -> np.ndarray:
        """(count, t, t) per-tile maps -> one (rows*t, cols*t) map over the ROI."""
        t = self.tile
        return maps.reshape(self.rows, self.cols, t, t).transpose(0, 2, 1, 3).reshape(
            self.rows * t, self.cols * t)


EXPOSURE_TARGET = 118.0  # mean brightness (0..255) every ROI is scaled to


def normalize_exposure(bgr: np.ndarray) -> np.ndarray:
    """One gain for the whole ROI so its mean is EXPOSURE_TARGET: the path features react
    strongly to global brightness, which cameras change on their own (auto exposure, daylight).
    Local changes (an object, a cover, blur) survive a global gain."""
    mean = float(bgr.mean())
    gain = EXPOSURE_TARGET / max(mean, 1.0)
    return cv2.convertScaleAbs(bgr, alpha=gain)


def tile_weights(tile_scores: np.ndarray, threshold: float) -> np.ndarray:
    """0..1 per tile for drawing. Scores run from below 0 to 10^5 against thresholds near 10,
    so over the threshold the weight is log(score / threshold) relative to the frame's worst
    tile (which is 1): the worst tiles stand out however high they score. Under the threshold
    a tile gets at most 0.2, its share of the threshold."""
    thr = max(float(threshold), 1e-6)
    s = np.nan_to_num(np.asarray(tile_scores, np.float64), nan=0.0, posinf=1e300, neginf=0.0)
    excess = np.log(np.maximum(s, thr) / thr)
    top = float(excess.max())
    over = excess / top if top > 0 else np.zeros_like(excess)
    return 0.2 * np.clip(s / thr, 0.0, 1.0) + 0.8 * over


def _heat(grid: TileGrid, tile_scores: np.ndarray, maps: np.ndarray,
          threshold: float) -> np.ndarray:
    """(rows*t, cols*t) in 0..1: each tile's error map stretched to its own range, times
    the tile's weight."""
    per_pixel = grid.assemble(maps.astype(np.float32))
    weights = tile_weights(tile_scores, threshold)
    t = grid.tile
    norm = np.empty_like(per_pixel)
    for i in range(grid.count):
        c, r = grid.position(i)
        block = per_pixel[r * t:(r + 1) * t, c * t:(c + 1) * t]
        span = float(block.max() - block.min())
        stretched = (block - block.min()) / span if span > 0 else np.ones_like(block)
        # Half of the brightness is the tile's weight alone, so a hot tile reads as one even
        # where its error map is nearly flat.
        norm[r * t:(r + 1) * t, c * t:(c + 1) * t] = weights[i] * (0.5 + 0.5 * stretched)
    return norm


def heatmap_image(grid: TileGrid, tile_scores: np.ndarray, maps: np.ndarray,
                  threshold: float) -> np.ndarray:
    """A colour heatmap over the ROI (see `tile_weights` for the scale), 4x the model size."""
    norm = _heat(grid, tile_scores, maps, threshold)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    t = grid.tile
    return cv2.resize(colour, (grid.cols * t * 4, grid.rows * t * 4), interpolation=cv2.INTER_NEAREST)


def overlay_image(grid: TileGrid, frame_bgr: np.ndarray, tile_scores: np.ndarray,
                  maps: np.ndarray, threshold: float) -> np.ndarray:
    """The frame with the heatmap blended over its ROI (opaque where hot, clear where
    cold) and the worst tile outlined: where to look, at the frame's own size."""
    norm = _heat(grid, tile_scores, maps, threshold)
    x0, y0, x1, y1 = grid.px
    size = (x1 - x0, y1 - y0)
    norm = cv2.resize(norm, size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    out = frame_bgr.copy()
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    alpha = (0.7 * norm)[..., None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (roi * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)
    worst = int(np.argmax(np.nan_to_num(np.asarray(tile_scores, np.float64), nan=-np.inf)))
    c, r = grid.position(worst)
    tw, th = size[0] / grid.cols, size[1] / grid.rows
    cv2.rectangle(out, (int(x0 + c * tw), int(y0 + r * th)),
                  (int(x0 + (c + 1) * tw) - 1, int(y0 + (r + 1) * th) - 1), (0, 255, 255), 2)
    return out

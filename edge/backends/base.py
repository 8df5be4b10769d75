"""The one interface every backend implements: uint8 images in, features and heatmaps out."""
from __future__ import annotations

import time

import numpy as np

from ..bundle import Bundle


class BackendError(RuntimeError):
    """A backend that cannot run this bundle here; the message says why and what to do."""


class Backend:
    """Runs a bundle's pipeline. Subclasses implement `_run` for one chunk of <= max_batch.

    Input: uint8 (N, H, W, 3) RGB at the bundle's resolution. Output: float32 features (N, D)
    and float32 heatmaps (N, H, W).
    """

    name = "base"

    def __init__(self, bundle: Bundle, max_batch: int = 64):
        self.bundle = bundle
        self.max_batch = max(1, int(max_batch))
        self.height, self.width = bundle.image_size
        self.dim = len(bundle.feature_names)
        self.device = "cpu"
        self.warmup_s = 0.0

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = self._check(images)
        if len(images) == 0:
            return (np.zeros((0, self.dim), np.float32),
                    np.zeros((0, self.height, self.width), np.float32))
        feats, maps = [], []
        for start in range(0, len(images), self.max_batch):
            f, h = self._run(images[start:start + self.max_batch])
            feats.append(np.asarray(f, np.float32))
            maps.append(np.asarray(h, np.float32))
        return np.concatenate(feats), np.concatenate(maps)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        want = (self.height, self.width, 3)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(f"backend input must be uint8 (N, {self.height}, {self.width}, 3) "
                             f"RGB, got {images.dtype} {images.shape}")
        return np.ascontiguousarray(images)

    def warmup(self, batch: int | None = None) -> float:
        """Run once at the largest batch so first-frame latency is not paid on a live camera."""
        n = min(self.max_batch, batch or self.max_batch)
        t0 = time.perf_counter()
        self(np.zeros((n, self.height, self.width, 3), np.uint8))
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "max_batch": self.max_batch,
                "warmup_s": round(self.warmup_s, 3)}

    def close(self) -> None:
        pass

"""A built-in camera: a fixed view made from scikit-image's bundled photos, with the flaws of a
real sensor (noise, jitter, slow exposure drift) and scripted anomalies, so pathwatch runs and
can be measured with no camera attached.

Every frame is a pure function of (frame index, seed), so a test or a benchmark can ask for
frame i directly and knows exactly which anomaly, if any, it shows.

Script `default`: 60 s of normal view (room for calibration), then a cycle of 8-second
anomalies each followed by 40 s of normal view: an object enters and crosses the view, the lens
is covered, the lens loses focus, the camera is knocked (the view shifts and tilts until it is
put back). Script `normal`: no anomalies ever.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

KINDS = ("object", "cover", "defocus", "knock")
FIRST_S, GAP_S, DURATION_S = 60.0, 40.0, 8.0


@dataclass(frozen=True)
class DemoEvent:
    kind: str
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int


@lru_cache(maxsize=4)
def _background(width: int, height: int) -> np.ndarray:
    """A table-top view (scikit-image's coffee) with a framed picture (chelsea) on the wall."""
    from skimage import data

    scene = cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_AREA)
    pic = cv2.resize(data.chelsea(), (width // 4, height // 4), interpolation=cv2.INTER_AREA)
    y, x = height // 12, width - width // 4 - width // 16
    scene[y:y + pic.shape[0], x:x + pic.shape[1]] = pic
    cv2.rectangle(scene, (x - 2, y - 2), (x + pic.shape[1] + 1, y + pic.shape[0] + 1), (60, 40, 30), 2)
    return cv2.cvtColor(scene, cv2.COLOR_RGB2BGR)


@lru_cache(maxsize=4)
def _object(size: int) -> tuple[np.ndarray, np.ndarray]:
    """An intruding object: a round crop of scikit-image's astronaut (a face), with its mask."""
    from skimage import data

    crop = cv2.resize(data.astronaut()[30:230, 150:350], (size, size), interpolation=cv2.INTER_AREA)
    mask = np.zeros((size, size), np.float32)
    cv2.circle(mask, (size // 2, size // 2), size // 2 - 1, 1.0, -1)
    return cv2.cvtColor(crop, cv2.COLOR_RGB2BGR).astype(np.float32), cv2.GaussianBlur(mask, (5, 5), 0)[..., None]


class DemoScene:
    def __init__(self, width: int = 320, height: int = 240, fps: float = 10.0, seed: int = 0,
                 script: str = "default"):
        if script not in ("default", "normal"):
            raise ValueError(f"demo script {script!r}: use default or normal")
        if width < 64 or height < 48 or fps <= 0:
            raise ValueError("demo size must be at least 64x48 and fps positive")
        self.width, self.height, self.fps, self.seed, self.script = width, height, fps, seed, script
        self.background = _background(width, height).astype(np.float32)

    # ------------------------------------------------------------------ script
    def event_at(self, t: float) -> tuple[str, float] | None:
        """(kind, seconds since it began) of the anomaly at time t, if any."""
        if self.script == "normal" or t < FIRST_S:
            return None
        n, into = divmod(t - FIRST_S, DURATION_S + GAP_S)
        if into >= DURATION_S:
            return None
        return KINDS[int(n) % len(KINDS)], into

    def events(self, duration_s: float) -> list[DemoEvent]:
        out, n = [], 0
        while self.script != "normal":
            start = FIRST_S + n * (DURATION_S + GAP_S)
            if start >= duration_s:
                break
            end = start + DURATION_S
            out.append(DemoEvent(KINDS[n % len(KINDS)], start, end, int(np.ceil(start * self.fps)),
                                 int(np.ceil(end * self.fps)) - 1))
            n += 1
        return out

    # ------------------------------------------------------------------ frames
    def frame(self, index: int) -> tuple[np.ndarray, tuple[str, ...]]:
        t = index / self.fps
        rng = np.random.default_rng((self.seed, index))
        img = self.background.copy()
        event = self.event_at(t)
        if event and event[0] == "object":
            img = self._object(img, event[1])
        # The sensor: sub-pixel jitter, exposure drift over minutes, noise.
        dx, dy = rng.normal(0.0, 0.35, 2)
        angle, shift = (4.0, 22.0) if event and event[0] == "knock" else (0.0, 0.0)
        m = cv2.getRotationMatrix2D((self.width / 2, self.height / 2), angle, 1.0)
        m[:, 2] += (dx + shift, dy + shift * 0.5)
        img = cv2.warpAffine(img, m, (self.width, self.height), borderMode=cv2.BORDER_REFLECT)
        if event and event[0] == "defocus":
            img = cv2.GaussianBlur(img, (0, 0), 4.0)
        if event and event[0] == "cover":
            img = self._cover(img, event[1])
        gain = 1.0 + 0.04 * np.sin(2 * np.pi * t / 180.0) + 0.01 * np.sin(2 * np.pi * t / 23.0)
        img = img * gain + rng.normal(0.0, 3.0, img.shape).astype(np.float32)
        labels = (event[0],) if event else ()
        return np.clip(img, 0, 255).astype(np.uint8), labels

    def _object(self, img: np.ndarray, into: float) -> np.ndarray:
        size = self.height // 3
        obj, mask = _object(size)
        # Enters from the left edge and crosses about two thirds of the view in 8 seconds.
        x = int(-size + (self.width * 0.66 + size) * into / DURATION_S)
        y = self.height // 2 - size // 4
        x0, x1 = max(x, 0), min(x + size, self.width)
        if x1 <= x0:
            return img
        sl = slice(x0 - x, x1 - x)
        region = img[y:y + size, x0:x1]
        img[y:y + size, x0:x1] = region * (1 - mask[:, sl]) + obj[:, sl] * mask[:, sl]
        return img

    def _cover(self, img: np.ndarray, into: float) -> np.ndarray:
        # A hand: a dark, blurred blob that slides over most of the lens within a second.
        cover = min(1.0, into / 1.0)
        mask = np.zeros((self.height, self.width), np.float32)
        cx = int(self.width * (1.2 - 0.7 * cover))
        cv2.ellipse(mask, (cx, self.height // 2), (int(self.width * 0.6), int(self.height * 0.8)),
                    20, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 15)[..., None]
        skin = np.array([40, 55, 75], np.float32)
        return img * (1 - 0.92 * mask) + skin * 0.92 * mask


class DemoCapture:
    """The cv2.VideoCapture interface over a DemoScene (what the capture thread talks to)."""

    def __init__(self, scene: DemoScene, realtime: bool = True):
        self.scene, self.realtime = scene, realtime
        self.index = 0
        self.start = time.monotonic()
        self.labels: tuple[str, ...] = ()
        self.opened = True

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's spelling)
        return self.opened

    def read(self):
        if not self.opened:
            return False, None
        if self.realtime:
            wait = self.start + self.index / self.scene.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        image, self.labels = self.scene.frame(self.index)
        self.index += 1
        return True, image

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: self.scene.fps, cv2.CAP_PROP_FRAME_WIDTH: self.scene.width,
                cv2.CAP_PROP_FRAME_HEIGHT: self.scene.height,
                cv2.CAP_PROP_POS_FRAMES: self.index}.get(prop, 0.0)

    def release(self) -> None:
        self.opened = False

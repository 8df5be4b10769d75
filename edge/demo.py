"""The built-in camera: a fixed view of a gravel path in front of a brick wall, composed from
scikit-image's bundled photos and textures, with the flaws of a real sensor (noise, jitter, slow
exposure drift) and scripted anomalies, so pathwatch runs and can be measured with no camera.

Every frame is a pure function of (frame index, seed): a test or a benchmark can ask for frame
i directly and knows exactly which anomaly, if any, it shows.

Script `default`: 60 s of normal view (room for calibration), then a cycle of 8-second
anomalies, each followed by 40 s of normal view: an object (a person) enters from an edge and
crosses the path, the lens is covered by a hand, the lens loses focus, the camera is knocked (the
view shifts and tilts until it is put back). Script `normal`: no anomalies ever.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

KINDS = ("object", "cover", "defocus", "knock")
SCRIPTS = ("default", "normal")
FIRST_S, GAP_S, DURATION_S = 60.0, 40.0, 8.0
DEFAULT_SCRIPT_TIMES = (FIRST_S, GAP_S, DURATION_S)  # first anomaly, normal gap, anomaly length
CYCLE_S = DURATION_S + GAP_S

# The scene is composed once at this canvas size, then resized to the requested view. The view
# is the canvas minus a margin on every side, so a knocked camera sees more of the scene instead
# of mirrored borders.
CANVAS_W, CANVAS_H = 800, 600
MARGIN = 0.125  # of the view's width/height, on each side

NOISE_SIGMA = 3.0  # sensor noise, grey levels
NOISE_FIELDS, NOISE_PAD = 3, 16  # a seeded bank cropped at random offsets: cheap per-frame noise
JITTER_PX = 0.2  # per-frame wobble of the mount, standard deviation (clipped to 1 px)
KNOCK_DEG, KNOCK_SHIFT = 4.0, (0.07, 0.045)  # tilt, and shift as a fraction of width/height
DEFOCUS_SIGMA = 4.0  # at 320 px wide; scales with the view


@dataclass(frozen=True)
class DemoEvent:
    """One scripted anomaly; frames start_frame..end_frame (inclusive) carry its label."""
    kind: str
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int


def check_options(width: int = 320, height: int = 240, fps: float = 10.0, seed: int = 0,
                  script: str = "default") -> None:
    """Raise ValueError naming the bad demo option and what would work."""
    if script not in SCRIPTS:
        raise ValueError(f"demo script {script!r} is unknown; use default or normal")
    if not (64 <= width <= 1920 and 48 <= height <= 1080):
        raise ValueError(f"demo size {width}x{height} is out of range; use width 64..1920 and "
                         "height 48..1080")
    if not (math.isfinite(fps) and 0.0 < fps <= 240.0):
        raise ValueError(f"demo fps {fps} is out of range; use a value in (0, 240]")
    if seed < 0:
        raise ValueError(f"demo seed {seed} is negative; use 0 or a positive integer")


# ---------------------------------------------------------------------- the scene (once)
def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image picture as float32 RGB or grey in 0..255 (no download)."""
    from skimage import data

    image = getattr(data, name)()
    return (image[..., :3] if image.ndim == 3 else image).astype(np.float32)


def _gradient_map(grey: np.ndarray, dark: tuple, light: tuple) -> np.ndarray:
    """Colour a greyscale texture by mapping its dark..light range onto two RGB colours."""
    lo, hi = np.percentile(grey, (2, 98))
    v = np.clip((grey - lo) / max(hi - lo, 1.0), 0.0, 1.0)[..., None]
    return np.asarray(dark, np.float32) * (1 - v) + np.asarray(light, np.float32) * v


def _tiled(texture: np.ndarray, width: int, height: int) -> np.ndarray:
    reps = (math.ceil(height / texture.shape[0]), math.ceil(width / texture.shape[1]))
    return np.tile(texture, reps + (1,) * (texture.ndim - 2))[:height, :width]


def _paste_framed(canvas: np.ndarray, picture: np.ndarray, x: int, y: int, w: int, h: int,
                  border: int = 6) -> None:
    """Hang a picture on the wall: a dark wooden frame, a faint shadow, the picture inside."""
    shadow = canvas[y + 4:y + h + 2 * border + 4, x + 4:x + w + 2 * border + 4]
    shadow *= 0.7
    wood = _gradient_map(cv2.resize(_photo("gravel"), (w + 2 * border, h + 2 * border)),
                         (35, 22, 14), (95, 65, 40))
    canvas[y:y + h + 2 * border, x:x + w + 2 * border] = wood
    canvas[y + border:y + border + h, x + border:x + border + w] = cv2.resize(
        picture, (w, h), interpolation=cv2.INTER_AREA)


def _ground(width: int, height: int) -> np.ndarray:
    """The ground seen from above: far grass verge, a gravel path, near grass verge."""
    grass = _gradient_map(cv2.resize(_photo("grass"), (280, 280)), (18, 40, 12), (125, 170, 80))
    gravel = _gradient_map(cv2.resize(_photo("gravel"), (320, 320)), (70, 64, 55), (205, 195, 175))
    far, near = int(height * 0.25), int(height * 0.7)
    ground = _tiled(grass, width, height).copy()
    ground[far:near] = _tiled(gravel, width, near - far)
    return ground


@lru_cache(maxsize=1)
def _canvas() -> np.ndarray:
    """The whole scene at CANVAS_W x CANVAS_H, float32 RGB."""
    wall_h = int(CANVAS_H * 0.55)
    canvas = np.zeros((CANVAS_H, CANVAS_W, 3), np.float32)
    brick = cv2.resize(np.rot90(_photo("brick")), (CANVAS_W, wall_h + 100))  # horizontal courses
    canvas[:wall_h] = _gradient_map(brick, (85, 38, 28), (215, 200, 185))[:wall_h]
    _paste_framed(canvas, _photo("chelsea"), 150, 80, 150, 100)
    _paste_framed(canvas, _photo("rocket"), 470, 60, 120, 160)
    _paste_framed(canvas, _photo("page")[..., None].repeat(3, -1), 350, 120, 80, 70, border=2)
    # The ground in perspective: the far edge is twice as wide, so texture shrinks with distance.
    top = _ground(CANVAS_W, int(CANVAS_H * 0.9))
    src = np.float32([[0, 0], [CANVAS_W, 0], [CANVAS_W, top.shape[0]], [0, top.shape[0]]])
    dst = np.float32([[-CANVAS_W / 2, wall_h], [CANVAS_W * 1.5, wall_h], [CANVAS_W, CANVAS_H],
                      [0, CANVAS_H]])
    warp = cv2.getPerspectiveTransform(src, dst)
    ground = cv2.warpPerspective(top, warp, (CANVAS_W, CANVAS_H), flags=cv2.INTER_AREA)
    canvas[wall_h:] = ground[wall_h:]
    canvas[wall_h - 3:wall_h + 3] *= 0.55  # the shadow line where wall meets ground
    # Light from the upper left, and lens vignetting.
    yy, xx = np.mgrid[0:CANVAS_H, 0:CANVAS_W].astype(np.float32)
    light = 1.08 - 0.16 * (xx / CANVAS_W) - 0.06 * (yy / CANVAS_H)
    r2 = ((xx - CANVAS_W / 2) / CANVAS_W) ** 2 + ((yy - CANVAS_H / 2) / CANVAS_H) ** 2
    return canvas * (light * (1.0 - 0.5 * r2))[..., None]


@lru_cache(maxsize=4)
def _background(width: int, height: int) -> np.ndarray:
    """The canvas at the size that leaves a MARGIN around a width x height view, BGR uint8."""
    size = (width + 2 * round(width * MARGIN), height + 2 * round(height * MARGIN))
    rgb = cv2.resize(_canvas(), size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


@lru_cache(maxsize=4)
def _intruder(height: int) -> tuple[np.ndarray, np.ndarray]:
    """A person (scikit-image's astronaut, head and torso) cut out with a soft oval mask."""
    crop = _photo("astronaut")[10:512, 110:400]
    width = round(height * crop.shape[1] / crop.shape[0])
    person = cv2.cvtColor(cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA),
                          cv2.COLOR_RGB2BGR)
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (width // 2, height // 2), (width // 2 - 2, height // 2 - 2), 0, 0, 360, 1.0, -1)
    return person, cv2.GaussianBlur(mask, (5, 5), 0)[..., None]


@lru_cache(maxsize=4)
def _hand(width: int, height: int) -> np.ndarray:
    """The blur mask of a hand over the lens, fully in place (1 = covered), float32 H x W.
    About 85% of the view is covered; light still leaks in at the left edge."""
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (int(width * 0.65), height // 2), (int(width * 0.6), int(height * 0.8)),
                20, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), width / 21)


@lru_cache(maxsize=4)
def _noise_bank(width: int, height: int, seed: int) -> np.ndarray:
    """Gaussian sensor noise, rounded to grey levels (int8 keeps a 1080p bank near 20 MB)."""
    rng = np.random.default_rng((seed, 0x5EED, width, height))
    shape = (NOISE_FIELDS, height + NOISE_PAD, width + NOISE_PAD, 3)
    noise = rng.standard_normal(shape, dtype=np.float32) * NOISE_SIGMA
    return np.clip(np.rint(noise), -127, 127).astype(np.int8)


# ---------------------------------------------------------------------- frames
class DemoScene:
    """Frames and the anomaly script of the demo camera (see the module docstring)."""

    def __init__(self, width: int = 320, height: int = 240, fps: float = 10.0, seed: int = 0,
                 script: str = "default"):
        check_options(width, height, fps, seed, script)
        self.width, self.height, self.fps, self.seed, self.script = width, height, float(fps), seed, script
        self.background = _background(width, height)
        self.margin = ((self.background.shape[1] - width) // 2, (self.background.shape[0] - height) // 2)
        phase = np.random.default_rng((seed, 0xD1F7)).uniform(0, 2 * np.pi, 2)
        self._drift_phase = (float(phase[0]), float(phase[1]))

    # ------------------------------------------------------------------ script
    def _frame_at(self, seconds: float) -> int:
        """The first frame shown at or after `seconds` (rounded so 60 s at 7.3 fps is exact)."""
        return math.ceil(round(seconds * self.fps, 6))

    def _event(self, n: int) -> DemoEvent:
        start = FIRST_S + n * CYCLE_S
        end = start + DURATION_S
        return DemoEvent(KINDS[n % len(KINDS)], start, end, self._frame_at(start), self._frame_at(end) - 1)

    def events(self, duration_s: float) -> list[DemoEvent]:
        """The scripted anomalies that start before `duration_s`."""
        if self.script == "normal" or duration_s <= FIRST_S:
            return []
        return [self._event(n) for n in range(math.ceil((duration_s - FIRST_S) / CYCLE_S))]

    def event_at(self, index: int) -> tuple[DemoEvent, float] | None:
        """The anomaly frame `index` shows, with the seconds since it began; None when normal."""
        if self.script == "normal":
            return None
        n = math.floor((index / self.fps - FIRST_S) / CYCLE_S)
        for m in (n, n + 1):  # frame rounding can put the frame in the neighbouring cycle
            if m >= 0:
                event = self._event(m)
                if event.start_frame <= index <= event.end_frame:
                    return event, max(0.0, index / self.fps - event.start_s)
        return None

    # ------------------------------------------------------------------ frames
    def frame(self, index: int) -> tuple[np.ndarray, tuple[str, ...]]:
        """Frame `index` as BGR uint8 (height x width x 3) and the labels of what it shows."""
        if index < 0:
            raise ValueError(f"demo frame index {index} is negative; frames count from 0")
        t = index / self.fps
        rng = np.random.default_rng((self.seed, index))
        active = self.event_at(index)
        kind, into = (active[0].kind, active[1]) if active else ("", 0.0)
        img = cv2.warpAffine(self.background, self._camera_pose(rng, kind, into),
                             (self.width, self.height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
        if kind == "object":
            self._walk_across(img, into, active[0].start_s)
        elif kind == "defocus":
            sigma = DEFOCUS_SIGMA * self.width / 320 * min(1.0, 0.3 + into / 0.5)  # focus slips fast
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        elif kind == "cover":
            img = self._cover(img, into)
        img = cv2.convertScaleAbs(img, alpha=self._gain(t))
        img = cv2.add(img, self._noise(rng), dtype=cv2.CV_8U)
        return img, (kind,) if kind else ()

    def _camera_pose(self, rng: np.random.Generator, kind: str, into: float) -> np.ndarray:
        """Canvas -> view: the view window, the mount's wobble, and a knock when scripted."""
        dx, dy = np.clip(rng.normal(0.0, JITTER_PX, 2), -1.0, 1.0)
        angle, sx, sy = 0.0, 0.0, 0.0
        if kind == "knock":
            # The blow overshoots and rings down within a second, then the view stays displaced.
            ring = 1.0 + 0.35 * math.exp(-6.0 * into) * math.cos(25.0 * into)
            angle = KNOCK_DEG * ring
            sx, sy = KNOCK_SHIFT[0] * self.width * ring, KNOCK_SHIFT[1] * self.height * ring
        mx, my = self.margin
        centre = (mx + self.width / 2, my + self.height / 2)
        pose = cv2.getRotationMatrix2D(centre, angle, 1.0)
        pose[:, 2] += (dx + sx - mx, dy + sy - my)
        return pose

    def _gain(self, t: float) -> float:
        """Exposure drift: a few percent over minutes, plus a faint faster flicker."""
        p0, p1 = self._drift_phase
        return 1.0 + 0.03 * math.sin(2 * math.pi * t / 180.0 + p0) + 0.01 * math.sin(2 * math.pi * t / 23.0 + p1)

    def _noise(self, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.integers(NOISE_FIELDS))
        ox, oy = (int(v) for v in rng.integers(0, NOISE_PAD + 1, 2))
        return _noise_bank(self.width, self.height, self.seed)[k, oy:oy + self.height, ox:ox + self.width]

    def _walk_across(self, img: np.ndarray, into: float, start_s: float) -> None:
        """A person walks in from one edge (alternating by cycle) and crosses two thirds of the path."""
        person, mask = _intruder(max(8, int(self.height * 0.5)))
        h, w = mask.shape[:2]
        travel = (self.width * 0.66 + w) * into / DURATION_S
        leftwards = int((start_s - FIRST_S) // (CYCLE_S * len(KINDS))) % 2 == 1
        x = int(self.width - travel) if leftwards else int(travel - w)
        y = int(self.height * 0.9) - h + int(self.height * 0.01 * math.sin(into * 2 * math.pi * 1.8))
        x0, x1, y0, y1 = max(x, 0), min(x + w, self.width), max(y, 0), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        m = mask[y0 - y:y1 - y, x0 - x:x1 - x]
        region = img[y0:y1, x0:x1].astype(np.float32)
        blended = region * (1 - m) + person[y0 - y:y1 - y, x0 - x:x1 - x] * m
        img[y0:y1, x0:x1] = blended.astype(np.uint8)

    def _cover(self, img: np.ndarray, into: float) -> np.ndarray:
        """A hand slides in from the right within a second and covers most of the lens."""
        reach = min(1.0, into / 1.0)
        shift = np.float32([[1, 0, self.width * 0.75 * (1.0 - reach)], [0, 1, 0]])
        mask = cv2.warpAffine(_hand(self.width, self.height), shift, (self.width, self.height))
        mask = (0.95 * mask)[..., None]
        skin = np.float32([22, 30, 42])  # BGR: a hand on the lens is dark and out of focus
        return (img * (1 - mask) + skin * mask).astype(np.uint8)


class DemoCapture:
    """The cv2.VideoCapture interface over a DemoScene (what the capture thread talks to).

    With realtime=True frame i is due i/fps seconds after opening, against the monotonic clock,
    and a reader that falls behind skips ahead like a live camera (what it missed is gone), so
    scene time stays wall time since opening. realtime=False returns frames as fast as asked.
    """

    def __init__(self, scene: DemoScene, realtime: bool = True,
                 interrupt: threading.Event | None = None):
        self.scene, self.realtime = scene, realtime
        self.interrupt = interrupt  # set = give up a pacing wait (the reader is stopping)
        self.index = 0  # the next frame to return
        self.start = time.monotonic()
        self.labels: tuple[str, ...] = ()  # of the frame last returned
        self.opened = True

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's spelling)
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.opened:
            return False, None
        if self.realtime:
            elapsed = time.monotonic() - self.start
            self.index = max(self.index, math.floor(elapsed * self.scene.fps))
            wait = self.index / self.scene.fps - elapsed
            if self.interrupt is not None and self.interrupt.wait(max(wait, 0.0)):
                return False, None
            if self.interrupt is None and wait > 0:
                time.sleep(wait)
        image, self.labels = self.scene.frame(self.index)
        self.index += 1
        return True, image

    def get(self, prop: int) -> float:
        values = {cv2.CAP_PROP_FPS: self.scene.fps, cv2.CAP_PROP_FRAME_WIDTH: self.scene.width,
                  cv2.CAP_PROP_FRAME_HEIGHT: self.scene.height, cv2.CAP_PROP_POS_FRAMES: self.index,
                  cv2.CAP_PROP_POS_MSEC: 1000.0 * self.index / self.scene.fps}
        return float(values.get(prop, 0.0))

    def set(self, prop: int, value: float) -> bool:
        """Seeking (CAP_PROP_POS_FRAMES) is the one setting a synthetic camera has."""
        if prop != cv2.CAP_PROP_POS_FRAMES or value < 0:
            return False
        self.index = int(value)
        self.start = time.monotonic() - self.index / self.scene.fps  # keep pacing from here
        return True

    def release(self) -> None:
        self.opened = False

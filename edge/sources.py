"""Camera sources: one capture thread per camera, a bounded drop-oldest queue, and a watchdog
that reopens a camera that stopped delivering, with exponential back-off.

The frame loop must never wait on a camera: it takes the newest frame a camera has, if any.
A camera that fails to open, stalls or disappears is retried in its own thread while the others
carry on; its state changes (connecting, online, reconnecting, offline) go to a callback that
the daemon publishes on `status.<camera>`.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("pathwatch.sources")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


class SourceError(ValueError):
    """A source spec that can never work; the message says what to write instead."""


@dataclass
class Frame:
    camera: str
    index: int
    time: float  # wall clock (epoch seconds) when captured
    monotonic: float
    image: np.ndarray  # BGR uint8 (H, W, 3)
    labels: tuple[str, ...] = ()  # ground truth, demo source only


@dataclass
class SourceSpec:
    kind: str  # device | url | file | folder | demo
    target: int | str
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "url":
            return re.sub(r"://([^:/@]+):([^@]+)@", r"://\1:***@", str(self.target))
        return f"{self.kind} {self.target}"


def parse_source(spec: str | int) -> SourceSpec:
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return SourceSpec("device", int(spec))
    s = spec.strip()
    if s == "demo" or s.startswith("demo:"):
        return SourceSpec("demo", "demo", _demo_options(s[5:] if s.startswith("demo:") else ""))
    if s.startswith("/dev/video"):
        return SourceSpec("device", s)
    if re.match(r"^(rtsp|rtsps|http|https|rtmp)://", s):
        return SourceSpec("url", s)
    if re.match(r"^[a-z]+://", s):
        raise SourceError(f"source {s.split('://')[0]}:// is not supported; use rtsp://, http(s)://, "
                          "a device, a file, a folder or demo")
    path = Path(s).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path))
    if path.is_file():
        return SourceSpec("file", str(path))
    raise SourceError(f"source {s!r} is not a device, URL, file or folder that exists; check the "
                      "path (relative paths are relative to the config file)")


def _demo_options(text: str) -> dict:
    opts: dict = {}
    casts = {"seed": int, "fps": float, "width": int, "height": int, "script": str}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in casts or not value:
            raise SourceError(f"demo option {part!r}: use demo:key=value,... with keys "
                              f"{', '.join(casts)} (e.g. demo:seed=1,script=normal)")
        try:
            opts[key] = casts[key](value)
        except ValueError:
            raise SourceError(f"demo option {key}={value!r} is not a valid {casts[key].__name__}") from None
    if opts.get("script", "default") not in ("default", "normal"):
        raise SourceError(f"demo script {opts['script']!r}: use default or normal")
    return opts


class FolderCapture:
    """Images of a folder in name order, with the VideoCapture interface."""

    def __init__(self, folder: str, fps: float = 5.0, realtime: bool = True):
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        self.fps, self.realtime, self.index = fps, realtime, 0
        self.start = time.monotonic()

    def isOpened(self) -> bool:  # noqa: N802
        return bool(self.files)

    def read(self):
        if self.index >= len(self.files):
            return False, None
        if self.realtime:
            wait = self.start + self.index / self.fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        image = cv2.imread(str(self.files[self.index]), cv2.IMREAD_COLOR)
        self.index += 1
        return image is not None, image

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.files = []


class PacedCapture:
    """A video file played at its own frame rate (as a camera would deliver it)."""

    def __init__(self, cap, fps: float):
        self.cap, self.fps = cap, fps if fps and fps > 0 else 25.0
        self.start, self.index = time.monotonic(), 0

    def isOpened(self) -> bool:  # noqa: N802
        return self.cap.isOpened()

    def read(self):
        wait = self.start + self.index / self.fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.index += 1
        return self.cap.read()

    def get(self, prop: int) -> float:
        return self.cap.get(prop)

    def release(self) -> None:
        self.cap.release()


def open_capture(spec: SourceSpec, *, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 realtime: bool = True):
    if spec.kind == "demo":
        from .demo import DemoCapture, DemoScene
        return DemoCapture(DemoScene(**spec.options), realtime=realtime)
    if spec.kind == "folder":
        return FolderCapture(str(spec.target), spec.options.get("fps", 5.0), realtime)
    if spec.kind == "url":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        return cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
    if spec.kind == "file":
        if not os.path.exists(str(spec.target)):
            return None
        cap = cv2.VideoCapture(str(spec.target))
        return PacedCapture(cap, cap.get(cv2.CAP_PROP_FPS)) if realtime and cap.isOpened() else cap
    return cv2.VideoCapture(spec.target)


class CameraSource:
    """Runs one camera in a thread; the frame loop takes frames with `latest()`."""

    def __init__(self, name: str, spec: str | int | SourceSpec, *, fps: float | None = None,
                 queue_size: int = 2, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 reconnect_after_s: float = 5.0, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 30.0, on_end: str = "loop", realtime: bool = True,
                 on_status=None):
        self.name = name
        self.spec = spec if isinstance(spec, SourceSpec) else parse_source(spec)
        self.fps_cap = fps
        self.queue: collections.deque[Frame] = collections.deque()
        self.queue_size = max(1, queue_size)
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.reconnect_after_s = reconnect_after_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.on_end, self.realtime = on_end, realtime
        self.on_status = on_status
        self.state = "stopped"
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap = None
        self.counts = {"frames": 0, "read": 0, "skipped": 0, "dropped": 0, "reconnects": 0}
        self._read_times: collections.deque[float] = collections.deque(maxlen=256)
        self._delivered_times: collections.deque[float] = collections.deque(maxlen=256)
        self._last_frame = 0.0
        self._next_due = 0.0
        self.last_error: str | None = None
        self._index = 0

    # ------------------------------------------------------------------ public
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)  # a capture stuck in a driver call is left to die with us
        self._set_state("offline", "stopped")

    def get(self, timeout: float | None = 0.0) -> Frame | None:
        with self._cond:
            if not self.queue and timeout:
                self._cond.wait(timeout)
            return self.queue.popleft() if self.queue else None

    def latest(self, timeout: float | None = 0.0) -> Frame | None:
        """The newest frame; older queued ones are dropped (and counted)."""
        with self._cond:
            if not self.queue and timeout:
                self._cond.wait(timeout)
            if not self.queue:
                return None
            self.counts["dropped"] += len(self.queue) - 1
            frame = self.queue.pop()
            self.queue.clear()
            return frame

    def stats(self) -> dict:
        now = time.monotonic()
        return {"state": self.state, **self.counts,
                "camera_fps": _rate(self._read_times, now), "delivered_fps": _rate(self._delivered_times, now),
                "last_frame_age_s": round(now - self._last_frame, 2) if self._last_frame else None,
                "last_error": self.last_error}

    # ------------------------------------------------------------------ thread
    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        if self.on_status is not None:
            try:
                self.on_status(self.name, state, detail)
            except Exception:  # a broken callback must not kill capture
                log.exception("status callback failed for camera %s", self.name)

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        first, looping, lost = True, False, False
        while not self._stop.is_set():
            if not looping:  # a file rewinding to its start is not a reconnection
                self._set_state("connecting" if first else "reconnecting", self.spec.describe())
            looping = False
            if self._open():
                if lost:
                    self.counts["reconnects"] += 1
                backoff, first, lost = self.backoff_initial_s, False, False
                ended = self._read_loop()
                self._release()
                if self._stop.is_set():
                    return
                if ended and self.on_end == "stop":
                    self._set_state("offline", "end of stream")
                    return
                if ended:
                    looping = True
                    continue  # a file that reached its end: loop from the start at once
            first, lost = False, True
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _open(self) -> bool:
        try:
            cap = open_capture(self.spec, open_timeout_s=self.open_timeout_s,
                               read_timeout_s=self.read_timeout_s, realtime=self.realtime)
        except Exception as e:  # OpenCV backends raise assorted errors; all mean "retry later"
            self.last_error = f"open failed: {e}"
            return False
        if cap is None or not cap.isOpened():
            self.last_error = f"cannot open {self.spec.describe()}"
            if cap is not None:
                cap.release()
            return False
        self._cap = cap
        return True

    def _release(self) -> None:
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception:
                pass
            self._cap = None

    def _read_loop(self) -> bool:
        """Read until stopped (False), stalled or failed (False) or the stream ended (True)."""
        last_ok = time.monotonic()
        is_stream = self.spec.kind in ("file", "folder")
        while not self._stop.is_set():
            ok, image = self._cap.read()
            now = time.monotonic()
            if not ok or image is None:
                if is_stream:
                    return True
                if now - last_ok > self.reconnect_after_s:
                    self.last_error = f"no frame for {now - last_ok:.1f} s"
                    return False
                time.sleep(0.05)
                continue
            last_ok = now
            self._set_state("online", self.spec.describe())
            self.counts["read"] += 1
            self._read_times.append(now)
            if self.fps_cap and now < self._next_due:
                self.counts["skipped"] += 1
                continue
            if self.fps_cap:
                # Schedule from the due time, not from now, so the cap holds on average.
                self._next_due = max(self._next_due + 1.0 / self.fps_cap, now - 0.5 / self.fps_cap)
            self._deliver(image, now)
        return False

    def _deliver(self, image: np.ndarray, now: float) -> None:
        labels = tuple(getattr(self._cap, "labels", ()) or ())
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        frame = Frame(self.name, self._index, time.time(), now, image, labels)
        self._index += 1
        self._last_frame = now
        self._delivered_times.append(now)
        with self._cond:
            if len(self.queue) >= self.queue_size:
                self.queue.popleft()
                self.counts["dropped"] += 1
            self.queue.append(frame)
            self.counts["frames"] += 1
            self._cond.notify_all()


def _rate(times, now: float, window: float = 5.0) -> float:
    recent = [t for t in times if t >= now - window]
    if len(recent) < 2:
        return 0.0
    return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

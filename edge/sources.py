"""Camera sources: one capture thread per camera, a bounded drop-oldest queue, and a watchdog
that reopens a camera that stopped delivering, with exponential back-off.

The frame loop must never wait on a camera: it takes the newest frame a camera has, if any.
A camera that fails to open, stalls or disappears is retried in its own thread while the others
carry on; its state changes (connecting, online, reconnecting, offline) go to a callback that
the daemon publishes on `status.<camera>`.

Source specs: a device index or `/dev/...` path, an rtsp(s):// or http(s):// URL, a video file,
a folder of images (`PATH` or `PATH?fps=N`, played in name order), or `demo[:key=value,...]`.

Over 450 lines because it is the whole capture stage in one place: parsing a spec, opening
each kind with its timeouts, and the thread with its queue, counters and back-off share
state that splitting would have to pass around.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .clock import RateMeter

log = logging.getLogger("pathwatch.sources")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
STATES = ("connecting", "online", "reconnecting", "offline")
FOLDER_FPS = 5.0
FILE_FPS_FALLBACK = 25.0  # for containers that do not record a usable frame rate
FAILED_READS_BEFORE_REOPEN = 5  # consecutive failed reads of a live source = a broken stream
RATE_WINDOW_S = 5.0

StatusCallback = Callable[[str, str, str], None]


class SourceError(ValueError):
    """A source spec that can never work; the message says what to write instead."""


@dataclass
class Frame:
    camera: str
    index: int  # n-th frame read from the camera by this source (gaps: skipped by the fps cap)
    time: float  # wall clock (epoch seconds) when captured; in scene time: start + position
    monotonic: float
    image: np.ndarray  # BGR uint8 (H, W, 3)
    labels: tuple[str, ...] = ()  # ground truth, demo source only


@dataclass
class SourceSpec:
    kind: str  # device | url | file | folder | demo
    target: int | str
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        """For logs and status messages: URL passwords are masked."""
        if self.kind == "url":
            return _mask(str(self.target))
        if self.kind == "demo":
            opts = ",".join(f"{k}={v}" for k, v in self.options.items())
            return f"demo camera{' ' + opts if opts else ''}"
        return f"{self.kind} {self.target}"


def _mask(text: str) -> str:
    """Hide the password of any URL in `text` (status details and errors are published)."""
    return re.sub(r"://([^:/@\s]+):([^@\s]+)@", r"://\1:***@", text)


# ---------------------------------------------------------------------- parsing
def parse_source(spec: str | int) -> SourceSpec:
    """Classify a source spec; raise SourceError for one that can never work."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise SourceError(f"source {spec!r} must be a device index or a string (a /dev path, "
                          "URL, file, folder or demo)")
    if isinstance(spec, int):
        return SourceSpec("device", spec)
    s = spec.strip()
    if re.fullmatch(r"[0-9]+", s):
        return SourceSpec("device", int(s))
    if not s:
        raise SourceError("source is empty; use a device index, /dev/videoN, a URL, a file, a "
                          "folder or demo")
    if s == "demo" or s.startswith("demo:"):
        return SourceSpec("demo", "demo", _demo_options(s[5:]))
    if s.startswith("/dev/"):
        return SourceSpec("device", s)  # may be plugged in later: the watchdog retries
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", s)
    if scheme:
        if scheme.group(1).lower() in URL_SCHEMES:
            return SourceSpec("url", _check_url(s))
        raise SourceError(f"source scheme {scheme.group(1)}:// is not supported; use rtsp://, "
                          "rtsps://, http:// or https://, a device, a file, a folder or demo")
    return _parse_path(s)


def _check_url(s: str) -> str:
    """A URL that names no host or a port that cannot exist would be retried for ever."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(s)
        host, port = parts.hostname, parts.port  # .port raises for 99999 or "abc"
    except ValueError as e:
        raise SourceError(f"source {_masked(s)} is not a valid URL ({e}); check brackets "
                          "around IPv6 addresses and the port (1-65535)") from None
    if not host:
        raise SourceError(f"source {_masked(s)} names no host; use e.g. "
                          "rtsp://user:${CAM_PASSWORD}@192.168.1.20:554/stream")
    if port == 0:
        raise SourceError(f"source {_masked(s)}: port 0 cannot be connected to; use 1-65535")
    return s


def _masked(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def check_recording(spec: SourceSpec) -> None:
    """Open a file or folder source and decode one frame, so a recording that can never play
    (a text file named .mp4, a folder of no images) is refused before the model loads
    rather than retried for ever."""
    if spec.kind == "file":
        cap = cv2.VideoCapture(spec.target)
        try:
            ok = cap.isOpened() and cap.read()[0]
        finally:
            cap.release()
        if not ok:
            raise SourceError(f"source {spec.target} is not a video OpenCV can decode; check the "
                              "file (e.g. ffprobe it) or convert it: ffmpeg -i IN -c:v libx264 OUT.mp4")
    elif spec.kind == "folder":
        images = sorted(p for p in Path(spec.target).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not images:
            raise SourceError(f"source folder {spec.target} holds no images "
                              f"({', '.join(IMAGE_EXTS)}); put frames there or fix the path")
        if not any(cv2.imread(str(p)) is not None for p in images[:5]):
            raise SourceError(f"source folder {spec.target}: none of its first images decodes "
                              f"({images[0].name}, ...); check the files")


def _parse_path(s: str) -> SourceSpec:
    try:
        path, options = Path(s).expanduser(), {}
    except RuntimeError:  # ~name of no such user
        raise SourceError(f"source {s!r}: no home directory for {s.split('/')[0]!r}; give "
                          "the full path") from None
    if not path.exists() and "?" in s:  # PATH?fps=N for folders
        head, _, query = s.rpartition("?")
        path, options = Path(head).expanduser(), _folder_options(query, s)
    if path.is_dir():
        return SourceSpec("folder", str(path), {"fps": FOLDER_FPS, **options})
    if options:
        raise SourceError(f"source {s!r}: ?fps= applies to image folders only, and "
                          f"{str(path)!r} is not a folder")
    if path.is_file():
        return SourceSpec("file", str(path))
    raise SourceError(f"source {s!r} is not a device, URL, file or folder that exists; check the "
                      "path (relative paths are relative to the config file)")


def _folder_options(query: str, spec: str) -> dict:
    key, _, value = query.partition("=")
    try:
        fps = float(value) if key == "fps" else math.nan
    except ValueError:
        fps = math.nan
    if not (math.isfinite(fps) and fps > 0):
        raise SourceError(f"source {spec!r}: folder option {query!r} is not valid; use "
                          "FOLDER?fps=N with N > 0 (e.g. images?fps=2)")
    return {"fps": fps}


def _demo_options(text: str) -> dict:
    from .demo import check_options

    casts = {"seed": int, "fps": float, "width": int, "height": int, "script": str}
    opts: dict = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in casts or not value:
            raise SourceError(f"demo option {part!r} is not valid; use demo:key=value,... with keys "
                              f"{', '.join(casts)} (e.g. demo:seed=1,script=normal)")
        try:
            opts[key] = casts[key](value)
        except ValueError:
            raise SourceError(f"demo option {key}={value!r} is not a valid "
                              f"{'integer' if casts[key] is int else 'number'} "
                              "(e.g. demo:seed=1,fps=10)") from None
    try:
        check_options(**opts)
    except ValueError as e:
        raise SourceError(str(e)) from None
    return opts


# ---------------------------------------------------------------------- captures
class FolderCapture:
    """Images of a folder in name order, with the VideoCapture interface.

    The listing is taken at open; images added later are seen at the next open (a loop).
    An image that cannot be decoded is skipped rather than ending the stream.
    """

    def __init__(self, folder: str, fps: float = FOLDER_FPS, realtime: bool = True,
                 interrupt: threading.Event | None = None):
        self.files = sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS),
                            key=lambda p: p.name)
        self.fps, self.realtime, self.index = fps, realtime, 0
        self.start = time.monotonic()
        self.size = (0, 0)
        self.interrupt = interrupt  # set = give up a pacing wait (the source is stopping)

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's spelling)
        return bool(self.files)

    def read(self) -> tuple[bool, np.ndarray | None]:
        while self.index < len(self.files):
            if self.realtime and not _sleep_until(self.start + self.index / self.fps, self.interrupt):
                return False, None
            path = self.files[self.index]
            self.index += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                self.size = (image.shape[1], image.shape[0])
                return True, image
            log.warning("skipping %s: not a readable image", path)
        return False, None

    def get(self, prop: int) -> float:
        values = {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: len(self.files),
                  cv2.CAP_PROP_POS_FRAMES: self.index, cv2.CAP_PROP_FRAME_WIDTH: self.size[0],
                  cv2.CAP_PROP_FRAME_HEIGHT: self.size[1]}
        return float(values.get(prop, 0.0))

    def grab(self) -> bool:
        """Step over the next image without decoding it (what an fps cap skips)."""
        if self.index >= len(self.files):
            return False
        self.index += 1
        return True

    def release(self) -> None:
        self.files = []


def _clip_fps(fps: float) -> float:
    return fps if math.isfinite(fps) and 0 < fps <= 1000 else FILE_FPS_FALLBACK


def _grab(cap) -> bool:
    """Advance past one frame, without decoding it where the capture can."""
    grab = getattr(cap, "grab", None)
    return bool(grab()) if grab is not None else cap.read()[0]


class PacedCapture:
    """A capture played at a fixed frame rate against the monotonic clock, as a camera would
    deliver it (a video file is otherwise read as fast as it decodes)."""

    def __init__(self, cap, fps: float, interrupt: threading.Event | None = None):
        self.cap, self.interrupt = cap, interrupt
        self.fps = _clip_fps(fps)
        self.start, self.index = time.monotonic(), 0

    def isOpened(self) -> bool:  # noqa: N802
        return self.cap.isOpened()

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not _sleep_until(self.start + self.index / self.fps, self.interrupt):
            return False, None
        self.index += 1
        return self.cap.read()

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else self.cap.get(prop)

    def release(self) -> None:
        self.cap.release()


def _sleep_until(deadline: float, interrupt: threading.Event | None = None) -> bool:
    """Sleep until a monotonic deadline; False if `interrupt` was set meanwhile."""
    wait = deadline - time.monotonic()
    if interrupt is not None:
        return not interrupt.wait(max(wait, 0.0))
    if wait > 0:
        time.sleep(wait)
    return True


def open_capture(spec: SourceSpec, *, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 realtime: bool = True, interrupt: threading.Event | None = None):
    """An object with the cv2.VideoCapture interface for any kind of source; check isOpened().
    `interrupt`, once set, cuts short the pacing waits of files, folders and the demo."""
    if spec.kind == "demo":
        from .demo import DemoCapture, DemoScene
        return DemoCapture(DemoScene(**spec.options), realtime=realtime, interrupt=interrupt)
    if spec.kind == "folder":
        if not os.path.isdir(str(spec.target)):
            return cv2.VideoCapture()  # gone for now: an unopened capture, retried later
        return FolderCapture(str(spec.target), spec.options.get("fps", FOLDER_FPS), realtime, interrupt)
    if spec.kind == "url":
        # FFmpeg's own timeouts keep a dead network camera from blocking open() or read() for long.
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        return cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
    if spec.kind == "file":
        if not os.path.isfile(str(spec.target)):
            return cv2.VideoCapture()
        cap = cv2.VideoCapture(str(spec.target))
        if realtime and cap.isOpened():
            return PacedCapture(cap, cap.get(cv2.CAP_PROP_FPS), interrupt)
        return cap
    if isinstance(spec.target, str) and not os.path.exists(spec.target):
        return cv2.VideoCapture()  # an unplugged /dev node: no driver call, no log noise
    cap = cv2.VideoCapture(spec.target)
    if cap.isOpened():
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fresh frames over buffered ones, where supported
    return cap


# ---------------------------------------------------------------------- the capture thread
def quiet_native_logs() -> None:
    """OpenCV and FFmpeg print their own lines on every failed open or reconnect ("[tcp @
    0x...] Connection refused", "[ WARN:0@...] ..."), outside pathwatch's log format and JSON
    logging; each camera's status line says the same once. Silenced unless the user asked for
    them (OPENCV_LOG_LEVEL, OPENCV_FFMPEG_LOGLEVEL in the environment); FFmpeg reads its level
    when its backend first opens, so this runs before any capture does."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)  # OpenCV 5
    if hasattr(logging_api, "setLogLevel"):
        logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
    elif hasattr(cv2, "setLogLevel"):  # OpenCV 4
        cv2.setLogLevel(2)  # errors only: no warnings on a failed open


class CameraSource:
    """Runs one camera in a thread; the frame loop takes frames with `latest()` or `get()`.

    A recording (file or folder) with realtime=False plays in scene time: every frame the fps
    cap lets through, timed by its position in the recording, as fast as the reader takes
    them (the thread waits for room in the queue instead of dropping); the frames the cap
    skips are grabbed, not decoded. `lossless` says so, and the reader then uses `get()`.
    """

    def __init__(self, name: str, spec: str | int | SourceSpec, *, fps: float | None = None,
                 queue_size: int = 2, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 reconnect_after_s: float = 5.0, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 30.0, on_end: str = "loop", realtime: bool = True,
                 on_status: StatusCallback | None = None):
        if on_end not in ("loop", "stop"):
            raise SourceError(f"on_end {on_end!r} is not valid; use loop or stop")
        if fps is not None and not fps > 0:
            raise SourceError(f"fps cap {fps} must be positive (or None for every frame)")
        quiet_native_logs()
        self.name = name
        self.spec = spec if isinstance(spec, SourceSpec) else parse_source(spec)
        self.fps_cap = fps
        self.queue_size = max(1, int(queue_size))
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.reconnect_after_s = reconnect_after_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, max(backoff_max_s, backoff_initial_s)
        self.on_end, self.realtime, self.on_status = on_end, realtime, on_status

        self._lock = threading.Condition()  # guards the queue, counters, rates and state
        self._status_lock = threading.RLock()  # keeps callbacks in the order of the transitions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: collections.deque[Frame] = collections.deque()
        self._counts = {"frames": 0, "read": 0, "skipped": 0, "dropped": 0, "reconnects": 0}
        self._read_rate = RateMeter(RATE_WINDOW_S)
        self._delivered_rate = RateMeter(RATE_WINDOW_S)
        self._last_frame: float | None = None
        self._last_error: str | None = None
        self._state = "offline"
        self._was_online = False
        self._next_due = 0.0  # monotonic time the fps cap lets the next frame through
        self._read_index = 0
        self._scene_origin: float | None = None  # wall time of scene second 0 (lossless)

    # ------------------------------------------------------------------ public
    @property
    def state(self) -> str:
        return self._state

    @property
    def lossless(self) -> bool:
        """A recording played in scene time: no frame is dropped, so read with `get()`."""
        return not self.realtime and self.spec.kind in ("file", "folder")

    def start(self) -> None:
        """Start the capture thread (a no-op while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"pathwatch.capture:{self.name}",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Tell the capture thread to end, without waiting (stop() waits)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    def stop(self, timeout: float = 2.0, reason: str = "stopped") -> None:
        """Stop the thread and wait up to `timeout` for it. A capture stuck inside a driver call
        is not waited for: its thread releases the capture as soon as the call returns."""
        self.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("camera %s: capture still busy in a driver call; left to finish", self.name)
        self._set_state("offline", reason)

    def get(self, timeout: float | None = 0.0) -> Frame | None:
        """The oldest queued frame, waiting up to `timeout` seconds (None: until one comes or
        the source stops); None if there is none."""
        with self._lock:
            self._wait_for_frame(timeout)
            if not self._queue:
                return None
            self._lock.notify_all()  # a lossless capture waits for room in the queue
            return self._queue.popleft()

    def exhausted(self) -> bool:
        """The capture thread has ended on its own (a file or folder with on_end: stop ran
        out) and every frame it delivered has been taken."""
        with self._lock:
            return (self._thread is not None and not self._thread.is_alive()
                    and not self._stop.is_set() and not self._queue)

    def latest(self, timeout: float | None = 0.0) -> Frame | None:
        """The newest queued frame; the older ones are dropped (and counted as dropped)."""
        with self._lock:
            self._wait_for_frame(timeout)
            if not self._queue:
                return None
            self._counts["dropped"] += len(self._queue) - 1
            frame = self._queue.pop()
            self._queue.clear()
            self._lock.notify_all()
            return frame

    def stats(self) -> dict:
        with self._lock:
            now = time.monotonic()
            return {"state": self._state, **self._counts,
                    "camera_fps": self._read_rate.per_second(now),
                    "delivered_fps": self._delivered_rate.per_second(now),
                    "last_frame_age_s": None if self._last_frame is None else round(now - self._last_frame, 2),
                    "last_error": self._last_error}

    # ------------------------------------------------------------------ state
    def _wait_for_frame(self, timeout: float | None) -> None:
        if timeout is None or timeout > 0:
            self._lock.wait_for(lambda: self._queue or self._stop.is_set(), timeout)

    def _set_state(self, state: str, detail: str = "") -> None:
        with self._status_lock:
            with self._lock:
                # After stop() only "offline" is reported, whatever a late thread thinks.
                if state == self._state or (self._stop.is_set() and state != "offline"):
                    return
                if state == "online" and self._state == "reconnecting" and self._was_online:
                    self._counts["reconnects"] += 1  # a reconnect: back after being lost
                self._was_online |= state == "online"
                self._state = state
            if self.on_status is not None:
                try:
                    self.on_status(self.name, state, detail)
                except Exception:  # a broken callback must not kill capture
                    log.exception("status callback failed for camera %s", self.name)

    def _error(self, message: str) -> None:
        message = _mask(message)
        with self._lock:
            self._last_error = message
        log.debug("camera %s: %s", self.name, message)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        """Open, read, and on failure reopen with back-off, until stopped or a file ends."""
        backoff = self.backoff_initial_s
        self._set_state("connecting", self.spec.describe())
        try:
            while not self._stop.is_set():
                cap = self._open()
                outcome, delivered = ("failed", False) if cap is None else self._read_all(cap)
                if outcome == "stopped":
                    return
                if delivered:  # it worked for a while: the next failure starts afresh
                    backoff = self.backoff_initial_s
                if outcome == "ended" and self.on_end == "stop":
                    self._set_state("offline", "end of stream")
                    return
                if outcome == "ended":
                    continue  # loop from the start at once; still online
                self._set_state("reconnecting", self._last_error or "")
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.backoff_max_s)
        except Exception as e:  # a bug here must not take the daemon down; report and end
            log.exception("camera %s: capture thread failed", self.name)
            self._error(f"capture thread failed: {e}")
            self._set_state("offline", f"capture failed: {e}")

    def _read_all(self, cap) -> tuple[str, bool]:
        try:
            return self._play_scene(cap) if self.lossless else self._read_loop(cap)
        finally:
            _release(cap)

    def _open(self):
        """An opened capture, or None (the reason goes to last_error)."""
        try:
            cap = open_capture(self.spec, open_timeout_s=self.open_timeout_s,
                               read_timeout_s=self.read_timeout_s, realtime=self.realtime,
                               interrupt=self._stop)
        except Exception as e:  # OpenCV backends raise assorted errors; all mean "retry later"
            self._error(f"cannot open {self.spec.describe()}: {e}")
            return None
        if not cap.isOpened():
            self._error(f"cannot open {self.spec.describe()}")
            _release(cap)
            return None
        return cap

    def _read_loop(self, cap) -> tuple[str, bool]:
        """Read until "stopped", "ended" (a file or folder ran out) or "failed" (a stall,
        repeated read failures, or a file that yields nothing); and whether any frame came."""
        finite = self.spec.kind in ("file", "folder")
        last_ok, failures, frames = time.monotonic(), 0, 0
        while not self._stop.is_set():
            ok, image = cap.read()
            now = time.monotonic()
            if ok and image is not None and image.size:
                last_ok, failures, frames = now, 0, frames + 1
                self._set_state("online", self.spec.describe())
                self._take(cap, image, now)
                continue
            if self._stop.is_set():
                break
            if finite:
                if frames:
                    return "ended", True
                self._error(f"no frame could be read from {self.spec.describe()}")
                return "failed", False
            failures += 1
            if failures >= FAILED_READS_BEFORE_REOPEN or now - last_ok > self.reconnect_after_s:
                self._error(f"no frame for {now - last_ok:.1f} s ({failures} failed reads)")
                return "failed", frames > 0
            self._stop.wait(0.05)
        return "stopped", frames > 0

    def _play_scene(self, cap) -> tuple[str, bool]:
        """One pass over a recording in scene time (see the class docstring): "stopped",
        "ended", or "failed" for a recording that yields nothing; and whether a frame came."""
        fps = _clip_fps(cap.get(cv2.CAP_PROP_FPS))
        period = 1.0 / self.fps_cap if self.fps_cap else 0.0
        if self._scene_origin is None:
            self._scene_origin = time.time()
        position, due, frames = 0, 0.0, 0
        while not self._stop.is_set():
            scene_t = position / fps
            if scene_t < due - 1e-9:  # the cap skips it: step over without decoding
                if not _grab(cap):
                    break
                position += 1
                self._count_skipped()
                continue
            ok, image = cap.read()
            if not ok or image is None or not image.size:
                break
            position, frames = position + 1, frames + 1
            due = max(due + period, scene_t + 0.5 * period)
            self._set_state("online", self.spec.describe())
            self._queue_waiting(cap, image, self._scene_origin + scene_t)
        if self._stop.is_set():
            return "stopped", frames > 0
        self._scene_origin += position / fps  # a loop goes on in scene time
        if frames:
            return "ended", True
        self._error(f"no frame could be read from {self.spec.describe()}")
        return "failed", False

    def _count_skipped(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._read_index += 1
            self._counts["read"] += 1
            self._counts["skipped"] += 1
            self._read_rate.tick(now)

    def _queue_waiting(self, cap, image: np.ndarray, scene_time: float) -> None:
        """Queue a frame of a recording, waiting for room rather than dropping one."""
        frame = self._frame(cap, image, self._read_index, scene_time, time.monotonic())
        with self._lock:
            self._read_index += 1
            self._counts["read"] += 1
            self._read_rate.tick(frame.monotonic)
            self._last_frame = frame.monotonic
            self._lock.wait_for(lambda: len(self._queue) < self.queue_size or self._stop.is_set())
            if self._stop.is_set():
                return
            self._queue.append(frame)
            self._counts["frames"] += 1
            self._delivered_rate.tick(time.monotonic())
            self._lock.notify_all()

    def _frame(self, cap, image: np.ndarray, index: int, when: float, now: float) -> Frame:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return Frame(self.name, index, when, now, image, tuple(getattr(cap, "labels", ()) or ()))

    def _take(self, cap, image: np.ndarray, now: float) -> None:
        """Count a read frame, and queue it unless the fps cap says skip."""
        index = self._read_index
        self._read_index += 1
        deliver = self.fps_cap is None or now >= self._next_due
        if deliver and self.fps_cap:
            # Schedule from the due time, not from now, so the cap holds on average; never bank
            # more than half a period of credit after a gap.
            period = 1.0 / self.fps_cap
            self._next_due = max(self._next_due + period, now + 0.5 * period)
        frame = self._frame(cap, image, index, time.time(), now) if deliver else None
        with self._lock:
            self._counts["read"] += 1
            self._read_rate.tick(now)
            self._last_frame = now
            if frame is None:
                self._counts["skipped"] += 1
                return
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self._counts["dropped"] += 1
            self._queue.append(frame)
            self._counts["frames"] += 1
            self._delivered_rate.tick(now)
            self._lock.notify_all()


def _release(cap) -> None:
    try:
        cap.release()
    except Exception:  # releasing a broken capture can fail; nothing is lost by ignoring it
        pass

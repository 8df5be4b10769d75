"""One camera's life: its source, tile grid, calibration and alert tracker, and the state that
ties them together.

A camera has two states side by side, and neither masks the other: the **source's health**,
from its capture thread (edge.sources: connecting, online, reconnecting, offline), and its
**lifecycle**, kept here:

| lifecycle    | meaning                                      | next, and on what                      |
|--------------|----------------------------------------------|----------------------------------------|
| `pending`    | a calibration file was read; the first frame | `scoring`: it fits the frame's grid;   |
|              | shows the frame size it must fit            | `collecting` / `refused`: it does not  |
|              |                                              | (with / without auto-calibration)      |
| `collecting` | normal frames are collected to calibrate     | `fitting`: the window is complete (or  |
|              |                                              | the clip ended); `refused`: the source |
|              |                                              | ended too soon; `scoring`: reload      |
|              |                                              | finds a file written since it began    |
| `fitting`    | the fit runs in its own thread; frames are   | `scoring`: fitted and saved;           |
|              | taken and counted, not scored                | `collecting`: a live window had too    |
|              |                                              | much to trim (a fresh one is taken);   |
|              |                                              | `refused`: the fit or the write failed |
| `scoring`    | frames are scored, alerts may start          | `collecting` / `refused`: the frame    |
|              |                                              | size changed and the calibration no    |
|              |                                              | longer fits (an open alert ends)       |
| `refused`    | no usable calibration, no auto-calibration,  | `pending` / `collecting`: reload reads |
|              | or calibrating failed; no frame is scored    | the calibration file again             |

Start: a usable calibration file gives `pending`; none (or `--recalibrate`) gives
`collecting` where auto-calibration is on (always in `pathwatch calibrate`), else `refused`.

What the camera reports (heartbeat, stats, view, metrics) is one word, `state`: `refused`
when refused; otherwise the source's state whenever the source is not online (a dead camera
is reported dead whatever its calibration), else `calibrating` while collecting or fitting,
`alerting` while an alert is open, `online`. The source's state and the lifecycle travel
beside it.

Over 450 lines on purpose: a camera's whole life (the table above and every transition in it)
is kept in one module, so that it can be read, and changed, in one place.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .adaptation import Adaptation, Refresh
from .alerts import AlertEvent, AlertTracker
from .bundle import Bundle
from .calibration import (MIN_CALIBRATION_FRAMES, Calibration, CalibrationError,
                          CalibrationWindow, ContaminatedWindow, fit_calibration, still_gated)
from .clock import RateMeter
from .config import CameraConfig, Config
from .dynamic_steps import DynamicSteps
from .feedback import AlertFrames, alert_frames_dir
from .gating import ChangeGate, noise_level
from .publisher import encode_jpeg, encode_png
from .sources import CameraSource, Frame, parse_source
from .stillness import StillContent
from .tiles import TileGrid, heatmap_image, overlay_image

log = logging.getLogger("pathwatch")
LATENCY_SAMPLES = 256  # the recent frames whose capture-to-score latency the stats report
CALIBRATION_WATCH_S = 2.0  # how often a scoring camera checks its calibration file
SCORE_CEILING = 1e6  # keeps messages valid JSON even for a non-finite likelihood

StatusCallback = Callable[[str, str, str], None]  # (camera, state, detail)


class Lifecycle(enum.Enum):
    PENDING = "pending"
    COLLECTING = "collecting"
    FITTING = "fitting"
    SCORING = "scoring"
    REFUSED = "refused"


@dataclass(frozen=True)
class CalibrationPlan:
    """How this process gets calibrations: how much normal scene to collect (`seconds` of
    scene time, or a count of `frames` where one is asked for), whether every camera may
    collect (`pathwatch calibrate`), whether saved files are ignored (--recalibrate)."""
    seconds: float | None = 120.0
    frames: int | None = None
    collect_always: bool = False
    recalibrate: bool = False

    def describe(self) -> str:
        return f"{self.frames} normal frames" if self.frames else \
            f"{self.seconds:g} s of normal scene"


class Collection:
    """Normal frames gathered for calibration: their features and scene times. The window is
    measured on the frames' capture clock, so a slow CPU collects fewer frames of the same
    stretch of scene, not a longer stretch."""

    def __init__(self, dropped_before: int):
        self.started = time.time()
        self.features: list[np.ndarray] = []
        self.times: list[float] = []
        self.noise: list[float] = []  # noise between consecutive frames (change gating)
        self.cheap: list[np.ndarray] = []  # the one-step head's features (dynamic steps)
        self.still: list[np.ndarray] = []  # still-content flags per tile (passing: ignore)
        self.dropped_before = dropped_before

    def add(self, frame: Frame, features: np.ndarray, cheap: np.ndarray | None = None,
            still: np.ndarray | None = None) -> None:
        self.features.append(features)
        self.times.append(frame.time)
        if cheap is not None:
            self.cheap.append(cheap)
        if still is not None:
            self.still.append(still)

    @property
    def scene_seconds(self) -> float:
        return self.times[-1] - self.times[0] if self.times else 0.0

    def progress(self, plan: CalibrationPlan) -> tuple[float, float]:
        """(done, total) in frames or in scene seconds, as the plan counts."""
        if plan.frames:
            return len(self.features), plan.frames
        return round(min(self.scene_seconds, plan.seconds), 1), plan.seconds

    def complete(self, plan: CalibrationPlan) -> bool:
        if plan.frames:
            return len(self.features) >= plan.frames
        return self.scene_seconds >= plan.seconds and len(self.features) >= MIN_CALIBRATION_FRAMES


@dataclass(frozen=True)
class CameraStats:
    """One camera's figures, as the heartbeat, the stats topic, the view and metrics see them."""
    state: str
    source: str
    lifecycle: str
    camera_fps: float
    process_fps: float
    skipped: int
    dropped: int
    skipped_fps: float
    reconnects: int
    score: float | None
    p_normal: float | None  # how often a normal frame scores this high (bounded, readable)
    threshold: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    refused: str | None
    tiles_sent: float | None = None  # share of tiles sent to the backend (change gating)
    tiles_escalated: float | None = None  # share given the full schedule (dynamic steps)

    @property
    def online(self) -> bool:
        return self.source == "online"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AlertMessage:
    """An alert event to journal and publish, with what travels beside it."""
    event: AlertEvent
    extra: dict
    attachments: dict[str, bytes] = field(default_factory=dict)


@dataclass
class FrameResult:
    """What scoring one frame produced for the frame loop to publish."""
    latency_ms: float | None = None
    alerts: list[AlertMessage] = field(default_factory=list)
    score: dict | None = None  # the score topic's payload, when its rate allows one


class Camera:
    """One configured camera. The frame loop owns it (not thread-safe), except for source
    status, which arrives on the capture thread and is only passed on."""

    def __init__(self, cfg: CameraConfig, config: Config, bundle: Bundle, plan: CalibrationPlan,
                 on_status: StatusCallback, cheap: Bundle | None = None):
        """`cheap`: the bundle's one-step head when the daemon runs dynamic steps."""
        self.cfg, self.config, self.bundle, self.plan = cfg, config, bundle, plan
        self.cheap = cheap
        self.on_status = on_status
        # `pathwatch calibrate` plays a recording once, in scene time: every frame at the fps
        # cap, however slow the CPU, and never the same stretch twice.
        spec = parse_source(cfg.source)
        recording = plan.collect_always and spec.kind in ("file", "folder")
        self.source = CameraSource(
            cfg.name, spec, fps=cfg.fps, queue_size=config.capture.queue_size,
            open_timeout_s=config.capture.open_timeout_s,
            read_timeout_s=config.capture.read_timeout_s,
            reconnect_after_s=config.capture.reconnect_after_s,
            backoff_max_s=config.capture.backoff_max_s,
            on_end="stop" if recording else cfg.on_end,
            realtime=cfg.realtime and not recording, on_status=self._source_status)
        self.tracker = AlertTracker(cfg.name, config.alerts)  # the config section is the policy
        self.alert_frames = AlertFrames(alert_frames_dir(config.state_path(), cfg.name),
                                        config.alerts.window_frames)
        self._calibration_mtime: int | None = None  # of the file in use, to notice a new one
        self._watched = 0.0
        self.lifecycle = Lifecycle.REFUSED
        self.refused: str | None = None
        self.grid: TileGrid | None = None
        self.calibration: Calibration | None = None
        self.calibrated_here = False  # this process wrote the camera's calibration file
        self._collection = Collection(0)
        self._processed = RateMeter()
        self._latency_ms: list[float] = []
        self._last_score: float | None = None
        self._last_p_normal: float | None = None
        self._last_score_sent = -math.inf
        self.gate: ChangeGate | None = None  # made with a calibration that measured noise
        self.steps: DynamicSteps | None = None  # made with a calibration of both heads
        self.adaptation: Adaptation | None = None  # made with a calibration and its frames
        self._sample = False  # this frame is an adaptation sample (every tile in full)
        # passing: ignore: which tiles hold something new that stays (made with each grid),
        # this frame's flags, and the grid it cuts without exposure normalisation
        self.still: StillContent | None = None
        self._still: np.ndarray | None = None
        self._raw_grid: TileGrid | None = None
        self._cut: tuple[np.ndarray, np.ndarray | None] | None = None  # this frame's tiles, mask

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def calibration_path(self):
        return self.cfg.calibration_path(self.config)

    @property
    def threshold(self) -> float:
        if self.cfg.threshold is not None:
            return float(self.cfg.threshold)
        return self.calibration.threshold if self.calibration else math.inf

    @property
    def collecting(self) -> bool:
        return self.lifecycle is Lifecycle.COLLECTING

    @property
    def calibrating(self) -> bool:
        return self.lifecycle in (Lifecycle.COLLECTING, Lifecycle.FITTING)

    def _passing(self) -> dict | None:
        """The still-content settings scores are gated by (passing: ignore), or None."""
        if self.cfg.passing != "ignore":
            return None
        st = self.config.stillness
        return {"still_s": st.still_s, "min_area": st.min_area,
                "background_s": st.background_s}

    def collection_progress(self) -> tuple[float, float]:
        return self._collection.progress(self.plan)

    # ------------------------------------------------------------------ start and stop
    def start(self) -> None:
        self._read_calibration()
        self.source.start()

    def request_stop(self) -> None:
        self.source.request_stop()

    def stop(self, timeout: float, reason: str) -> None:
        """Stop capture; the source reports `offline` with the reason."""
        self.source.stop(timeout=timeout, reason=reason)

    def close_alert(self, reason: str) -> AlertEvent | None:
        """End an open alert now (shutdown, reload, a refit); its `end`, or None."""
        event = self.tracker.close(time.time(), reason)
        if event is not None:
            self.alert_frames.finish(event.alert_id)
        return event

    # ------------------------------------------------------------------ lifecycle
    def _read_calibration(self) -> None:
        path = self.calibration_path
        self.calibration, self.refused = None, None
        if path.exists() and not self._ignores_saved_file():
            try:
                self.calibration = Calibration.load(path)
                self._retarget()
                self._make_gate()
                self._make_steps()
                self._make_adaptation()
                self.lifecycle = Lifecycle.PENDING  # checked against the first frame's grid
                return
            except CalibrationError as e:
                reason = str(e)
        else:
            reason = f"no calibration at {path}"
        self._collect_or_refuse(reason)

    def _retarget(self) -> None:
        """The saved threshold, re-chosen for the current false-alarm target and trigger rule."""
        a = self.config.alerts
        said = self.calibration.retarget(self.config.calibration.false_alarms_per_hour,
                                         a.trigger_frames, a.window_frames)
        if self.calibration.cheap is not None:  # its level follows the same rule
            self.calibration.cheap.retarget(self.config.calibration.false_alarms_per_hour,
                                            a.trigger_frames, a.window_frames)
        if said:
            log.info("camera %s: %s", self.name, said)

    def _ignores_saved_file(self) -> bool:
        # --recalibrate replaces each camera's file once; a reload after that keeps the new one.
        return self.plan.recalibrate and not self.calibrated_here

    def _may_collect(self) -> bool:
        return self.plan.collect_always or self.cfg.wants_auto_calibration(self.config)

    def _collect_or_refuse(self, reason: str) -> None:
        if self._may_collect():
            self.calibration = None
            self._collection = self._new_collection()
            self.lifecycle = Lifecycle.COLLECTING
            self._announce("calibrating", f"{reason}; collecting {self.plan.describe()}")
        else:
            self._refuse(f"{reason}; run `pathwatch calibrate --camera {self.name}` or set "
                         "calibration.auto: true")

    def _new_collection(self) -> Collection:
        # Drops are counted from here, so the file records those of its own window.
        return Collection(self.source.stats()["dropped"])

    def _refuse(self, reason: str) -> None:
        self.lifecycle, self.refused, self.calibration = Lifecycle.REFUSED, reason, None
        log.error("camera %s refused: %s", self.name, reason)
        self._announce("refused", reason)

    def _announce(self, state: str, detail: str) -> None:
        log.info("camera %s: %s%s", self.name, state, f" ({detail})" if detail else "")
        self.on_status(self.name, state, detail)

    def _source_status(self, name: str, state: str, detail: str = "") -> None:
        if state == "online" and self.calibrating:
            # Frames flow, but no alert can come before the calibration is done: say so.
            state, detail = "calibrating", f"{detail}; collecting {self.plan.describe()}"
        self._announce(state, detail)

    def _fit_grid(self, frame: Frame) -> bool:
        """The tile grid for this frame's size; a calibration waiting for it (or one made for
        another size) is checked here. False: the camera cannot use frames now."""
        h, w = frame.image.shape[:2]
        if self.grid is not None and (self.grid.frame_w, self.grid.frame_h) == (w, h):
            return True
        if self.collecting and self.grid is not None:
            self._collection = self._new_collection()  # frames of two sizes do not mix
        c = self.cfg
        self.grid = TileGrid(w, h, self.bundle.image_size[0], c.tiles[0], c.tiles[1],
                             tuple(c.roi), [tuple(r) for r in c.ignore], c.exposure)
        if self.gate is not None:
            self.gate.reset()  # tiles of another size or place
        if self.steps is not None:
            self.steps.reset()
        passing = self._passing()
        if passing is not None:
            self.still = StillContent.for_grid(passing, self.grid.count)
            # Stillness compares raw pixels: exposure normalisation moves every pixel a little
            # whenever something enters the view.
            self._raw_grid = dataclasses.replace(self.grid, exposure="off")
        if self.calibration is None:
            return self.lifecycle is not Lifecycle.REFUSED
        try:
            self.calibration.check(self.bundle.identity(), self.grid, self.calibration_path,
                                   passing)
        except CalibrationError as e:
            self._collect_or_refuse(str(e))
            return self.collecting
        self.lifecycle = Lifecycle.SCORING
        self._announce("online", f"calibration {self.calibration_path}, threshold "
                       f"{self.threshold:.2f}")
        return True

    # ------------------------------------------------------------------ the frame path
    def next_frame(self) -> tuple[Frame | None, AlertEvent | None]:
        """The newest frame, if there is one and the camera can use it; and the `end` of an
        alert that a calibration no longer fitting the frame's size has closed."""
        if self.lifecycle is Lifecycle.REFUSED:
            return None, None
        if self.tracker.active and self.source.state in ("reconnecting", "offline"):
            # No frame can end the alert while the camera is gone: it ends with that reason.
            return None, self.close_alert(f"the camera went {self.source.state}")
        if self.source.lossless:
            if self.lifecycle is Lifecycle.FITTING:
                return None, None  # a recording waits for the fit: none of its scene is lost
            frame = self.source.get(timeout=0)
        else:
            frame = self.source.latest(timeout=0)
        if frame is None or self.lifecycle is Lifecycle.FITTING:
            return None, None  # while fitting, a live camera's frames are taken and counted
        was_scoring = self.lifecycle is Lifecycle.SCORING
        usable = self._fit_grid(frame)
        ended = None
        if was_scoring and self.lifecycle is not Lifecycle.SCORING:
            ended = self.close_alert("calibration no longer fits")
        return (frame if usable else None), ended

    def tiles(self, frame: Frame) -> np.ndarray:
        """The tiles of this frame the backend must evaluate: all of them, or with change
        gating those that changed (or grew too old) since they were last evaluated."""
        tiles = self.grid.cut(frame.image)
        self._sample = (self.adaptation is not None and self.lifecycle is Lifecycle.SCORING
                        and self.adaptation.wants_sample(frame.time))
        previous, self._cut = self._cut, (tiles, None)
        if self.collecting and previous is not None and previous[0].shape == tiles.shape:
            self._collection.noise.append(noise_level(previous[0], tiles))
        if self.still is not None and self.lifecycle in (Lifecycle.COLLECTING, Lifecycle.SCORING):
            self._still = self.still.update(self._raw_grid.cut(frame.image), frame.time)
        if self.gate is None or self.lifecycle is not Lifecycle.SCORING:
            return tiles
        mask = self.gate.select(tiles, frame.time)
        self._cut = (tiles, mask)
        return tiles[mask]

    @property
    def wants_cheap(self) -> bool:
        """Whether this frame's tiles go through the one-step head first: while collecting
        (both heads are calibrated on one window) and while scoring with dynamic steps."""
        if self.cheap is None:
            return False
        return self.collecting or (self.steps is not None and self.lifecycle is Lifecycle.SCORING)

    def escalate(self, tiles: np.ndarray, cheap_features: np.ndarray | None) -> np.ndarray:
        """Of the tiles `tiles()` returned, those the full schedule must evaluate: all of them,
        or with dynamic steps those the one-step head finds near its threshold."""
        if cheap_features is None or self.steps is None or self.lifecycle is not Lifecycle.SCORING:
            return tiles
        _, mask = self._cut
        idx = np.flatnonzero(mask) if mask is not None else np.arange(len(tiles))
        # An open alert's frames and adaptation samples get every tile in full.
        force = self.tracker.active or self._sample
        return tiles[self.steps.select(idx, cheap_features, force=force)]

    def observe(self, frame: Frame, features: np.ndarray, maps: np.ndarray,
                cheap: tuple[np.ndarray, np.ndarray] | None = None) -> FrameResult:
        """One frame's tile features (and error maps) from the backend, and the one-step
        head's (features, maps) when it ran: collected while calibrating, scored otherwise.
        Returns what to publish."""
        self._processed.tick(time.monotonic())
        tiles, mask = self._cut or (None, None)
        scores = None
        if cheap is not None and self.steps is not None and self.lifecycle is Lifecycle.SCORING:
            features, maps, scores = self.steps.merge(features, maps, cheap[1])
        if mask is not None and self.gate is not None:
            features, maps = self.gate.merge(mask, tiles, features, maps, frame.time, scores)
            scores = None if scores is None else self.gate.scores.copy()
        if self.collecting:
            self._collect(frame, features, None if cheap is None else cheap[0], self._still)
            return FrameResult()
        if self.lifecycle is not Lifecycle.SCORING:
            return FrameResult()
        result = self._score(frame, features, maps, scores)
        if self._sample:
            self._adapt(frame, features, None if cheap is None else cheap[0])
        return result

    def _adapt(self, frame: Frame, features: np.ndarray, cheap: np.ndarray | None) -> None:
        """An adaptation sample: offered to the normal set; a refit starts when one is due."""
        a = self.adaptation
        whole = cheap is not None and len(cheap) == self.grid.count  # not a gated subset
        a.observe(frame.time, features, cheap if whole else None, self._last_p_normal,
                  self.tracker.active, self._still)
        reason = a.due(frame.time)
        if reason is not None:
            log.info("camera %s: refreshing the normal model (%s)", self.name, reason)
            a.start(frame.time, reason, self.name, fit_cheap=self.steps is not None)

    def _collect(self, frame: Frame, features: np.ndarray, cheap: np.ndarray | None,
                 still: np.ndarray | None) -> None:
        self._collection.add(frame, features, cheap, still)
        if self._collection.complete(self.plan):
            self._finish_calibration()

    def advance(self) -> AlertEvent | None:
        """What moves on without a frame, once per pass of the loop: a fit that finished is
        installed, and so is a refresh of the normal model (returned: the `end` of an alert
        it adopted as a lasting change); a clip that ends (on_end: stop) while the camera
        collects is fitted on the frames it gave, or refused with the count, rather than
        waited on."""
        if self.lifecycle is Lifecycle.FITTING and not self._fit_thread.is_alive():
            self._install(self._fit_result)
        ended = self._install_refresh()
        self._watch_calibration()
        if not self.collecting or not self.source.exhausted():
            return ended
        n = len(self._collection.features)
        if n < MIN_CALIBRATION_FRAMES:
            self._refuse(f"the source ended after {n} processed frames; calibration needs at "
                         f"least {MIN_CALIBRATION_FRAMES} (use a longer clip, on_end: loop, or a "
                         "higher fps cap)")
            return
        log.warning("camera %s: the source ended; calibrating on the %d frames it gave",
                    self.name, n)
        self._finish_calibration()
        return ended

    def _install_refresh(self) -> AlertEvent | None:
        """A finished refresh of the normal model: saved, switched to, announced."""
        result = self.adaptation.result() if self.adaptation is not None else None
        if result is None or self.lifecycle is not Lifecycle.SCORING:
            return None
        if not isinstance(result, Refresh):
            log.warning("camera %s: the normal model was not refreshed: %s", self.name, result)
            return None
        try:
            result.window.save(self.calibration_path)  # the frames first: feedback reads both
            result.calibration.save(self.calibration_path)
        except CalibrationError as e:
            log.warning("camera %s: the normal model was not refreshed: %s", self.name, e)
            return None
        self._calibration_mtime = _mtime(self.calibration_path)  # our own write: no reload
        self.calibration = result.calibration
        self._make_gate()
        self._make_steps()
        self.adaptation.installed(result)
        self._announce("online", result.summary)
        if result.reason != "lasting change":
            return None
        return self.close_alert(f"a lasting change, adopted as normal "
                                f"(normal model version {self.adaptation.version})")

    def _watch_calibration(self) -> None:
        """A calibration file replaced under a scoring camera (`pathwatch feedback`, or
        `pathwatch calibrate` beside the daemon) is read within CALIBRATION_WATCH_S, as on
        SIGHUP; one that cannot be used leaves the one in use."""
        now = time.monotonic()
        if self.lifecycle is not Lifecycle.SCORING or now - self._watched < CALIBRATION_WATCH_S:
            return
        self._watched = now
        seen, self._calibration_mtime = self._calibration_mtime, _mtime(self.calibration_path)
        if seen is not None and self._calibration_mtime not in (None, seen):
            log.info("camera %s: %s changed; reading it", self.name, self.calibration_path)
            self.reload(self.cfg, self.config, self.plan)

    def _finish_calibration(self) -> None:
        """Fit and save in a thread of its own (tens of seconds on a small CPU): the frame loop,
        other cameras, heartbeats and the watchdog go on meanwhile."""
        collection, self._collection = self._collection, Collection(0)
        self.lifecycle, self._fit_result = Lifecycle.FITTING, None

        def fit() -> None:
            try:
                cal = self._fit(collection)
                cal.save(self.calibration_path)
                times = np.asarray(collection.times) - collection.times[0]
                cheap = np.stack(collection.cheap) if cal.cheap is not None else None
                CalibrationWindow(np.stack(collection.features), times,  # feedback, adaptation
                                  np.zeros(len(times), bool), cheap,
                                  self._still_flags(collection)).save(self.calibration_path)
                self._fit_result = cal
            except CalibrationError as e:
                self._fit_result = e
            except Exception as e:  # a bug in fitting refuses the camera, never hangs it
                log.exception("camera %s: calibration fit failed", self.name)
                self._fit_result = CalibrationError(f"the fit failed ({e})")

        self._fit_thread = threading.Thread(target=fit, name=f"pathwatch.calibrate:{self.name}",
                                            daemon=True)
        self._fit_thread.start()

    def _install(self, result: Calibration | CalibrationError | None) -> None:
        if isinstance(result, ContaminatedWindow) and not self.source.lossless:
            # A live scene goes on: a later window may be quieter. (A recording's is fixed.)
            log.warning("camera %s: %s", self.name, result)
            self._collect_or_refuse("the calibration window was too contaminated to use")
            return
        if not isinstance(result, Calibration):
            self._refuse(f"calibration failed: {result}")
            return
        cal = self.calibration = result
        self._make_gate()
        self._make_steps()
        self._make_adaptation()
        self.calibrated_here = True
        self.lifecycle = Lifecycle.SCORING
        if cal.trimmed:
            log.warning("camera %s: left out of the normal set as unusual: %s", self.name,
                        "; ".join(f"{t['from_s']:g}-{t['to_s']:g} s into the window "
                                  f"({t['frames']} frames, distance {t['peak_distance']:g})"
                                  for t in cal.trimmed))
        self._announce("online", f"calibrated on {cal.coverage()}, threshold "
                       f"{cal.threshold:.2f} ({cal.threshold_method}); saved "
                       f"{self.calibration_path}")

    def _make_gate(self) -> None:
        """Change gating with the calibration's noise level, when it is on and measured."""
        g, cal = self.config.gating, self.calibration
        noise = (cal.data.get("noise") or {}).get("level") if cal is not None else None
        self.gate = ChangeGate(noise, g.max_age_s) if g.enabled and noise is not None else None
        if g.enabled and cal is not None and noise is None:
            log.warning("camera %s: change gating stays off: %s measured no sensor noise "
                        "(recalibrate to turn it on)", self.name, self.calibration_path)

    def _make_steps(self) -> None:
        """Dynamic steps with the calibration's one-step head, when they are on and both the
        bundle and the calibration have one."""
        ds, cal = self.config.dynamic_steps, self.calibration
        self.steps = None
        if not ds.enabled or self.cheap is None or cal is None:
            return
        if cal.cheap_error:
            log.warning("camera %s: dynamic steps stay off: %s (recalibrate)", self.name,
                        cal.cheap_error)
        elif cal.cheap is None:
            log.warning("camera %s: dynamic steps stay off: %s has no one-step calibration "
                        "(recalibrate to turn them on)", self.name, self.calibration_path)
        elif cal.cheap.facts.bundle_graph_sha256 != self.cheap.manifest.graph.sha256:
            log.warning("camera %s: dynamic steps stay off: %s's one-step calibration is for "
                        "another graph (recalibrate)", self.name, self.calibration_path)
        elif [d is None for d in cal.cheap.densities] != [d is None for d in cal.densities]:
            log.warning("camera %s: dynamic steps stay off: %s's one-step calibration has "
                        "other tiles (recalibrate)", self.name, self.calibration_path)
        else:
            self.steps = DynamicSteps(cal, ds.margin, self.threshold)

    def _make_adaptation(self) -> None:
        """Online adaptation with the calibration's normal set, when it is on and usable."""
        a, cal = self.config.adaptation, self.calibration
        self.adaptation = None
        if not a.enabled or cal is None:
            return
        t = cal.data["threshold"]
        why = None
        if self.cfg.threshold is not None or t.get("value") != t.get("chosen", t.get("value")):
            why = "the threshold was set by hand"
        elif not len(cal.data.get("scores", {}).get("out_of_fold") or []):
            why = f"{self.calibration_path} predates out-of-fold scores (recalibrate)"
        else:
            try:
                window = CalibrationWindow.load(self.calibration_path)
                if window.features.shape[1] != len(cal.densities):
                    why = f"{CalibrationWindow.path_for(self.calibration_path)} holds frames " \
                          "of another grid (recalibrate)"
            except CalibrationError as e:
                why = str(e)
        if why is not None:
            log.warning("camera %s: online adaptation stays off: %s", self.name, why)
            return
        c, al = self.config.calibration, self.config.alerts
        self.adaptation = Adaptation(a, cal, window, {
            "holdout": c.holdout, "false_alarms_per_hour": c.false_alarms_per_hour,
            "trigger": al.trigger_frames, "window_frames": al.window_frames})

    def _fit(self, w: Collection) -> Calibration:
        cal = self._fit_head(w, np.stack(w.features), self.bundle)
        if self.cheap is None:
            return cal
        if len(w.cheap) != len(w.features):
            log.warning("camera %s: no one-step calibration, dynamic steps off: the window has "
                        "%d frames with one-step features of %d", self.name, len(w.cheap),
                        len(w.features))
            return cal
        try:
            cal.with_cheap(self._fit_head(w, np.stack(w.cheap), self.cheap))
        except Exception as e:  # noqa: BLE001 - the full head alone still scores
            log.warning("camera %s: no one-step calibration, dynamic steps off: %s", self.name, e)
        return cal

    def _fit_head(self, w: Collection, features: np.ndarray, bundle: Bundle) -> Calibration:
        c = self.config.calibration
        times = np.asarray(w.times) - w.times[0]
        # The rate frames were actually scored at (a busy CPU falls short of the fps cap).
        fps = (len(times) - 1) / times[-1] if times[-1] > 0 else (self.cfg.fps or 1.0)
        density = c.density if c.density != "auto" else bundle.default_density
        cal = fit_calibration(
            self.name, features, self.grid, bundle.identity(),
            bundle.label, density=density, holdout=c.holdout,
            false_alarms_per_hour=c.false_alarms_per_hour, fps=round(fps, 3),
            trigger=self.config.alerts.trigger_frames, window=self.config.alerts.window_frames,
            source=self.source.spec.describe(),  # URL passwords masked
            seconds=w.scene_seconds, times=times,
            dropped=self.source.stats()["dropped"] - w.dropped_before,
            passing=self._passing(), still=self._still_flags(w))
        if w.noise:  # the sensor noise change gating measures change against
            cal.data["noise"] = {"level": round(float(np.median(w.noise)), 3),
                                 "frame_pairs": len(w.noise)}
        return cal

    def _still_flags(self, w: Collection) -> np.ndarray | None:
        """The window's still-content flags (passing: ignore), one row per frame."""
        if self._passing() is None or len(w.still) != len(w.features):
            return None
        return np.stack(w.still)

    def _score(self, frame: Frame, features: np.ndarray, maps: np.ndarray,
               tile_scores: np.ndarray | None = None) -> FrameResult:
        if tile_scores is None:
            tile_scores = self.calibration.tile_scores(features)
        raw = tile_scores
        if self._still is not None:  # passing: ignore: what the heatmap lights is what may alert
            tile_scores = still_gated(tile_scores, self._still)
        score, tile = self.calibration.frame_score(tile_scores)
        score = min(score, SCORE_CEILING)
        self._last_score = score
        latency_ms = (time.monotonic() - frame.monotonic) * 1000.0  # frame.time may be scene time
        self._latency_ms = (self._latency_ms + [latency_ms])[-LATENCY_SAMPLES:]
        col, row = self.grid.position(tile)
        events = self.tracker.update(frame.time, score, self.threshold, [col, row], frame.index)
        if self._still is not None:
            events = [self._background_end(e, raw) for e in events]
        self.alert_frames.add(features, events)
        p_normal = self.calibration.p_normal(score)
        self._last_p_normal = p_normal
        extra = {"latency_ms": round(latency_ms, 1), "labels": list(frame.labels),
                 "p_normal": _sig(p_normal)}
        alerts = [AlertMessage(e, extra, self._attachments(e, frame, tile_scores, maps))
                  for e in events]
        return FrameResult(latency_ms, alerts, self._score_payload(frame, score, [col, row],
                                                                   tile_scores, latency_ms,
                                                                   p_normal))

    def _background_end(self, event: AlertEvent, raw: np.ndarray) -> AlertEvent:
        """passing: ignore: an alert that ends while its peak tile still scores over the
        threshold ended because what stayed became background, not because it left."""
        if event.state != "end" or event.reason != "quiet" or event.peak_tile is None:
            return event
        col, row = event.peak_tile
        if raw[row * self.grid.cols + col] <= self.threshold:
            return event
        return dataclasses.replace(event, reason="quiet: what stayed there is background now "
                                   "(passing: ignore, stillness.background_s)")

    def _attachments(self, event: AlertEvent, frame: Frame, tile_scores: np.ndarray,
                     maps: np.ndarray) -> dict[str, bytes]:
        if event.state not in ("start", "update"):
            return {}
        out = {}
        if self.config.alerts.snapshot:
            out["snapshot.jpg"] = encode_jpeg(frame.image)
        if self.config.alerts.heatmap:
            out["heatmap.png"] = encode_png(heatmap_image(self.grid, tile_scores, maps,
                                                          self.threshold))
        if self.config.alerts.overlay:
            out["overlay.jpg"] = encode_jpeg(overlay_image(self.grid, frame.image, tile_scores,
                                                           maps, self.threshold))
        return out

    def _score_payload(self, frame: Frame, score: float, tile: list, tile_scores: np.ndarray,
                       latency_ms: float, p_normal: float | None) -> dict | None:
        rate = self.config.publisher.score_rate_hz
        now = time.monotonic()
        if not rate or now - self._last_score_sent < 1.0 / rate:
            return None
        self._last_score_sent = now
        return {"score": round(score, 3), "threshold": round(self.threshold, 3),
                "p_normal": _sig(p_normal), "tile": tile,
                "frame": frame.index, "latency_ms": round(latency_ms, 1),
                "tiles": [round(float(s), 2) if np.isfinite(s) else None for s in tile_scores],
                "grid": [self.grid.cols, self.grid.rows]}

    # ------------------------------------------------------------------ reload
    def unchanged_by(self, cfg: CameraConfig, new: Config) -> bool:
        """Whether a reloaded config leaves this camera as it is (then it keeps running)."""
        old = self.config
        return (self.cfg == cfg and not self.source.exhausted()  # an ended clip plays again
                and new.capture == old.capture and new.alerts == old.alerts
                and new.calibration == old.calibration and new.stillness == old.stillness
                and cfg.calibration_path(new) == self.calibration_path)

    def reload(self, cfg: CameraConfig, config: Config, plan: CalibrationPlan) -> None:
        """The same camera, with its calibration file read again (an edited threshold, or a
        new `pathwatch calibrate`). A file that cannot be used changes nothing: the calibration
        in use (or the collection under way) goes on."""
        self.cfg, self.config, self.plan = cfg, config, plan
        path = self.calibration_path
        if self.lifecycle is Lifecycle.REFUSED:
            self.grid = None  # checked against the grid with the next frame
            self._read_calibration()
            return
        if self.lifecycle is Lifecycle.FITTING:
            return  # the fit under way decides; a reload after it reads the file again
        if self.collecting:
            # Only a file written since the collection began (`pathwatch calibrate`) ends it.
            fresh = (path.exists() and path.stat().st_mtime > self._collection.started
                     and not self._ignores_saved_file())
            if not fresh:
                return
        elif not path.exists():
            log.warning("camera %s: %s is gone; keeping the calibration in use", self.name, path)
            return
        try:
            cal = Calibration.load(path)
            if self.grid is not None:
                cal.check(self.bundle.identity(), self.grid, path, self._passing())
        except CalibrationError as e:
            log.error("camera %s: %s; keeping %s", self.name, e,
                      "the collection under way" if self.collecting else "the calibration in use")
            return
        self.calibration, self._collection = cal, Collection(0)
        self._calibration_mtime = _mtime(path)
        self._retarget()
        self._make_gate()
        self._make_steps()
        self._make_adaptation()
        if self.grid is None:
            self.lifecycle = Lifecycle.PENDING
            return
        self.lifecycle = Lifecycle.SCORING
        self._announce("online", f"calibration {path} reloaded, threshold {self.threshold:.2f}")

    # ------------------------------------------------------------------ reporting
    def reported_state(self, source_state: str) -> str:
        if self.lifecycle is Lifecycle.REFUSED:
            return "refused"
        if source_state != "online":
            return source_state
        if self.calibrating:
            return "calibrating"
        return "alerting" if self.tracker.active else "online"

    def stats(self) -> CameraStats:
        s = self.source.stats()
        lat = sorted(self._latency_ms)
        threshold = self.threshold
        return CameraStats(
            state=self.reported_state(s["state"]), source=s["state"],
            lifecycle=self.lifecycle.value,
            camera_fps=round(s["camera_fps"], 2),
            process_fps=round(self._processed.per_second(time.monotonic()), 2),
            skipped=s["skipped"], dropped=s["dropped"],
            skipped_fps=round(max(0.0, s["camera_fps"] - s["delivered_fps"]), 2),
            reconnects=s["reconnects"],
            score=None if self._last_score is None else round(self._last_score, 3),
            p_normal=_sig(self._last_p_normal),
            threshold=round(threshold, 3) if math.isfinite(threshold) else None,
            latency_p50_ms=round(lat[len(lat) // 2], 1) if lat else None,
            latency_p99_ms=round(lat[int(len(lat) * 0.99)], 1) if lat else None,
            refused=self.refused,
            tiles_sent=None if self.gate is None or self.gate.share_sent() is None
            else round(self.gate.share_sent(), 3),
            tiles_escalated=None if self.steps is None or self.steps.share_escalated() is None
            else round(self.steps.share_escalated(), 3))


def _mtime(path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _sig(x: float | None) -> float | None:
    """Three significant digits: a probability of 1e-9 must not round to 0."""
    return None if x is None else float(f"{x:.3g}")

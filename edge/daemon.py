"""The daemon: cameras -> tiles -> one backend call -> scores -> alerts, journal, ZeroMQ.

One frame loop on the main thread. Capture runs in one thread per camera (edge.sources), so a
slow or dead camera never holds the loop; each pass takes the newest frame of every camera
that has one, batches all their tiles into a single backend call, and scores each camera
against its calibration. A camera without calibration collects normal frames first (auto
calibration, announced on its status topic) or is refused with a clear message.

Signals: SIGTERM/SIGINT stop capture, end open alerts, flush the journal, publish `offline`
and exit 0; SIGHUP reloads the config and the calibrations without closing the sockets
(unchanged cameras keep running and only read their calibration again).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .alerts import AlertPolicy, AlertTracker
from .backends import Backend, load_backend
from .bundle import Bundle
from .calibration import MIN_CALIBRATION_FRAMES, Calibration, CalibrationError, fit_calibration
from .config import CameraConfig, Config, load_config
from .journal import Journal
from .publisher import AlertBus, Publisher, ReplayServer, encode_jpeg, encode_png
from .sources import CameraSource, Frame
from .tiles import TileGrid, heatmap_image

log = logging.getLogger("pathwatch")
JOURNAL_PRUNE_INTERVAL_S = 3600.0
CAMERA_STOP_TIMEOUT_S = 2.0  # at shutdown or reload, the wait for all capture threads together


class DaemonError(RuntimeError):
    """Start-up cannot go on (no bundle, sockets in use, ...); one line for the user."""


@dataclass
class Rate:
    """Events per second over a sliding window (for process fps and the like)."""

    window_s: float = 5.0
    times: list[float] = field(default_factory=list)

    def tick(self, t: float) -> None:
        self.times.append(t)
        cutoff = t - self.window_s
        while self.times and self.times[0] < cutoff:
            self.times.pop(0)

    def per_second(self, now: float) -> float:
        recent = [x for x in self.times if x >= now - self.window_s]
        return len(recent) / self.window_s if recent else 0.0


class CameraRuntime:
    """Everything the loop keeps per camera."""

    def __init__(self, cfg: CameraConfig, config: Config, source: CameraSource, policy: AlertPolicy):
        self.cfg, self.config, self.source = cfg, config, source
        self.tracker = AlertTracker(cfg.name, policy)
        self.grid: TileGrid | None = None
        self.calibration: Calibration | None = None
        self.collecting: list[np.ndarray] | None = None  # features while calibrating
        self.collect_started = 0.0
        self.refused: str | None = None
        self.processed = Rate()
        self.last_score_sent = 0.0
        self.last_score: float | None = None
        self.latency_ms: list[float] = []

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def threshold(self) -> float:
        if self.cfg.threshold is not None:
            return float(self.cfg.threshold)
        return self.calibration.threshold if self.calibration else float("inf")

    @property
    def calibration_path(self) -> Path:
        return self.cfg.calibration_path(self.config)


def resolve_bundle(config: Config, say: Callable[[str], None]) -> Bundle:
    """`default` means the bundled model, exported into the cache directory on first use."""
    if config.model.bundle != "default":
        return Bundle.load(config.model.bundle)
    from .models import default_bundle

    return default_bundle(config.cache_path(), say)


class Daemon:
    def __init__(self, config: Config, config_path: str | Path | None = None, *,
                 only: list[str] | None = None, calibrate_only: bool = False,
                 recalibrate: bool = False, calibration_frames: int | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 notify: Callable[[str], None] | None = None,
                 overrides: Callable[[Config], None] | None = None):
        self.config, self.config_path = config, config_path
        self.only, self.calibrate_only, self.recalibrate = only, calibrate_only, recalibrate
        self.frames_asked = calibration_frames  # calibrate --frames; else the config's count
        self.calibration_frames = calibration_frames or config.calibration.frames
        self.on_progress = on_progress
        self.notify = notify or (lambda state: None)  # systemd readiness/watchdog hook
        self.overrides = overrides  # command-line settings, re-applied to a reloaded config
        self.recalibrated: set[str] = set()  # cameras calibrated anew by this process
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.cameras: dict[str, CameraRuntime] = {}
        self.started = time.time()
        self.frames_processed = 0
        self.backend: Backend | None = None
        self.journal: Journal | None = None
        self.bus: AlertBus | None = None
        self.replay: ReplayServer | None = None
        self.publisher: Publisher | None = None
        self.metrics = None
        self.curve = None
        self._last_heartbeat = 0.0
        self._last_prune = 0.0

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        cfg = self.config
        self.bundle = resolve_bundle(cfg, log.info)
        log.info("bundle %s (%s)", self.bundle.root, self.bundle.label)
        self.backend = load_backend(self.bundle, cfg.model.backend, max_batch=cfg.model.max_batch,
                                    threads=cfg.model.threads, cache_dir=cfg.cache_path() / "engines",
                                    precision=cfg.model.precision,
                                    rebuild_engines=cfg.model.rebuild_engines, log=log.info)
        if not self.calibrate_only:
            self.journal = Journal(cfg.journal_path())
            self._prune_journal()
            secure = self._curve_server()
            self.publisher = Publisher(cfg.publisher.bind, sndhwm=cfg.publisher.sndhwm, secure=secure)
            self.replay = ReplayServer(cfg.publisher.replay_bind, cfg.journal_path(), secure=secure)
            self.replay.start()
            self.bus = AlertBus(self.journal, self.publisher)
            log.info("publishing on %s, replay on %s, journal %s", self.publisher.endpoint,
                     self.replay.endpoint, cfg.journal_path())
            if cfg.metrics.enabled:
                from .metrics import Metrics
                self.metrics = Metrics()
                port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
                log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, port)
        self._open_cameras()
        if not self.cameras:
            raise DaemonError("no enabled camera to run; check `cameras` in the config")
        self.notify("READY=1")

    def _curve_server(self):
        sec = self.config.security
        if not sec.curve:
            return None
        import zmq

        from .security import CurveServer
        self.curve = CurveServer(zmq.Context.instance(), sec.server_key, sec.authorized_clients)
        log.info("CURVE on: clients must hold a key from %s", sec.authorized_clients)
        return self.curve.apply

    def _open_cameras(self) -> None:
        self._start_cameras(self._build_cameras(self.config))

    def _build_cameras(self, cfg: Config) -> dict[str, CameraRuntime]:
        """Every enabled camera's runtime, nothing started yet: a source that can never work
        raises SourceError here, before anything running is touched."""
        policy = self._policy(cfg)
        cameras = {}
        for cam in cfg.cameras:
            if not cam.enabled or (self.only and cam.name not in self.only):
                continue
            source = CameraSource(
                cam.name, cam.source, fps=cam.fps, queue_size=cfg.capture.queue_size,
                open_timeout_s=cfg.capture.open_timeout_s, read_timeout_s=cfg.capture.read_timeout_s,
                reconnect_after_s=cfg.capture.reconnect_after_s,
                backoff_max_s=cfg.capture.backoff_max_s, on_end=cam.on_end,
                realtime=cam.realtime, on_status=self._on_source_status)
            cameras[cam.name] = CameraRuntime(cam, cfg, source, policy)
        return cameras

    def _start_cameras(self, cameras: dict[str, CameraRuntime]) -> None:
        self.cameras.update(cameras)
        for runtime in cameras.values():
            self._load_calibration(runtime)
            runtime.source.start()

    def _policy(self, cfg: Config | None = None) -> AlertPolicy:
        a = (cfg or self.config).alerts
        return AlertPolicy(a.trigger_frames, a.window_frames, a.update_interval_s, a.quiet_s,
                           a.cooldown_s)

    def _on_source_status(self, name: str, state: str, detail: str = "") -> None:
        cam = self.cameras.get(name)
        if state == "online" and cam is not None and cam.collecting is not None:
            # Frames flow, but no alert can come before the calibration is done: say so.
            state, detail = "calibrating", f"{detail}; collecting {self.calibration_frames} " \
                "normal frames"
        log.info("camera %s: %s%s", name, state, f" ({detail})" if detail else "")
        if self.bus is not None:
            self.bus.status(name, state, detail)

    # ------------------------------------------------------------------ calibration
    def _load_calibration(self, cam: CameraRuntime) -> None:
        cam.calibration, cam.collecting, cam.refused = None, None, None
        path = cam.calibration_path
        # --recalibrate replaces each camera's file once; a reload after that keeps the new one.
        if path.exists() and not (self.recalibrate and cam.name not in self.recalibrated):
            try:
                cal = Calibration.load(path)
                cam.calibration = cal  # checked against the grid once the first frame shows it
                return
            except CalibrationError as e:
                reason = str(e)
        else:
            reason = f"no calibration at {path}"
        if self.calibrate_only or cam.cfg.wants_auto_calibration(self.config):
            self._begin_collecting(cam, reason)
        else:
            cam.refused = (f"{reason}; run `pathwatch calibrate --camera {cam.name}` or set "
                           "calibration.auto: true")
            log.error("camera %s refused: %s", cam.name, cam.refused)

    def _begin_collecting(self, cam: CameraRuntime, reason: str) -> None:
        cam.calibration, cam.collecting, cam.collect_started = None, [], time.time()
        self._on_source_status(cam.name, "calibrating", f"{reason}; collecting {self.calibration_frames} "
                     "normal frames")

    def _finish_calibration(self, cam: CameraRuntime) -> None:
        """Fit on the collected frames; a fit or a write that fails refuses the camera."""
        try:
            self._fit_calibration(cam)
        except CalibrationError as e:
            self._calibration_failed(cam, str(e))

    def _calibration_failed(self, cam: CameraRuntime, reason: str) -> None:
        cam.refused = reason
        log.error("camera %s: calibration failed: %s", cam.name, reason)

    def _fit_calibration(self, cam: CameraRuntime) -> None:
        c = self.config.calibration
        features = np.stack(cam.collecting)
        fps = cam.cfg.fps or max(cam.processed.per_second(time.monotonic()), 1.0)
        density = c.density if c.density != "auto" else self.bundle.manifest["defaults"]["density"]
        cal = fit_calibration(cam.name, features, cam.grid, self.bundle.identity(), self.bundle.label,
                              density=density, holdout=c.holdout,
                              false_alarms_per_hour=c.false_alarms_per_hour, fps=fps,
                              trigger=self.config.alerts.trigger_frames,
                              window=self.config.alerts.window_frames,
                              source=cam.source.spec.describe(),  # URL passwords masked
                              seconds=time.time() - cam.collect_started)
        try:
            cal.save(cam.calibration_path)
        except OSError as e:
            raise CalibrationError(f"cannot write {cam.calibration_path} ({e.strerror or e}); set "
                                   f"cameras[].calibration or state_dir to a writable "
                                   "path") from None
        cam.calibration, cam.collecting = cal, None
        self.recalibrated.add(cam.name)
        self._on_source_status(cam.name, "online", f"calibrated on {len(features)} frames, threshold "
                     f"{cal.threshold:.2f} ({cal.data['threshold']['method']}); "
                     f"saved {cam.calibration_path}")

    def _ensure_grid(self, cam: CameraRuntime, frame: Frame) -> bool:
        h, w = frame.image.shape[:2]
        if cam.grid is not None and (cam.grid.frame_w, cam.grid.frame_h) == (w, h):
            return True
        size = self.bundle.image_size[0]
        cam.grid = TileGrid(w, h, size, cam.cfg.tiles[0], cam.cfg.tiles[1],
                            tuple(cam.cfg.roi), [tuple(r) for r in cam.cfg.ignore],
                            cam.cfg.exposure)
        if cam.calibration is not None:
            try:
                cam.calibration.check(self.bundle.identity(), cam.grid, cam.calibration_path)
            except CalibrationError as e:
                self._end_alert(cam, "calibration no longer fits")
                if self.calibrate_only or cam.cfg.wants_auto_calibration(self.config):
                    self._begin_collecting(cam, str(e))
                else:
                    cam.refused = str(e)
                    log.error("camera %s refused: %s", cam.name, e)
                    return False
            else:
                self._on_source_status(cam.name, "online", f"calibration {cam.calibration_path}, threshold "
                             f"{cam.threshold:.2f}")
        return True

    # ------------------------------------------------------------------ the frame loop
    def run(self) -> int:
        while not self.stop_event.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            batch = self._gather()
            if batch:
                self._process(batch)
            else:
                time.sleep(0.005)
            self._heartbeat()
            # Pinged per pass, not per frame: cameras that are all offline are not a hang, but
            # a backend call or a loop that never returns is.
            self.notify("WATCHDOG=1")
            self._calibrate_on_what_came()
            if self.calibrate_only and all(c.calibration or c.refused for c in self.cameras.values()):
                break
        return 0

    def _calibrate_on_what_came(self) -> None:
        """A clip that ends (on_end: stop) while its camera calibrates: fit on the frames it
        gave, or refuse with the count, rather than wait for frames that never come."""
        for cam in self.cameras.values():
            if cam.collecting is None or cam.refused or not cam.source.exhausted():
                continue
            n = len(cam.collecting)
            if n < MIN_CALIBRATION_FRAMES:
                self._calibration_failed(
                    cam, f"the source ended after {n} processed frames; calibration needs at "
                    f"least {MIN_CALIBRATION_FRAMES} (use a longer clip, on_end: loop, or a "
                    "higher fps cap)")
                continue
            log.warning("camera %s: the source ended; calibrating on the %d frames it gave",
                        cam.name, n)
            self._finish_calibration(cam)

    def _gather(self) -> list[tuple[CameraRuntime, Frame]]:
        batch = []
        for cam in self.cameras.values():
            if cam.refused:
                continue
            frame = cam.source.latest(timeout=0)
            if frame is not None and self._ensure_grid(cam, frame):
                batch.append((cam, frame))
        return batch

    def _process(self, batch: list[tuple[CameraRuntime, Frame]]) -> None:
        tiles = [cam.grid.cut(frame.image) for cam, frame in batch]
        t0 = time.perf_counter()
        feats, maps = self.backend(np.concatenate(tiles))
        if self.metrics is not None:
            self.metrics.inference.observe(time.perf_counter() - t0)
            self.metrics.tiles.inc(sum(len(t) for t in tiles))
        offset = 0
        now = time.monotonic()
        for (cam, frame), t in zip(batch, tiles):
            f, m = feats[offset:offset + len(t)], maps[offset:offset + len(t)]
            offset += len(t)
            cam.processed.tick(now)
            self.frames_processed += 1
            if self.metrics is not None:
                self.metrics.frames.labels(cam.name).inc()
            if cam.collecting is not None:
                self._collect(cam, f)
            elif cam.calibration is not None:
                self._score(cam, frame, f, m)

    def _collect(self, cam: CameraRuntime, features: np.ndarray) -> None:
        cam.collecting.append(features)
        if self.on_progress:
            self.on_progress(cam.name, len(cam.collecting), self.calibration_frames)
        if len(cam.collecting) >= self.calibration_frames:
            self._finish_calibration(cam)

    def _score(self, cam: CameraRuntime, frame: Frame, features: np.ndarray, maps: np.ndarray) -> None:
        tile_scores = cam.calibration.tile_scores(features)
        score, tile = cam.calibration.frame_score(tile_scores)
        score = min(score, 1e6)  # keep messages valid JSON even for a non-finite likelihood
        cam.last_score = score
        latency_ms = (time.time() - frame.time) * 1000.0
        cam.latency_ms = (cam.latency_ms + [latency_ms])[-256:]
        if self.metrics is not None:
            self.metrics.frame_latency.labels(cam.name).observe(latency_ms / 1000.0)
        col, row = cam.grid.position(tile)
        events = cam.tracker.update(frame.time, score, cam.threshold, [col, row], frame.index)
        if self.bus is None:
            return
        for event in events:
            attachments = {}
            if event.state == "start" or event.state == "update":
                if self.config.alerts.snapshot:
                    attachments["snapshot.jpg"] = encode_jpeg(frame.image)
                if self.config.alerts.heatmap:
                    attachments["heatmap.png"] = encode_png(
                        heatmap_image(cam.grid, tile_scores, maps, cam.threshold))
            if self.metrics is not None:
                self.metrics.alerts.labels(cam.name, event.state).inc()
            header = self.bus.alert(event, {"latency_ms": round(latency_ms, 1),
                                            "labels": list(frame.labels)}, attachments)
            log.warning("alert %s %s camera=%s score=%.2f peak=%.2f tile=%s seq=%s", event.state,
                        event.alert_id, cam.name, event.score, event.peak_score, event.peak_tile,
                        header.get("seq"))
        rate = self.config.publisher.score_rate_hz
        if rate and time.monotonic() - cam.last_score_sent >= 1.0 / rate:
            cam.last_score_sent = time.monotonic()
            self.bus.score(cam.name, {"score": round(score, 3), "threshold": round(cam.threshold, 3),
                                      "tile": [col, row], "frame": frame.index,
                                      "latency_ms": round(latency_ms, 1),
                                      "tiles": [round(float(s), 2) if np.isfinite(s) else None
                                                for s in tile_scores],
                                      "grid": [cam.grid.cols, cam.grid.rows]})

    def _prune_journal(self) -> None:
        """Retention at start-up and then hourly, so a daemon that runs for months stays
        within journal.max_age_days and journal.max_events."""
        j = self.config.journal
        removed = self.journal.prune(max_age_s=j.max_age_days * 86400.0, max_events=j.max_events)
        self._last_prune = time.monotonic()
        if removed:
            log.info("journal: pruned %d old events", removed)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.journal is not None and now - self._last_prune > JOURNAL_PRUNE_INTERVAL_S:
            self._prune_journal()
        if self.bus is None or now - self._last_heartbeat < self.config.publisher.heartbeat_s:
            return
        self._last_heartbeat = now
        states = self.camera_states()
        self.bus.heartbeat({"uptime_s": round(time.time() - self.started, 1),
                            "frames": self.frames_processed, "cameras": states})
        self.bus.publisher.send("stats", {"schema": 1, "kind": "stats", "camera": None,
                                          "backend": self.backend.describe(), "cameras": states})
        if self.metrics is not None:
            for name, st in states.items():
                self.metrics.update_camera(name, st, st.get("skipped_fps", 0.0))

    def camera_states(self) -> dict:
        now = time.monotonic()
        out = {}
        for name, cam in self.cameras.items():
            stats = cam.source.stats()
            state = ("refused" if cam.refused else "calibrating" if cam.collecting is not None
                     else "alerting" if cam.tracker.active else stats.get("state", "unknown"))
            lat = sorted(cam.latency_ms)
            out[name] = {"state": state, "camera_fps": round(stats.get("camera_fps", 0.0), 2),
                         "process_fps": round(cam.processed.per_second(now), 2),
                         "skipped": stats.get("skipped", 0), "dropped": stats.get("dropped", 0),
                         "skipped_fps": round(max(0.0, stats.get("camera_fps", 0.0)
                                                  - stats.get("delivered_fps", 0.0)), 2),
                         "reconnects": stats.get("reconnects", 0),
                         "score": None if cam.last_score is None else round(cam.last_score, 3),
                         "threshold": None if not np.isfinite(cam.threshold) else round(cam.threshold, 3),
                         "latency_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
                         "latency_p99_ms": round(lat[int(len(lat) * 0.99)], 1) if lat else None,
                         "refused": cam.refused}
        return out

    # ------------------------------------------------------------------ lifecycle
    def reload(self) -> None:
        """SIGHUP: new config and calibrations; the sockets (and their subscribers) stay."""
        if self.config_path is None:
            log.info("reload requested, but the daemon runs on a built-in config; nothing to do")
            return
        try:
            new = load_config(self.config_path, self.only or True)
            if self.overrides is not None:
                self.overrides(new)  # --bundle/--backend given at start still hold
            cameras = self._build_cameras(new)
        except ValueError as e:  # ConfigError, SourceError: nothing running was touched
            log.error("reload failed, keeping the running config: %s", e)
            return
        if not cameras:
            log.error("reload failed, keeping the running config: the new config has no "
                      "enabled camera")
            return
        if (new.publisher.bind, new.publisher.replay_bind) != \
                (self.config.publisher.bind, self.config.publisher.replay_bind):
            log.warning("publisher binds changed; they take effect at the next restart")
        # A camera whose settings did not change keeps running (its capture, open alert and
        # scene go on); only its calibration file is read again. The others restart.
        keep = [n for n, cam in self.cameras.items() if n in cameras
                and self._unchanged(cam, cameras[n].cfg, new)]
        log.info("reloading config %s (%d of %d cameras unchanged)", self.config_path,
                 len(keep), len(cameras))
        self._close_cameras("reload", [n for n in self.cameras if n not in keep])
        self.config = new
        self.calibration_frames = self.frames_asked or new.calibration.frames
        for name in keep:
            self._refresh(self.cameras[name], cameras[name].cfg)
        self._start_cameras({n: c for n, c in cameras.items() if n not in keep})
        self.cameras = {n: self.cameras[n] for n in cameras}  # in the new file's order

    def _unchanged(self, cam: CameraRuntime, cfg: CameraConfig, new: Config) -> bool:
        old = self.config
        return (cam.cfg == cfg and not cam.source.exhausted()  # an ended clip plays again
                and new.capture == old.capture and new.alerts == old.alerts
                and new.calibration == old.calibration
                and cfg.calibration_path(new) == cam.calibration_path)

    def _refresh(self, cam: CameraRuntime, cfg: CameraConfig) -> None:
        """Reload: the same camera, with its calibration file read again (an edited
        threshold, or a new `pathwatch calibrate`). A file that cannot be used changes
        nothing: the calibration in use (or the collection under way) goes on."""
        cam.cfg, cam.config = cfg, self.config
        path = cam.calibration_path
        if cam.refused:
            self._load_calibration(cam)  # a calibration may be there now
            cam.grid = None  # checked against the grid with the next frame
            return
        if cam.collecting is not None:
            # Only a file written since the collection began (`pathwatch calibrate`) ends it.
            fresh = path.exists() and path.stat().st_mtime > cam.collect_started and \
                not (self.recalibrate and cam.name not in self.recalibrated)
            if not fresh:
                return
        elif not path.exists():
            log.warning("camera %s: %s is gone; keeping the calibration in use", cam.name, path)
            return
        try:
            cal = Calibration.load(path)
            if cam.grid is not None:
                cal.check(self.bundle.identity(), cam.grid, path)
        except CalibrationError as e:
            log.error("camera %s: %s; keeping %s", cam.name, e,
                      "the collection under way" if cam.collecting is not None else
                      "the calibration in use")
            return
        cam.calibration, cam.collecting = cal, None
        if cam.grid is not None:
            self._on_source_status(cam.name, "online", f"calibration {path} reloaded, "
                                   f"threshold {cam.threshold:.2f}")

    def _end_alert(self, cam: CameraRuntime, reason: str) -> None:
        """An open alert on a camera that stops scoring gets its `end` now."""
        event = cam.tracker.close(time.time(), reason)
        if event is not None and self.bus is not None:
            self.bus.alert(event, {"latency_ms": None, "labels": []}, {})

    def _close_cameras(self, reason: str, names: list[str] | None = None) -> None:
        # Every camera is told at once and all share one wait, so stuck cameras cost one
        # timeout together, not one each (systemd's TimeoutStopSec stays far away).
        closing = [self.cameras[n] for n in (self.cameras if names is None else names)]
        for cam in closing:
            cam.source.request_stop()
        deadline = time.monotonic() + CAMERA_STOP_TIMEOUT_S
        for cam in closing:
            self._end_alert(cam, reason)
            # publishes offline with the reason, once
            cam.source.stop(timeout=max(0.0, deadline - time.monotonic()), reason=reason)
        for cam in closing:
            self.cameras.pop(cam.name, None)

    def stop(self) -> None:
        self.notify("STOPPING=1")
        self._close_cameras("shutdown")
        if self.replay is not None:
            self.replay.stop()
        if self.publisher is not None:
            self.publisher.close()
        if self.journal is not None:
            self.journal.close()
        if self.backend is not None:
            self.backend.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.curve is not None:
            self.curve.stop()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

"""The daemon, a composition root: it builds the parts in order, runs the one frame loop,
reloads, and stops in reverse order. A camera's own life is edge.camera's.

The frame loop runs on the main thread; capture runs in one thread per camera, so a slow or
dead camera never holds it. Each pass takes the newest frame of every camera that has one,
batches all their tiles into one backend call, and hands each camera its features; what the
cameras return (alerts, scores) is journaled and published here.

Signals: SIGTERM/SIGINT stop capture, end open alerts, flush the journal, publish `offline`
and exit 0; SIGHUP reloads the config and the calibrations without closing the sockets
(unchanged cameras keep running and only read their calibration again).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .alerts import AlertEvent, left_open
from .backends import Backend, BackendError, BackendUnavailable, load_backend
from .bundle import BundleError
from .camera import AlertMessage, CalibrationPlan, Camera, CameraStats, FrameResult
from .config import Config, load_config
from .journal import Journal
from .metrics import NoMetrics
from .models import load_bundle
from .publisher import LOOPBACK_HOSTS, AlertBus, NoBus, Publisher, ReplayServer
from .sources import Frame

log = logging.getLogger("pathwatch")
JOURNAL_PRUNE_INTERVAL_S = 3600.0
CAMERA_STOP_TIMEOUT_S = 2.0  # at shutdown or reload, the wait for all capture threads together


class DaemonError(RuntimeError):
    """Start-up cannot go on (no bundle, sockets in use, ...); one line for the user."""


class Daemon:
    def __init__(self, config: Config, config_path: str | Path | None = None, *,
                 only: list[str] | None = None, calibrate_only: bool = False,
                 recalibrate: bool = False, calibration_frames: int | None = None,
                 calibration_seconds: float | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 notify: Callable[[str], None] | None = None,
                 overrides: Callable[[Config], None] | None = None):
        self.config, self.config_path = config, config_path
        self.only, self.calibrate_only, self.recalibrate = only, calibrate_only, recalibrate
        self.window_asked = (calibration_seconds, calibration_frames)  # calibrate --seconds/--frames
        self.on_progress = on_progress or (lambda name, n, total: None)
        self.notify = notify or (lambda state: None)  # systemd readiness/watchdog hook
        self.overrides = overrides  # command-line settings, re-applied to a reloaded config
        self.recalibrated: set[str] = set()  # cameras calibrated anew by this process
        self.stop_event, self.reload_requested = threading.Event(), threading.Event()
        self.cameras: dict[str, Camera] = {}
        self.started = time.time()
        self.frames_processed = 0
        self._no_tiles = None  # empty features and maps of the backend's shapes
        # dynamic steps' one-step head and its backend (both set only when it loaded)
        self.cheap = self.cheap_backend = None
        self.frames_unscored = 0  # taken from a camera, dropped: the backend was unavailable
        self._last_unavailable_log = -float("inf")
        self.bus = NoBus()
        self.metrics = NoMetrics()
        self._curve = self._replay = None  # set by _open_bus when CURVE is on
        self._parts = contextlib.ExitStack()  # what start() built, closed in reverse by stop()
        self._last_heartbeat = self._last_prune = 0.0

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        cfg = self.config
        self.bundle = load_bundle(cfg.model.bundle, cfg.cache_path(), log.info)
        log.info("bundle %s (%s)", self.bundle.root, self.bundle.label)
        self.backend = load_backend(self.bundle, cfg.model.backend, max_batch=cfg.model.max_batch,
                                    threads=cfg.model.threads, cache_dir=cfg.cache_path() / "engines",
                                    precision=cfg.model.precision,
                                    rebuild_engines=cfg.model.rebuild_engines, log=log.info,
                                    triton=cfg.model.triton)
        self._parts.callback(self.backend.close)
        self.cheap_backend = self._load_cheap_head(cfg)
        if not self.calibrate_only:
            self.bus = self._open_bus()
            self._close_left_open()
            self._prune_journal()
            self.metrics = self._open_metrics()
        self._start_cameras(self._build_cameras(cfg))
        if not self.cameras:
            raise DaemonError("no enabled camera to run; check `cameras` in the config")
        self.notify("READY=1")

    def _load_cheap_head(self, cfg: Config) -> Backend | None:
        """The one-step head's backend for dynamic steps (the same kind as the main one), or
        None, with the reason, when they stay off."""
        if not cfg.dynamic_steps.enabled:
            return None
        if self.backend.name == "triton":
            log.info("dynamic steps off: the Triton server serves the full graph only")
            return None
        try:
            head = self.bundle.cheap_head()
        except BundleError as e:
            log.warning("dynamic steps off: %s", e)
            return None
        if head is None:
            log.info("dynamic steps off: %s has no one-step head (`pathwatch export` writes one)",
                     self.bundle.root)
            return None
        m = cfg.model
        try:
            backend = load_backend(head, self.backend.name, max_batch=m.max_batch,
                                   threads=m.threads, cache_dir=cfg.cache_path() / "engines",
                                   precision=m.precision, rebuild_engines=m.rebuild_engines,
                                   log=log.info)
        except (BackendError, OSError) as e:  # e.g. no TensorRT engine for the one-step graph
            log.warning("dynamic steps off: the one-step head cannot run on %s: %s",
                        self.backend.name, e)
            return None
        self._parts.callback(backend.close)
        self.cheap = head
        log.info("dynamic steps on: %s on every tile, the full schedule where its score reaches "
                 "%.2f of its threshold", head.label, cfg.dynamic_steps.margin)
        return backend

    def _open_bus(self) -> AlertBus:
        cfg = self.config
        journal = Journal(cfg.journal_path())
        self._parts.callback(journal.close)
        secure = self._curve_server()
        publisher = Publisher(cfg.publisher.bind, sndhwm=cfg.publisher.sndhwm, secure=secure)
        self._parts.callback(publisher.close)
        replay = ReplayServer(cfg.publisher.replay_bind, cfg.journal_path(), secure=secure)
        replay.start()
        self._parts.callback(replay.stop)
        self._replay = replay
        log.info("publishing on %s, replay on %s, journal %s", publisher.endpoint,
                 replay.endpoint, cfg.journal_path())
        return AlertBus(journal, publisher)

    def _close_left_open(self) -> None:
        """Alerts a killed or crashed run left open get their `end` now, with that reason,
        so no subscriber waits for ever on an alert no one will close."""
        for header in self.bus.journal.open_alerts():
            try:
                event = left_open(header, time.time())
            except (KeyError, TypeError, ValueError) as e:
                log.warning("journal: alert %s left open, but its header cannot be read (%s)",
                            header.get("alert_id"), e)
                continue
            self._publish_end(event)

    def _curve_server(self):
        sec = self.config.security
        if not sec.curve:
            return None
        import zmq

        from .security import CurveServer
        curve = self._curve = CurveServer(zmq.Context.instance(), sec.server_key,
                                          sec.authorized_clients)
        self._parts.callback(curve.stop)
        log.info("CURVE on: clients must hold a key from %s", sec.authorized_clients)
        return curve.apply

    def _open_metrics(self):
        m = self.config.metrics
        if not m.enabled:
            return NoMetrics()
        from .metrics import Metrics

        metrics = Metrics()
        port = metrics.serve(m.host, m.port)
        self._parts.callback(metrics.close)
        log.info("metrics on http://%s:%d/metrics", m.host, port)
        if m.host not in LOOPBACK_HOSTS:
            log.warning("metrics on %s are reachable from the network, without authentication",
                        m.host)
        return metrics

    def _plan(self, name: str, cfg: Config) -> CalibrationPlan:
        # --recalibrate replaces each camera's file once; a reload after that keeps the new one.
        seconds, frames = self.window_asked
        if seconds is None and frames is None:
            seconds, frames = cfg.calibration.seconds, cfg.calibration.frames
        return CalibrationPlan(seconds=seconds, frames=frames, collect_always=self.calibrate_only,
                               recalibrate=self.recalibrate and name not in self.recalibrated)

    def _build_cameras(self, cfg: Config) -> dict[str, Camera]:
        """Every enabled camera, nothing started yet: a source that can never work raises
        SourceError here, before anything running is touched."""
        return {cam.name: Camera(cam, cfg, self.bundle, self._plan(cam.name, cfg),
                                  lambda *status: self.bus.status(*status),
                                  cheap=self.cheap)
                for cam in cfg.cameras
                if cam.enabled and not (self.only and cam.name not in self.only)}

    def _start_cameras(self, cameras: dict[str, Camera]) -> None:
        self.cameras.update(cameras)
        for camera in cameras.values():
            camera.start()

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
            for camera in self.cameras.values():
                ended = camera.advance()  # an alert a refresh adopted as a lasting change
                if ended is not None:
                    self._publish_end(ended)
            if self.calibrate_only and not any(c.calibrating for c in self.cameras.values()):
                break
        return 0

    def _gather(self) -> list[tuple[Camera, Frame]]:
        batch = []
        for camera in self.cameras.values():
            frame, ended = camera.next_frame()
            if ended is not None:
                self._publish_end(ended)
            if frame is not None:
                batch.append((camera, frame))
        return batch

    def _process(self, batch: list[tuple[Camera, Frame]]) -> None:
        tiles = [camera.tiles(frame) for camera, frame in batch]
        cheap = self._cheap_pass(batch, tiles)  # never Triton: cannot be unavailable
        tiles = [camera.escalate(t, None if c is None else c[0])
                 for (camera, _), t, c in zip(batch, tiles, cheap)]
        count = sum(len(t) for t in tiles)
        if count == 0 and self._no_tiles is not None:  # change gating: nothing changed
            feats, maps = self._no_tiles
        else:
            t0 = time.perf_counter()
            try:
                feats, maps = self.backend(np.concatenate(tiles))
            except BackendUnavailable as e:
                self._unscored(batch, e)
                return
            self.metrics.backend_call(time.perf_counter() - t0, count)
            self._no_tiles = (feats[:0], maps[:0])
        offset = 0
        for (camera, frame), t, c in zip(batch, tiles, cheap):
            part = slice(offset, offset + len(t))
            offset += len(t)
            collecting = camera.collecting
            result = camera.observe(frame, feats[part], maps[part], c)
            self.frames_processed += 1
            if collecting:
                done, total = camera.collection_progress()
                self.on_progress(camera.name, done if camera.collecting else total, total)
            self._publish(camera, result)

    def _cheap_pass(self, batch: list[tuple[Camera, Frame]],
                    tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Dynamic steps: the one-step head on the tiles of every camera that wants it (one
        call for all of them); per camera its (features, maps), or None."""
        want = [self.cheap_backend is not None and camera.wants_cheap for camera, _ in batch]
        if not any(want):
            return [None] * len(batch)
        t0 = time.perf_counter()
        feats, maps = self.cheap_backend(np.concatenate([t for t, w in zip(tiles, want) if w]))
        self.metrics.one_step_call(time.perf_counter() - t0, len(feats))
        out, offset = [], 0
        for t, w in zip(tiles, want):
            out.append((feats[offset:offset + len(t)], maps[offset:offset + len(t)]) if w else None)
            offset += len(t) if w else 0
        return out

    def _unscored(self, batch: list[tuple[Camera, Frame]], error: Exception) -> None:
        """The backend's server is gone: the pass's frames are dropped and counted, the loop
        goes on (the backend retries with back-off), and an open alert ends with the reason,
        since no frame can end it meanwhile."""
        self.frames_unscored += len(batch)
        self.metrics.unscored(len(batch))
        for camera, _ in batch:
            ended = camera.close_alert("the backend went unavailable")
            if ended is not None:
                self._publish_end(ended)
        if time.monotonic() - self._last_unavailable_log > 10.0:
            self._last_unavailable_log = time.monotonic()
            log.warning("backend unavailable, %d frames dropped so far: %s",
                        self.frames_unscored, error)

    def _publish(self, camera: Camera, result: FrameResult) -> None:
        latency = None if result.latency_ms is None else result.latency_ms / 1000.0
        self.metrics.frame(camera.name, latency)
        for message in result.alerts:
            self._publish_alert(message)
        if result.score is not None:
            self.bus.score(camera.name, result.score)

    def _publish_alert(self, message: AlertMessage) -> None:
        event = message.event
        self.metrics.alert(event.camera, event.state)
        header = self.bus.alert(event, message.extra, message.attachments)
        log.warning("alert %s %s camera=%s score=%.2f peak=%.2f tile=%s seq=%s", event.state,
                    event.alert_id, event.camera, event.score, event.peak_score,
                    event.peak_tile, header.get("seq"))

    def _publish_end(self, event: AlertEvent) -> None:  # closed without a frame (stop, reload)
        self._publish_alert(AlertMessage(event, {"latency_ms": None, "labels": []}))

    def _prune_journal(self) -> None:
        """Retention at start-up and then hourly, so a daemon that runs for months stays
        within journal.max_age_days and journal.max_events."""
        j = self.config.journal
        removed = self.bus.prune(max_age_s=j.max_age_days * 86400.0, max_events=j.max_events)
        self._last_prune = time.monotonic()
        if removed:
            log.info("journal: pruned %d old events", removed)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_prune > JOURNAL_PRUNE_INTERVAL_S:
            self._prune_journal()
        if now - self._last_heartbeat < self.config.publisher.heartbeat_s:
            return
        self._last_heartbeat = now
        stats = self.camera_stats()
        cameras = {name: st.to_dict() for name, st in stats.items()}
        self.bus.heartbeat({"uptime_s": round(time.time() - self.started, 1),
                            "frames": self.frames_processed,
                            "frames_unscored": self.frames_unscored, "cameras": cameras})
        self.bus.stats({"backend": self.backend.describe(), "cameras": cameras})
        for name, st in stats.items():
            self.metrics.update_camera(name, st)
        self.metrics.journal(self.bus.journal_state())

    def camera_stats(self) -> dict[str, CameraStats]:
        return {name: camera.stats() for name, camera in self.cameras.items()}

    # ------------------------------------------------------------------ reload and stop
    def reload(self) -> None:
        """SIGHUP: new config and calibrations; the sockets (and their subscribers) stay."""
        if self.config_path is None:
            log.info("reload requested, but the daemon runs on a built-in config; nothing to do")
            return
        self.recalibrated |= {n for n, c in self.cameras.items() if c.calibrated_here}
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
        self._reload_keys(new)
        # A camera whose settings did not change keeps running (its capture, open alert and
        # scene go on); only its calibration file is read again. The others restart.
        keep = [n for n, camera in self.cameras.items()
                if n in cameras and camera.unchanged_by(cameras[n].cfg, new)]
        log.info("reloading config %s (%d of %d cameras unchanged)", self.config_path,
                 len(keep), len(cameras))
        self._close_cameras("reload", [n for n in self.cameras if n not in keep])
        self.config = new
        for name in keep:
            self.cameras[name].reload(cameras[name].cfg, new, self._plan(name, new))
        self._start_cameras({n: c for n, c in cameras.items() if n not in keep})
        self.cameras = {n: self.cameras[n] for n in cameras}  # in the new file's order

    def _reload_keys(self, new: Config) -> None:
        """CURVE's authorised keys follow the directory: a removed key loses its open
        connections too (the sockets are rebound; other clients reconnect by themselves)."""
        if self._curve is None or not new.security.curve:
            if new.security.curve != self.config.security.curve:
                log.warning("security.curve changed; it takes effect at the next restart")
            return
        from .security import SecurityError
        try:
            added, removed = self._curve.reload(new.security.authorized_clients)
        except SecurityError as e:
            log.error("client keys not reloaded, the previous ones still hold: %s", e)
            return
        log.info("client keys reloaded from %s: %d added, %d removed%s", self._curve.authorized,
                 added, removed, "; open connections cut" if removed else "")
        if removed:
            self.bus.publisher.rebind()
            self._replay.rebind()

    def _close_cameras(self, reason: str, names: list[str] | None = None) -> None:
        # Every camera is told at once and all share one wait, so stuck cameras cost one
        # timeout together, not one each (systemd's TimeoutStopSec stays far away).
        closing = [self.cameras[n] for n in (self.cameras if names is None else names)]
        for camera in closing:
            camera.request_stop()
        deadline = time.monotonic() + CAMERA_STOP_TIMEOUT_S
        for camera in closing:
            ended = camera.close_alert(reason)  # an open alert's end goes out before `offline`
            if ended is not None:
                self._publish_end(ended)
            camera.stop(max(0.0, deadline - time.monotonic()), reason)
        for camera in closing:
            self.cameras.pop(camera.name, None)

    def stop(self) -> None:
        self.notify("STOPPING=1")
        self._close_cameras("shutdown")
        self.bus.close()  # a last try at events kept while the journal failed
        self._parts.close()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

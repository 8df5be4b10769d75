"""Prometheus metrics: per-camera frame rates, inference latency, reconnects, alerts, scores.

A registry of our own (not the process-global default), served on its own port by
prometheus-client's HTTP server thread. Gauges that mirror capture statistics are refreshed
once per heartbeat; counters and the latency histogram are updated as things happen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR,
                               CollectorRegistry, Counter, Gauge, Histogram, start_http_server)

if TYPE_CHECKING:
    from .camera import CameraStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        cam = ["camera"]
        self.camera_fps = Gauge("pathwatch_camera_fps", "Frames per second read from the camera", cam, registry=r)
        self.process_fps = Gauge("pathwatch_process_fps", "Frames per second scored", cam, registry=r)
        self.skipped_fps = Gauge("pathwatch_skipped_fps", "Frames per second read but skipped (fps cap)", cam, registry=r)
        self.frames = Counter("pathwatch_frames_processed", "Frames scored", cam, registry=r)
        self.dropped = Counter("pathwatch_frames_dropped", "Frames dropped from the capture queue", cam, registry=r)
        self.reconnects = Counter("pathwatch_reconnects", "Camera reconnections", cam, registry=r)
        self.online = Gauge("pathwatch_camera_online", "1 when the camera's source delivers frames", cam, registry=r)
        self.score = Gauge("pathwatch_score", "Last frame score (standardised)", cam, registry=r)
        self.threshold = Gauge("pathwatch_threshold", "Alert threshold", cam, registry=r)
        self.p_normal = Gauge("pathwatch_score_p_normal", "How often a normal frame scores as "
                              "high as the last one (from calibration; 0..1)", cam, registry=r)
        self.alerts = Counter("pathwatch_alert_events", "Alert events by state", cam + ["state"], registry=r)
        self.frame_latency = Histogram("pathwatch_frame_latency_seconds", "Capture to score latency",
                                       cam, buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("pathwatch_inference_seconds", "Backend call duration (all tiles "
                                   "of a pass)", buckets=LATENCY_BUCKETS, registry=r)
        self.tiles = Counter("pathwatch_tiles_inferred", "Tiles sent to the backend", registry=r)
        self.one_step = Histogram("pathwatch_one_step_seconds", "One-step head call duration "
                                  "(dynamic steps: all cameras' tiles of a pass)",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.one_step_tiles = Counter("pathwatch_tiles_one_step", "Tiles sent to the one-step "
                                      "head (dynamic steps)", registry=r)
        self.tiles_sent = Gauge("pathwatch_tiles_sent_ratio", "Share of a camera's tiles sent "
                                "to the backend (change gating)", cam, registry=r)
        self.tiles_escalated = Gauge("pathwatch_tiles_escalated_ratio", "Share of a camera's "
                                     "evaluated tiles given the full schedule (dynamic steps)",
                                     cam, registry=r)
        self.frames_unscored = Counter("pathwatch_frames_unscored", "Frames taken but not "
                                       "scored: the backend (its server) was unavailable",
                                       registry=r)
        self.journal_ok = Gauge("pathwatch_journal_ok", "1 while alert events are being written "
                                "to the journal", registry=r)
        self.unjournaled = Gauge("pathwatch_journal_unwritten_events", "Alert events published "
                                 "and kept in memory because the journal cannot be written",
                                 registry=r)
        self.journal_lost = Counter("pathwatch_journal_lost_events", "Alert events that could "
                                    "not be journaled and no longer fit in memory", registry=r)
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self._totals: dict[tuple[str, str], float] = {}  # last running totals seen
        self.server = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (port 0 picks a free one)."""
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise RuntimeError(f"metrics endpoint {host}:{port}: {e.strerror}; choose another "
                               "metrics.port or set metrics.enabled: false") from None
        return self.server.server_port

    def backend_call(self, seconds: float, tiles: int) -> None:
        self.inference.observe(seconds)
        self.tiles.inc(tiles)

    def one_step_call(self, seconds: float, tiles: int) -> None:
        self.one_step.observe(seconds)
        self.one_step_tiles.inc(tiles)

    def unscored(self, frames: int) -> None:
        self.frames_unscored.inc(frames)

    def frame(self, camera: str, latency_s: float | None) -> None:
        self.frames.labels(camera).inc()
        if latency_s is not None:
            self.frame_latency.labels(camera).observe(latency_s)

    def alert(self, camera: str, state: str) -> None:
        self.alerts.labels(camera, state).inc()

    def update_camera(self, name: str, stats: "CameraStats") -> None:
        self.camera_fps.labels(name).set(stats.camera_fps)
        self.process_fps.labels(name).set(stats.process_fps)
        self.skipped_fps.labels(name).set(stats.skipped_fps)
        self._advance(self.dropped, name, stats.dropped)
        self._advance(self.reconnects, name, stats.reconnects)
        self.online.labels(name).set(1.0 if stats.online else 0.0)
        if stats.score is not None:
            self.score.labels(name).set(stats.score)
        if stats.threshold is not None:
            self.threshold.labels(name).set(stats.threshold)
        if stats.p_normal is not None:
            self.p_normal.labels(name).set(stats.p_normal)
        if stats.tiles_sent is not None:
            self.tiles_sent.labels(name).set(stats.tiles_sent)
        if stats.tiles_escalated is not None:
            self.tiles_escalated.labels(name).set(stats.tiles_escalated)

    def _advance(self, counter: Counter, name: str, total: float) -> None:
        """A counter from a running total kept elsewhere (a capture thread's count, which
        starts again at 0 when the camera is rebuilt on reload)."""
        key = (str(id(counter)), name)
        last = self._totals.get(key, 0.0)
        counter.labels(name).inc(total - last if total >= last else total)
        self._totals[key] = total

    def journal(self, state: dict) -> None:
        self.journal_ok.set(1.0 if state["ok"] else 0.0)
        self.unjournaled.set(state["unjournaled"])
        self.journal_lost.inc(max(0, state["lost"] - self._totals.get(("lost", ""), 0)))
        self._totals[("lost", "")] = state["lost"]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class NoMetrics:
    """Metrics switched off (metrics.enabled: false, `pathwatch calibrate`): the same calls,
    nothing recorded."""

    def backend_call(self, seconds: float, tiles: int) -> None:
        pass

    def one_step_call(self, seconds: float, tiles: int) -> None:
        pass

    def frame(self, camera: str, latency_s: float | None) -> None:
        pass

    def unscored(self, frames: int) -> None:
        pass

    def alert(self, camera: str, state: str) -> None:
        pass

    def update_camera(self, name: str, stats: "CameraStats") -> None:
        pass

    def journal(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass

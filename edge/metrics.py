"""Prometheus metrics: per-camera frame rates, inference latency, reconnects, alerts, scores.

A registry of our own (not the process-global default), served on its own port by
prometheus-client's HTTP server thread. Gauges that mirror capture statistics are refreshed
once per heartbeat; counters and the latency histogram are updated as things happen.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        cam = ["camera"]
        self.camera_fps = Gauge("pathwatch_camera_fps", "Frames per second read from the camera", cam, registry=r)
        self.process_fps = Gauge("pathwatch_process_fps", "Frames per second scored", cam, registry=r)
        self.skipped_fps = Gauge("pathwatch_skipped_fps", "Frames per second read but skipped (fps cap)", cam, registry=r)
        self.frames = Counter("pathwatch_frames_processed", "Frames scored", cam, registry=r)
        self.dropped = Gauge("pathwatch_frames_dropped", "Frames dropped from the capture queue", cam, registry=r)
        self.reconnects = Gauge("pathwatch_reconnects", "Camera reconnections", cam, registry=r)
        self.online = Gauge("pathwatch_camera_online", "1 when the camera delivers frames", cam, registry=r)
        self.score = Gauge("pathwatch_score", "Last frame score (standardised)", cam, registry=r)
        self.threshold = Gauge("pathwatch_threshold", "Alert threshold", cam, registry=r)
        self.alerts = Counter("pathwatch_alert_events", "Alert events by state", cam + ["state"], registry=r)
        self.frame_latency = Histogram("pathwatch_frame_latency_seconds", "Capture to score latency",
                                       cam, buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("pathwatch_inference_seconds", "Backend call duration (all tiles "
                                   "of a pass)", buckets=LATENCY_BUCKETS, registry=r)
        self.tiles = Counter("pathwatch_tiles_inferred", "Tiles sent to the backend", registry=r)
        self.server = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (port 0 picks a free one)."""
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise RuntimeError(f"metrics endpoint {host}:{port}: {e.strerror}; choose another "
                               "metrics.port or set metrics.enabled: false") from None
        return self.server.server_port

    def update_camera(self, name: str, stats: dict, skipped_fps: float) -> None:
        self.camera_fps.labels(name).set(stats.get("camera_fps", 0.0))
        self.process_fps.labels(name).set(stats.get("process_fps", 0.0))
        self.skipped_fps.labels(name).set(skipped_fps)
        self.dropped.labels(name).set(stats.get("dropped", 0))
        self.reconnects.labels(name).set(stats.get("reconnects", 0))
        self.online.labels(name).set(1.0 if stats.get("state") in ("online", "alerting", "calibrating") else 0.0)
        if stats.get("score") is not None:
            self.score.labels(name).set(stats["score"])
        if stats.get("threshold") is not None:
            self.threshold.labels(name).set(stats["threshold"])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

"""The per-camera alert state machine (pure logic: scores in, events out).

idle --(N of the last M frames over threshold, not in cooldown)--> active: `start`
active --(at most every update_interval_s)--> `update` with the peak so far
active --(quiet_s seconds with no frame over threshold)--> `end`, then a cooldown
"""
from __future__ import annotations

import collections
import secrets
import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class AlertPolicy:
    trigger_frames: int = 3
    window_frames: int = 5
    update_interval_s: float = 2.0
    quiet_s: float = 3.0
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.trigger_frames <= self.window_frames:
            raise ValueError(f"alert policy: need 1 <= trigger_frames ({self.trigger_frames}) <= "
                             f"window_frames ({self.window_frames})")
        if min(self.update_interval_s, self.quiet_s, self.cooldown_s) < 0:
            raise ValueError("alert policy: times must not be negative")


@dataclass
class AlertEvent:
    state: str  # start | update | end
    alert_id: str
    camera: str
    time: float
    score: float
    threshold: float
    peak_score: float
    peak_tile: list | None
    tile: list | None
    started_at: float
    duration_s: float
    frames_over: int
    frame_index: int | None = None
    reason: str | None = None

    def to_header(self) -> dict:
        d = asdict(self)
        d["score"], d["peak_score"] = round(self.score, 4), round(self.peak_score, 4)
        d["threshold"], d["duration_s"] = round(self.threshold, 4), round(self.duration_s, 3)
        return d


@dataclass
class _Active:
    alert_id: str
    started_at: float
    peak_score: float
    peak_tile: list | None
    last_over: float
    last_update: float
    frames_over: int = 0


@dataclass
class AlertTracker:
    camera: str
    policy: AlertPolicy = field(default_factory=AlertPolicy)

    def __post_init__(self) -> None:
        self.window: collections.deque[bool] = collections.deque(maxlen=self.policy.window_frames)
        self.current: _Active | None = None
        self.cooldown_until = float("-inf")
        self.last_threshold = 0.0

    @property
    def active(self) -> bool:
        return self.current is not None

    def _new_id(self, t: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))
        return f"{self.camera}-{stamp}-{secrets.token_hex(3)}"

    def _event(self, state, t, score, threshold, tile, frame_index, reason=None) -> AlertEvent:
        a = self.current
        return AlertEvent(state, a.alert_id, self.camera, t, score, threshold, a.peak_score,
                          a.peak_tile, tile, a.started_at, t - a.started_at, a.frames_over,
                          frame_index, reason)

    def update(self, t: float, score: float, threshold: float, tile=None,
               frame_index: int | None = None) -> list[AlertEvent]:
        over = score > threshold
        self.last_threshold = threshold
        self.window.append(over)
        a = self.current
        if a is None:
            if t < self.cooldown_until or sum(self.window) < self.policy.trigger_frames:
                return []
            self.current = _Active(self._new_id(t), t, score, tile, t, t, sum(self.window))
            return [self._event("start", t, score, threshold, tile, frame_index)]
        if over:
            a.last_over = t
            a.frames_over += 1
            if score > a.peak_score:
                a.peak_score, a.peak_tile = score, tile
        if t - a.last_over >= self.policy.quiet_s:
            return [self._finish(t, score, threshold, tile, frame_index, "quiet")]
        if t - a.last_update >= self.policy.update_interval_s:
            a.last_update = t
            return [self._event("update", t, score, threshold, tile, frame_index)]
        return []

    def _finish(self, t, score, threshold, tile, frame_index, reason) -> AlertEvent:
        event = self._event("end", t, score, threshold, tile, frame_index, reason)
        self.current = None
        self.window.clear()
        self.cooldown_until = t + self.policy.cooldown_s
        return event

    def close(self, t: float, reason: str = "shutdown") -> AlertEvent | None:
        """End an open alert (shutdown, reload); None when there is none."""
        if self.current is None:
            return None
        return self._finish(t, self.current.peak_score, self.last_threshold,
                            self.current.peak_tile, None, reason)

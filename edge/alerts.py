"""The per-camera alert state machine (pure logic: scores in, events out; no I/O, no clock).

idle --(trigger_frames of the last window_frames frames over threshold, not in cooldown)--> active
    emits `start`
active --(at most every update_interval_s)--> `update`, carrying the peak so far
active --(quiet_s seconds with no frame over threshold)--> `end` (reason "quiet"), then cooldown
active --close(t, reason)--> `end` (reason e.g. "shutdown", "reload")
cooldown --(cooldown_s after the end)--> idle; no alert starts in between

Time is the frame's capture time in epoch seconds, given by the caller, so the machine behaves
the same on live cameras and on recorded video played back faster than real time. The end is
decided when a frame arrives: a camera that stops delivering frames keeps its alert open until
`close()`.
"""
from __future__ import annotations

import collections
import math
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pydantic import ConfigDict, Field, model_validator

from .clock import iso_time, parse_iso
from .strict import Strict

STATES = ("start", "update", "end")


def _finite_or_none(x: float | None, digits: int) -> float | None:
    # JSON has no NaN/inf; a header must stay valid JSON whatever the density model returned.
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


class AlertPolicy(Strict):
    """When an alert starts, updates and ends. The config's `alerts:` section is one of these
    (plus what an alert carries), so the file's keys, defaults and checks are these fields.
    Frozen: a tracker sizes its window from it once."""
    model_config = ConfigDict(frozen=True)

    trigger_frames: int = Field(3, ge=1, description="an alert starts when this many of the "
                                "last window_frames frames are over the threshold")
    window_frames: int = Field(5, ge=1, description="frames in the sliding window that "
                               "trigger_frames counts over")
    update_interval_s: float = Field(2.0, ge=0.0, description="at most one update event per "
                                     "this many seconds while an alert is active")
    quiet_s: float = Field(3.0, ge=0.0, description="the alert ends after this long with no "
                           "frame over the threshold")
    cooldown_s: float = Field(10.0, ge=0.0, description="no new alert for this long after one "
                              "ends")

    @model_validator(mode="after")
    def _trigger_fits_window(self):
        if self.trigger_frames > self.window_frames:
            raise ValueError(f"trigger_frames ({self.trigger_frames}) must not exceed "
                             f"window_frames ({self.window_frames}); lower trigger_frames or "
                             "raise window_frames")
        return self


@dataclass
class AlertEvent:
    state: str  # start | update | end
    alert_id: str
    camera: str
    time: float  # epoch seconds of the frame (or of the close) that produced the event
    score: float  # the current frame's score
    threshold: float
    peak_score: float
    peak_tile: list | None
    tile: list | None  # the current frame's worst tile [col, row]
    started_at: float
    duration_s: float
    frames_over: int  # frames over threshold since (and including the window that caused) start
    frame_index: int | None = None
    reason: str | None = None  # why it ended: "quiet", "shutdown", "reload", ...

    def to_header(self) -> dict:
        """The event's fields as the alert header carries them: ISO times, finite rounded numbers
        (None where not finite), lists for tiles."""
        d = asdict(self)
        d["time"], d["started_at"] = iso_time(self.time), iso_time(self.started_at)
        d["score"] = _finite_or_none(self.score, 4)
        d["peak_score"] = _finite_or_none(self.peak_score, 4)
        d["threshold"] = _finite_or_none(self.threshold, 4)
        d["duration_s"] = round(self.duration_s, 3)
        d["tile"] = list(self.tile) if self.tile is not None else None
        d["peak_tile"] = list(self.peak_tile) if self.peak_tile is not None else None
        return d


def left_open(header: dict, now: float) -> AlertEvent:
    """The `end` of an alert the journal shows open at start-up: the daemon was killed or
    crashed while it was open. Its duration runs to the last event journaled for it."""
    started = parse_iso(header["started_at"])
    last = parse_iso(header["time"])
    return AlertEvent("end", header["alert_id"], header["camera"], now, math.nan,
                      header.get("threshold") or math.nan, header.get("peak_score") or math.nan,
                      header.get("peak_tile"), header.get("tile"), started,
                      max(0.0, last - started), int(header.get("frames_over") or 0), None,
                      "the daemon stopped while the alert was open (killed or crashed); "
                      "closed at the next start")


@dataclass
class _Active:
    """What the tracker remembers about the open alert."""
    alert_id: str
    started_at: float
    peak_score: float
    peak_tile: list | None
    last_over: float
    last_update: float
    frames_over: int


@dataclass
class AlertTracker:
    """One camera's alert state. Not thread-safe: the frame loop owns it."""
    camera: str
    policy: AlertPolicy = field(default_factory=AlertPolicy)  # config.alerts is one

    def __post_init__(self) -> None:
        self.window: collections.deque[bool] = collections.deque(maxlen=self.policy.window_frames)
        self.current: _Active | None = None
        self.cooldown_until = float("-inf")
        # The last frame seen, so close() can report the current score like any other event.
        self.last_score = float("nan")
        self.last_threshold = float("nan")
        self.last_tile: list | None = None

    @property
    def active(self) -> bool:
        return self.current is not None

    def in_cooldown(self, t: float) -> bool:
        return self.current is None and t < self.cooldown_until

    def _new_id(self, t: float) -> str:
        # Camera + start time + random suffix: unique across restarts and across cameras, and
        # still readable in a log line.
        stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%dT%H%M%S")
        return f"{self.camera}-{stamp}-{secrets.token_hex(3)}"

    def _event(self, state: str, t: float, reason: str | None = None,
               frame_index: int | None = None) -> AlertEvent:
        a = self.current
        return AlertEvent(state, a.alert_id, self.camera, t, self.last_score, self.last_threshold,
                          a.peak_score, a.peak_tile, self.last_tile, a.started_at,
                          max(0.0, t - a.started_at), a.frames_over, frame_index, reason)

    def update(self, t: float, score: float, threshold: float, tile=None,
               frame_index: int | None = None) -> list[AlertEvent]:
        """Feed one frame's score; returns the events it causes (usually none).
        A NaN score counts as not over the threshold."""
        over = score > threshold
        tile = list(tile) if tile is not None else None
        self.last_score, self.last_threshold, self.last_tile = score, threshold, tile
        self.window.append(over)
        a = self.current
        if a is None:
            if t < self.cooldown_until or sum(self.window) < self.policy.trigger_frames:
                return []
            self.current = _Active(self._new_id(t), t, score, tile, last_over=t, last_update=t,
                                   frames_over=sum(self.window))
            return [self._event("start", t, frame_index=frame_index)]
        if over:
            a.last_over = t
            a.frames_over += 1
            if score > a.peak_score:
                a.peak_score, a.peak_tile = score, tile
        if t - a.last_over >= self.policy.quiet_s:
            return [self._finish(t, "quiet", frame_index)]
        if t - a.last_update >= self.policy.update_interval_s:
            a.last_update = t
            return [self._event("update", t, frame_index=frame_index)]
        return []

    def _finish(self, t: float, reason: str, frame_index: int | None) -> AlertEvent:
        event = self._event("end", t, reason, frame_index)
        self.current = None
        # A fresh window: the frames that caused this alert must not start the next one.
        self.window.clear()
        self.cooldown_until = t + self.policy.cooldown_s
        return event

    def close(self, t: float, reason: str = "shutdown") -> AlertEvent | None:
        """End an open alert now (shutdown, reload) and return its `end`; None when idle."""
        if self.current is None:
            return None
        return self._finish(t, reason, None)

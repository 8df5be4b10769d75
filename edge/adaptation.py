"""Online adaptation (`adaptation.enabled`, off by default: docs/calibration.md, Drift): a
camera's normal model follows slow drift (dusk, weather, a parked car that stays) in bounded
steps, each one versioned in the calibration file and announced.

Samples. Every `sample_every_s` of scene time the camera samples a frame (with dynamic steps
every tile of it gets the full schedule, so its features are fresh). A sample is a candidate
for the normal set when it scored as ordinary (p_normal >= `quiet`: at least that share of
the calibration's normal frames scored as high) and no alert was open within `guard_s` of it
either side: candidates wait guard_s before they count, and an alert start discards those
still waiting, since the frames before an alert may hold its onset.

Refresh. Every `every_s` of scene time with enough candidates, the normal set (the frames the
calibration was fitted on, kept beside its file) loses its oldest frames to the newest
candidates, at most `max_share` of it, and the calibration is refitted in full: densities,
standardisation, out-of-fold tail and threshold. Frames a user declared normal stay. The tail
is thus fitted on a window that moves with the scene, as in DSPOT (Siffer et al., KDD 2017),
in steps of at most max_share. The bound: "normal" moves only through frames the model in
use already scores as ordinary, by at most max_share of the set per refresh, so an anomaly,
which scores far above the quiet level, never enters the set by itself.

A lasting change. An alert still open after `adopt_after_s` (a car parked for good) is not
left open forever, nor learned silently: its samples (taken while it was open) replace up to
max_share of the set as declared normal, the calibration is refitted, and the alert ends with
that reason. `adopt_after_s: null` leaves such alerts open.

The refit runs in a thread of its own; the frame loop scores with the model in use until the
new one is installed.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

import numpy as np

from .calibration import Calibration, CalibrationError, CalibrationWindow, refit_calibration
from .clock import iso_now

log = logging.getLogger("pathwatch")
MIN_NEW_FRAMES = 10  # fewer new frames than this (or than max_share allows) wait for more
HISTORY = 20  # refreshes listed in the calibration file


@dataclass(frozen=True)
class Refresh:
    """A refitted calibration, its normal set, and what to say about it."""
    calibration: Calibration
    window: CalibrationWindow
    reason: str  # "drift" or "lasting change"
    summary: str


class Adaptation:
    """One camera's online adaptation. The frame loop owns it (not thread-safe); only the
    refit runs on a thread of its own."""

    def __init__(self, settings, calibration: Calibration, window: CalibrationWindow,
                 refit_options: dict):
        """`settings`: the config's `adaptation` section; `window`: the calibration's normal
        set (CalibrationWindow.load); `refit_options`: holdout, false-alarm target and
        trigger rule the refit uses (the config's, as the camera's own calibration does)."""
        self.s, self.calibration, self.window = settings, calibration, window
        self.refit_options = refit_options
        room = max(1, int(settings.max_share * int((~window.declared).sum())))
        self.candidates: collections.deque = collections.deque(maxlen=room)
        self.waiting: collections.deque = collections.deque()  # samples within guard_s of now
        self.lasting: collections.deque = collections.deque(maxlen=room)  # samples in an alert
        self.next_sample = None
        self.last_refresh: float | None = None
        self.alert_since: float | None = None
        self.alert_ended = -np.inf
        self._thread: threading.Thread | None = None
        self._result: Refresh | CalibrationError | None = None
        self.version = int((calibration.data.get("adaptation") or {}).get("version", 0))

    # ------------------------------------------------------------------ sampling
    def wants_sample(self, t: float) -> bool:
        """Whether the frame at scene time t is sampled (the camera then evaluates every tile
        of it in full)."""
        if self.next_sample is None or t >= self.next_sample or t < self.next_sample - \
                2 * self.s.sample_every_s:  # a clock that jumped back (a looped clip)
            self.next_sample = t + self.s.sample_every_s
            return True
        return False

    def observe(self, t: float, features: np.ndarray, cheap: np.ndarray | None,
                p_normal: float | None, alert_open: bool,
                still: np.ndarray | None = None) -> None:
        """A sampled frame, after scoring: its full (and one-step) features of every tile, and
        its still-content flags (passing: ignore)."""
        if self.last_refresh is None:  # the first sample: refreshes count from here
            self.last_refresh = t
        self._track_alert(t, alert_open)
        sample = (t, features.astype(np.float32), None if cheap is None else
                  cheap.astype(np.float32), still)
        if alert_open:
            self.lasting.append(sample)
            return
        ordinary = p_normal is not None and p_normal >= self.s.quiet
        if ordinary and t - self.alert_ended >= self.s.guard_s:
            self.waiting.append(sample)
        while self.waiting and t - self.waiting[0][0] >= self.s.guard_s:
            self.candidates.append(self.waiting.popleft())

    def _track_alert(self, t: float, alert_open: bool) -> None:
        if alert_open and self.alert_since is None:
            self.alert_since = t
            self.waiting.clear()  # they may hold the alert's onset
        elif not alert_open and self.alert_since is not None:
            self.alert_since, self.alert_ended = None, t
            self.lasting.clear()

    # ------------------------------------------------------------------ refits
    def due(self, t: float) -> str | None:
        """Why a refit should start now ("drift", "lasting change"), or None."""
        if self._thread is not None or self.last_refresh is None:
            return None
        adopt = self.s.adopt_after_s
        if adopt is not None and self.alert_since is not None and \
                t - self.alert_since >= adopt and \
                len(self.lasting) >= min(MIN_NEW_FRAMES, self.lasting.maxlen):
            return "lasting change"
        if t - self.last_refresh >= self.s.every_s and \
                len(self.candidates) >= min(MIN_NEW_FRAMES, self.candidates.maxlen):
            return "drift"
        return None

    def start(self, t: float, reason: str, camera: str, fit_cheap) -> None:
        """Refit in a thread: the set with its oldest frames replaced by the new ones.
        `fit_cheap`: whether to refit the one-step head's calibration too (the window must
        carry its features)."""
        pool = self.lasting if reason == "lasting change" else self.candidates
        new = list(pool)
        pool.clear()
        self.last_refresh = t
        window = self._advanced(new, declared=reason == "lasting change")
        self._result = None

        def run() -> None:
            try:
                self._result = self._refit(window, reason, len(new), camera, fit_cheap)
            except CalibrationError as e:
                self._result = e
            except Exception as e:  # noqa: BLE001 - a failed refit keeps the model in use
                log.exception("camera %s: refreshing the normal model failed", camera)
                self._result = CalibrationError(f"the refit failed ({e})")

        self._thread = threading.Thread(target=run, name=f"pathwatch.adapt:{camera}", daemon=True)
        self._thread.start()

    def result(self) -> Refresh | CalibrationError | None:
        """The finished refit (once), or None while it runs or when none ran."""
        if self._thread is None or self._thread.is_alive():
            return None
        self._thread, result, self._result = None, self._result, None
        return result

    def wait(self, timeout: float | None = None) -> Refresh | CalibrationError | None:
        """Wait for a refit under way (tests, benchmarks, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result()

    def installed(self, refresh: Refresh) -> None:
        """The camera switched to `refresh`: the next refresh starts from it."""
        self.calibration, self.window = refresh.calibration, refresh.window
        self.version = int(refresh.calibration.data["adaptation"]["version"])

    def _advanced(self, new: list, declared: bool) -> CalibrationWindow:
        """The normal set with its oldest undeclared frames replaced by `new` (in order)."""
        w = self.window
        drop = np.flatnonzero(~w.declared)[:len(new)]
        keep = np.setdiff1d(np.arange(len(w.features)), drop)
        end = float(w.times[-1]) if len(w.times) else 0.0
        times = end + np.array([s[0] for s in new]) - (new[0][0] if new else 0.0) + 1e-3
        features = np.concatenate([w.features[keep], np.stack([s[1] for s in new])])
        cheap = None
        if w.cheap is not None and all(s[2] is not None for s in new):
            cheap = np.concatenate([w.cheap[keep], np.stack([s[2] for s in new])])
        still = None
        if w.still is not None:  # a sample without flags counts every tile as still
            flags = [np.ones(w.still.shape[1], bool) if s[3] is None else s[3] for s in new]
            still = np.concatenate([w.still[keep], np.stack(flags)])
        return CalibrationWindow(features, np.concatenate([w.times[keep], times]),
                                 np.concatenate([w.declared[keep],
                                                 np.full(len(new), declared)]), cheap, still)

    def _refit(self, window: CalibrationWindow, reason: str, new: int, camera: str,
               fit_cheap: bool) -> Refresh:
        old = self.calibration
        cal = refit_calibration(old, window, **self.refit_options)
        if old.cheap is not None and fit_cheap and window.cheap is not None:
            cheap_window = CalibrationWindow(window.cheap, window.times, window.declared)
            cal.with_cheap(refit_calibration(old.cheap, cheap_window, **self.refit_options))
        else:
            cal.with_cheap(old.cheap)  # still picks tiles; the full head decides
        version = self.version + 1
        entry = {"version": version, "at": iso_now("seconds"), "reason": reason,
                 "frames_new": new, "frames": int(len(window.features)),
                 "threshold_from": round(old.threshold, 3), "threshold_to": round(cal.threshold, 3)}
        history = list((old.data.get("adaptation") or {}).get("history", []))
        cal.data["adaptation"] = {**entry, "history": (history + [entry])[-HISTORY:]}
        summary = (f"normal model refreshed (version {version}, {reason}): {new} of "
                   f"{len(window.features)} frames new; threshold {old.threshold:.2f} -> "
                   f"{cal.threshold:.2f}")
        return Refresh(cal, window, reason, summary)

"""Feedback: an alert that a person calls normal teaches the camera's calibration.

While an alert is open, its camera keeps the tile features of the frames that raised it (the
trigger window) and of those that follow, up to MAX_ALERT_FRAMES. When the alert ends they go to
`<state_dir>/alert-frames/<camera>/<alert_id>.npz`, and the newest KEEP_PER_CAMERA are kept.
`pathwatch feedback ALERT_ID normal` adds them to the camera's calibration window as frames
declared normal, then refits the tile densities and the threshold (the network is not
retrained) and saves the calibration. A running daemon sees the new file and switches to it.
"""
from __future__ import annotations

import collections
import io
import logging
import re
import zipfile
from pathlib import Path

import numpy as np

from .alerts import AlertEvent
from .calibration import Calibration, CalibrationError, CalibrationWindow, refit_calibration
from .clock import iso_now
from .files import write_atomic

log = logging.getLogger("pathwatch.feedback")
MAX_ALERT_FRAMES = 1500  # 5 minutes at 5 fps; a longer alert keeps its first 5 minutes
KEEP_PER_CAMERA = 200
ALERT_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def alert_frames_dir(state_dir: Path, camera: str) -> Path:
    return Path(state_dir) / "alert-frames" / camera


class AlertFrames:
    """One camera's recorder of alert frames. The frame loop owns it (not thread-safe)."""

    def __init__(self, directory: Path, trigger_window: int):
        self.directory = directory
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=trigger_window)
        self._open: list[np.ndarray] | None = None

    def add(self, features: np.ndarray, events: list[AlertEvent]) -> None:
        """One scored frame's tile features and the alert events it caused."""
        self._recent.append(features)
        if self._open is not None and len(self._open) < MAX_ALERT_FRAMES:
            self._open.append(features)
        for event in events:
            if event.state == "start":
                self._open = list(self._recent)  # the frames that put it over the rule
            elif event.state == "end":
                self.finish(event.alert_id)

    def finish(self, alert_id: str) -> None:
        """The alert ended (with or without a frame): write its frames. A full or read-only
        disk costs this alert's feedback, never the frame loop."""
        frames, self._open = self._open, None
        self._recent.clear()
        if not frames:
            return
        buffer = io.BytesIO()
        np.savez_compressed(buffer, features=np.stack(frames).astype(np.float32))
        try:
            write_atomic(self.directory / f"{alert_id}.npz", buffer.getvalue())
            self._prune()
        except OSError as e:
            log.warning("cannot keep the frames of alert %s in %s (%s); it cannot be marked "
                        "normal later", alert_id, self.directory, e.strerror or e)

    def _prune(self) -> None:
        kept = sorted(self.directory.glob("*.npz"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-KEEP_PER_CAMERA]:
            old.unlink(missing_ok=True)


def find_alert_frames(state_dir: Path, alert_id: str) -> tuple[str, Path]:
    """(camera, file) of an alert's kept frames, or a CalibrationError saying why not."""
    if not ALERT_ID.match(alert_id):
        raise CalibrationError(f"{alert_id!r} is not an alert id (e.g. "
                               "front-20261202T181503-a1b2c3, as `pathwatch tail` prints)")
    hits = sorted((Path(state_dir) / "alert-frames").glob(f"*/{alert_id}.npz"))
    if not hits:
        raise CalibrationError(
            f"no frames are kept for alert {alert_id} under {Path(state_dir) / 'alert-frames'}: "
            f"check the id (`pathwatch tail`), that it has ended, and that it is among the "
            f"newest {KEEP_PER_CAMERA} of its camera")
    return hits[0].parent.name, hits[0]


def _alert_features(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["features"], np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CalibrationError(f"{path} is damaged ({e}); this alert cannot be marked") from None


def mark_normal(config, alert_id: str) -> str:
    """Refit the alert's camera with the alert's frames declared normal and save it; returns
    what changed, in one line."""
    camera, frames_path = find_alert_frames(config.state_path(), alert_id)
    cams = {c.name: c for c in config.cameras}
    if camera not in cams:
        raise CalibrationError(f"alert {alert_id} is from camera {camera!r}, which is no longer "
                               "in the config")
    cal_path = cams[camera].calibration_path(config)
    cal = Calibration.load(cal_path)
    window = CalibrationWindow.load(cal_path)
    history = list(cal.data["frames"].get("feedback", []))
    if any(f.get("alert_id") == alert_id for f in history):
        raise CalibrationError(f"alert {alert_id} is already part of {cal_path}'s normal frames")
    extra = _alert_features(frames_path)
    if extra.ndim != 3 or extra.shape[1:] != window.features.shape[1:]:
        raise CalibrationError(f"alert {alert_id}'s frames have {extra.shape[1:]} tiles and "
                               f"features, {cal_path} {window.features.shape[1:]}: the camera "
                               "was recalibrated for another grid since; it cannot be marked")
    new_window = _grown(window, extra, float(cal.data["threshold"]["fps"]))
    refit = refit_calibration(cal, new_window, holdout=config.calibration.holdout,
                              false_alarms_per_hour=config.calibration.false_alarms_per_hour,
                              trigger=config.alerts.trigger_frames,
                              window_frames=config.alerts.window_frames)
    # The one-step head only picks the tiles the refitted full head sees: an alert it finds
    # near its threshold still goes to the full head, which now calls it normal.
    refit.with_cheap(cal.cheap)
    refit.data["frames"]["feedback"] = history + [
        {"alert_id": alert_id, "frames": int(len(extra)), "marked": iso_now("seconds")}]
    new_window.save(cal_path)  # the frames first: the daemon watches the calibration file
    refit.save(cal_path)
    return (f"camera {camera}: alert {alert_id} marked normal; refitted on "
            f"{len(new_window.features)} frames ({len(extra)} from the alert, "
            f"{int(new_window.declared.sum())} declared normal in all); threshold "
            f"{cal.threshold:.2f} -> {refit.threshold:.2f}; wrote {cal_path}")


def _grown(window: CalibrationWindow, extra: np.ndarray, fps: float) -> CalibrationWindow:
    last = float(window.times[-1]) if len(window.times) else 0.0
    times = last + (1 + np.arange(len(extra))) / max(fps, 1e-3)
    # An alert's frames raised it through still content (passing: ignore): all count as still.
    still = None if window.still is None else \
        np.concatenate([window.still, np.ones(extra.shape[:2], bool)])
    return CalibrationWindow(np.concatenate([window.features, extra]),
                             np.concatenate([window.times, times]),
                             np.concatenate([window.declared, np.ones(len(extra), bool)]),
                             still=still)

"""edge.adaptation through a real camera: the tiny trained bundle on ONNX Runtime, videos
written by OpenCV played in scene time, real calibration files. The normal model is refreshed
from ordinary frames in bounded, versioned steps; an object never enters it by itself; a
lasting change is adopted only after adopt_after_s, and its alert ends saying so."""
import json
import time

import numpy as np

from pathwatch.edge.calibration import CalibrationWindow
from pathwatch.edge.camera import Lifecycle
from test_camera import FRAMES, backend, make_camera, write_video  # noqa: F401 (fixture)

ADAPT = {"enabled": True, "every_s": 10.0, "sample_every_s": 0.1, "guard_s": 0.0, "max_share": 0.5}


def drive(camera, backend, frames: int, timeout: float = 120.0):
    """The daemon's loop for one camera: frames scored, advance() each pass; returns the alert
    events (those advance() ends included) and the status details announced."""
    events, deadline, done = [], time.monotonic() + timeout, 0
    while done < frames and time.monotonic() < deadline:
        ended = camera.advance()
        events += [ended] if ended is not None else []
        frame, _ = camera.next_frame()
        if frame is None:
            if camera.source.exhausted() and camera.lifecycle is not Lifecycle.FITTING:
                break
            time.sleep(0.005)
            continue
        feats, maps = backend(camera.tiles(frame))
        events += [m.event for m in camera.observe(frame, feats, maps).alerts]
        done += 1
    if camera.adaptation is not None:  # a refit under way ends (uninstalled) before we look
        camera.adaptation.wait(60)
    return events


def adapting_camera(tmp_path, tiny_bundle, video, **adaptation):
    cam, statuses = make_camera(tmp_path, tiny_bundle, str(video), realtime=False)
    cam.config = cam.config.model_copy(update={"adaptation": cam.config.adaptation.model_copy(
        update={**ADAPT, **adaptation})})
    details = []
    cam.on_status = lambda name, state, detail: details.append(detail)
    return cam, details


def test_the_normal_model_is_refreshed_in_bounded_versioned_steps(tmp_path, tiny_bundle, backend):
    video = write_video(tmp_path / "scene.avi", frames=260)
    cam, details = adapting_camera(tmp_path, tiny_bundle, video)
    cam.start()
    try:
        drive(cam, backend, 260)
    finally:
        cam.stop(2.0, "test")
    refreshed = [d for d in details if d.startswith("normal model refreshed")]
    assert refreshed, details
    assert "version 1, drift" in refreshed[0]
    saved = json.loads(cam.calibration_path.read_text())
    record = saved["adaptation"]
    assert record["version"] == len(refreshed) >= 1
    assert [h["version"] for h in record["history"]] == list(range(1, record["version"] + 1))
    # The bound: at most max_share of the normal set is new per refresh.
    assert all(0 < h["frames_new"] <= int(0.5 * FRAMES) for h in record["history"])
    window = CalibrationWindow.load(cam.calibration_path)
    assert len(window.features) == FRAMES == saved["frames"]["total"]
    assert np.all(np.diff(window.times) > 0)
    assert window.times[-1] > (FRAMES - 1) / 10.0  # it holds frames from after the window
    assert cam.calibration.data["adaptation"]["version"] == record["version"]


def test_an_object_does_not_enter_the_normal_set_and_a_lasting_one_is_adopted(
        tmp_path, tiny_bundle, backend):
    # 4 s of scene to calibrate and score, then an object that stays.
    video = write_video(tmp_path / "scene.avi", frames=300, object_frames=range(40, 300))
    cam, details = adapting_camera(tmp_path, tiny_bundle, video, adopt_after_s=12.0)
    cam.start()
    try:
        events = drive(cam, backend, 40)
        assert cam.lifecycle is Lifecycle.SCORING
        events += drive(cam, backend, 80)  # the object is in view for 8 s: under adopt_after_s
        starts = [e for e in events if e.state == "start"]
        assert len(starts) == 1 and starts[0].frame_index >= 40, \
            [(e.state, e.frame_index) for e in events]
        # Its samples were kept for adoption, not offered as ordinary frames.
        assert len(cam.adaptation.candidates) + len(cam.adaptation.waiting) <= 20
        assert len(cam.adaptation.lasting) > 0
        assert not any(d.startswith("normal model refreshed") for d in details)
        events += drive(cam, backend, 180)
    finally:
        cam.stop(2.0, "test")
    ends = [e for e in events if e.state == "end"]
    assert ends and ends[0].reason.startswith("a lasting change, adopted as normal"), \
        [(e.state, e.reason) for e in events]
    assert any("lasting change" in d for d in details)
    saved = json.loads(cam.calibration_path.read_text())
    assert "lasting change" in [h["reason"] for h in saved["adaptation"]["history"]]
    assert CalibrationWindow.load(cam.calibration_path).declared.sum() > 0
    # Adopted: the object, still in view, raises no new alert.
    assert [e.state for e in events if e.state == "start"] == ["start"]


def test_adaptation_stays_off_with_a_threshold_set_by_hand(tmp_path, tiny_bundle, backend):
    video = write_video(tmp_path / "scene.avi", frames=60)
    cam, _ = adapting_camera(tmp_path, tiny_bundle, video)
    cam.cfg = cam.cfg.model_copy(update={"threshold": 5.0})
    cam.start()
    try:
        drive(cam, backend, 30)
    finally:
        cam.stop(2.0, "test")
    assert cam.lifecycle is Lifecycle.SCORING and cam.adaptation is None


def test_samples_near_an_alert_are_not_normal_frames(tmp_path, tiny_bundle, backend):
    """The guard: samples waiting when an alert starts are dropped (they may hold its onset)."""
    video = write_video(tmp_path / "scene.avi", frames=120, object_frames=range(60, 120))
    cam, _ = adapting_camera(tmp_path, tiny_bundle, video, guard_s=3.0,
                             adopt_after_s=None)
    cam.start()
    try:
        events = drive(cam, backend, 120)
    finally:
        cam.stop(2.0, "test")
    start = next(e for e in events if e.state == "start")
    times = [s[0] for s in list(cam.adaptation.candidates) + list(cam.adaptation.waiting)]
    t_start = start.started_at
    assert times and all(t <= t_start - 3.0 for t in times), (times, t_start)
    assert np.isfinite(cam.threshold)

"""edge.camera: a camera's lifecycle as a table, driven through real sources (a video written by
OpenCV, a closed network port), the tiny trained bundle on ONNX Runtime and real calibration
files."""
import json
import socket
import time

import cv2
import numpy as np
import pytest
from skimage import data

from pathwatch.edge.backends import load_backend
from pathwatch.edge.bundle import Bundle
from pathwatch.edge.camera import CalibrationPlan, Camera, Lifecycle
from pathwatch.edge.config import parse_config

FRAMES = 20  # the fewest a calibration accepts


# ------------------------------------------------------------------ the reported state, as a table
# (lifecycle, source state, alert open) -> the one word heartbeat, stats, view and metrics show.
REPORTED = [
    (Lifecycle.REFUSED, "online", False, "refused"),
    (Lifecycle.REFUSED, "reconnecting", False, "refused"),
    (Lifecycle.COLLECTING, "online", False, "calibrating"),
    (Lifecycle.COLLECTING, "connecting", False, "connecting"),
    (Lifecycle.COLLECTING, "reconnecting", False, "reconnecting"),
    (Lifecycle.COLLECTING, "offline", False, "offline"),
    (Lifecycle.FITTING, "online", False, "calibrating"),
    (Lifecycle.FITTING, "reconnecting", False, "reconnecting"),
    (Lifecycle.PENDING, "online", False, "online"),
    (Lifecycle.PENDING, "reconnecting", False, "reconnecting"),
    (Lifecycle.SCORING, "online", False, "online"),
    (Lifecycle.SCORING, "online", True, "alerting"),
    (Lifecycle.SCORING, "reconnecting", True, "reconnecting"),
    (Lifecycle.SCORING, "offline", False, "offline"),
]


@pytest.mark.parametrize("lifecycle, source, alert_open, expected", REPORTED)
def test_reported_state_never_hides_a_dead_source(tmp_path, tiny_bundle, lifecycle, source,
                                                  alert_open, expected):
    camera, _ = make_camera(tmp_path, tiny_bundle, "demo")
    camera.lifecycle = lifecycle
    if alert_open:
        for i in range(camera.config.alerts.trigger_frames):
            camera.tracker.update(0.1 * i, 9.0, 1.0)
        assert camera.tracker.active
    assert camera.reported_state(source) == expected


# ------------------------------------------------------------------ transitions, with real parts
def scene_frame(rng, size=(160, 120), with_object=False):
    img = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), size).astype(np.float32)
    img += rng.normal(0, 2.0, img.shape)
    if with_object:  # a black-and-white checkerboard set down in the view
        img[30:70, 40:80] = 255.0 * (np.indices((40, 40)).sum(0) % 8 < 4)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(path, frames=60, size=(160, 120), object_frames=range(0)):
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        writer.write(scene_frame(rng, size, i in object_frames))
    writer.release()
    return path


def make_camera(tmp_path, bundle_dir, source, plan=None, details=None, **camera):
    """A camera and the states it announced; `details` (a list) gets what each one said."""
    plan = plan or CalibrationPlan(frames=FRAMES)
    details = [] if details is None else details
    cam = {"name": "cam", "source": source, "fps": None, "tiles": [2, 2], **camera}
    config = parse_config(json.dumps({
        "state_dir": str(tmp_path / "state"), "calibration": {"frames": FRAMES},
        "capture": {"open_timeout_s": 2.0, "reconnect_after_s": 1.0, "backoff_max_s": 1.0},
        "cameras": [cam]}), "test")
    statuses = []
    camera = Camera(config.cameras[0], config, Bundle.load(bundle_dir), plan,
                    lambda name, state, detail: (statuses.append(state), details.append(detail)))
    return camera, statuses


@pytest.fixture(scope="module")
def backend(tiny_bundle):
    b = load_backend(Bundle.load(tiny_bundle), "onnxruntime", threads=1, log=lambda m: None)
    yield b
    b.close()


def run_frames(camera, backend, n, timeout=60.0):
    """Feed up to n frames through the camera as the daemon's loop does; returns the results."""
    results, deadline = [], time.monotonic() + timeout
    while len(results) < n and time.monotonic() < deadline:
        frame, _ = camera.next_frame()
        if frame is None:
            camera.advance()
            time.sleep(0.005)
            continue
        feats, maps = backend(camera.tiles(frame))
        results.append(camera.observe(frame, feats, maps))
    return results


def settle(camera, timeout=120.0):
    """Wait for a fit under way (it runs in its own thread) and install it."""
    deadline = time.monotonic() + timeout
    while camera.lifecycle is Lifecycle.FITTING and time.monotonic() < deadline:
        camera.advance()
        time.sleep(0.02)


@pytest.fixture
def video(tmp_path):
    return str(write_video(tmp_path / "scene.avi"))


def calibrated(tmp_path, tiny_bundle, backend, video, **camera):
    """A camera that calibrated itself on the video (collecting -> scoring), stopped."""
    cam, statuses = make_camera(tmp_path, tiny_bundle, video, **camera)
    cam.start()
    try:
        assert cam.lifecycle is Lifecycle.COLLECTING
        run_frames(cam, backend, FRAMES)
        settle(cam)
    finally:
        cam.stop(2.0, "test")
    return cam, statuses


def test_no_calibration_collects_then_scores_and_saves(tmp_path, tiny_bundle, backend, video):
    cam, statuses = calibrated(tmp_path, tiny_bundle, backend, video)
    assert cam.lifecycle is Lifecycle.SCORING and cam.calibrated_here
    assert "calibrating" in statuses and statuses[-2:] == ["online", "offline"]
    saved = json.loads(cam.calibration_path.read_text())
    assert saved["frames"]["total"] == FRAMES and saved["grid"]["tiles"] == [2, 2]


def test_no_calibration_and_no_auto_calibration_is_refused(tmp_path, tiny_bundle, video):
    cam, statuses = make_camera(tmp_path, tiny_bundle, video, auto_calibrate=False)
    cam.start()
    try:
        assert cam.lifecycle is Lifecycle.REFUSED and cam.next_frame() == (None, None)
        assert "pathwatch calibrate --camera cam" in cam.refused and statuses[0] == "refused"
        assert cam.stats().state == "refused"
    finally:
        cam.stop(2.0, "test")


def test_saved_calibration_is_pending_until_a_frame_shows_it_fits(tmp_path, tiny_bundle, backend, video):
    calibrated(tmp_path, tiny_bundle, backend, video)
    cam, statuses = make_camera(tmp_path, tiny_bundle, video)
    cam.start()
    try:
        assert cam.lifecycle is Lifecycle.PENDING
        results = run_frames(cam, backend, 3)
        assert cam.lifecycle is Lifecycle.SCORING and "online" in statuses
        assert all(r.latency_ms is not None for r in results)  # scored, not collected
        assert 0.0 < results[0].score["p_normal"] <= 1.0  # the bounded companion of the score
        assert cam.stats().p_normal is not None
    finally:
        cam.stop(2.0, "test")


@pytest.mark.parametrize("auto, expected", [(True, Lifecycle.COLLECTING), (False, Lifecycle.REFUSED)])
def test_calibration_for_another_frame_size(tmp_path, tiny_bundle, backend, video, auto, expected):
    calibrated(tmp_path, tiny_bundle, backend, video)
    other = str(write_video(tmp_path / "wide.avi", size=(200, 120)))
    cam, _ = make_camera(tmp_path, tiny_bundle, other, auto_calibrate=auto)
    cam.start()
    try:
        assert cam.lifecycle is Lifecycle.PENDING
        deadline = time.monotonic() + 30
        while cam.lifecycle is Lifecycle.PENDING and time.monotonic() < deadline:
            cam.next_frame()
            time.sleep(0.01)
        assert cam.lifecycle is expected
        if not auto:
            assert "frame_size" in cam.refused and "recalibrate" in cam.refused
    finally:
        cam.stop(2.0, "test")


def test_damaged_calibration_file_collects_anew(tmp_path, tiny_bundle, video):
    cam, _ = make_camera(tmp_path, tiny_bundle, video)
    cam.calibration_path.parent.mkdir(parents=True)
    cam.calibration_path.write_text("{not json")
    cam.start()
    try:
        assert cam.lifecycle is Lifecycle.COLLECTING
    finally:
        cam.stop(2.0, "test")


def test_a_clip_that_ends_too_soon_refuses_with_the_count(tmp_path, tiny_bundle, backend):
    short = str(write_video(tmp_path / "short.avi", frames=8))
    cam, _ = make_camera(tmp_path, tiny_bundle, short, on_end="stop")
    cam.start()
    try:
        run_frames(cam, backend, 8, timeout=20)
        deadline = time.monotonic() + 20
        while cam.lifecycle is Lifecycle.COLLECTING and time.monotonic() < deadline:
            run_frames(cam, backend, 1, timeout=0.2)
        assert cam.lifecycle is Lifecycle.REFUSED and "after 8 processed frames" in cam.refused
    finally:
        cam.stop(2.0, "test")


def test_reload_reads_a_new_calibration_file(tmp_path, tiny_bundle, backend, video):
    cam, _ = calibrated(tmp_path, tiny_bundle, backend, video)
    saved = json.loads(cam.calibration_path.read_text())
    saved["threshold"]["value"] = 123.0
    cam.calibration_path.write_text(json.dumps(saved))
    cam.reload(cam.cfg, cam.config, cam.plan)
    assert cam.lifecycle is Lifecycle.SCORING and cam.threshold == 123.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_source_is_reported_as_such_whatever_the_calibration(tmp_path, tiny_bundle):
    cam, statuses = make_camera(tmp_path, tiny_bundle, f"rtsp://127.0.0.1:{closed_port()}/live")
    cam.start()
    try:
        assert cam.lifecycle is Lifecycle.COLLECTING
        deadline = time.monotonic() + 30
        while "reconnecting" not in statuses and time.monotonic() < deadline:
            assert cam.next_frame() == (None, None)
            time.sleep(0.05)
        stats = cam.stats()
        assert stats.state == stats.source == "reconnecting" and not stats.online
        assert stats.lifecycle == "collecting" and stats.process_fps == 0.0
    finally:
        cam.stop(2.0, "test")
    assert cam.stats().state == "offline"


def test_a_live_window_too_contaminated_to_use_is_collected_again(tmp_path, tiny_bundle, backend):
    """For the first 30 s an object flashes up (2 frames of every 20), so a window there has
    more than a quarter to trim (each flash and half a second either side); then the scene
    is quiet. A live camera says why it cannot use such a window and collects a fresh one
    instead of refusing for good."""
    busy = [i for i in range(300) if i % 20 < 2]
    video = str(write_video(tmp_path / "busy.avi", frames=600, object_frames=busy))
    details = []
    cam, statuses = make_camera(tmp_path, tiny_bundle, video, plan=CalibrationPlan(frames=40),
                                details=details)
    cam.start()
    try:
        deadline = time.monotonic() + 150
        while cam.lifecycle is not Lifecycle.SCORING and time.monotonic() < deadline:
            assert cam.lifecycle is not Lifecycle.REFUSED, cam.refused
            run_frames(cam, backend, 1, timeout=0.5)
            settle(cam)
    finally:
        cam.stop(2.0, "test")
    assert cam.lifecycle is Lifecycle.SCORING, statuses
    said = [d for d in details if "too contaminated" in d]
    assert said, details
    assert cam.calibration.data["frames"]["fit"] >= 30  # a later, quieter window was used
    obj = scene_frame(np.random.default_rng(5), with_object=True)
    feats, _ = backend(cam.grid.cut(obj))
    cal = cam.calibration
    assert cal.frame_score(cal.tile_scores(feats))[0] > cal.threshold


def test_an_event_inside_the_calibration_window_is_trimmed_reported_and_still_alerts(
        tmp_path, tiny_bundle, backend):
    """A deliberately contaminated window: an object sits in view for a second of it."""
    video = str(write_video(tmp_path / "event.avi", frames=110, object_frames=range(40, 50)))
    cam, statuses = make_camera(tmp_path, tiny_bundle, video, plan=CalibrationPlan(frames=100))
    cam.start()
    try:
        run_frames(cam, backend, 100)
        settle(cam)
    finally:
        cam.stop(2.0, "test")
    cal = cam.calibration
    assert cam.lifecycle is Lifecycle.SCORING and cal.trimmed, cal.data["frames"]
    assert any(t["from_s"] <= 4.9 and t["to_s"] >= 4.0 for t in cal.trimmed), cal.trimmed
    assert "trimmed" in cal.coverage() and cal.data["frames"]["fit"] < 100
    obj = scene_frame(np.random.default_rng(5), with_object=True)
    feats, _ = backend(cam.grid.cut(obj))
    assert cal.frame_score(cal.tile_scores(feats))[0] > cal.threshold  # not learned as normal

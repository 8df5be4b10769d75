"""The demo camera: deterministic frames, a plausible textured view with sensor flaws, and the
scripted anomalies where `events()` says, each visibly doing what its name says."""
import time

import cv2
import numpy as np
import pytest

from pathwatch.edge.demo import DEFAULT_SCRIPT_TIMES, KINDS, DemoCapture, DemoScene, check_options

SCENE = DemoScene(seed=0)
NORMAL = DemoScene(seed=0, script="normal")  # the same noise and jitter, never an anomaly
EVENTS = SCENE.events(900)


def grey(image):
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def mean_abs_diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def camera_motion(reference, moved):
    """Rotation (degrees) and displacement of the view centre (px), from matched ORB features."""
    orb = cv2.ORB_create(1000)
    ka, da = orb.detectAndCompute(cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY), None)
    kb, db = orb.detectAndCompute(cv2.cvtColor(moved, cv2.COLOR_BGR2GRAY), None)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    src = np.float32([ka[m.queryIdx].pt for m in matches])
    dst = np.float32([kb[m.trainIdx].pt for m in matches])
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=2.0)
    h, w = reference.shape[:2]
    centre = np.array([w / 2, h / 2, 1.0])
    return float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))), float(np.linalg.norm(m @ centre - centre[:2]))


def events_of(kind):
    return [e for e in EVENTS if e.kind == kind]


# ---------------------------------------------------------------------- frames
def test_frames_are_a_pure_function_of_index_and_seed():
    a, labels = SCENE.frame(123)
    assert a.shape == (240, 320, 3) and a.dtype == np.uint8 and labels == ()
    assert np.array_equal(a, DemoScene(seed=0).frame(123)[0])
    assert np.array_equal(SCENE.frame(5)[0], SCENE.frame(5)[0])  # order of calls is irrelevant
    assert not np.array_equal(a, DemoScene(seed=1).frame(123)[0])  # the seed changes the noise
    assert not np.array_equal(a, SCENE.frame(124)[0])  # and so does the frame index
    odd = DemoScene(width=333, height=222, fps=7.3, seed=9)
    assert odd.frame(0)[0].shape == (222, 333, 3)


def test_the_view_is_textured_everywhere():
    image = grey(NORMAL.frame(0)[0])
    blocks = [image[y:y + 30, x:x + 40].std() for y in range(0, 240, 30) for x in range(0, 320, 40)]
    assert min(blocks) > 5.0  # no flat area for a detector to find trivially
    assert 40 < image.mean() < 200  # a normally exposed view


def test_sensor_noise_jitter_and_exposure_drift_are_modest():
    a, b = NORMAL.frame(100)[0], NORMAL.frame(101)[0]
    assert 1.0 < mean_abs_diff(a, b) < 12.0  # noise and jitter: every frame differs, a little
    angle, shift = camera_motion(a, b)
    assert abs(angle) < 0.5 and shift < 2.0  # jitter stays within about a pixel
    brightness = [NORMAL.frame(int(t * NORMAL.fps))[0].mean() for t in range(0, 360, 10)]
    drift = (max(brightness) - min(brightness)) / np.mean(brightness)
    assert 0.02 < drift < 0.15  # a few percent over minutes


# ---------------------------------------------------------------------- the script
def test_script_timing_and_kinds():
    first, gap, duration = DEFAULT_SCRIPT_TIMES
    assert 40 <= first and 40 <= gap <= 60 and 5 <= duration <= 10
    assert [e.kind for e in EVENTS[:8]] == list(KINDS) * 2
    assert EVENTS[0].start_s == first
    for e, nxt in zip(EVENTS, EVENTS[1:]):
        assert e.end_s - e.start_s == duration and nxt.start_s - e.end_s == gap
    assert all(e.start_s < 900 for e in EVENTS) and EVENTS[-1].start_s + gap + duration >= 900
    assert SCENE.events(first) == [] and len(SCENE.events(first + 0.1)) == 1


@pytest.mark.parametrize("fps", [10.0, 7.3, 25.0])
def test_labels_cover_exactly_the_event_frames(fps):
    scene = DemoScene(width=64, height=48, fps=fps, seed=3)
    for e in scene.events(400):
        assert e.start_frame / fps >= e.start_s - 1e-9 and (e.start_frame - 1) / fps < e.start_s
        assert e.end_frame / fps < e.end_s and (e.end_frame + 1) / fps >= e.end_s - 1e-9
        assert scene.frame(e.start_frame - 1)[1] == ()
        assert scene.frame(e.start_frame)[1] == (e.kind,)
        assert scene.frame((e.start_frame + e.end_frame) // 2)[1] == (e.kind,)
        assert scene.frame(e.end_frame)[1] == (e.kind,)
        assert scene.frame(e.end_frame + 1)[1] == ()


def test_normal_script_never_shows_an_anomaly():
    assert NORMAL.events(3600) == []
    for e in EVENTS[:4]:
        assert NORMAL.frame(e.start_frame + 10)[1] == ()
    assert all(NORMAL.frame(i)[1] == () for i in range(0, 36000, 97))


# ---------------------------------------------------------------------- each anomaly
def anomaly_and_normal(event, seconds_in):
    i = event.start_frame + int(seconds_in * SCENE.fps)
    image, labels = SCENE.frame(i)
    assert labels == (event.kind,)
    return image, NORMAL.frame(i)[0]


def test_object_enters_from_an_edge_and_crosses_part_of_the_view():
    for event, edge in zip(events_of("object")[:2], ("left", "right")):  # alternating sides
        centres = []
        for s in (0.5, 2.0, 4.0, 6.0, 7.9):
            image, normal = anomaly_and_normal(event, s)
            changed = np.abs(image.astype(np.int16) - normal.astype(np.int16)).max(2) > 40
            assert 0.003 < changed.mean() < 0.25  # an object, not a change of the whole view
            centres.append(np.nonzero(changed)[1].mean())
        steps = np.diff(centres)
        assert (steps > 5).all() if edge == "left" else (steps < -5).all()
        assert (centres[0] < 60) if edge == "left" else (centres[0] > 260)  # near its edge at first
        assert abs(centres[-1] - centres[0]) > 100  # it crosses a good part of the view


def test_cover_darkens_most_of_the_frame():
    for event in events_of("cover")[:2]:
        image, normal = anomaly_and_normal(event, 4.0)
        assert image.mean() < 0.5 * normal.mean() and image.std() < 0.5 * normal.std()
        assert (grey(image) < 50).mean() > 0.7 > 0.2 > (grey(normal) < 50).mean()  # most of the lens


def test_defocus_blurs_the_view():
    for event in events_of("defocus")[:2]:
        image, normal = anomaly_and_normal(event, 4.0)
        sharpness = cv2.Laplacian(grey(image), cv2.CV_32F).var()
        assert sharpness < 0.25 * cv2.Laplacian(grey(normal), cv2.CV_32F).var()
        assert abs(image.mean() - normal.mean()) < 5  # blurred, not darker


def test_knock_displaces_the_view_for_its_duration_then_it_returns():
    event = events_of("knock")[0]
    for s in (1.0, 4.0, 7.9):  # stays displaced (after the first ringing)
        angle, shift = camera_motion(*anomaly_and_normal(event, s)[::-1])
        assert 2.0 < abs(angle) < 8.0 and 10.0 < shift < 40.0
    after = event.end_frame + 1
    angle, shift = camera_motion(NORMAL.frame(after)[0], SCENE.frame(after)[0])
    assert abs(angle) < 0.2 and shift < 0.5
    image, normal = anomaly_and_normal(event, 4.0)
    assert grey(image)[:4].std() > 5 and grey(image)[:, :4].std() > 5  # more scene, no black borders


# ---------------------------------------------------------------------- the capture
def test_capture_as_fast_as_asked_returns_the_scene_frames_and_labels():
    scene = DemoScene(width=96, height=72, fps=10, seed=5)
    cap = DemoCapture(scene, realtime=False)
    assert cap.isOpened()
    assert cap.get(cv2.CAP_PROP_FPS) == 10 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 96
    assert cap.get(cv2.CAP_PROP_FRAME_HEIGHT) == 72
    for i in range(3):
        ok, image = cap.read()
        assert ok and np.array_equal(image, scene.frame(i)[0]) and cap.labels == ()
    event = scene.events(100)[0]
    assert cap.set(cv2.CAP_PROP_POS_FRAMES, event.start_frame)
    ok, image = cap.read()
    assert ok and cap.labels == (event.kind,) and cap.get(cv2.CAP_PROP_POS_FRAMES) == event.start_frame + 1
    assert not cap.set(cv2.CAP_PROP_BRIGHTNESS, 1)
    cap.release()
    assert not cap.isOpened() and cap.read() == (False, None)


def test_realtime_capture_is_paced_and_skips_what_a_slow_reader_missed():
    scene = DemoScene(width=64, height=48, fps=50, seed=0)
    cap = DemoCapture(scene, realtime=True)
    t0 = time.monotonic()
    for _ in range(6):
        assert cap.read()[0]
    assert time.monotonic() - t0 >= 5 / 50 - 0.005  # frame i is due i/fps after opening
    time.sleep(0.3)  # a reader that falls behind, as a live camera's would
    cap.read()
    assert cap.get(cv2.CAP_PROP_POS_FRAMES) >= 15 + 1  # frames shown meanwhile are gone
    cap.release()


def test_bad_options_are_refused_with_one_line_messages():
    for kwargs, word in [({"script": "chaos"}, "default or normal"), ({"width": 10}, "size"),
                         ({"fps": 0}, "fps"), ({"fps": float("nan")}, "fps"), ({"seed": -2}, "seed")]:
        with pytest.raises(ValueError, match=word) as err:
            check_options(**kwargs)
        assert "\n" not in str(err.value)
        with pytest.raises(ValueError, match=word):
            DemoScene(**kwargs)
    with pytest.raises(ValueError, match="negative"):
        SCENE.frame(-1)

"""Capture threads on real sources: a video file written by OpenCV, an image folder, the demo."""
import os
import time

import cv2
import numpy as np
import pytest

from edge.demo import DemoScene
from edge.sources import CameraSource, SourceError, parse_source


def write_video(path, frames=20, fps=20.0, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((size[1], size[0], 3), (i * 12) % 255, np.uint8)
        cv2.putText(img, str(i), (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        writer.write(img)
    writer.release()
    return path


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def drain(src, n, timeout=15.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        f = src.get(timeout=0.2)
        if f is not None:
            got.append(f)
    return got


def test_parse_source_kinds_and_errors(tmp_path):
    video = write_video(tmp_path / "v.avi")
    assert parse_source(0).kind == "device" and parse_source("2").target == 2
    assert parse_source("/dev/video7").kind == "device"
    assert parse_source("rtsp://u:p@cam/stream").describe() == "rtsp://u:***@cam/stream"
    assert parse_source(str(video)).kind == "file"
    assert parse_source(str(tmp_path)).kind == "folder"
    assert parse_source("demo:seed=3,script=normal").options == {"seed": 3, "script": "normal"}
    for bad, msg in [("ftp://x", "not supported"), (str(tmp_path / "nope.mp4"), "exists"),
                     ("demo:colour=red", "demo option"), ("demo:script=chaos", "default or normal")]:
        with pytest.raises(SourceError, match=msg):
            parse_source(bad)


def test_video_file_to_the_end_then_stop(tmp_path):
    states = []
    src = CameraSource("v", str(write_video(tmp_path / "v.avi", frames=12)), on_end="stop",
                       realtime=False, queue_size=100, fps=None,
                       on_status=lambda n, s, d: states.append(s))
    src.start()
    frames = drain(src, 12)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (48, 64, 3)
    assert wait_for(lambda: src.state == "offline")
    src.stop()
    assert states[:2] == ["connecting", "online"] and "offline" in states


def test_video_file_loops(tmp_path):
    src = CameraSource("v", str(write_video(tmp_path / "v.avi", frames=5)), on_end="loop",
                       realtime=False, queue_size=100, fps=None)
    src.start()
    assert len(drain(src, 12)) == 12  # more frames than the file has
    src.stop()
    assert src.stats()["reconnects"] == 0


def test_image_folder(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((30, 40, 3), i * 50, np.uint8))
    src = CameraSource("f", str(tmp_path), on_end="stop", realtime=False, queue_size=10, fps=None)
    src.start()
    frames = drain(src, 4)
    src.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 50, 100, 150]


def test_queue_drops_the_oldest_when_nobody_reads():
    src = CameraSource("d", "demo", realtime=False, queue_size=2, fps=None)
    src.start()
    assert wait_for(lambda: src.stats()["dropped"] > 20)
    frame = src.latest()
    src.stop()
    stats = src.stats()
    assert frame is not None and stats["frames"] >= stats["dropped"] + 1
    assert frame.index >= stats["dropped"]  # what is left is the newest


def test_fps_cap_skips_frames():
    src = CameraSource("d", "demo:fps=40", realtime=True, fps=10.0, queue_size=100)
    src.start()
    assert wait_for(lambda: src.stats()["read"] >= 60, timeout=20)
    src.stop()
    s = src.stats()
    assert s["skipped"] > s["frames"]  # 40 fps read, 10 fps delivered
    assert 0.15 < s["frames"] / s["read"] < 0.4


def test_demo_is_deterministic_and_scripted():
    scene = DemoScene(seed=1)
    a, labels_a = scene.frame(123)
    b, _ = DemoScene(seed=1).frame(123)
    assert np.array_equal(a, b) and labels_a == ()
    events = scene.events(300)
    assert [e.kind for e in events[:4]] == ["object", "cover", "defocus", "knock"]
    for e in events:
        assert scene.frame(e.start_frame + 5)[1] == (e.kind,)
        assert scene.frame(e.end_frame + 20)[1] == ()
    normal = DemoScene(seed=1, script="normal")
    assert normal.events(600) == [] and normal.frame(events[1].start_frame + 5)[1] == ()
    covered = scene.frame(events[1].start_frame + 30)[0]
    assert covered.std() < 0.5 * a.std()  # the lens really is covered: the texture is gone


def test_a_source_that_disappears_comes_back(tmp_path):
    video = write_video(tmp_path / "v.avi", frames=10)
    states = []
    src = CameraSource("v", str(video), on_end="loop", realtime=True, fps=None, queue_size=100,
                       backoff_initial_s=0.1, backoff_max_s=0.3, reconnect_after_s=0.5,
                       on_status=lambda n, s, d: states.append(s))
    src.start()
    assert wait_for(lambda: src.state == "online")
    os.rename(video, tmp_path / "away.avi")
    assert wait_for(lambda: src.state == "reconnecting")
    os.rename(tmp_path / "away.avi", video)
    assert wait_for(lambda: src.state == "online")
    before = src.stats()["frames"]
    assert wait_for(lambda: src.stats()["frames"] > before + 3)
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 3.0
    assert states.count("online") >= 2 and src.stats()["reconnects"] >= 1


def test_a_camera_that_never_opens_keeps_retrying_without_blocking():
    src = CameraSource("ghost", "/dev/video99", backoff_initial_s=0.05, backoff_max_s=0.1)
    src.start()
    assert wait_for(lambda: src.state == "reconnecting")
    assert src.latest() is None
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 3.0 and src.stats()["last_error"]

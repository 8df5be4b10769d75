"""Capture threads on real sources: a video file written by OpenCV, an image folder, the demo
camera, and a live MJPEG stream served over HTTP on 127.0.0.1."""
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from pathwatch.edge.demo import DemoScene
from pathwatch.edge.sources import CameraSource, SourceError, open_capture, parse_source


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


def capture_threads(name):
    return [t for t in threading.enumerate() if t.name == f"pathwatch.capture:{name}"]


class Recorder:
    """An on_status callback that keeps every transition it is told about."""

    def __init__(self):
        self.states, self.lock = [], threading.Lock()

    def __call__(self, name, state, detail):
        assert isinstance(detail, str)
        with self.lock:
            self.states.append(state)

    def transitions_only(self):
        return all(a != b for a, b in zip(self.states, self.states[1:]))


# ---------------------------------------------------------------------- parsing
def test_parse_source_kinds(tmp_path):
    video = write_video(tmp_path / "v.avi")
    assert parse_source(0).kind == "device" and parse_source("2").target == 2
    assert parse_source("/dev/video7").kind == "device"  # absent now, may come later
    assert parse_source("/dev/v4l/by-id/usb-cam-video-index0").kind == "device"
    assert parse_source("rtsp://u:p@cam/stream").describe() == "rtsp://u:***@cam/stream"
    assert parse_source("https://cam.local/video.mjpg").kind == "url"
    assert parse_source("rtsps://cam/stream").kind == "url"
    assert parse_source(str(video)).kind == "file"
    folder = parse_source(str(tmp_path))
    assert folder.kind == "folder" and folder.options == {"fps": 5.0}
    assert parse_source(f"{tmp_path}?fps=2.5").options == {"fps": 2.5}
    assert parse_source("demo").options == {}
    assert parse_source("demo:seed=3,script=normal").options == {"seed": 3, "script": "normal"}
    assert parse_source("demo:fps=25,width=160,height=120").options == {"fps": 25.0, "width": 160,
                                                                         "height": 120}


@pytest.mark.parametrize("bad, message", [
    ("ftp://x/y", "not supported"),
    ("nope/missing.mp4", "exists"),
    ("", "empty"),
    ("demo:colour=red", "demo option"),
    ("demo:script=chaos", "default or normal"),
    ("demo:seed=abc", "not a valid integer"),
    ("demo:seed=-1", "negative"),
    ("demo:fps=0", "fps"),
    ("demo:width=10", "size"),
    ("demo:seed", "demo option"),
])
def test_parse_errors_are_one_line_and_say_what_to_do(bad, message):
    with pytest.raises(SourceError, match=message) as err:
        parse_source(bad)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)


def test_folder_options_are_checked(tmp_path):
    for bad in (f"{tmp_path}?fps=0", f"{tmp_path}?fps=fast", f"{tmp_path}?speed=2"):
        with pytest.raises(SourceError, match=r"fps=N"):
            parse_source(bad)
    video = write_video(tmp_path / "v.avi")
    with pytest.raises(SourceError, match="folders only"):
        parse_source(f"{video}?fps=2")


def test_source_options_are_checked():
    with pytest.raises(SourceError, match="loop or stop"):
        CameraSource("d", "demo", on_end="rewind")
    with pytest.raises(SourceError, match="positive"):
        CameraSource("d", "demo", fps=0)


# ---------------------------------------------------------------------- files and folders
def test_video_file_to_the_end_then_stop(tmp_path):
    status = Recorder()
    src = CameraSource("v", str(write_video(tmp_path / "v.avi", frames=12)), on_end="stop",
                       realtime=False, queue_size=100, fps=None, on_status=status)
    src.start()
    frames = drain(src, 12)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert frames[0].camera == "v" and frames[0].labels == ()
    assert frames[0].time == pytest.approx(time.time(), abs=60)
    assert all(a.monotonic <= b.monotonic for a, b in zip(frames, frames[1:]))
    assert wait_for(lambda: src.state == "offline")
    assert src.get(timeout=0.1) is None  # nothing after the end
    src.stop()
    assert status.states == ["connecting", "online", "offline"]
    stats = src.stats()
    assert stats["frames"] == stats["read"] == 12 and stats["reconnects"] == 0


def test_video_file_loops(tmp_path):
    status = Recorder()
    src = CameraSource("v", str(write_video(tmp_path / "v.avi", frames=5)), on_end="loop",
                       realtime=False, queue_size=100, fps=None, on_status=status)
    src.start()
    frames = drain(src, 12)  # more frames than the file has
    src.stop()
    assert [f.index for f in frames] == list(range(12))
    # The same picture comes back at the start of every loop.
    assert np.array_equal(frames[0].image, frames[5].image)
    assert src.stats()["reconnects"] == 0 and status.states == ["connecting", "online", "offline"]


def test_a_recording_in_scene_time_keeps_every_capped_frame_and_drops_none(tmp_path):
    video = write_video(tmp_path / "v.avi", frames=40, fps=20.0)
    src = CameraSource("v", str(video), on_end="loop", realtime=False, fps=5.0, queue_size=2)
    assert src.lossless
    src.start()
    time.sleep(0.5)  # nobody reads: a live camera would drop frames, a recording waits
    frames = drain(src, 16)  # the clip and then part of its next pass
    src.stop()
    s = src.stats()
    assert s["dropped"] == 0
    # Every 4th frame of 20 fps at a cap of 5 fps, by position in the clip, across the loop.
    assert [f.index for f in frames] == list(range(0, 64, 4))
    times = [f.time - frames[0].time for f in frames]
    assert times == pytest.approx([0.2 * i for i in range(16)], abs=1e-6)
    assert s["skipped"] >= 3 * s["frames"] - 3  # the frames between were grabbed, not queued


def test_a_folder_in_scene_time_never_decodes_what_the_cap_skips(tmp_path, caplog):
    for i in range(8):  # every odd image is damaged: decoding one would log a warning
        path = tmp_path / f"{i:03d}.png"
        if i % 2:
            path.write_bytes(b"not an image")
        else:
            cv2.imwrite(str(path), np.full((30, 40, 3), i * 20, np.uint8))
    src = CameraSource("f", f"{tmp_path}?fps=10", on_end="stop", realtime=False, fps=5.0,
                       queue_size=1)
    with caplog.at_level("WARNING", logger="pathwatch.sources"):
        src.start()
        frames = drain(src, 4)
        assert wait_for(lambda: src.state == "offline")
    src.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 40, 80, 120]
    assert "not a readable image" not in caplog.text
    assert src.stats()["dropped"] == 0


def test_image_folder_in_name_order_skipping_unreadable_files(tmp_path):
    for i in (3, 0, 2, 1):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((30, 40, 3), i * 50, np.uint8))
    (tmp_path / "001b.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    src = CameraSource("f", str(tmp_path), on_end="stop", realtime=False, queue_size=10, fps=None)
    src.start()
    frames = drain(src, 4)
    assert wait_for(lambda: src.state == "offline")
    src.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 50, 100, 150]
    assert src.stats()["frames"] == 4


def test_folder_is_paced_at_its_fps_when_realtime(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i, np.uint8))
    cap = open_capture(parse_source(f"{tmp_path}?fps=20"), realtime=True)
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == 20
    t0 = time.monotonic()
    assert all(cap.read()[0] for _ in range(4))
    assert time.monotonic() - t0 >= 3 / 20 - 0.01  # frame i is due i/fps after opening
    assert cap.read() == (False, None) and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 8
    cap.release()


def test_an_empty_file_is_retried_not_spun_on(tmp_path):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"\0" * 100)
    src = CameraSource("b", str(broken), backoff_initial_s=0.05, backoff_max_s=0.1)
    src.start()
    assert wait_for(lambda: src.state == "reconnecting")
    src.stop()
    assert src.stats()["last_error"] and src.stats()["frames"] == 0


# ---------------------------------------------------------------------- queue and fps cap
def test_queue_drops_the_oldest_when_nobody_reads():
    src = CameraSource("d", "demo", realtime=False, queue_size=2, fps=None)
    src.start()
    assert wait_for(lambda: src.stats()["dropped"] > 20)
    src.stop()
    stats = src.stats()
    assert stats["frames"] == stats["read"] == stats["dropped"] + 2  # two are still queued
    older, newest = src.get(), src.get()
    assert newest.index == stats["read"] - 1 and older.index == newest.index - 1
    assert src.get() is None


def test_latest_keeps_the_newest_and_counts_the_rest_as_dropped():
    src = CameraSource("d", "demo", realtime=False, queue_size=5, fps=None)
    src.start()
    assert wait_for(lambda: src.stats()["dropped"] > 0)
    src.stop()
    before = src.stats()
    frame = src.latest()
    after = src.stats()
    assert frame.index == before["read"] - 1
    assert after["dropped"] == before["dropped"] + 4 and src.latest() is None


def test_fps_cap_skips_frames():
    src = CameraSource("d", "demo:fps=40", realtime=True, fps=10.0, queue_size=100)
    src.start()
    assert wait_for(lambda: src.stats()["read"] >= 60, timeout=20)
    src.stop()
    s = src.stats()
    assert s["read"] == s["frames"] + s["skipped"]
    assert s["skipped"] > s["frames"]  # 40 fps read, 10 fps delivered
    assert 0.15 < s["frames"] / s["read"] < 0.4
    frames = drain(src, s["frames"], timeout=1)
    gaps = np.diff([f.index for f in frames])
    assert gaps.min() >= 2  # frame indexes count every read frame: the skipped ones are gaps


def test_stats_while_running_and_from_other_threads():
    src = CameraSource("d", "demo:fps=50", realtime=True, queue_size=2)
    src.start()
    errors = []

    def reader():
        try:
            for _ in range(300):
                src.stats()
                src.latest(timeout=0.001)
        except Exception as e:  # a race would show as an exception here
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert wait_for(lambda: src.stats()["read"] >= 20)
    s = src.stats()
    src.stop()
    assert not errors
    assert s["state"] == "online" and s["camera_fps"] > 0 and s["last_frame_age_s"] < 5
    assert set(s) >= {"state", "frames", "read", "skipped", "dropped", "reconnects", "camera_fps",
                      "delivered_fps", "last_frame_age_s", "last_error"}


# ---------------------------------------------------------------------- the demo source
def test_demo_source_delivers_the_scene_with_its_labels():
    src = CameraSource("d", "demo:seed=4,width=160,height=120", realtime=False, queue_size=50)
    src.start()
    frames = drain(src, 20)
    src.stop()
    scene = DemoScene(width=160, height=120, seed=4)
    for f in frames[:5]:
        image, labels = scene.frame(f.index)
        assert np.array_equal(f.image, image) and f.labels == labels == ()


def test_demo_source_labels_come_from_the_script():
    # At 20 fps the first anomaly starts at frame 1200; realtime=False reaches it quickly.
    scene = DemoScene(width=64, height=48, fps=20, seed=2)
    event = scene.events(70)[0]
    src = CameraSource("d", "demo:width=64,height=48,fps=20,seed=2", realtime=False,
                       queue_size=100000)
    src.start()
    assert wait_for(lambda: src.stats()["read"] > event.end_frame + 10, timeout=40)
    src.stop()
    labelled = []
    while (f := src.get()) is not None:
        if f.labels:
            labelled.append(f)
    assert [f.index for f in labelled][0] == event.start_frame
    assert {f.labels for f in labelled} == {(event.kind,)}
    assert len(labelled) == event.end_frame - event.start_frame + 1


# ---------------------------------------------------------------------- failures
def test_a_source_that_disappears_comes_back(tmp_path):
    video = write_video(tmp_path / "v.avi", frames=10)
    status = Recorder()
    src = CameraSource("v", str(video), on_end="loop", realtime=True, fps=None, queue_size=100,
                       backoff_initial_s=0.1, backoff_max_s=0.3, reconnect_after_s=0.5,
                       on_status=status)
    src.start()
    assert wait_for(lambda: src.state == "online")
    os.rename(video, tmp_path / "away.avi")
    assert wait_for(lambda: src.state == "reconnecting")
    assert "cannot open" in src.stats()["last_error"]
    os.rename(tmp_path / "away.avi", video)
    assert wait_for(lambda: src.state == "online")
    before = src.stats()["frames"]
    assert wait_for(lambda: src.stats()["frames"] > before + 3)
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 3.0
    assert status.states[:2] == ["connecting", "online"] and status.states.count("online") >= 2
    assert "reconnecting" in status.states and status.states[-1] == "offline"
    assert status.transitions_only() and src.stats()["reconnects"] >= 1


def test_a_camera_that_never_opens_keeps_retrying_without_blocking_others():
    status = Recorder()
    ghost = CameraSource("ghost", "/dev/video99", backoff_initial_s=0.05, backoff_max_s=0.1,
                         on_status=status)
    demo = CameraSource("demo", "demo", realtime=False, queue_size=2)
    ghost.start()
    demo.start()
    assert wait_for(lambda: ghost.state == "reconnecting")
    assert demo.latest(timeout=5) is not None and ghost.latest() is None
    t0 = time.monotonic()
    ghost.stop()
    demo.stop()
    assert time.monotonic() - t0 < 3.0 and ghost.stats()["last_error"]
    assert status.states == ["connecting", "reconnecting", "offline"]


def test_url_passwords_never_reach_errors_or_status():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here: every open is refused at once
    details = []
    src = CameraSource("net", f"rtsp://admin:s3cret@127.0.0.1:{port}/live", open_timeout_s=2.0,
                       backoff_initial_s=0.05, backoff_max_s=0.1,
                       on_status=lambda name, state, detail: details.append(detail))
    src.start()
    assert wait_for(lambda: src.state == "reconnecting")
    src.stop()
    error = src.stats()["last_error"]
    assert "admin:***@" in error and all("s3cret" not in d for d in details + [error])


class MjpegStream:
    """A live MJPEG camera over HTTP on 127.0.0.1 that can be paused (it stalls) and resumed."""

    def __init__(self, fps=30.0):
        self.paused = threading.Event()
        stream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not stream.closed:
                        if not stream.paused.is_set():
                            img = np.full((48, 64, 3), (i * 10) % 250, np.uint8)
                            jpg = cv2.imencode(".jpg", img)[1].tobytes()
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                             b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpg), jpg))
                            i += 1
                        time.sleep(1.0 / fps)
                except OSError:  # the reader went away
                    pass

        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def close(self):
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


def test_a_stalled_live_stream_is_reopened_by_the_watchdog():
    stream = MjpegStream()
    status = Recorder()
    src = CameraSource("net", stream.url, open_timeout_s=1.0, read_timeout_s=0.5,
                       reconnect_after_s=1.0, backoff_initial_s=0.1, backoff_max_s=0.2,
                       queue_size=2, on_status=status)
    try:
        src.start()
        assert wait_for(lambda: src.state == "online", timeout=20)
        assert src.latest(timeout=5).image.shape == (48, 64, 3)
        stream.paused.set()
        assert wait_for(lambda: src.state == "reconnecting", timeout=20)
        stream.paused.clear()
        assert wait_for(lambda: src.state == "online", timeout=20)
        before = src.stats()["frames"]
        assert wait_for(lambda: src.stats()["frames"] > before + 3, timeout=20)
    finally:
        src.stop()
        stream.close()
    assert status.states[:2] == ["connecting", "online"] and status.states[-1] == "offline"
    assert "reconnecting" in status.states and status.transitions_only()
    assert src.stats()["reconnects"] >= 1


def test_stop_returns_promptly_while_the_capture_is_stuck_opening():
    # A server that accepts connections and never answers: opening blocks until its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/video"
    src = CameraSource("stuck", url, open_timeout_s=20.0, read_timeout_s=20.0)
    src.start()
    assert wait_for(lambda: src.state == "connecting")
    t0 = time.monotonic()
    src.stop(timeout=1.0)
    assert time.monotonic() - t0 < 2.5
    assert src.state == "offline" and capture_threads("stuck")  # returned; the open still hangs
    silent.close()  # the stuck open fails now; the thread releases it and ends
    assert wait_for(lambda: not capture_threads("stuck"), timeout=30)

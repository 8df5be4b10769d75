"""The daemon end to end: a video written by OpenCV, the tiny bundle, real ZeroMQ subscribers,
SQLite journal, signals. Each test runs `pathwatch run` as a separate process."""
import json
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from skimage import data

from conftest import daemon_config
from pathwatch.edge.subscriber import AlertSubscriber

# 15 s of normal scene before the object: a loaded machine that scores 2 frames a second
# still calibrates its 30 frames on normal scene.
FPS, CALIB, NORMAL, ANOMALY, TAIL = 10, 30, 120, 30, 70


def write_scene_video(path):
    """Normal frames of a fixed view (with sensor noise), then a patterned object crosses it."""
    base = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (160, 120)).astype(np.float32)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 120))
    rng = np.random.default_rng(0)
    start = CALIB + NORMAL
    for i in range(CALIB + NORMAL + ANOMALY + TAIL):
        img = base + rng.normal(0, 2.0, base.shape)
        if start <= i < start + ANOMALY:
            x = int(-40 + 4 * (i - start))
            patch = np.indices((40, 40)).sum(0) % 8 < 4  # a black-and-white checkerboard
            for c in range(3):
                region = img[40:80, max(x, 0):x + 40, c]
                region[:] = 255.0 * patch[:, max(0, -x):max(0, -x) + region.shape[1]]
        writer.write(np.clip(img, 0, 255).astype(np.uint8))
    writer.release()
    return start, start + ANOMALY


def launch(config):
    return subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(sub, until, timeout):
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in sub.events(timeout_s=0.5):
            if m.header.get("kind") == "missed":
                continue  # the replay endpoint was not up yet when the subscriber started
            got.append(m)
            if until(got):
                return got
            if time.monotonic() > deadline:
                break
    return got


@pytest.fixture
def scene_video(tmp_path):
    path = tmp_path / "scene.avi"
    return path, write_scene_video(path)


def test_object_entering_a_video_raises_one_alert_with_consecutive_seq(tmp_path, tiny_bundle, scene_video):
    video, (a0, a1) = scene_video
    # 30 calibration frames are enough to fit, not to place a threshold with a margin (the
    # tiny test model scores normal frames up to ~8, the object in the hundreds): the config's
    # threshold override, which users have for the same reason, keeps this test about the stream.
    config = daemon_config(tmp_path, tiny_bundle, str(video), on_end="loop", threshold=50.0)
    proc = launch(config)
    pub, replay = f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/replay.sock"
    try:
        sub = AlertSubscriber(pub, replay, since=0)
        events = collect(sub, lambda g: g[-1].header["state"] == "end", timeout=90)
        sub.close()
        assert events, f"no alert; daemon log:\n{_log(proc)}"
        states = [m.header["state"] for m in events]
        assert states[0] == "start" and states[-1] == "end", states
        assert [m.header["seq"] for m in events] == list(range(1, len(events) + 1))
        assert len({m.header["alert_id"] for m in events}) == 1
        start = events[0].header
        # Raised by the object, not before; on a loaded machine calibration may outlast the
        # first pass of the (looping) video, so the object's next pass counts too.
        assert a0 <= start["frame_index"] % (CALIB + NORMAL + ANOMALY + TAIL) <= a1 + 5, start
        assert start["attachments"] == ["snapshot.jpg", "heatmap.png", "overlay.jpg"]
        assert events[0].attachments[0][:2] == b"\xff\xd8" and events[0].attachments[1][:4] == b"\x89PNG"
        assert start["score"] > start["threshold"] and start["latency_ms"] >= 0

        # A subscriber that connects after the fact recovers everything from the journal.
        late = AlertSubscriber(pub, replay, since=0)
        again = collect(late, lambda g: len(g) >= len(events), timeout=20)
        late.close()
        assert [m.header["seq"] for m in again[:len(events)]] == [m.header["seq"] for m in events]

        calibration = json.loads((tmp_path / "state" / "calibration" / "cam.json").read_text())
        assert calibration["frames"]["total"] == 30 and calibration["grid"]["tiles"] == [4, 3]

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    log = _log(proc)
    assert "offline" in log and "Traceback" not in log


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_publishes_offline_and_keeps_the_journal(tmp_path, tiny_bundle, scene_video):
    import urllib.request

    video, _ = scene_video
    port = free_port()
    config = daemon_config(tmp_path, tiny_bundle, str(video), metrics_port=port)
    proc = launch(config)
    sub = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", None, topics=("status.",))
    try:
        online = collect(sub, lambda g: any(m.header.get("state") == "calibrating" for m in g), 60)
        assert online, _log(proc)
        time.sleep(2.5)  # a heartbeat or two refresh the gauges
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for name in ("pathwatch_camera_fps{camera=\"cam\"}", "pathwatch_process_fps{camera=\"cam\"}",
                     "pathwatch_inference_seconds_bucket", "pathwatch_frames_processed_total{camera=\"cam\"}",
                     "pathwatch_frames_dropped_total{camera=\"cam\"}",  # counters, not gauges
                     "pathwatch_reconnects_total{camera=\"cam\"}", "process_resident_memory_bytes",
                     "process_open_fds"):
            assert name in text, name
        proc.send_signal(signal.SIGTERM)
        tail = collect(sub, lambda g: any(m.header.get("state") == "offline" for m in g), 15)
        assert any(m.header["state"] == "offline" for m in tail)
        assert proc.wait(timeout=15) == 0
        assert (tmp_path / "state" / "journal.sqlite").exists()
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()


def test_camera_without_calibration_is_refused_when_auto_calibration_is_off(tmp_path, tiny_bundle, scene_video):
    video, _ = scene_video
    config = daemon_config(tmp_path, tiny_bundle, str(video), auto_calibrate=False)
    proc = launch(config)
    time.sleep(0)
    try:
        deadline = time.monotonic() + 60
        refused = False
        sub = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", None, topics=("heartbeat",))
        while time.monotonic() < deadline and not refused:
            for m in sub.events(timeout_s=1.0):
                cams = m.header.get("cameras", {})
                if cams.get("cam", {}).get("state") == "refused":
                    refused = "pathwatch calibrate --camera cam" in cams["cam"]["refused"]
                    break
        sub.close()
        assert refused, _log(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_bad_config_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - name: cam\n    source: demo\n    fsp: 5\n")
    res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml:4: cameras[0].fsp: unknown key (did you mean fps?)" in lines[0]
    res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "config", "check", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "fsp" in res.stderr


def test_calibrate_command_writes_a_calibration(tmp_path, tiny_bundle, scene_video):
    video, _ = scene_video
    config = daemon_config(tmp_path, tiny_bundle, str(video))
    res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "calibrate", "--camera", "cam",
                          "--config", str(config), "--frames", "25"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cal = json.loads((tmp_path / "state" / "calibration" / "cam.json").read_text())
    assert cal["frames"]["total"] == 25 and cal["threshold"]["value"] > 0
    assert "threshold" in res.stdout
    assert re.search(r"\d+ frames are few to set a threshold", res.stderr), res.stderr
    again = subprocess.run([sys.executable, "-m", "pathwatch.cli", "calibrate", "--camera", "cam",
                            "--config", str(config), "--frames", "25"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "replaced a calibration of 25 frames" in again.stdout


def test_calibrate_plays_a_recording_once_in_scene_time(tmp_path, tiny_bundle, scene_video):
    # The config plays the clip in real time, in a loop, at 5 fps; calibrating from it takes
    # every 2nd frame of the 10 fps clip, once, however slow the CPU, and drops none.
    video, _ = scene_video
    config = daemon_config(tmp_path, tiny_bundle, str(video), fps=5.0, realtime=True,
                           on_end="loop")
    res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "calibrate", "--camera", "cam",
                          "--config", str(config), "--seconds", "3600"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    frames = json.loads((tmp_path / "state" / "calibration" / "cam.json").read_text())["frames"]
    total = CALIB + NORMAL + ANOMALY + TAIL
    assert frames["dropped"] == 0
    assert frames["total"] == total // 2
    assert frames["seconds"] == pytest.approx((total - 2) / FPS, abs=0.01)
    assert "the source ended" in res.stderr


def test_calibrate_says_so_when_it_cannot_calibrate(tmp_path, tiny_bundle, scene_video):
    video, _ = scene_video
    old = tmp_path / "state" / "calibration" / "cam.json"

    def calibrate(*args, **camera):
        config = daemon_config(tmp_path, tiny_bundle, str(video), **camera)
        return subprocess.run([sys.executable, "-m", "pathwatch.cli", "calibrate", "--camera", "cam",
                               "--config", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    few = calibrate("--frames", "5")
    assert few.returncode == 2 and "at least 20 frames" in few.stderr
    assert len(few.stderr.strip().splitlines()) == 1 and not old.exists()
    # A clip that ends (on_end: stop) before the frames are in: refused with the count, not
    # waited on for ever, and an older calibration file does not pass for success.
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    short = calibrate("--frames", "400", fps=0.5)  # 25 s of clip at 0.5 fps: 13 frames
    assert short.returncode == 2, short.stderr
    assert "calibration of cam failed: the source ended after" in short.stderr
    assert old.read_text() == "{}"


def test_an_unwritable_or_damaged_calibration_is_refused_with_one_line(
        tmp_path, tiny_bundle, scene_video):
    video, _ = scene_video
    (tmp_path / "taken").write_text("a file where a folder should be")
    config = daemon_config(tmp_path, tiny_bundle, str(video),
                           calibration=str(tmp_path / "taken" / "cam.json"))
    res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "calibrate", "--camera", "cam",
                          "--config", str(config), "--frames", "25"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # Refused before the model loads and before a frame is collected, not after minutes.
    assert f"cameras[0].calibration: calibration file {tmp_path / 'taken' / 'cam.json'} cannot " \
           "be written" in res.stderr
    from pathwatch.edge.calibration import Calibration, CalibrationError

    good = tmp_path / "good.json"
    config = daemon_config(tmp_path, tiny_bundle, str(video), calibration=str(good))
    assert subprocess.run([sys.executable, "-m", "pathwatch.cli", "calibrate", "--camera", "cam",
                           "--config", str(config), "--frames", "25"],
                          capture_output=True, text=True, timeout=120).returncode == 0
    data = json.loads(good.read_text())
    for damage in ("bundle", "threshold"):
        broken = {k: v for k, v in data.items() if k != damage}
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        with pytest.raises(CalibrationError, match=f"is damaged \\(missing '{damage}'\\)"):
            Calibration.load(tmp_path / "broken.json")
    with pytest.raises(CalibrationError, match="cannot read calibration"):
        Calibration.load(tmp_path)


def _log(proc) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    out, err = proc.communicate()
    return err + out


def test_sighup_reloads_config_and_keeps_the_sockets(tmp_path, tiny_bundle, scene_video):
    video, _ = scene_video
    config = daemon_config(tmp_path, tiny_bundle, str(video))
    proc = launch(config)
    sub = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", None, topics=("status.",))
    try:
        first = collect(sub, lambda g: any(m.header.get("state") == "online" and "calibrated on"
                                           in m.header.get("detail", "") for m in g), 90)
        assert any("calibrated on" in m.header.get("detail", "") for m in first), _log(proc)
        # A reload whose camera source can never work is refused (by the checks start-up
        # makes) before anything running is touched: the camera stays up, nothing goes offline.
        good = config.read_text()
        config.write_text(good.replace(str(video), str(tmp_path / "gone.avi")))
        proc.send_signal(signal.SIGHUP)
        assert [m.header["state"] for m in collect(sub, lambda g: False, 4)] == []
        assert proc.poll() is None
        config.write_text(good)
        # Unchanged cameras keep running through a reload; an edited threshold in the
        # calibration file takes effect.
        cal_path = tmp_path / "state" / "calibration" / "cam.json"
        cal = json.loads(cal_path.read_text())
        cal["threshold"]["value"] = 42.5
        cal_path.write_text(json.dumps(cal))
        proc.send_signal(signal.SIGHUP)
        same = collect(sub, lambda g: any("42.50" in m.header.get("detail", "") for m in g), 30)
        assert any("42.50" in m.header.get("detail", "") for m in same), same
        assert "offline" not in [m.header["state"] for m in same]
        # A calibration file that does not fit the camera changes nothing: the one in use stays.
        cal["grid"]["tiles"] = [9, 9]
        cal_path.write_text(json.dumps(cal))
        proc.send_signal(signal.SIGHUP)
        assert [m.header["state"] for m in collect(sub, lambda g: False, 4)] == []
        # The reloaded config renames nothing but changes the tile grid: the saved calibration
        # no longer fits, so the camera calibrates again, announced on the same socket.
        config.write_text(config.read_text().replace("- 4\n  - 3", "- 3\n  - 2"))
        proc.send_signal(signal.SIGHUP)
        after = collect(sub, lambda g: any(m.header.get("state") == "calibrating" for m in g), 60)
        states = [m.header["state"] for m in after]
        assert "offline" in states and "calibrating" in states, states
        assert proc.poll() is None
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = proc.stderr.read()
    assert "reload failed, keeping the running config" in log and "gone.avi" in log
    assert "keeping the calibration in use" in log


def test_a_camera_that_never_opens_is_reported_dead_everywhere(tmp_path, tiny_bundle):
    """An RTSP camera on a port where nothing listens, with no calibration yet: heartbeat,
    stats, metrics and the view say reconnecting, not calibrating."""
    import urllib.request

    from pathwatch.edge.view import Snapshot, render
    from rich.console import Console

    port, dead = free_port(), free_port()
    config = daemon_config(tmp_path, tiny_bundle, f"rtsp://127.0.0.1:{dead}/live", metrics_port=port)
    proc = launch(config)
    sub = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", None, topics=("heartbeat", "stats"))
    try:
        seen = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 2:
            for m in sub.events(timeout_s=1.0):
                cam = (m.header.get("cameras") or {}).get("cam", {})
                if cam.get("source") == "reconnecting":
                    seen[m.topic] = m.header
        assert set(seen) == {"heartbeat", "stats"}, _log(proc)
        for header in seen.values():
            cam = header["cameras"]["cam"]
            assert cam["state"] == "reconnecting" and cam["lifecycle"] == "collecting", cam
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'pathwatch_camera_online{camera="cam"} 0.0' in text
        snap = Snapshot()
        snap.apply("heartbeat", seen["heartbeat"])
        console = Console(width=120, record=True)
        console.print(render(snap))
        screen = console.export_text()
        assert "reconnecting" in screen and "calibrating" not in screen, screen
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)

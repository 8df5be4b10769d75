"""Faults and corrections a real daemon meets: a SIGKILL while an alert is open, a camera that
dies during an alert, a network camera process killed and restarted, a journal locked by
another process or on a disk that fills, client keys revoked on SIGHUP, the privacy of what it
records, and an alert a person calls normal. Real processes, sockets, files and signals."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from skimage import data

from conftest import daemon_config
from pathwatch.edge.journal import Journal
from pathwatch.edge.subscriber import AlertSubscriber
from test_daemon import _log, collect, launch

FPS = 10


def write_clip_ending_on_an_object(path, normal=50, anomaly=100):
    """Normal frames of a fixed view, then a checkerboard that is still in view at the end."""
    base = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (160, 120)).astype(np.float32)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 120))
    rng = np.random.default_rng(0)
    patch = 255.0 * (np.indices((40, 40)).sum(0) % 8 < 4)
    for i in range(normal + anomaly):
        img = base + rng.normal(0, 2.0, base.shape)
        if i >= normal:
            img[40:80, 60:100] = patch[..., None]
        writer.write(np.clip(img, 0, 255).astype(np.uint8))
    writer.release()
    return path


def _subscriber(tmp_path, since=0):
    return AlertSubscriber(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/replay.sock",
                           since=since)


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _open_alerts(tmp_path):
    journal = Journal(tmp_path / "state" / "journal.sqlite", reader=True)
    try:
        return journal.open_alerts()
    finally:
        journal.close()


def _first(events, state):
    return next((m.header for m in events if m.header.get("state") == state), None)


def test_an_alert_open_at_a_sigkill_is_ended_at_the_next_start(tmp_path, tiny_bundle):
    video = write_clip_ending_on_an_object(tmp_path / "clip.avi")
    config = daemon_config(tmp_path, tiny_bundle, str(video), on_end="loop", threshold=50.0)
    proc = launch(config)
    sub = _subscriber(tmp_path)
    try:
        got = collect(sub, lambda g: _first(g, "start") is not None, timeout=90)
        start = _first(got, "start")
        assert start, f"no alert; daemon log:\n{_log(proc)}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    assert [h["alert_id"] for h in journal.open_alerts()] == [start["alert_id"]]
    journal.close()

    proc = launch(config)  # the same journal: the open alert is closed at start-up
    try:
        assert _wait(lambda: _open_alerts(tmp_path) == [], 60), _log(proc)
        sub = _subscriber(tmp_path, since=start["seq"])  # replays it from the journal
        got = collect(sub, lambda g: any(m.header.get("alert_id") == start["alert_id"]
                                         and m.header["state"] == "end" for m in g), timeout=30)
        sub.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    end = next((m.header for m in got if m.header.get("alert_id") == start["alert_id"]
                and m.header["state"] == "end"), None)
    assert end is not None, _log(proc)
    assert "killed or crashed" in end["reason"] and end["camera"] == "cam"
    assert end["started_at"] == start["started_at"] and end["duration_s"] >= 0
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    assert journal.open_alerts() == []  # the SIGTERM closed any later alert too
    journal.close()


def test_a_camera_that_dies_during_an_alert_ends_it_with_the_reason(tmp_path, tiny_bundle):
    video = write_clip_ending_on_an_object(tmp_path / "clip.avi")
    config = daemon_config(tmp_path, tiny_bundle, str(video), on_end="loop", threshold=50.0)
    proc = launch(config)
    sub = _subscriber(tmp_path)
    try:
        # An alert raised early in the object's stretch (not one the end of a pass cuts
        # short as the clip loops back to normal frames), then the camera goes away: the clip
        # plays on to its end on the object and cannot be opened again.
        got = collect(sub, lambda g: any(m.header["state"] == "start" and
                                         m.header["frame_index"] % 150 < 75 for m in g), 120)
        assert _first(got, "start"), f"no alert; daemon log:\n{_log(proc)}"
        os.rename(video, tmp_path / "gone.avi")
        got = [m for m in got if m.header["alert_id"] == got[-1].header["alert_id"]]
        got += collect(sub, lambda g: _first(g, "end") is not None, timeout=30)
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    end = _first(got, "end")
    assert end is not None and end["reason"] == "the camera went reconnecting", end


def test_the_journal_is_private_to_its_owner(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.append("cam", "alert.cam", {"camera": "cam", "state": "start", "alert_id": "a"},
                   [b"a snapshot"])
    journal.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)  # made by an older version: tightened at the next open
    Journal(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_open_alerts_are_those_without_an_end(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    for camera, alert_id, state in [("a", "a1", "start"), ("a", "a1", "update"), ("a", "a1", "end"),
                                    ("a", "a2", "start"), ("b", "b1", "start"),
                                    ("b", "b1", "update")]:
        journal.append(camera, f"alert.{camera}", {"camera": camera, "alert_id": alert_id,
                                                   "state": state, "time": time.time()})
    assert [(h["alert_id"], h["state"]) for h in journal.open_alerts()] == \
        [("a2", "start"), ("b1", "update")]
    journal.close()


def test_an_alert_marked_normal_is_learned_and_does_not_come_back(tmp_path, tiny_bundle):
    # A clip whose ending (an object in view) is, for this camera, normal. Its first alert
    # is marked normal; the daemon picks the refitted calibration up by itself and the same
    # sight, next time round, raises nothing.
    video = write_clip_ending_on_an_object(tmp_path / "clip.avi", normal=60, anomaly=40)
    config = daemon_config(tmp_path, tiny_bundle, str(video), on_end="loop")
    proc = launch(config)
    sub = _subscriber(tmp_path)
    try:
        got = collect(sub, lambda g: _first(g, "end") is not None, timeout=120)
        end = _first(got, "end")
        assert end is not None, f"no alert; daemon log:\n{_log(proc)}"
        status = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", None, topics=("status.",))
        res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "feedback",
                              end["alert_id"], "normal", "--config", str(config)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert f"alert {end['alert_id']} marked normal" in res.stdout
        cal = json.loads((tmp_path / "state" / "calibration" / "cam.json").read_text())
        assert cal["frames"]["feedback"][0]["alert_id"] == end["alert_id"]
        assert cal["frames"]["declared_normal"] == cal["frames"]["feedback"][0]["frames"] > 0
        again = subprocess.run([sys.executable, "-m", "pathwatch.cli", "feedback",
                                end["alert_id"], "normal", "--config", str(config)],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "already part of" in again.stderr
        reloaded = collect(status, lambda g: any("reloaded" in m.header.get("detail", "")
                                                 for m in g), timeout=30)
        status.close()
        assert reloaded, _log(proc)
        at = next(m.header["time"] for m in reloaded if "reloaded" in m.header["detail"])
        # Two more passes of the clip (10 s each): the object comes back, no alert does.
        new = lambda g: [m for m in g if m.header["state"] == "start" and m.header["time"] > at]
        later = collect(sub, new, timeout=22)
        assert not new(later), f"{new(later)[0].header}\n{_log(proc)}"
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_a_locked_journal_does_not_stop_the_daemon_or_lose_an_alert(tmp_path, tiny_bundle):
    from test_publisher import LOCKER

    video = write_clip_ending_on_an_object(tmp_path / "clip.avi")
    config = daemon_config(tmp_path, tiny_bundle, str(video), on_end="loop", threshold=50.0)
    proc = launch(config)
    sub = _subscriber(tmp_path)
    journal = tmp_path / "state" / "journal.sqlite"
    locker = None
    try:
        assert _wait(lambda: journal.exists() and (tmp_path / "replay.sock").exists(), 60)
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(journal)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        got = collect(sub, lambda g: sum(m.header["state"] == "end" for m in g) >= 1, 120)
        unjournaled = [m.header for m in got if m.header.get("journaled") is False]
        assert unjournaled and proc.poll() is None, _log(proc)
        locker.communicate("release\n", timeout=10)
        assert _wait(lambda: _journaled(journal) >= max(
            h["seq"] for h in unjournaled), 30), _log(proc)
    finally:
        sub.close()
        if locker is not None and locker.poll() is None:
            locker.kill()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    stored = Journal(journal, reader=True)
    seqs = [e.header["seq"] for e in stored.since(0)]
    stored.close()
    assert seqs == list(range(1, len(seqs) + 1))  # every event, in order, no hole


def _journaled(path) -> int:
    journal = Journal(path, reader=True)
    try:
        return max((e.header["seq"] for e in journal.since(0)), default=0)
    finally:
        journal.close()


def test_sighup_reloads_client_keys_and_a_revoked_key_loses_its_open_connection(
        tmp_path, tiny_bundle):
    import shutil

    import yaml

    from pathwatch.edge.security import client_options, generate_keys
    from pathwatch.edge.subscriber import ReplayUnavailable

    generate_keys(tmp_path / "server", "server")
    for name in ("kept", "revoked", "newcomer"):
        generate_keys(tmp_path / "clients", name)
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("kept", "revoked"):
        shutil.copy(tmp_path / "clients" / f"{name}.key", authorized)
    config = daemon_config(tmp_path, tiny_bundle, "demo", fps=5.0)
    cfg = yaml.safe_load(config.read_text())
    cfg["security"] = {"curve": True, "server_key": str(tmp_path / "server" / "server.key_secret"),
                       "authorized_clients": str(authorized)}
    config.write_text(yaml.safe_dump(cfg))

    def client(name):
        secure = client_options(tmp_path / "server" / "server.key",
                                tmp_path / "clients" / f"{name}.key_secret")
        return AlertSubscriber(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/replay.sock",
                               topics=("heartbeat",), secure=secure, replay_timeout_s=1.0)

    def hears(sub, seconds=4.0):
        return any(m.topic == "heartbeat" for m in sub.events(timeout_s=seconds))

    proc = launch(config)
    subs = {name: client(name) for name in ("kept", "revoked", "newcomer")}
    try:
        assert _wait(lambda: hears(subs["kept"], 1.0), 90), _log(proc)
        assert hears(subs["revoked"]) and not hears(subs["newcomer"], 2.0)
        (authorized / "revoked.key").unlink()
        shutil.copy(tmp_path / "clients" / "newcomer.key", authorized)
        proc.send_signal(signal.SIGHUP)
        time.sleep(2.0)
        list(subs["revoked"].events(timeout_s=0.5))  # drain what was queued before the cut
        assert not hears(subs["revoked"]), "a revoked key kept its open connection"
        with pytest.raises(ReplayUnavailable):
            subs["revoked"].replay(0)
        assert hears(subs["kept"]), "an authorised client did not reconnect after the cut"
        subs["newcomer"].close()
        subs["newcomer"] = client("newcomer")  # its first try was refused: a new connection
        assert hears(subs["newcomer"])
        assert subs["newcomer"].replay(0) is not None
    finally:
        for sub in subs.values():
            sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert "client keys reloaded" in proc.stderr.read()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MiB tmpfs the test can fill, where the machine lets it mount one (root in a VM or
    a privileged container); skipped elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or res.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory) -> object:
    """Take every free byte of the filesystem under `directory`; returns the filler's path."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_delays_journal_writes_but_loses_no_alert(tmp_path, tiny_bundle,
                                                              small_filesystem):
    import yaml

    video = write_clip_ending_on_an_object(tmp_path / "clip.avi")
    config = daemon_config(tmp_path, tiny_bundle, str(video), on_end="loop", threshold=50.0)
    cfg = yaml.safe_load(config.read_text())
    journal = small_filesystem / "journal.sqlite"
    cfg["journal"] = {"path": str(journal)}
    config.write_text(yaml.safe_dump(cfg))
    proc = launch(config)
    sub = _subscriber(tmp_path)
    try:
        assert _wait(lambda: journal.exists() and (tmp_path / "replay.sock").exists(), 60)
        filler = _fill(small_filesystem)
        got = collect(sub, lambda g: sum(m.header["state"] == "end" for m in g) >= 1, 120)
        unjournaled = [m.header for m in got if m.header.get("journaled") is False]
        assert unjournaled and proc.poll() is None, _log(proc)
        filler.unlink()  # room again: the kept events are written at the next retry
        assert _wait(lambda: _journaled(journal) >= max(h["seq"] for h in unjournaled), 30), \
            _log(proc)
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    err = proc.stderr.read()
    assert "cannot be written" in err and "writable again" in err, err
    stored = Journal(journal, reader=True)
    seqs = [e.header["seq"] for e in stored.since(0)]
    stored.close()
    assert seqs == list(range(1, len(seqs) + 1))  # every event, in order, no hole


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _camera_process(port: int) -> subprocess.Popen:
    script = os.path.join(os.path.dirname(__file__), "mjpeg_camera.py")
    cam = subprocess.Popen([sys.executable, script, str(port), "10"], stdout=subprocess.PIPE,
                           text=True)
    assert cam.stdout.readline().strip() == "ready"
    return cam


def test_a_network_camera_killed_and_restarted_comes_back_by_itself(tmp_path, tiny_bundle):
    import yaml

    port = _free_port()
    camera = _camera_process(port)
    config = daemon_config(tmp_path, tiny_bundle, f"http://127.0.0.1:{port}/stream.mjpg", fps=5.0)
    cfg = yaml.safe_load(config.read_text())
    cfg["capture"] = {"read_timeout_s": 2.0, "reconnect_after_s": 1.0, "backoff_max_s": 2.0}
    config.write_text(yaml.safe_dump(cfg))
    proc = launch(config)
    sub = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", None, topics=("status.",))

    def states(until, timeout):
        got = collect(sub, lambda g: until([m.header["state"] for m in g]), timeout)
        return [m.header["state"] for m in got]

    try:
        assert "online" in states(lambda s: "online" in s, 90), _log(proc)
        camera.kill()  # SIGKILL: the stream stops mid-frame, the port refuses
        camera.wait(timeout=10)
        assert "reconnecting" in states(lambda s: "reconnecting" in s, 30), _log(proc)
        camera = _camera_process(port)
        assert "online" in states(lambda s: "online" in s, 60), _log(proc)
        assert proc.poll() is None
    finally:
        sub.close()
        camera.kill()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_a_dead_network_camera_is_reported_in_pathwatchs_log_only(tmp_path, tiny_bundle):
    """No raw OpenCV/FFmpeg lines on each failed open: the camera's status says it once."""
    port = _free_port()  # nothing listens there
    config = daemon_config(tmp_path, tiny_bundle, f"http://127.0.0.1:{port}/stream.mjpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    proc = subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config", str(config),
                             "--duration", "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "camera cam: reconnecting" in err or "camera cam: connecting" in err, err
    raw = [line for line in (out + err).splitlines()
           if line.startswith(("[tcp @", "[http @", "[ WARN", "[ERROR"))]
    assert raw == [], raw

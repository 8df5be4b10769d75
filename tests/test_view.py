"""The live view renders from a snapshot; snapshots are built from real published messages."""
import time

from rich.console import Console

from pathwatch.edge.alerts import AlertPolicy, AlertTracker
from pathwatch.edge.journal import Journal
from pathwatch.edge.publisher import AlertBus, Publisher
from pathwatch.edge.subscriber import AlertSubscriber
from pathwatch.edge.view import Snapshot, render


def text_of(renderable) -> str:
    console = Console(width=100, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_waiting_then_silent_then_live():
    snap = Snapshot(endpoint="tcp://127.0.0.1:5556", started=0.0)
    waiting = text_of(render(snap, now=5.0))
    assert "waiting for the daemon at tcp://127.0.0.1:5556" in waiting
    assert "If the daemon uses CURVE, pass --server-key and --client-key" in waiting
    keyed = text_of(render(Snapshot(endpoint="x", started=0.0, curve=True), now=5.0))
    assert "a key the daemon does not authorise gets nothing" in keyed
    snap.apply("heartbeat", {"cameras": {"gate": {"state": "online", "camera_fps": 10.0,
                                                  "process_fps": 5.0, "skipped": 7,
                                                  "latency_p50_ms": 80.0, "latency_p99_ms": 140.0,
                                                  "threshold": 6.0}}}, now=10.0)
    for i in range(20):
        snap.apply("score.gate", {"camera": "gate", "score": 1.0 + (8.0 if i > 15 else 0.0),
                                  "threshold": 6.0, "tiles": [0.5, 7.0, 1.0, 2.0],
                                  "grid": [2, 2]}, now=10.0 + i)
    snap.apply("heartbeat", {"cameras": {}}, now=29.5)
    live = text_of(render(snap, now=30.0))
    assert "connected to" in live and "gate" in live
    assert "camera 10.0  processed 5.0  skipped 0.0 (7 frames)" in live and "p50 80 ms  p99 140 ms" in live
    assert "9.00 / threshold 6.00" in live and "█" in live
    silent = text_of(render(snap, now=40.0))
    assert "daemon silent for 10 s" in silent


def test_snapshot_from_real_messages(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    pub = Publisher("tcp://127.0.0.1:*")
    bus = AlertBus(journal, pub)
    sub = AlertSubscriber(pub.endpoint, None, topics=("alert.", "status.", "heartbeat"))
    snap = Snapshot(endpoint=pub.endpoint)
    deadline = time.monotonic() + 10
    while snap.last_heartbeat is None and time.monotonic() < deadline:
        bus.heartbeat({"cameras": {"door": {"state": "online"}}})
        for m in sub.events(timeout_s=0.2):
            snap.apply(m.topic, m.header)
    tracker = AlertTracker("door", AlertPolicy(trigger_frames=1, window_frames=1))
    for e in tracker.update(time.time(), 12.5, 3.0, [2, 1]):
        bus.alert(e, {}, {})
    bus.status("door", "reconnecting", "no frame for 5.0 s")
    got = 0
    for m in sub.events(timeout_s=2.0):
        snap.apply(m.topic, m.header)
        got += 1
        if got == 2:
            break
    screen = text_of(render(snap))
    assert "door" in screen and "reconnecting" in screen and "12.50" in screen
    sub.close()
    pub.close()
    journal.close()


def test_keys_focus_one_camera_pause_and_quit():
    snap = Snapshot(endpoint="x", started=0.0)
    snap.apply("heartbeat", {"cameras": {"gate": {"state": "online", "skipped_fps": 5.0,
                                                  "skipped": 40},
                                         "dock": {"state": "reconnecting"}}}, now=1.0)
    for cam, score in (("gate", 9.0), ("dock", 2.0)):
        snap.apply(f"alert.{cam}", {"camera": cam, "alert_id": f"{cam}-1", "state": "start",
                                    "peak_score": score, "duration_s": 0.0, "seq": 1}, now=1.0)
    both = text_of(render(snap, now=1.5))
    assert "gate" in both and "dock" in both and "2 of 2 cameras" in both
    assert "skipped 5.0 (40 frames)" in both
    snap.key("n")  # cameras in name order: dock first
    dock = text_of(render(snap, now=1.5))
    assert snap.focus == "dock" and "1 of 2 cameras" in dock
    assert "gate" not in dock and "9.00" not in dock and "2.00" in dock
    snap.key("\t")
    assert snap.focus == "gate"
    snap.key("n")  # past the last camera: all of them again
    assert snap.focus is None
    snap.key("n"), snap.key("a")
    assert snap.focus is None
    snap.key("p")
    assert snap.paused and "[paused]" in text_of(render(snap, now=1.5))
    snap.key("P")
    assert not snap.paused and not snap.quit
    snap.key("q")
    assert snap.quit


def test_keys_from_a_real_terminal_ignore_escape_sequences():
    import os
    import pty

    from pathwatch.edge.view import Keys

    master, slave = pty.openpty()
    with os.fdopen(slave, "r") as stream, Keys(stream) as keys:
        assert keys.saved is not None  # cbreak mode on a terminal
        os.write(master, b"p")
        time.sleep(0.05)
        assert keys.pressed() == "p"
        os.write(master, b"\x1b[A")  # an arrow key is not "a"
        time.sleep(0.05)
        assert keys.pressed() == ""
    os.close(master)
    assert Keys(open(os.devnull)).__enter__().pressed() == ""  # not a terminal: no keys


def test_the_score_row_says_how_rare_the_score_is_for_a_normal_frame():
    snap = Snapshot(endpoint="x", started=0.0)
    snap.apply("heartbeat", {"cameras": {"gate": {"state": "alerting", "source": "online",
                                                  "lifecycle": "scoring", "threshold": 6.0}}}, now=1.0)
    snap.apply("score.gate", {"camera": "gate", "score": 40.0, "threshold": 6.0,
                              "p_normal": 2e-7, "tiles": [], "grid": [0, 0]}, now=1.0)
    screen = text_of(render(snap, now=1.5))
    assert "normal frames score this high once in 5e+06 frames" in screen
    assert "source online, calibration scoring" in screen

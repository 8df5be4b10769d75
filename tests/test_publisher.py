"""The alert stream over real ZeroMQ sockets and a real SQLite journal: the wire format,
journal-then-publish, replay, gap filling, slow subscribers, errors, and `pathwatch tail`."""
import io
import json
import re
import threading
import time

import cv2
import numpy as np
import pytest
import zmq

from pathwatch.edge.alerts import AlertPolicy, AlertTracker
from pathwatch.edge.journal import Journal
from pathwatch.edge.publisher import (AlertBus, Publisher, PublisherError, ReplayServer, encode_jpeg,
                            encode_png)
from pathwatch.edge.subscriber import AlertSubscriber, tail_main

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SNAPSHOT = encode_jpeg(np.full((48, 64, 3), 90, np.uint8))
HEATMAP = encode_png(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64).astype(np.uint8))


@pytest.fixture
def stream(tmp_path):
    """A journal, a publisher and a replay server, as the daemon wires them."""
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    publisher = Publisher("tcp://127.0.0.1:*", sndhwm=100)
    replay = ReplayServer("tcp://127.0.0.1:*", path)
    replay.start()
    yield AlertBus(journal, publisher), publisher.endpoint, replay.endpoint
    replay.stop()
    publisher.close()
    journal.close()


def alert_cycle(bus, camera="cam", t0=1_700_000_000.0, attachments=True):
    """start, update, update, end from the real state machine, through the bus."""
    tracker = AlertTracker(camera, AlertPolicy(trigger_frames=2, window_frames=3,
                                               update_interval_s=0.5, quiet_s=0.5, cooldown_s=0))
    headers = []
    for i, score in enumerate([5, 5, 6, 7, 8, 0, 0, 0, 0]):
        for event in tracker.update(t0 + i * 0.3, score, 1.0, [1, 0], i):
            files = {"snapshot.jpg": SNAPSHOT, "heatmap.png": HEATMAP} \
                if attachments and event.state != "end" else {}
            headers.append(bus.alert(event, {"latency_ms": 12.5}, files))
    assert [h["state"] for h in headers] == ["start", "update", "update", "end"]
    return headers


def collect(sub, n, timeout=15.0, bus=None):
    """Read until n messages arrived (or the deadline passed); with `bus`, heartbeat between
    reads as the daemon does."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if bus is not None:
            bus.heartbeat()
        for m in sub.events(timeout_s=0.2):
            got.append(m)
            if len(got) >= n:
                break
    return got


def wait_connected(bus, sub):
    """PUB/SUB joins asynchronously: send heartbeats until the subscriber hears one."""
    deadline = time.monotonic() + 10
    while sub.last_message_at is None and time.monotonic() < deadline:
        bus.heartbeat()
        assert list(sub.events(timeout_s=0.05)) == []
    assert sub.last_message_at is not None, "subscriber never connected"


def seqs(messages):
    return [(m.header["camera"], m.header["seq"]) for m in messages]


def test_a_subscriber_receives_start_update_end_with_consecutive_seq_and_attachments(stream):
    bus, pub, replay = stream
    sub = AlertSubscriber(pub, replay)
    wait_connected(bus, sub)
    sent = alert_cycle(bus)
    got = collect(sub, len(sent))
    sub.close()
    assert [m.header for m in got] == sent
    assert seqs(got) == [("cam", 1), ("cam", 2), ("cam", 3), ("cam", 4)]
    start = got[0]
    assert start.topic == "alert.cam"
    h = start.header
    assert h["schema"] == 1 and h["kind"] == "alert" and ISO.match(h["time"])
    assert h["state"] == "start" and h["score"] == 5 and h["threshold"] == 1 and h["tile"] == [1, 0]
    assert h["peak_score"] == 5 and h["duration_s"] == 0 and h["latency_ms"] == 12.5
    assert len({m.header["alert_id"] for m in got}) == 1
    assert h["attachments"] == ["snapshot.jpg", "heatmap.png"]
    assert start.attachments == [SNAPSHOT, HEATMAP]
    assert got[-1].header["attachments"] == [] and got[-1].attachments == []
    assert got[-1].header["reason"] == "quiet" and got[-1].header["peak_score"] == 8


def test_the_wire_format_of_every_kind(stream):
    bus, pub, _ = stream
    raw = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SUBSCRIBE, b"")
    raw.connect(pub)
    deadline = time.monotonic() + 10
    while not raw.poll(50) and time.monotonic() < deadline:
        bus.heartbeat()
    while raw.poll(100):
        raw.recv_multipart()
    alert_cycle(bus, "door")
    bus.score("door", {"score": 0.5, "threshold": 1.0, "tile": [0, 0]})
    bus.status("door", "online", "opened")
    bus.heartbeat({"uptime_s": 3.0})
    frames = []
    while len(frames) < 7 and raw.poll(5000):
        frames.append(raw.recv_multipart())
    raw.close(0)
    topics = [f[0] for f in frames]
    assert topics == [b"alert.door"] * 4 + [b"score.door", b"status.door", b"heartbeat"]
    for parts in frames:
        header = json.loads(parts[1].decode("utf-8"))
        assert header["schema"] == 1 and ISO.match(header["time"])
        assert len(parts) == 2 + len(header.get("attachments", []))
    score, status, beat = (json.loads(f[1]) for f in frames[4:])
    assert score["kind"] == "score" and score["camera"] == "door" and score["score"] == 0.5
    assert status == {**status, "kind": "status", "camera": "door", "state": "online",
                      "detail": "opened"}
    assert beat["kind"] == "heartbeat" and beat["camera"] is None
    assert beat["last_seq"] == {"door": 4} and beat["uptime_s"] == 3.0


def test_a_late_subscriber_recovers_earlier_events_then_follows_live(stream):
    bus, pub, replay = stream
    sent = alert_cycle(bus) + alert_cycle(bus, camera="other") + alert_cycle(bus, t0=1.8e9)
    sub = AlertSubscriber(pub, replay, since=0)
    got = collect(sub, len(sent))
    assert seqs(got) == [(h["camera"], h["seq"]) for h in sent]
    assert got[0].attachments == [SNAPSHOT, HEATMAP] and sub.recovered == len(sent)
    # After the history, live events follow with nothing repeated and nothing skipped.
    wait_connected(bus, sub)
    more = alert_cycle(bus, camera="other", t0=1.9e9)
    got = collect(sub, len(more))
    sub.close()
    assert seqs(got) == [("other", 5), ("other", 6), ("other", 7), ("other", 8)]


def test_since_per_camera_replays_only_what_is_newer(stream):
    bus, pub, replay = stream
    alert_cycle(bus, "a")
    alert_cycle(bus, "b")
    sub = AlertSubscriber(pub, replay, since={"a": 3, "b": 4})
    assert seqs(collect(sub, 1)) == [("a", 4)]
    sub.close()


def test_gaps_are_filled_from_the_journal(stream):
    bus, pub, replay = stream
    sub = AlertSubscriber(pub, replay)
    wait_connected(bus, sub)
    alert_cycle(bus)
    assert len(collect(sub, 4)) == 4
    # Events journaled while this subscriber was not listening: published on a socket it is
    # not connected to.
    elsewhere = Publisher("tcp://127.0.0.1:*")
    away = AlertBus(bus.journal, elsewhere)
    alert_cycle(away, t0=1.75e9)  # seq 5..8
    # No new alert: the heartbeat's last_seq shows the subscriber is behind.
    bus.heartbeat()
    got = collect(sub, 4)
    assert seqs(got) == [("cam", s) for s in (5, 6, 7, 8)]
    assert got[0].attachments == [SNAPSHOT, HEATMAP]
    # A live alert whose seq jumps: the events between come from replay, first.
    missed = alert_cycle(away, t0=1.76e9)  # seq 9..12
    tracker = AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1))
    live = bus.alert(tracker.update(1.77e9, 9.0, 1.0, [0, 0])[0], {}, {})
    got = collect(sub, 5)
    assert seqs(got) == [("cam", s) for s in (9, 10, 11, 12, 13)]
    assert [m.header for m in got] == missed + [live]
    assert sub.recovered == 8 and sub.missed == 0
    elsewhere.close()
    sub.close()


def test_a_live_only_subscriber_does_not_replay_history(stream):
    bus, pub, replay = stream
    alert_cycle(bus)
    sub = AlertSubscriber(pub, replay)
    wait_connected(bus, sub)  # the heartbeat tells it where the camera stands
    tracker = AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1))
    bus.alert(tracker.update(1.8e9, 3.0, 1.0, [0, 0])[0], {}, {})
    assert seqs(collect(sub, 1)) == [("cam", 5)]
    assert list(sub.events(timeout_s=0.3)) == [] and sub.recovered == 0
    sub.close()


def test_a_backlog_subscriber_starts_with_each_cameras_last_events(stream):
    bus, pub, replay = stream
    alert_cycle(bus)
    alert_cycle(bus, t0=1_700_000_100.0)  # seq 1..8
    sub = AlertSubscriber(pub, replay, backlog=3)
    assert seqs(collect(sub, 3, bus=bus)) == [("cam", 6), ("cam", 7), ("cam", 8)]
    tracker = AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1))
    bus.alert(tracker.update(1.8e9, 3.0, 1.0, [0, 0])[0], {}, {})
    assert seqs(collect(sub, 1)) == [("cam", 9)]
    assert sub.recovered == 3 and sub.missed == 0
    sub.close()


def test_a_subscriber_that_overflows_gets_everything_back(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    publisher = Publisher(f"ipc://{tmp_path}/pub.sock", sndhwm=2)
    replay = ReplayServer(f"ipc://{tmp_path}/replay.sock", path)
    replay.start()
    bus = AlertBus(journal, publisher)
    sub = AlertSubscriber(publisher.endpoint, replay.endpoint, rcvhwm=2)
    try:
        wait_connected(bus, sub)
        big = bytes(200_000)
        tracker = AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1,
                                                  update_interval_s=0, quiet_s=1e9))
        for i in range(100):  # 20 MB while the subscriber reads nothing
            for event in tracker.update(1e9 + i, 5.0, 1.0, [0, 0], i):
                bus.alert(event, {}, {"snapshot.jpg": big})
        got = collect(sub, 100, timeout=30, bus=bus)
        assert seqs(got) == [("cam", s) for s in range(1, 101)]
        assert all(m.attachments == [big] for m in got)
        assert sub.recovered > 0 and sub.missed == 0  # the overflow was refilled from replay
    finally:
        sub.close()
        replay.stop()
        publisher.close()
        journal.close()


def test_a_subscriber_that_never_reads_does_not_block_publishing(stream):
    bus, pub, _ = stream
    ctx = zmq.Context.instance()
    lazy = ctx.socket(zmq.SUB)
    lazy.setsockopt(zmq.LINGER, 0)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.SUBSCRIBE, b"")
    lazy.connect(pub)
    healthy = AlertSubscriber(pub, None, topics=("status.",))
    wait_connected(bus, healthy)
    while not lazy.poll(50):  # the lazy one is connected too
        bus.heartbeat()
    blob = bytes(200_000)
    done = threading.Event()

    def flood():
        for _ in range(3000):  # 600 MB
            bus.publisher.send("score.cam", {"schema": 1, "kind": "score"}, [blob])
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(60), "publishing blocked on a subscriber that never reads"
    assert bus.publisher.sent + bus.publisher.dropped >= 3000
    # The full queue of one subscriber costs the others nothing.
    bus.status("cam", "online")
    assert [m.header["state"] for m in collect(healthy, 1)] == ["online"]
    received = 0
    while lazy.poll(200):
        lazy.recv_multipart()
        received += 1
    assert received < 1000  # the rest was dropped for the lazy subscriber alone
    lazy.close(0)
    healthy.close()


def test_replay_answers_pages_and_malformed_requests(stream):
    bus, _, replay = stream
    alert_cycle(bus, "a")
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(replay)

    def ask(*frames):
        req.send_multipart(list(frames))
        assert req.poll(5000), "replay endpoint did not answer"
        return req.recv_multipart()

    for body in (b"not json", b"[1, 2]", b'{"since": "yesterday"}', b'{"since": {"a": "x"}}',
                 b'{"since": 0, "limit": 0}', b'{"since": 0, "camera": ["a"]}',
                 b'{"since": 0, "from": 3}', b"\xff\xfe"):
        reply = ask(body)
        assert len(reply) == 1 and json.loads(reply[0])["error"].startswith("bad replay request")
    assert "error" in json.loads(ask(b"{}", b"{}")[0])
    # Still serving: a page of two events with their attachments, and more to come.
    reply = ask(json.dumps({"since": 1, "limit": 2}).encode())
    summary = json.loads(reply[0])
    assert summary == {"count": 2, "more": True, "last_seq": {"a": 4}}
    first = json.loads(reply[1])
    assert first["seq"] == 2 and reply[2:4] == [SNAPSHOT, HEATMAP] and json.loads(reply[4])["seq"] == 3
    req.close(0)
    # A DEALER client (no empty delimiter) is answered as well.
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(replay)
    dealer.send(json.dumps({"since": 3, "camera": "a"}).encode())
    assert dealer.poll(5000)
    reply = dealer.recv_multipart()
    assert json.loads(reply[0])["count"] == 1 and json.loads(reply[1])["state"] == "end"
    dealer.close(0)


def test_a_subscriber_pages_through_a_long_replay(tmp_path, stream):
    bus, pub, _ = stream
    for cam in ("a", "a", "b"):
        alert_cycle(bus, cam)  # a: 1..8, then b: 1..4
    small = ReplayServer("tcp://127.0.0.1:*", tmp_path / "journal.sqlite", max_limit=3,
                         max_reply_bytes=len(SNAPSHOT) + len(HEATMAP) + 10)
    small.start()
    sub = AlertSubscriber(pub, small.endpoint, since=2)
    got = collect(sub, 8, timeout=10)
    assert seqs(got) == [("a", s) for s in range(3, 9)] + [("b", 3), ("b", 4)]
    assert all(len(m.attachments) == len(m.header["attachments"]) for m in got)
    sub.close()
    small.stop()
    assert not small._thread.is_alive()


def test_an_unreachable_replay_endpoint_is_reported_not_waited_on(tmp_path, stream):
    bus, pub, _ = stream
    alert_cycle(bus)
    nobody = f"ipc://{tmp_path}/nobody.sock"
    sub = AlertSubscriber(pub, nobody, since=0, replay_timeout_s=0.3, replay_retry_s=60)
    notice = collect(sub, 1)[0]
    assert notice.topic == "missed" and notice.header["kind"] == "missed"
    assert nobody in notice.header["reason"] and sub.replay_ok is False
    # The first heartbeat shows camera `cam` 4 events ahead: reported at once (replay is not
    # asked again within replay_retry_s), not waited on.
    gap = collect(sub, 1, timeout=5, bus=bus)[0]
    assert gap.topic == "missed.cam" and (gap.header["from_seq"], gap.header["to_seq"]) == (1, 4)
    assert sub.missed == 4
    tracker = AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1))
    bus.alert(tracker.update(1.8e9, 3.0, 1.0, [0, 0])[0], {}, {})
    assert seqs(collect(sub, 1, timeout=5)) == [("cam", 5)]
    sub.close()


def test_binding_a_used_or_bad_address_says_which(stream, tmp_path):
    _, pub, replay = stream
    with pytest.raises(PublisherError, match=re.escape(pub)):
        Publisher(pub)
    with pytest.raises(PublisherError, match="tcp://nowhere:x"):
        Publisher("tcp://nowhere:x")
    with pytest.raises(PublisherError, match=re.escape(replay)):
        ReplayServer(replay, tmp_path / "journal.sqlite")


def test_tail_prints_one_json_line_per_event(stream):
    bus, pub, replay = stream
    sent = alert_cycle(bus)
    out = io.StringIO()
    assert tail_main(pub, replay, since=0, out=out, stop_after=len(sent), timeout_s=10) == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3, 4]
    assert lines[0]["topic"] == "alert.cam" and lines[0]["state"] == "start"
    assert lines[0]["attachment_bytes"] == [len(SNAPSHOT), len(HEATMAP)]
    assert lines[-1]["attachment_bytes"] == []


def test_image_encoders_round_trip_and_refuse_bad_input():
    frame = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    assert cv2.imdecode(np.frombuffer(encode_jpeg(frame, 95), np.uint8), cv2.IMREAD_COLOR).shape \
        == frame.shape
    gray = frame[:, :, 0]
    assert np.array_equal(cv2.imdecode(np.frombuffer(encode_png(gray), np.uint8),
                                       cv2.IMREAD_UNCHANGED), gray)
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(frame.astype(np.float32))
    with pytest.raises(ValueError, match="image"):
        encode_png(np.zeros((0, 4), np.uint8))


def test_tail_says_on_stderr_when_the_daemon_is_silent(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    nobody = f"ipc://{tmp_path}/nobody.sock"
    assert tail_main(nobody, None, out=out, err=err, timeout_s=1.5, silent_after_s=0.5) == 0
    assert out.getvalue() == ""  # stdout stays JSON lines only
    assert f"nothing from {nobody}" in err.getvalue() and "Still waiting" in err.getvalue()


def test_tail_says_when_the_daemon_is_heard_again(stream, tmp_path):
    bus, pub, replay = stream
    out, err = io.StringIO(), io.StringIO()
    t = threading.Thread(target=tail_main, args=(pub, replay),
                         kwargs=dict(out=out, err=err, timeout_s=2.5, silent_after_s=0.9))
    t.start()
    for pause in [0.3, 0.3, 1.6, 0.7, 0.7, 0.7]:  # heartbeats (never printed by tail), a gap
        time.sleep(pause)
        bus.heartbeat()
    t.join(timeout=15)
    assert out.getvalue() == ""
    notices = err.getvalue().splitlines()
    assert any("nothing from" in n for n in notices), notices
    assert any("hearing the daemon" in n for n in notices), notices


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # the write lock, as another process on the same file would
print("locked", flush=True)
sys.stdin.readline()  # held until the test says
db.execute("COMMIT")
"""


def test_a_journal_locked_by_another_process_delays_writes_but_loses_nothing(
        stream, monkeypatch, caplog):
    import subprocess
    import sys

    from pathwatch.edge import publisher as publisher_module

    monkeypatch.setattr(publisher_module, "JOURNAL_RETRY_S", 0.2)
    bus, pub, replay = stream
    sub = AlertSubscriber(pub, replay, topics=("alert.", "journal"))
    wait_connected(bus, sub)
    alert_cycle(bus)  # seq 1..4, journaled
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(bus.journal.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        with caplog.at_level("ERROR", logger="pathwatch.publisher"):
            during = alert_cycle(bus, t0=1.75e9)  # published now, journaled later
        assert [h["seq"] for h in during] == [5, 6, 7, 8]
        assert all(h["journaled"] is False for h in during)
        assert bus.journal_state()["unjournaled"] == 4 and not bus.journal_state()["ok"]
        assert "cannot be written" in caplog.text
        live = collect(sub, 5)
        assert [m.topic for m in live][:2] == ["alert.cam", "alert.cam"]
        notice = [m.header for m in live if m.topic == "journal"]
        assert notice and notice[0]["state"] == "failing"
    finally:
        locker.communicate("release\n", timeout=10)
    time.sleep(0.3)
    bus.heartbeat()  # retries the kept events
    assert bus.journal_state() == {"ok": True, "unjournaled": 0, "lost": 0, "error": None}
    stored = bus.journal.since(0)
    assert [e.header["seq"] for e in stored] == list(range(1, 9))
    assert "journaled" not in stored[5].header and stored[4].attachments == [SNAPSHOT, HEATMAP]
    after = bus.alert(AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1))
                      .update(1.8e9, 9.0, 1.0, [0, 0])[0], {}, {})
    assert after["seq"] == 9 and "journaled" not in after

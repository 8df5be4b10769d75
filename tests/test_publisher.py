"""The alert stream over real ZeroMQ sockets: publish, journal, replay, gap filling, tail."""
import io
import json
import threading
import time

import numpy as np
import pytest
import zmq

from edge.alerts import AlertPolicy, AlertTracker
from edge.journal import Journal
from edge.publisher import AlertBus, Publisher, PublisherError, ReplayServer, encode_jpeg
from edge.subscriber import AlertSubscriber, tail_main


@pytest.fixture
def bus(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=100)
    replay = ReplayServer("tcp://127.0.0.1:*", tmp_path / "journal.sqlite")
    replay.start()
    b = AlertBus(journal, pub)
    yield b, pub.endpoint, replay.endpoint
    replay.stop()
    pub.close()
    journal.close()


def alert_cycle(bus, camera="cam", t0=1000.0):
    """A start, updates and an end from the real state machine."""
    tracker = AlertTracker(camera, AlertPolicy(2, 3, update_interval_s=0.5, quiet_s=0.5, cooldown_s=0))
    snapshot = encode_jpeg(np.zeros((48, 64, 3), np.uint8))
    headers = []
    for i, s in enumerate([5, 5, 6, 7, 8, 0, 0, 0, 0]):
        for e in tracker.update(t0 + i * 0.3, s, 1.0, [1, 0], i):
            att = {"snapshot.jpg": snapshot} if e.state != "end" else {}
            headers.append(bus.alert(e, {"latency_ms": 12.0}, att))
    return headers


def collect(sub, n, timeout=10.0):
    got, deadline = [], time.monotonic() + timeout
    gen = sub.events(timeout_s=0.5)
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(next(gen))
        except StopIteration:
            gen = sub.events(timeout_s=0.5)
    return got


def wait_connected(sub, bus):
    """PUB/SUB joins asynchronously: heartbeat until the subscriber hears one."""
    b, _, _ = bus
    sub.topics = sub.topics + ("heartbeat",)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        b.heartbeat()
        if sub.sub.poll(100):
            sub.sub.recv_multipart()
            break
    sub.topics = tuple(t for t in sub.topics if t != "heartbeat")


def test_subscriber_receives_start_update_end_with_consecutive_seq(bus):
    b, pub, replay = bus
    sub = AlertSubscriber(pub, replay)
    wait_connected(sub, bus)
    sent = alert_cycle(b)
    got = collect(sub, len(sent))
    assert [m.header["state"] for m in got] == [h["state"] for h in sent]
    assert [m.header["state"] for m in got][0] == "start" and got[-1].header["state"] == "end"
    assert [m.header["seq"] for m in got] == list(range(1, len(sent) + 1))
    assert len({m.header["alert_id"] for m in got}) == 1
    assert got[0].topic == "alert.cam" and got[0].header["schema"] == 1
    assert got[0].attachments[0][:2] == b"\xff\xd8"  # a JPEG
    assert got[0].header["attachments"] == ["snapshot.jpg"] and got[-1].attachments == []
    sub.close()


def test_late_subscriber_recovers_everything_through_replay(bus):
    b, pub, replay = bus
    sent = alert_cycle(b) + alert_cycle(b, camera="other")
    sub = AlertSubscriber(pub, replay, since=0)
    got = collect(sub, len(sent))
    assert [(m.header["camera"], m.header["seq"]) for m in got] == \
        [(h["camera"], h["seq"]) for h in sent]
    assert got[0].attachments and got[0].attachments[0][:2] == b"\xff\xd8"
    sub.close()


def test_gap_is_filled_from_the_journal(bus):
    b, pub, replay = bus
    sub = AlertSubscriber(pub, replay)
    wait_connected(sub, bus)
    first = alert_cycle(b)
    assert len(collect(sub, len(first))) == len(first)
    # Events journaled while this subscriber was not listening (as if its queue overflowed).
    sub.sub.setsockopt(zmq.UNSUBSCRIBE, b"alert.")
    missed = alert_cycle(b, t0=2000.0)
    sub.sub.setsockopt(zmq.SUBSCRIBE, b"alert.")
    wait_connected(sub, bus)
    b.heartbeat()  # its last_seq shows the subscriber is behind
    got = collect(sub, len(missed))
    assert [m.header["seq"] for m in got] == [h["seq"] for h in missed]
    sub.close()


def test_a_subscriber_that_never_reads_does_not_block_publishing(bus):
    b, pub, _ = bus
    ctx = zmq.Context.instance()
    lazy = ctx.socket(zmq.SUB)
    lazy.setsockopt(zmq.RCVHWM, 1)
    lazy.setsockopt(zmq.SUBSCRIBE, b"")
    lazy.connect(pub)
    time.sleep(0.3)
    blob = bytes(200_000)
    done = threading.Event()

    def flood():
        for _ in range(3000):
            b.publisher.send("score.cam", {"schema": 1}, [blob])
        done.set()
    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(60), "publishing blocked on a subscriber that never reads"
    received = 0
    while lazy.poll(200):
        lazy.recv_multipart()
        received += 1
    assert received < 3000  # PUB dropped the rest for this subscriber, silently, as designed
    lazy.close(0)


def test_replay_rejects_malformed_requests(bus):
    _, _, replay = bus
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(replay)
    for body in (b"not json", json.dumps({"since": "yesterday"}).encode()):
        req.send(body)
        assert req.poll(5000)
        assert "error" in json.loads(req.recv_multipart()[0])
    req.close(0)


def test_binding_a_used_address_says_so(bus):
    _, pub, _ = bus
    with pytest.raises(PublisherError, match="cannot bind"):
        Publisher(pub)


def test_tail_prints_json_lines(bus):
    b, pub, replay = bus
    sent = alert_cycle(b)
    out = io.StringIO()
    tail_main(pub, replay, since=0, out=out, stop_after=len(sent), timeout_s=10)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["seq"] for x in lines] == [h["seq"] for h in sent]
    assert lines[0]["topic"] == "alert.cam" and lines[0]["attachment_bytes"][0] > 0

"""CURVE on the publisher and the replay endpoint, with real keys and sockets."""
import os
import time

import pytest
import zmq

from pathwatch.edge.alerts import AlertPolicy, AlertTracker
from pathwatch.cli import main
from pathwatch.edge.journal import Journal
from pathwatch.edge.publisher import AlertBus, Publisher, ReplayServer
from pathwatch.edge.security import CurveServer, SecurityError, client_options, generate_keys, load_secret
from pathwatch.edge.subscriber import AlertSubscriber, ReplayUnavailable


@pytest.fixture
def keys(tmp_path):
    assert main(["keys", "generate", str(tmp_path / "server"), "--name", "server"]) == 0
    generate_keys(tmp_path / "authorized", "viewer")
    generate_keys(tmp_path / "strangers", "stranger")
    return tmp_path


@pytest.fixture
def secure_bus(keys):
    ctx = zmq.Context()
    curve = CurveServer(ctx, keys / "server" / "server.key_secret", keys / "authorized")
    journal = Journal(keys / "journal.sqlite")
    pub = Publisher("tcp://127.0.0.1:*", context=ctx, secure=curve.apply)
    replay = ReplayServer("tcp://127.0.0.1:*", keys / "journal.sqlite", context=ctx, secure=curve.apply)
    replay.start()
    bus = AlertBus(journal, pub)
    tracker = AlertTracker("cam", AlertPolicy(trigger_frames=1, window_frames=1))
    for e in tracker.update(time.time(), 9.0, 1.0, [0, 0]):
        bus.alert(e, {}, {})
    yield bus, pub.endpoint, replay.endpoint
    replay.stop()
    pub.close()
    journal.close()
    curve.stop()
    ctx.term()


def listen(bus, sub, seconds=3.0):
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        bus.heartbeat()
        got += list(sub.events(timeout_s=0.2))
    return got


def test_authorised_client_gets_events_and_replay(secure_bus, keys):
    bus, pub, replay = secure_bus
    secure = client_options(keys / "server" / "server.key", keys / "authorized" / "viewer.key_secret")
    sub = AlertSubscriber(pub, replay, topics=("alert.", "heartbeat"), since=0, secure=secure)
    got = listen(bus, sub)
    assert any(m.topic == "alert.cam" for m in got)  # replayed through CURVE
    assert any(m.topic == "heartbeat" for m in got)  # and live
    sub.close()


def test_unauthorised_client_gets_nothing_and_cannot_replay(secure_bus, keys):
    bus, pub, replay = secure_bus
    secure = client_options(keys / "server" / "server.key", keys / "strangers" / "stranger.key_secret")
    sub = AlertSubscriber(pub, replay, topics=("alert.", "heartbeat"), secure=secure,
                          replay_timeout_s=1.0)
    assert listen(bus, sub) == []
    with pytest.raises(ReplayUnavailable):
        sub.replay(0)
    sub.close()
    plain = AlertSubscriber(pub, replay, topics=("alert.", "heartbeat"), replay_timeout_s=1.0)
    assert listen(bus, plain, 2.0) == []
    plain.close()


def test_loose_key_permissions_are_refused(keys):
    secret = keys / "authorized" / "viewer.key_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        load_secret(secret)
    with pytest.raises(SecurityError, match="does not exist"):
        load_secret(keys / "nope.key_secret")
    with pytest.raises(SecurityError, match="no secret key"):  # not "chmod": the wrong file
        load_secret(keys / "server" / "server.key")


def test_generate_never_overwrites_a_key_and_errors_are_one_line(keys, capsys):
    before = (keys / "server" / "server.key_secret").read_bytes()
    assert main(["keys", "generate", str(keys / "server"), "--name", "server"]) == 2
    err = capsys.readouterr().err
    assert "already exists; choose another --name" in err and len(err.strip().splitlines()) == 1
    assert (keys / "server" / "server.key_secret").read_bytes() == before
    assert main(["keys", "generate", str(keys / "server" / "server.key"), "--name", "x"]) == 2
    assert "is a file; give a directory" in capsys.readouterr().err
    # Brackets in a path are text, not console markup.
    assert main(["config", "check", str(keys / "[/x].yaml")]) == 2
    assert "[/x].yaml: no such config file" in capsys.readouterr().err

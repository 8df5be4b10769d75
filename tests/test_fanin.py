"""Many daemons in one place: the forwarder (one live endpoint, one merging replay endpoint),
a subscriber that follows several daemons itself, attachments saved by tail, and the wire
format's JSON Schema checked against real messages. Each "daemon" is the real journal,
publisher, replay server and bus the daemon wires together, on real sockets."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import jsonschema
import pytest

from pathwatch.edge.fanin import Daemon, FleetSubscriber, Forwarder, parse_upstream
from pathwatch.edge.journal import Journal
from pathwatch.edge.publisher import AlertBus, Publisher, ReplayServer
from pathwatch.edge.subscriber import AlertSubscriber, ReplayUnavailable, tail_main
from test_publisher import alert_cycle

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" /
                     "alert-stream.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture
def two_daemons(tmp_path):
    """Two alert streams as two daemons publish them, each with its journal."""
    made = []
    for name in ("north", "south"):
        journal_path = tmp_path / f"{name}.sqlite"
        journal = Journal(journal_path)
        pub = Publisher(f"ipc://{tmp_path}/{name}-pub.sock")
        replay = ReplayServer(f"ipc://{tmp_path}/{name}-replay.sock", journal_path)
        replay.start()
        made.append((AlertBus(journal, pub), Daemon(pub.endpoint, replay.endpoint), replay,
                     journal, pub))
    yield made
    for _, _, replay, journal, pub in made:
        replay.stop()
        pub.close()
        journal.close()


@pytest.fixture
def forwarder(tmp_path, two_daemons):
    fwd = Forwarder([d for _, d, *_ in two_daemons], f"ipc://{tmp_path}/fwd-pub.sock",
                    f"ipc://{tmp_path}/fwd-replay.sock")
    fwd.start()
    yield fwd
    fwd.stop()


def valid(header: dict) -> dict:
    errors = [e.message for e in VALIDATOR.iter_errors(header)]
    assert not errors, (header, errors)
    return header


def read(sub, until, timeout=15.0, buses=()):
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        for bus in buses:
            bus.heartbeat()
        got += list(sub.events(timeout_s=0.2))
    return got


def alerts(got):
    return sorted((m.header["camera"], m.header["seq"]) for m in got if m.topic.startswith("alert."))


def test_a_forwarder_replays_and_forwards_every_daemons_alerts(two_daemons, forwarder):
    (north, *_), (south, *_) = two_daemons
    early = alert_cycle(north, "gate") + alert_cycle(south, "dock")  # before anyone listens
    sub = AlertSubscriber(forwarder.endpoint, forwarder.replay_endpoint,
                          topics=("alert.", "heartbeat"), since=0)
    try:
        got = read(sub, lambda g: len(alerts(g)) >= 8, buses=(north, south))
        assert alerts(got) == [("dock", s) for s in (1, 2, 3, 4)] + \
            [("gate", s) for s in (1, 2, 3, 4)]  # replayed through the forwarder, no hole
        live = alert_cycle(south, "dock")  # heard live through the forwarder
        got += read(sub, lambda g: len(alerts(g)) >= 12, buses=(north, south))
        assert {h["seq"] for h in live} == {5, 6, 7, 8}
        assert alerts(got) == [("dock", s) for s in range(1, 9)] + \
            [("gate", s) for s in (1, 2, 3, 4)]
        for m in got:
            valid(m.header)
        assert any(m.topic == "heartbeat" for m in got)
        assert [h["seq"] for h in early] == [1, 2, 3, 4] * 2
    finally:
        sub.close()


def test_a_daemon_whose_replay_is_down_makes_the_forwarders_replay_unavailable(
        two_daemons, forwarder):
    (north, *_), (south, _, south_replay, *_) = two_daemons
    alert_cycle(north, "gate")
    south_replay.stop()
    sub = AlertSubscriber(forwarder.endpoint, forwarder.replay_endpoint, replay_timeout_s=8.0)
    try:
        with pytest.raises(ReplayUnavailable, match="did not answer"):
            sub.replay(0)  # all or nothing: half an answer would read as events lost
    finally:
        sub.close()


def test_a_fleet_subscriber_follows_several_daemons_and_fills_each_ones_gaps(two_daemons):
    (north, nd, *_), (south, sd, *_) = two_daemons
    alert_cycle(north, "gate")
    alert_cycle(south, "dock")
    fleet = FleetSubscriber([nd, sd], topics=("alert.",), since=0)
    try:
        got = read(fleet, lambda g: len(alerts(g)) >= 8, buses=(north, south))
        assert alerts(got) == [("dock", s) for s in (1, 2, 3, 4)] + \
            [("gate", s) for s in (1, 2, 3, 4)]
        assert {m.header["daemon"] for m in got if m.header["camera"] == "gate"} == {nd.pub}
        assert {m.header["daemon"] for m in got if m.header["camera"] == "dock"} == {sd.pub}
        for m in got:
            valid(m.header)
    finally:
        fleet.close()


def test_tail_saves_attachments_and_follows_several_daemons(two_daemons, tmp_path):
    (north, nd, *_), (south, sd, *_) = two_daemons
    headers = alert_cycle(north, "gate")
    alert_cycle(south, "dock")
    out = io.StringIO()
    fleet = FleetSubscriber([nd, sd], since=0)
    assert tail_main(None, None, since=0, out=out, err=io.StringIO(), stop_after=8,
                     timeout_s=20, save_dir=tmp_path / "saved", subscriber=fleet) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted((x["camera"], x["seq"]) for x in lines) == \
        [("dock", s) for s in (1, 2, 3, 4)] + [("gate", s) for s in (1, 2, 3, 4)]
    saved = sorted(p.relative_to(tmp_path / "saved").as_posix()
                   for p in (tmp_path / "saved").rglob("*") if p.is_file())
    alert_id = headers[0]["alert_id"]
    assert f"gate/{alert_id}/1-snapshot.jpg" in saved and f"gate/{alert_id}/3-heatmap.png" in saved
    assert not any("end" in p for p in saved)  # an end event carries no attachments
    assert (tmp_path / "saved" / "gate" / alert_id / "1-snapshot.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_upstreams_are_checked():
    assert parse_upstream("tcp://a:5556,tcp://a:5557") == Daemon("tcp://a:5556", "tcp://a:5557")
    assert parse_upstream("tcp://a:5556").replay is None
    for bad in ("", "tcp://a:5556,tcp://a:5557,tcp://x:1", "a:5556", "tcp://a:99999"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_forward_command_runs_and_stops(two_daemons, tmp_path, capsys):
    from pathwatch.cli import main

    (_, nd, *_), (_, sd, *_) = two_daemons
    argv = ["forward", "--upstream", f"{nd.pub},{nd.replay}", "--upstream", f"{sd.pub},{sd.replay}",
            "--bind", f"ipc://{tmp_path}/f.sock", "--replay-bind", f"ipc://{tmp_path}/fr.sock",
            "--duration", "1"]
    assert main(argv) == 0
    assert "forwarding 2 daemons" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["forward", "--upstream", "nonsense"])
    assert e.value.code == 2 and "is not a ZeroMQ endpoint" in capsys.readouterr().err


def test_every_header_field_is_described_in_the_schema():
    for branch in SCHEMA["oneOf"]:
        for name, prop in branch["properties"].items():
            assert prop.get("description"), (branch["properties"]["kind"], name)
    alert = next(b for b in SCHEMA["oneOf"] if b["properties"]["kind"]["const"] == "alert")
    assert "labels" in alert["properties"] and "journaled" in alert["properties"]

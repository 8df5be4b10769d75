"""`pathwatch bridge mqtt` against a real mosquitto broker and a real alert stream (journal,
publisher and replay endpoint, wired as the daemon wires them): what reaches the broker,
retained state and Home Assistant discovery, TLS and credentials, and delivery (each alert
once, in order) across a broker outage and a bridge restart."""
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pathwatch.cli import main
from pathwatch.edge.alerts import AlertPolicy, AlertTracker
from pathwatch.edge.journal import Journal
from pathwatch.edge.mqtt_bridge import Broker, MqttBridge, Options, load_state, tls_context
from pathwatch.edge.publisher import AlertBus, Publisher, ReplayServer, encode_jpeg

mqtt = pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (the mqtt extra)")
MOSQUITTO = shutil.which("mosquitto") or \
    ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto broker "
                                "(apt install mosquitto)")
SNAPSHOT = encode_jpeg(np.full((24, 32, 3), 90, np.uint8))


# ------------------------------------------------------------------------------ the broker
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A real broker on a free port, restartable on the same port. Persistence is on so that
    a test client's session, saved on demand (SIGUSR1), survives a SIGKILL: the client then
    receives what the bridge publishes after a restart whichever of them reconnects first."""

    def __init__(self, folder: Path, anonymous: bool = True, lines=()):
        folder.mkdir()
        self.folder, self.port, self.proc = folder, free_port(), None
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1", f"allow_anonymous {str(anonymous).lower()}",
            "persistence true", f"persistence_location {folder}/",
            f"user {getpass.getuser()}",  # as root it would switch to a user without access
            "log_dest stderr", *lines]) + "\n")

    def start(self) -> None:
        with open(self.folder / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mosquitto exited: {self.log()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        return (self.folder / "mosquitto.log").read_text(errors="replace")

    def save(self) -> None:
        """Write the persistence file now (sessions and their subscriptions)."""
        db = self.folder / "mosquitto.db"
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert db.exists(), self.log()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Watcher:
    """A paho subscriber recording (topic, payload, qos, retain). With a client id its
    session is persistent (it subscribes once; the broker keeps the subscription)."""

    def __init__(self, port: int, topic: str, client_id: str | None = None, username=None,
                 password=None):
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=client_id is None)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, flags, rc, p: \
            None if flags.session_present else c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.payload, m.qos, bool(m.retain)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher could not subscribe"

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _, _ in list(self.messages) if t == topic]

    def alerts(self) -> list[dict]:
        return [json.loads(p) for p in self.on("pathwatch/cam/alert")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def last_status_detail(watcher: Watcher) -> str:
    statuses = watcher.on("pathwatch/cam/status")
    return json.loads(statuses[-1])["detail"] if statuses else ""


def retained(port: int, topic: str = "#", settle_s: float = 0.5) -> dict[str, bytes]:
    """What a newcomer gets on subscribing: the retained messages."""
    w = Watcher(port, topic)
    time.sleep(settle_s)
    w.close()
    return {t: p for t, p, _, kept in w.messages if kept}


def until(condition, timeout_s: float = 10.0, what: str = "") -> None:
    """Wait for `condition()` without heartbeats (a silent daemon)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------ the daemon side
class Stream:
    """A journal, a publisher and a replay endpoint, as the daemon wires them; the test's
    thread plays the frame loop (alerts, status, heartbeats)."""

    def __init__(self, tmp_path: Path):
        path = tmp_path / "journal.sqlite"
        self.journal = Journal(path)
        self.publisher = Publisher("tcp://127.0.0.1:*")
        self.replay = ReplayServer("tcp://127.0.0.1:*", path)
        self.replay.start()
        self.bus = AlertBus(self.journal, self.publisher)
        self.camera_state, self.t0 = "online", 1_700_000_000.0

    @property
    def endpoints(self) -> tuple[str, str]:
        return self.publisher.endpoint, self.replay.endpoint

    def beat(self) -> None:
        self.bus.heartbeat({"cameras": {"cam": {"state": self.camera_state, "score": 0.5,
                                                "threshold": 1.0, "p_normal": 0.3,
                                                "refused": None}}})

    def cycle(self) -> list[dict]:
        """start, update, update, end from the real alert state machine."""
        tracker = AlertTracker("cam", AlertPolicy(trigger_frames=2, window_frames=3,
                                                  update_interval_s=0.5, quiet_s=0.5,
                                                  cooldown_s=0))
        self.t0 += 100
        headers = []
        for i, score in enumerate([5, 5, 6, 7, 8, 0, 0, 0, 0]):
            for event in tracker.update(self.t0 + i * 0.3, score, 1.0, [1, 0], i):
                files = {"snapshot.jpg": SNAPSHOT} if event.state != "end" else {}
                headers.append(self.bus.alert(event, {"latency_ms": 12.5}, files))
        assert [h["state"] for h in headers] == ["start", "update", "update", "end"]
        return headers

    def wait(self, condition, timeout_s: float = 20.0, what: str = "") -> None:
        """Heartbeat (every 0.1 s, as the daemon does every second) until `condition()`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.beat()
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or condition}")

    def pump(self, seconds: float) -> None:
        """Heartbeat for a while (time for the bridge to act, or to repeat itself)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.beat()
            time.sleep(0.1)

    def close(self) -> None:
        self.replay.stop()
        self.publisher.close()
        self.journal.close()


@pytest.fixture
def stream(tmp_path):
    s = Stream(tmp_path)
    yield s
    s.close()


def acked(state: Path) -> dict | None:
    return load_state(state) if state.exists() else None


@contextmanager
def bridge_running(stream: Stream, port: int, state: Path, tls=None, **options):
    """The bridge in a thread of this process, stopped (gracefully) on exit."""
    pub, replay = stream.endpoints
    bridge = MqttBridge(pub, replay, Broker(host="127.0.0.1", port=port, tls=tls,
                                            client_id=f"bridge-{port}", reconnect_max_s=1),
                        Options(state_path=state, score_interval_s=0.2, **options))
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    try:
        stream.wait(state.exists, what="the bridge to learn the journal's end")
        yield bridge
    finally:
        stop.set()
        thread.join(20)
        assert not thread.is_alive(), "the bridge did not stop"


# ------------------------------------------------------------------------------ tests
def test_alerts_availability_and_discovery_reach_the_broker(broker, stream, tmp_path):
    state = tmp_path / "bridge.json"
    watcher = Watcher(broker.port, "#")
    with bridge_running(stream, broker.port, state, snapshots=True, daemon_timeout_s=1.0):
        stream.bus.status("cam", "online", "opened")
        sent = stream.cycle()
        stream.wait(lambda: acked(state) == {"cam": 4}, what="the broker's PUBACKs")
        stream.wait(lambda: len(watcher.alerts()) == 4 and watcher.on("pathwatch/cam/score"))

        # Alert events: QoS 1, not retained, in seq order, the daemon's header as JSON.
        alerts = [m for m in watcher.messages if m[0] == "pathwatch/cam/alert"]
        assert [(qos, kept) for _, _, qos, kept in alerts] == [(1, False)] * 4
        assert watcher.alerts() == sent and [h["seq"] for h in sent] == [1, 2, 3, 4]
        assert watcher.on("pathwatch/cam/alerting") == [b"ON", b"OFF"]
        score = json.loads(watcher.on("pathwatch/cam/score")[-1])
        assert score["score"] == 0.5 and score["threshold"] == 1.0 and score["p_normal"] == 0.3

        # What Home Assistant (or anyone) finds on subscribing: retained state and discovery.
        kept = retained(broker.port)
        assert kept["pathwatch/bridge/availability"] == b"online"
        assert kept["pathwatch/cam/availability"] == b"online"
        assert kept["pathwatch/cam/alerting"] == b"OFF"
        assert json.loads(kept["pathwatch/cam/status"])["state"] == "online"
        assert kept["pathwatch/cam/snapshot"] == SNAPSHOT
        sensor = json.loads(kept["homeassistant/binary_sensor/pathwatch_cam/alerting/config"])
        assert sensor["state_topic"] == "pathwatch/cam/alerting"
        assert (sensor["payload_on"], sensor["payload_off"]) == ("ON", "OFF")
        assert sensor["unique_id"] == "pathwatch_cam_alerting"
        assert sensor["json_attributes_topic"] == "pathwatch/cam/alert"
        assert [a["topic"] for a in sensor["availability"]] == \
            ["pathwatch/bridge/availability", "pathwatch/cam/availability"]
        assert sensor["availability_mode"] == "all"
        assert sensor["device"]["identifiers"] == ["pathwatch_cam"]
        score_cfg = json.loads(kept["homeassistant/sensor/pathwatch_cam/score/config"])
        assert score_cfg["state_topic"] == "pathwatch/cam/score"
        assert score_cfg["value_template"] == "{{ value_json.score }}"
        assert score_cfg["device"] == sensor["device"]

        # A camera that loses its source, then a daemon that falls silent: offline, retained.
        stream.camera_state = "reconnecting"
        stream.wait(lambda: watcher.on("pathwatch/cam/availability")[-1:] == [b"offline"])
        stream.camera_state = "online"
        stream.wait(lambda: watcher.on("pathwatch/cam/availability")[-1:] == [b"online"])
        # Availability and status are two publishes: wait for both, not the first to arrive.
        until(lambda: watcher.on("pathwatch/cam/availability")[-1:] == [b"offline"]
              and "no heartbeat" in last_status_detail(watcher),
              what="a silent daemon's cameras to go offline, saying why")
        stream.wait(lambda: watcher.on("pathwatch/cam/availability")[-1:] == [b"online"])
    # A bridge that stops says so (retained), and nothing was sent twice.
    until(lambda: watcher.on("pathwatch/bridge/availability")[-1:] == [b"offline"])
    assert retained(broker.port, "pathwatch/bridge/#")["pathwatch/bridge/availability"] == \
        b"offline"
    assert len(watcher.alerts()) == 4
    watcher.close()


def test_a_broker_outage_loses_nothing_and_repeats_nothing(tmp_path, stream, caplog):
    caplog.set_level(logging.INFO, logger="pathwatch.mqtt")
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    watcher = Watcher(broker.port, "pathwatch/+/alert", client_id="watcher")
    broker.save()  # the watcher's session and subscription outlive the SIGKILLs below
    broker.kill()
    state = tmp_path / "bridge.json"
    try:
        # At most 3 events wait in memory while the broker is away; the rest wait in the
        # journal (and in the subscriber's socket).
        with bridge_running(stream, broker.port, state, max_pending=3) as bridge:
            sent = stream.cycle()  # no broker yet
            stream.pump(1.0)
            assert acked(state) == {}
            broker.start()
            stream.wait(lambda: acked(state) == {"cam": 4}, what="delivery after the start")
            stream.wait(lambda: len(watcher.alerts()) == 4)

            broker.kill()
            sent += stream.cycle() + stream.cycle()  # 8 more while the broker is down
            stream.pump(1.5)
            assert acked(state) == {"cam": 4} and bridge.tracker.pending == 3
            broker.start()
            stream.wait(lambda: acked(state) == {"cam": 12}, what="delivery after the outage")
            stream.wait(lambda: len(watcher.alerts()) >= 12)
            stream.pump(0.5)  # anything repeated would arrive now
        got = watcher.alerts()
        assert [h["seq"] for h in got] == list(range(1, 13))  # each once, in order
        assert got == sent
        assert {qos for t, _, qos, _ in watcher.messages} == {1}
        lines = [r.getMessage() for r in caplog.records if r.name == "pathwatch.mqtt"]
        # One line per change of the connection, not one per retry.
        assert sum("cannot reach 127.0.0.1" in m for m in lines) == 1, lines
        assert sum("connection lost" in m for m in lines) == 1, lines
        assert sum("connected again" in m for m in lines) == 1, lines
    finally:
        watcher.close()
        broker.stop()


def test_a_restarted_bridge_resumes_after_what_the_broker_acknowledged(tmp_path, stream):
    """The command itself, with credentials from the environment; killed (its last will says
    offline), then started again: it sends what came meanwhile and nothing from before."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd (from the mosquitto package)")
    passwords = tmp_path / "passwords"
    for user, password in (("bridge", "s3cret pass"), ("watcher", "w")):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "bridge" else []),
                        str(passwords), user, password], check=True, capture_output=True)
    broker = Mosquitto(tmp_path / "broker", anonymous=False,
                       lines=[f"password_file {passwords}"])
    broker.start()
    watcher = Watcher(broker.port, "pathwatch/#", username="watcher", password="w")
    state, pub_replay = tmp_path / "state" / "bridge.json", stream.endpoints
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHWATCH_")}
    env |= {"PATHWATCH_MQTT_USERNAME": "bridge", "PATHWATCH_MQTT_PASSWORD": "s3cret pass"}
    argv = [sys.executable, "-m", "pathwatch.cli", "bridge", "mqtt", "--connect", pub_replay[0],
            "--replay", pub_replay[1], "--broker", "127.0.0.1", "--port", str(broker.port),
            "--state-file", str(state), "--reconnect-max", "1"]
    bridge_log = open(tmp_path / "bridge.log", "w")

    def start():
        return subprocess.Popen(argv, env=env, stderr=bridge_log, stdout=bridge_log)

    try:
        stream.cycle()  # seq 1-4: history before the bridge's first start, not sent
        proc = start()
        stream.wait(lambda: acked(state) == {"cam": 4}, what="the bridge's start")
        first = stream.cycle()  # 5-8
        stream.wait(lambda: acked(state) == {"cam": 8}, what="the broker's PUBACKs")
        proc.kill()  # a crash: no chance to say goodbye, the broker says it
        proc.wait(10)
        stream.wait(lambda: watcher.on("pathwatch/bridge/availability")[-1:] == [b"offline"])
        second = stream.cycle()  # 9-12, while no bridge runs
        proc = start()
        stream.wait(lambda: acked(state) == {"cam": 12}, what="the restarted bridge")
        stream.wait(lambda: len(watcher.alerts()) >= 8)
        stream.pump(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert watcher.alerts() == first + second  # 5-12, each once
        assert watcher.on("pathwatch/bridge/availability") == [b"online", b"offline"] * 2
        assert "s3cret" not in " ".join(argv)
    finally:
        watcher.close()
        broker.stop()
        bridge_log.close()
    log = (tmp_path / "bridge.log").read_text()
    assert "Traceback" not in log, log


def test_a_journal_behind_the_state_file_is_said(broker, stream, tmp_path, caplog):
    """A state file from another (or an older) journal would pass its first events over."""
    caplog.set_level(logging.INFO, logger="pathwatch.mqtt")
    state = tmp_path / "bridge.json"
    state.write_text(json.dumps({"acked": {"cam": 50}}))
    stream.cycle()
    with bridge_running(stream, broker.port, state):
        stream.pump(0.5)
    lines = [r.getMessage() for r in caplog.records if "journal has cam up to seq 4" in
             r.getMessage()]
    assert len(lines) == 1 and "delivered up to 50" in lines[0] and "--since 0" in lines[0]


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=folder, check=True,  # noqa: E731
                                    capture_output=True)
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=pathwatch test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_tls_verifies_the_broker_and_says_why_it_cannot(tmp_path, stream, caplog):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make test certificates")
    caplog.set_level(logging.INFO, logger="pathwatch.mqtt")
    ca, cert, key = _certificates(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", lines=[f"cafile {ca}", f"certfile {cert}",
                                                   f"keyfile {key}"])
    broker.start()
    try:
        state = tmp_path / "bridge.json"
        with bridge_running(stream, broker.port, state, tls=tls_context()):  # system CAs only
            stream.cycle()
            stream.pump(1.0)
            assert acked(state) == {}
        assert any("TLS handshake with 127.0.0.1" in r.getMessage() and "certificate verify "
                   "failed" in r.getMessage() for r in caplog.records), caplog.text
        with bridge_running(stream, broker.port, state, tls=tls_context(str(ca))):
            stream.wait(lambda: acked(state) == {"cam": 4}, what="delivery over TLS")
    finally:
        broker.stop()


@pytest.mark.parametrize("argv,env,message", [
    (["--port", "0"], {}, "--port: '0' is not a port number"),
    (["--prefix", "home/#"], {}, "--prefix 'home/#' is not a usable MQTT topic prefix"),
    (["--discovery-prefix", "/ha"], {}, "is not a usable MQTT topic prefix"),
    (["--ca-file", "ca.pem"], {}, "need --tls"),
    (["--tls", "--ca-file", "{tmp}/none.pem"], {}, "no such file"),
    ([], {"PATHWATCH_MQTT_PASSWORD": "x"}, "no username"),
    ([], {"PATHWATCH_MQTT_USERNAME": "u", "PATHWATCH_MQTT_PASSWORD_FILE": "{tmp}/nope"},
     "cannot read"),
    (["--state-file", "{tmp}/bad.json"], {}, "bridge state file"),
    (["--client-id", "a/b"], {}, "is not a plain name"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, env, message, tmp_path, capsys,
                                               monkeypatch):
    (tmp_path / "bad.json").write_text("{not json")
    for k, v in env.items():
        monkeypatch.setenv(k, v.replace("{tmp}", str(tmp_path)))
    base = ["bridge", "mqtt", "--connect", "tcp://127.0.0.1:5556", "--replay",
            "tcp://127.0.0.1:5557"]
    try:
        code = main(base + [a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as e:  # argparse's own checks end there
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err

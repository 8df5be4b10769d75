"""`pathwatch bridge mqtt`: the alert stream and camera availability on an MQTT broker.

Topics, under a prefix (default `pathwatch`):
- `<prefix>/bridge/availability`  `online` / `offline`, retained; the last will says offline.
- `<prefix>/<camera>/alert`        each alert event's header (JSON), QoS 1, in seq order.
- `<prefix>/<camera>/alerting`     `ON` / `OFF`, retained, QoS 1 (start/update on, end off).
- `<prefix>/<camera>/availability` `online` / `offline`, retained (status events, heartbeats,
                                   and a daemon that stops sending heartbeats).
- `<prefix>/<camera>/status`       `{"state", "detail", "time"}`, retained.
- `<prefix>/<camera>/score`        `{"score", "threshold", "p_normal", "time"}` from heartbeats,
                                   QoS 0, at most every `score_interval_s`.
- `<prefix>/<camera>/missed`       events the journal no longer holds (JSON), QoS 1.
- `<prefix>/<camera>/snapshot`     the last alert's snapshot.jpg, retained (opt-in).
plus Home Assistant discovery configs (a binary_sensor and a sensor per camera, retained).

Delivery: the bridge reads through AlertSubscriber, which fills gaps from the daemon's
journal, and counts an alert event as delivered only when the broker has acknowledged
(PUBACK) every message published for it. The last acknowledged seq per camera goes to a JSON
state file, and a restarted bridge asks for what comes after it: nothing is lost across a
broker outage or a bridge restart, and nothing acknowledged is sent twice. While the broker is
away at most `max_pending` events wait in memory; the rest wait in the journal.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from .clock import iso_now
from .files import write_json_atomic
from .subscriber import AlertSubscriber, Message

log = logging.getLogger("pathwatch.mqtt")

TOPICS = ("alert.", "status.", "heartbeat")
# Camera states (status events and the heartbeat's per-camera `state`) in which it is watching.
WATCHING = {"online", "alerting", "calibrating"}
STATE_SCHEMA = 1
FLUSH_S = 5.0  # at stop, how long to wait for the broker to acknowledge what is in flight
RESUBSCRIBE_S = 2.0  # pause before asking a replay endpoint that did not answer again
END = 2 ** 53  # a seq past any journal's end: its replay is empty, its summary says where it is


@dataclass
class Broker:
    """Where and how to connect. Credentials come from the environment (never argv)."""
    host: str = "localhost"
    port: int = 1883
    client_id: str = "pathwatch-bridge"
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    reconnect_max_s: float = 60.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Options:
    """What the bridge publishes, and its bookkeeping."""
    state_path: Path
    prefix: str = "pathwatch"
    discovery_prefix: str | None = "homeassistant"  # None: no Home Assistant discovery
    snapshots: bool = False
    score_interval_s: float = 10.0
    daemon_timeout_s: float = 5.0
    max_pending: int = 100


def check_prefix(text: str, what: str = "prefix") -> str:
    """A topic prefix: no wildcards, no empty levels, no leading or trailing '/'."""
    if not text or "+" in text or "#" in text or "\0" in text or "//" in text \
            or text.startswith("/") or text.endswith("/"):
        raise ValueError(f"{what} {text!r} is not a usable MQTT topic prefix (no '+', '#', empty "
                         "levels or leading/trailing '/'; e.g. pathwatch or home/pathwatch)")
    return text


def tls_context(ca_file: str | None = None, certfile: str | None = None,
                keyfile: str | None = None) -> ssl.SSLContext:
    """Verify the broker against `ca_file` (default: the system's CAs); optionally present a
    client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        if certfile:
            ctx.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as e:
        raise ValueError(f"TLS: no such file {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"TLS: cannot load the CA or client certificate ({e})") from None
    return ctx


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ModuleNotFoundError:
        raise RuntimeError("needs paho-mqtt 2.x; install the mqtt extra: "
                           "pip install 'pathwatch[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise RuntimeError("needs paho-mqtt 2.x (an older one is installed); "
                           "pip install -U 'paho-mqtt>=2'")
    return mqtt


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pathwatch")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------ state file
def load_state(path: Path) -> dict[str, int] | None:
    """The last acknowledged seq per camera; None when there is no state file yet."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        raise ValueError(f"bridge state file {path} is unreadable ({e.__class__.__name__}); "
                         "move it aside, or pass --since to say where to start") from None
    acked = data.get("acked") if isinstance(data, dict) else None
    if not isinstance(acked, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in acked.items()):
        raise ValueError(f"bridge state file {path} has no valid 'acked' map of camera to seq; "
                         "move it aside, or pass --since to say where to start")
    return acked


def save_state(path: Path, acked: dict[str, int]) -> None:
    write_json_atomic(path, {"schema": STATE_SCHEMA, "time": iso_now(),
                             "acked": dict(sorted(acked.items()))})


class AckTracker:
    """Per camera: the highest seq such that every message published for it and for every
    earlier event was acknowledged. Events are added in seq order; acks come in any order."""

    def __init__(self, acked: dict[str, int] | None = None):
        self.acked: dict[str, int] = dict(acked or {})
        self._waiting: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._owner: dict[int, tuple[str, set]] = {}  # mid -> (camera, its event's open mids)

    @property
    def pending(self) -> int:
        return sum(len(d) for d in self._waiting.values())

    def add(self, camera: str, seq: int, mids: list[int]) -> None:
        open_mids = set(mids)
        self._waiting[camera].append((seq, open_mids))
        for mid in mids:
            self._owner[mid] = (camera, open_mids)
        self._advance(camera)  # an event with nothing to wait for

    def ack(self, mid: int) -> bool:
        """True when the camera's acknowledged seq moved."""
        if mid not in self._owner:
            return False  # QoS 0, or a retained state message: not tracked
        camera, open_mids = self._owner.pop(mid)
        open_mids.discard(mid)
        return self._advance(camera)

    def _advance(self, camera: str) -> bool:
        waiting, moved = self._waiting[camera], False
        while waiting and not waiting[0][1]:
            self.acked[camera] = waiting.popleft()[0]
            moved = True
        return moved


# ------------------------------------------------------------------------------ topics
def _node_id(prefix: str, camera: str) -> str:
    """Home Assistant wants [a-zA-Z0-9_-] in the discovery topic's node id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{prefix}_{camera}")


def discovery_configs(prefix: str, discovery_prefix: str, camera: str,
                      version: str) -> list[tuple[str, dict]]:
    """The binary_sensor (alerting) and sensor (score) of one camera, as (topic, payload)."""
    node = _node_id(prefix, camera)
    common = {
        "availability": [{"topic": f"{prefix}/bridge/availability"},
                         {"topic": f"{prefix}/{camera}/availability"}],
        "availability_mode": "all",  # bridge up and camera watching
        "device": {"identifiers": [node], "name": f"pathwatch {camera}",
                   "manufacturer": "pathwatch", "model": "camera anomaly monitor",
                   "sw_version": version},
        "origin": {"name": "pathwatch", "sw_version": version},
    }
    alerting = {**common, "name": "Alerting", "unique_id": f"{node}_alerting",
                "state_topic": f"{prefix}/{camera}/alerting", "payload_on": "ON",
                "payload_off": "OFF", "device_class": "problem", "qos": 1,
                "json_attributes_topic": f"{prefix}/{camera}/alert"}
    score = {**common, "name": "Anomaly score", "unique_id": f"{node}_score",
             "state_topic": f"{prefix}/{camera}/score",
             "value_template": "{{ value_json.score }}", "state_class": "measurement",
             "json_attributes_topic": f"{prefix}/{camera}/score"}
    return [(f"{discovery_prefix}/binary_sensor/{node}/alerting/config", alerting),
            (f"{discovery_prefix}/sensor/{node}/score/config", score)]


def describe_failure(host: str, port: int, tls: ssl.SSLContext | None,
                     timeout_s: float = 3.0) -> str:
    """Why a connection fails, for the one log line (paho's retry loop does not say)."""
    try:
        with socket.create_connection((host, port), timeout_s) as sock:
            if tls is None:
                return f"{host}:{port} accepts TCP but the MQTT connection failed"
            with tls.wrap_socket(sock, server_hostname=host):
                return f"{host}:{port}: TLS works but the MQTT connection failed"
    except ssl.SSLCertVerificationError as e:
        return (f"TLS handshake with {host}:{port} failed (certificate verify failed: "
                f"{e.verify_message}); check --ca-file and the name in the broker's certificate")
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        return (f"TLS handshake with {host}:{port} failed ({reason}); check --ca-file and the "
                "name in the broker's certificate")
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or e})"


def journal_end(replay: str | None, secure=None, timeout_s: float = 3.0) -> dict | None:
    """Each camera's last seq in the daemon's journal now, from the replay endpoint's summary
    (where a first start begins); None when it does not answer."""
    if replay is None:
        return None
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if secure is not None:
            secure(sock)
        sock.connect(replay)
        sock.send(json.dumps({"since": END, "limit": 1}).encode())
        if not sock.poll(int(timeout_s * 1000)):
            return None
        last = json.loads(sock.recv_multipart()[0]).get("last_seq")
    except (zmq.ZMQError, ValueError, AttributeError):
        return None
    finally:
        sock.close(0)
    if not isinstance(last, dict):
        return None
    return {k: v for k, v in last.items() if isinstance(v, int) and not isinstance(v, bool)}


@dataclass
class CameraState:
    """What was last published for a camera, so only changes go out (and come back after a
    broker restart)."""
    status: tuple[str, str] | None = None  # (state, detail)
    alerting: bool | None = None
    snapshot: bytes | None = None
    score_at: float = float("-inf")
    announced: bool = False


# ------------------------------------------------------------------------------ the bridge
@dataclass
class MqttBridge:
    """Subscriber in, MQTT out. `run(stop)` until `stop` is set; one thread (paho's network
    thread only talks to it through `self.inbox`)."""
    pub: str
    replay: str | None
    broker: Broker
    options: Options
    since: int | dict | None = None  # None: the state file, else the journal's end
    secure: object = None  # CURVE client options, as `pathwatch tail` takes them
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self):
        acked = load_state(self.options.state_path)
        if self.since is None and acked is not None:
            self.since = acked
        self.tracker = AckTracker(self.since if isinstance(self.since, dict) else {})
        self.sent: dict[str, int] = dict(self.since) if isinstance(self.since, dict) else {}
        self.cameras: dict[str, CameraState] = {}
        self.connection = "starting"  # starting, connected, down, refused
        self.refusal: str | None = None
        self.ever_connected = False
        self.daemon_silent = False
        self.replay_down = False
        self.behind: set[str] = set()  # cameras whose journal is behind what was delivered
        self.published = 0
        self.version = _version()
        self.client = self._client()
        self.sub: AlertSubscriber | None = None

    def topic(self, camera: str, leaf: str) -> str:
        return f"{self.options.prefix}/{camera}/{leaf}"

    @property
    def bridge_topic(self) -> str:
        return f"{self.options.prefix}/bridge/availability"

    # -------------------------------------------------------------- MQTT client
    def _client(self):
        mqtt = _paho()
        b = self.broker
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=b.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.will_set(self.bridge_topic, "offline", qos=1, retain=True)
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if b.tls is not None:
            client.tls_set_context(b.tls)
            client.tls_insecure_set(b.tls_insecure)
        client.reconnect_delay_set(1, max(1, int(b.reconnect_max_s)))
        # Callbacks run on paho's thread: they only post to the inbox (on_publish runs under
        # paho's message lock, so touching our state there could deadlock with publish()).
        client.on_connect = lambda c, u, f, rc, p: self._on_connect(rc)
        client.on_disconnect = lambda c, u, f, rc, p: self.inbox.put(("disconnect", str(rc)))
        client.on_connect_fail = lambda c, u: self.inbox.put(("unreachable", None))
        client.on_publish = lambda c, u, mid, rc, p: self.inbox.put(("ack", mid))
        client.on_message = lambda c, u, m: self.inbox.put(("ha", m.payload))
        return client

    def _on_connect(self, reason_code) -> None:
        if not reason_code.is_failure and self.options.discovery_prefix:
            # Home Assistant's birth message: it has restarted and wants the configs again.
            self.client.subscribe(f"{self.options.discovery_prefix}/status", qos=1)
        self.inbox.put(("refused" if reason_code.is_failure else "connect", str(reason_code)))

    def _publish(self, topic: str, payload, qos: int = 1, retain: bool = False) -> int:
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, separators=(",", ":"))
        return self.client.publish(topic, payload, qos=qos, retain=retain).mid

    # -------------------------------------------------------------- inbox
    def _drain(self, timeout_s: float = 0.0) -> None:
        """Handle what paho's thread posted; wait up to `timeout_s` for the first item."""
        moved = False
        try:
            item = self.inbox.get(timeout=timeout_s) if timeout_s > 0 else self.inbox.get_nowait()
            while True:
                kind, value = item
                if kind == "ack":
                    moved |= self.tracker.ack(value)
                else:
                    self._connection_event(kind, value)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        if moved:
            save_state(self.options.state_path, self.tracker.acked)

    def _connection_event(self, kind: str, detail) -> None:
        """One log line per change of the broker connection, not one per retry."""
        b = self.broker
        if kind == "connect":
            again, self.ever_connected = self.ever_connected, True
            self.connection, self.refusal = "connected", None
            log.info("MQTT broker %s: connected%s", b.address,
                     f" again; delivering {self.tracker.pending} waiting alert events"
                     if again else "")
            self._announce()
        elif kind == "ha" and detail == b"online":
            self._announce()
        elif kind == "refused" and detail != self.refusal:
            self.connection, self.refusal = "refused", detail
            log.error("MQTT broker %s refused the connection: %s (credentials come from "
                      "PATHWATCH_MQTT_USERNAME / PATHWATCH_MQTT_PASSWORD); retrying",
                      b.address, detail)
        elif kind == "disconnect" and self.connection == "connected":
            self.connection = "down"
            log.warning("MQTT broker %s: connection lost (%s); reconnecting with back-off (up to "
                        "%g s), alerts wait in the journal", b.address, detail, b.reconnect_max_s)
        elif kind == "unreachable" and self.connection == "starting":
            self.connection = "down"
            log.warning("MQTT broker: %s; retrying with back-off (up to %g s), alerts wait in "
                        "the journal", describe_failure(b.host, b.port, b.tls), b.reconnect_max_s)

    # -------------------------------------------------------------- what goes out
    def _announce(self) -> None:
        """On (re)connect, and when Home Assistant restarts: everything retained, again (a
        broker without persistence forgot it)."""
        self._publish(self.bridge_topic, "online", retain=True)
        for name, cam in self.cameras.items():
            cam.announced = False
            self._camera(name)
            if cam.status is not None:
                self._publish_status(name, cam.status)
            if cam.alerting is not None:
                self._publish(self.topic(name, "alerting"), "ON" if cam.alerting else "OFF",
                              retain=True)
            if cam.snapshot is not None:
                self._publish(self.topic(name, "snapshot"), cam.snapshot, retain=True)

    def _camera(self, name: str) -> CameraState:
        cam = self.cameras.setdefault(name, CameraState())
        if not cam.announced and self.options.discovery_prefix:
            for topic, config in discovery_configs(self.options.prefix,
                                                   self.options.discovery_prefix, name,
                                                   self.version):
                self._publish(topic, config, retain=True)
        cam.announced = True
        return cam

    def _publish_status(self, name: str, status: tuple[str, str]) -> None:
        state, detail = status
        self._publish(self.topic(name, "availability"),
                      "online" if state in WATCHING else "offline", retain=True)
        self._publish(self.topic(name, "status"),
                      {"state": state, "detail": detail, "time": iso_now()}, retain=True)

    def _set_status(self, name: str, state: str, detail: str | None = None) -> None:
        """`detail` None (a heartbeat): keep the last status event's detail for the same state."""
        cam = self._camera(name)
        if detail is None:
            detail = cam.status[1] if cam.status and cam.status[0] == state else ""
        if cam.status != (state, detail):
            cam.status = (state, detail)
            self._publish_status(name, cam.status)

    def _on_alert(self, m: Message) -> None:
        h = m.header
        name, seq = h["camera"], h["seq"]
        cam = self._camera(name)
        mids = [self._publish(self.topic(name, "alert"), h)]
        on = h.get("state") != "end"
        if cam.alerting != on:
            cam.alerting = on
            mids.append(self._publish(self.topic(name, "alerting"), "ON" if on else "OFF",
                                      retain=True))
        names = h.get("attachments") or []
        if self.options.snapshots and "snapshot.jpg" in names \
                and names.index("snapshot.jpg") < len(m.attachments):
            cam.snapshot = m.attachments[names.index("snapshot.jpg")]
            mids.append(self._publish(self.topic(name, "snapshot"), cam.snapshot, retain=True))
        self.tracker.add(name, seq, mids)  # delivered once all of these are acknowledged
        self.sent[name] = seq
        self.published += 1

    def _on_heartbeat(self, m: Message) -> None:
        last_seq = m.header.get("last_seq")
        for name, seq in (last_seq.items() if isinstance(last_seq, dict) else ()):
            if isinstance(seq, int) and seq < self.sent.get(name, seq) \
                    and name not in self.behind:
                self.behind.add(name)  # its events up to what was sent would be passed over
                log.warning("the daemon's journal has %s up to seq %d, but this bridge "
                            "delivered up to %d: a new journal? Move %s aside or pass --since 0",
                            name, seq, self.sent[name], self.options.state_path)
            if name not in self.sent and isinstance(seq, int):
                # The subscriber yields what a heartbeat shows missing before the heartbeat
                # itself: a camera still unsent had nothing to deliver up to here (a first
                # start begins at the journal's end), so this is where its delivery starts.
                self.sent[name] = seq
                self.tracker.add(name, seq, [])
                save_state(self.options.state_path, self.tracker.acked)
        cameras = m.header.get("cameras")
        for name, stats in (cameras.items() if isinstance(cameras, dict) else ()):
            if isinstance(stats, dict) and isinstance(stats.get("state"), str):
                self._set_status(name, stats["state"], stats.get("refused") or None)
                self._score(name, stats)

    def _score(self, name: str, stats: dict) -> None:
        cam, now = self.cameras[name], time.monotonic()
        if stats.get("score") is None or self.connection != "connected" \
                or now - cam.score_at < self.options.score_interval_s:
            return
        cam.score_at = now
        self._publish(self.topic(name, "score"),
                      {k: stats.get(k) for k in ("score", "threshold", "p_normal")}
                      | {"time": iso_now()}, qos=0)

    def _on_missed(self, m: Message) -> bool:
        """An event the subscriber could not get. False: the replay endpoint is away, so start
        a new subscriber from what was sent (retried, nothing skipped); True: the journal no
        longer holds it (retention), which is said on the missed topic and passed over."""
        h = m.header
        if self.sub.replay_ok is False:
            if not self.replay_down:
                self.replay_down = True
                log.warning("%s; alerts wait in the journal until it answers (retrying)",
                            h.get("reason"))
            return False
        name = h.get("camera")
        where = f"alert events {name} seq {h.get('from_seq')}-{h.get('to_seq')}" if name \
            else "some alert events"
        log.warning("%s cannot be delivered: %s", where, h.get("reason"))
        if name is not None and h.get("to_seq") is not None:
            self.tracker.add(name, h["to_seq"], [self._publish(self.topic(name, "missed"), h)])
            self.sent[name] = h["to_seq"]
        return True

    def _handle(self, m: Message) -> bool:
        """Publish one message from the daemon; False when the subscriber must be replaced."""
        if m.header.get("kind") == "missed":
            return self._on_missed(m)
        if self.replay_down and self.sub.replay_ok:
            self.replay_down = False
            log.info("replay endpoint %s answers again", self.replay)
        if m.topic.startswith("alert."):
            self._on_alert(m)
        elif m.topic.startswith("status."):
            self._set_status(m.header["camera"], str(m.header.get("state")),
                             str(m.header.get("detail") or ""))
        elif m.topic == "heartbeat":
            self._on_heartbeat(m)
        return True

    def _check_daemon(self) -> None:
        silent = self.sub.silent_s()
        if not self.daemon_silent and silent >= self.options.daemon_timeout_s:
            self.daemon_silent = True
            log.warning("nothing from the daemon at %s for %.0f s (no heartbeat); cameras "
                        "marked offline", self.pub, silent)
            for name in self.cameras:
                self._set_status(name, "offline", "no heartbeat from the pathwatch daemon")
        elif self.daemon_silent and silent < self.options.daemon_timeout_s:
            self.daemon_silent = False
            log.info("hearing the daemon at %s again", self.pub)

    # -------------------------------------------------------------- run
    def _subscribe(self) -> AlertSubscriber:
        since = self.since
        if self.sent:  # a replacement: go on after what was handed to the broker
            floor = since if isinstance(since, int) else None
            since = ({c: floor for c in self.cameras} if floor is not None else {}) | self.sent
        return AlertSubscriber(self.pub, self.replay, TOPICS, since, secure=self.secure)

    def _wait_for_room(self, stop: threading.Event) -> None:
        """At most max_pending events wait for the broker; the rest stay in the journal (the
        subscriber refills what its socket drops meanwhile)."""
        while self.tracker.pending >= self.options.max_pending and not stop.is_set():
            self._drain(0.5)

    def _start_position(self) -> None:
        """A first start (no state file, no --since) begins at the journal's end: the events
        after it are delivered, the history before it is not."""
        if self.since is not None:
            return
        end = journal_end(self.replay, self.secure)
        if end is None:
            log.warning("replay endpoint %s did not answer; starting with the live stream",
                        self.replay)
            return
        self.since, self.sent, self.tracker = end, dict(end), AckTracker(end)
        save_state(self.options.state_path, end)

    def run(self, stop: threading.Event) -> int:
        self._start_position()
        log.info("bridging %s to MQTT broker %s under %s/, %s (state file %s)", self.pub,
                 self.broker.address, self.options.prefix,
                 f"delivering what comes after {self.since}" if self.since is not None
                 else "from the live stream", self.options.state_path)
        self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s)
        self.client.loop_start()
        try:
            while not stop.is_set():
                self.sub = self._subscribe()
                self._pump(stop)
                self.sub.close()
                pause = time.monotonic() + RESUBSCRIBE_S
                while not stop.is_set() and time.monotonic() < pause:
                    self._drain(0.1)  # acks and connection changes meanwhile
        finally:
            self._stop()
        return 0

    def _pump(self, stop: threading.Event) -> None:
        """Until stop, or until the subscriber must be replaced."""
        while not stop.is_set():
            self._drain()
            for m in self.sub.events(timeout_s=0.2):
                self._wait_for_room(stop)
                if stop.is_set():
                    return  # not published: it comes again from the journal next time
                if not self._handle(m):
                    return
                self._drain()
            self._check_daemon()

    def _stop(self) -> None:
        """Say offline, give the broker a moment to acknowledge what is in flight, keep the
        state, and let go."""
        if self.connection == "connected":
            self.client.publish(self.bridge_topic, "offline", qos=1, retain=True)
        deadline = time.monotonic() + FLUSH_S
        while self.tracker.pending and self.connection == "connected" \
                and time.monotonic() < deadline:
            self._drain(0.1)
        self._drain()
        save_state(self.options.state_path, self.tracker.acked)
        self.client.disconnect()  # sent after the queued offline message; no last will
        self.client.loop_stop()
        if self.sub is not None:
            self.sub.close()
        log.info("stopped: %d alert events published, %d not acknowledged (they come again "
                 "from the journal next time)", self.published, self.tracker.pending)

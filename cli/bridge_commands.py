"""`pathwatch bridge mqtt`: the alert stream and camera availability on an MQTT broker.
No torch, and no paho until the handler runs (it is an extra: pathwatch[mqtt])."""
from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from .console import plain_name, positive_seconds, whole
from .daemon_commands import _add_client_args, _endpoints, find_config, setup_logging

ENV_USERNAME = "PATHWATCH_MQTT_USERNAME"
ENV_PASSWORD = "PATHWATCH_MQTT_PASSWORD"
ENV_PASSWORD_FILE = "PATHWATCH_MQTT_PASSWORD_FILE"


def add_bridge_commands(subparsers) -> None:
    p = subparsers.add_parser("bridge", help="republish alerts to other systems (MQTT)")
    bsub = p.add_subparsers(dest="bridge_command", required=True)
    m = bsub.add_parser(
        "mqtt", help="alerts and camera availability to an MQTT broker (Home Assistant, Node-RED)",
        description="Republish alert events (QoS 1, in order, each once) and camera availability "
        "(retained) to an MQTT broker, with Home Assistant discovery. Reads through the "
        "daemon's journal and resumes after the last event the broker acknowledged, so a "
        f"broker outage or a restart loses nothing. Credentials: ${ENV_USERNAME} and "
        f"${ENV_PASSWORD} (or ${ENV_PASSWORD_FILE}), never arguments. See docs/mqtt.md.")
    _add_client_args(m)
    m.add_argument("--broker", default="localhost", help="MQTT broker host (default localhost)")
    m.add_argument("--port", type=port_number, help="broker port (default 1883, 8883 with --tls)")
    m.add_argument("--tls", action="store_true", help="connect with TLS, verifying the broker's "
                   "certificate (system CAs unless --ca-file)")
    m.add_argument("--ca-file", help="TLS: CA certificate file (PEM) to verify the broker with")
    m.add_argument("--cert", help="TLS: client certificate file (PEM), for brokers that ask")
    m.add_argument("--key", help="TLS: the client certificate's private key file (PEM)")
    m.add_argument("--tls-insecure", action="store_true", help="TLS: do not check that the "
                   "certificate names the broker host (the chain is still verified)")
    m.add_argument("--client-id", type=plain_name, default="pathwatch-bridge",
                   help="MQTT client id, also names the state file (default pathwatch-bridge; "
                   "give each bridge to the same broker its own)")
    m.add_argument("--prefix", default="pathwatch", help="topic prefix (default pathwatch)")
    m.add_argument("--discovery-prefix", default="homeassistant", help="Home Assistant "
                   "discovery prefix (default homeassistant)")
    m.add_argument("--no-discovery", action="store_true", help="publish no Home Assistant "
                   "discovery configs")
    m.add_argument("--snapshots", action="store_true", help="publish each alert's snapshot.jpg "
                   "to PREFIX/CAMERA/snapshot (retained)")
    m.add_argument("--since", type=whole(0), help="ignore the state file: deliver every event "
                   "after this seq (0: the whole journal); default: resume from the state file, "
                   "or start at the journal's end")
    m.add_argument("--state-file", help="where acknowledged seqs are kept (default "
                   "STATE_DIR/mqtt-CLIENT_ID.json)")
    m.add_argument("--score-interval", type=positive_seconds, default=10.0,
                   help="seconds between score updates per camera (default 10)")
    m.add_argument("--keepalive", type=whole(5), default=30,
                   help="MQTT keepalive in seconds (default 30)")
    m.add_argument("--reconnect-max", type=positive_seconds, default=60.0,
                   help="longest wait between reconnect attempts, in seconds (default 60)")
    m.add_argument("--duration", type=positive_seconds, help="stop after this many seconds")
    m.set_defaults(func=cmd_bridge_mqtt)


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def credentials(env=os.environ) -> tuple[str | None, str | None]:
    """Username and password from the environment; a password file (systemd credentials,
    docker secrets) wins over a password variable."""
    username, password = env.get(ENV_USERNAME) or None, env.get(ENV_PASSWORD) or None
    if env.get(ENV_PASSWORD_FILE):
        path = Path(env[ENV_PASSWORD_FILE])
        try:
            password = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"${ENV_PASSWORD_FILE}: cannot read {path} "
                             f"({getattr(e, 'strerror', None) or e})") from None
    if password is not None and username is None:
        raise ValueError(f"a password is set but no username; set ${ENV_USERNAME} too")
    return username, password


def cmd_bridge_mqtt(a) -> int:
    from pathwatch.edge.mqtt_bridge import (Broker, MqttBridge, Options, check_prefix,
                                            tls_context)

    pub, replay, secure = _endpoints(a)
    config = find_config(a.config)[0]
    if (a.ca_file or a.cert or a.key or a.tls_insecure) and not a.tls:
        raise ValueError("--ca-file, --cert, --key and --tls-insecure need --tls")
    if a.key and not a.cert:
        raise ValueError("--key needs --cert (the client certificate it belongs to)")
    username, password = credentials()
    broker = Broker(host=a.broker, port=a.port or (8883 if a.tls else 1883),
                    client_id=a.client_id, username=username, password=password,
                    tls=tls_context(a.ca_file, a.cert, a.key) if a.tls else None,
                    tls_insecure=a.tls_insecure, keepalive_s=a.keepalive,
                    reconnect_max_s=a.reconnect_max)
    options = Options(
        state_path=Path(a.state_file) if a.state_file else
        config.state_path() / f"mqtt-{a.client_id}.json",
        prefix=check_prefix(a.prefix, "--prefix"),
        discovery_prefix=None if a.no_discovery else check_prefix(a.discovery_prefix,
                                                                  "--discovery-prefix"),
        snapshots=a.snapshots, score_interval_s=a.score_interval,
        daemon_timeout_s=max(5.0, 3 * config.publisher.heartbeat_s))
    bridge = MqttBridge(pub, replay, broker, options, since=a.since, secure=secure)
    setup_logging(config.logging.level, config.logging.format)  # after the checks: they print
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # systemd stop and Ctrl-C: flush, then exit
        signal.signal(sig, lambda *_: stop.set())
    if a.duration:
        timer = threading.Timer(a.duration, stop.set)
        timer.daemon = True
        timer.start()
    return bridge.run(stop)

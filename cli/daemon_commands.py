"""The daemon's subcommands: run, calibrate, feedback, tail, view, forward, keys, config.
No torch is imported here."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from rich.markup import escape

from pathwatch.edge.backends import KINDS as BACKENDS  # no torch, no onnxruntime: names only
from .console import console, one_line, out, plain_name, positive_seconds, whole

REPO_DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def find_config(path: str | None, check_sources: bool | list[str] = False):
    """--config, else $PATHWATCH_CONFIG, else configs/default.yaml of a source checkout, else
    the built-in default (one demo camera, every other setting at its documented default).
    `check_sources`: as load_config (the daemon's commands check the cameras they open)."""
    from pathwatch.edge.config import load_config, parse_config

    chosen = path or os.environ.get("PATHWATCH_CONFIG")
    if chosen:
        return load_config(chosen, check_sources), Path(chosen)
    if REPO_DEFAULT.is_file():
        return load_config(REPO_DEFAULT, check_sources), REPO_DEFAULT
    return parse_config("cameras:\n  - name: demo\n    source: demo\n", "<built-in default>"), None


def setup_logging(level: str, fmt: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler
        handler = RichHandler(console=console, show_path=False, markup=False,
                              log_time_format="%H:%M:%S")
    else:
        # A pipe, a file or journald: one unwrapped line per record, so grep sees whole
        # messages. journald stamps lines itself and reads the priority from a <N> prefix.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournaldFormatter() if stderr_is_journal() else
                             logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


def stderr_is_journal() -> bool:
    """systemd's test: $JOURNAL_STREAM names the device and inode of stderr (the variable
    alone is inherited by anything started from a service's shell)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournaldFormatter(logging.Formatter):
    """'<priority>LEVEL message', the syslog priority that `journalctl -p` filters on."""
    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.levelname} {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname.lower(),
                           "logger": record.name, "message": record.getMessage()})


def _override(config, a):
    if getattr(a, "bundle", None):
        config.model.bundle = a.bundle
    if getattr(a, "backend", None):
        config.model.backend = a.backend
    return config


# ------------------------------------------------------------------------------------ run
def add_run(sub) -> None:
    p = sub.add_parser("run", help="run the daemon (default: the demo camera and bundled model)",
                       description="Watch the configured cameras and publish alerts over ZeroMQ. "
                       "With no --config it runs configs/default.yaml: a built-in demo camera, the "
                       "bundled model, auto-calibration.")
    p.add_argument("--config", help="YAML config (default $PATHWATCH_CONFIG or configs/default.yaml)")
    p.add_argument("--camera", action="append", help="run only these cameras (repeatable)")
    p.add_argument("--bundle", help="override model.bundle")
    p.add_argument("--backend", choices=BACKENDS, help="override model.backend")
    p.add_argument("--recalibrate", action="store_true", help="ignore saved calibrations")
    p.add_argument("--duration", type=positive_seconds, help="stop after this many seconds")
    p.set_defaults(func=cmd_run)


def cmd_run(a) -> int:
    from pathwatch.edge.daemon import Daemon
    from pathwatch.edge.systemd import Notifier

    config, path = find_config(a.config, a.camera or True)
    _override(config, a)
    setup_logging(config.logging.level, config.logging.format)
    log = logging.getLogger("pathwatch")
    log.info("config %s", path or "<built-in default>")
    notifier = Notifier.from_environment()
    daemon = Daemon(config, path, only=a.camera, recalibrate=a.recalibrate, notify=notifier.send,
                    overrides=lambda c: _override(c, a))
    daemon.install_signal_handlers()
    try:
        daemon.start()
        if a.duration:
            deadline = time.monotonic() + a.duration
            import threading
            threading.Thread(target=lambda: (time.sleep(max(0.0, deadline - time.monotonic())),
                                             daemon.stop_event.set()), daemon=True).start()
        daemon.run()
    finally:
        daemon.stop()
    log.info("stopped after %d frames", daemon.frames_processed)
    return 0


# ------------------------------------------------------------------------------ calibrate
def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a camera's normal-frame model and threshold",
                       description="Collect normal frames from one camera, fit its per-tile "
                       "densities, choose the threshold for calibration.false_alarms_per_hour from "
                       "out-of-fold scores, and write the calibration JSON.")
    p.add_argument("--camera", required=True, help="the camera's name in the config")
    p.add_argument("--config", help="config file (default: $PATHWATCH_CONFIG, else "
                   "configs/default.yaml)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--frames", type=whole(1), help="normal frames to collect")
    size.add_argument("--seconds", type=positive_seconds, help="scene seconds to collect (default "
                      "calibration.seconds)")
    p.add_argument("--bundle", help="override model.bundle")
    p.add_argument("--backend", choices=BACKENDS, help="override model.backend")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(a) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pathwatch.edge.calibration import MIN_CALIBRATION_FRAMES, Calibration
    from pathwatch.edge.daemon import Daemon

    config, path = find_config(a.config, [a.camera])
    _override(config, a)
    setup_logging("warning" if config.logging.level == "info" else config.logging.level,
                  config.logging.format)
    cams = {c.name: c for c in config.cameras}
    if a.camera not in cams:
        raise ValueError(f"camera {a.camera!r} is not in the config (cameras: "
                         f"{', '.join(cams) or 'none'})")
    cam = cams[a.camera]
    if not cam.enabled:
        raise ValueError(f"camera {a.camera!r} has enabled: false in the config; enable it to "
                         "calibrate it")
    if a.frames is not None and a.frames < MIN_CALIBRATION_FRAMES:
        raise ValueError(f"--frames {a.frames} is too few; calibration needs at least "
                         f"{MIN_CALIBRATION_FRAMES} frames")
    if a.seconds is not None and not a.seconds >= 5:
        raise ValueError(f"--seconds {a.seconds:g} is too short; collect at least 5 s of scene")
    previous = _describe_existing(cam.calibration_path(config))
    unit = "frames" if a.frames or (a.seconds is None and config.calibration.frames) else "s"
    with Progress(TextColumn("[bold]calibrating {task.fields[camera]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
                  console=console) as prog:
        task = prog.add_task("", total=None, camera=a.camera)
        daemon = Daemon(config, path, only=[a.camera], calibrate_only=True, recalibrate=True,
                        calibration_frames=a.frames, calibration_seconds=a.seconds,
                        on_progress=lambda name, n, total: prog.update(task, completed=n, total=total))
        daemon.install_signal_handlers()
        runtime = None
        try:
            daemon.start()
            daemon.run()
            runtime = daemon.cameras.get(a.camera)  # stop() lets go of the cameras
        finally:
            daemon.stop()
    runtime_path = cam.calibration_path(config)
    if runtime is not None and runtime.refused:
        raise ValueError(f"calibration of {a.camera} failed: {runtime.refused}")
    if runtime is None or runtime.calibration is None or daemon.stop_event.is_set():
        raise ValueError(f"calibration of {a.camera} did not finish; nothing was written")
    cal = Calibration.load(runtime_path)
    out.print(f"wrote {escape(str(runtime_path))}: {escape(cal.coverage())}, threshold "
              f"{cal.threshold:.2f} [{escape(cal.threshold_method)}]", highlight=False)
    for t in cal.trimmed:
        console.print(f"[yellow]left out as unusual:[/] {t['from_s']:g}-{t['to_s']:g} s into the "
                      f"window ({t['frames']} frames, feature distance {t['peak_distance']:g})",
                      highlight=False)
    if previous is not None:
        out.print(f"replaced a calibration of {previous}; a running daemon uses the new one "
                  "after `systemctl reload pathwatch` (SIGHUP)", highlight=False)
    if cal.frames_holdout < FEW_SCORED_FRAMES:
        console.print(f"[yellow]warning:[/] {cal.frames_holdout} frames are few to set a "
                      f"threshold for {cal.false_alarms_per_hour:g} false alarms per hour; "
                      "expect more false alerts, or collect for longer (--seconds)",
                      highlight=False, soft_wrap=True)
    return 0


FEW_SCORED_FRAMES = 100  # below this the threshold's tail rests on a handful of frames


def _describe_existing(path: Path) -> str | None:
    """'N frames, threshold T' of a calibration file about to be replaced (None: none)."""
    from pathwatch.edge.calibration import Calibration, CalibrationError

    if not path.exists():
        return None
    try:
        cal = Calibration.load(path)
        return f"{cal.frames_total} frames, threshold {cal.threshold:.2f}"
    except CalibrationError:
        return "an unreadable file"


# ----------------------------------------------------------------------------------- tail
def add_tail(sub) -> None:
    p = sub.add_parser("tail", help="print alert events as JSON lines (fills gaps by replay)",
                       description="Print events as JSON lines, one per event, filling any gap "
                       "from the journal through the replay endpoint.")
    _add_client_args(p)
    p.add_argument("--daemon", action="append", type=_upstream, metavar="PUB,REPLAY",
                   help="follow this daemon (repeat for several; each fills its own gaps); "
                   "replaces --connect/--replay")
    p.add_argument("--since", type=whole(0), help="first replay every event after this seq")
    p.add_argument("--topic", action="append", help="topic prefixes (default alert.; e.g. "
                   "status., heartbeat, score.)")
    p.add_argument("--count", type=whole(1), help="exit after this many events")
    p.add_argument("--save", metavar="DIR", help="also write each event's attachments (snapshot, "
                   "heatmap, overlay) to DIR/<camera>/<alert_id>/<seq>-<name>")
    p.set_defaults(func=cmd_tail)


def _argument(check):
    """An argparse type from a check that raises ValueError with the user's message."""
    import argparse

    def parse(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


def _upstream(text: str):
    from pathwatch.edge.fanin import parse_upstream
    return _argument(parse_upstream)(text)


def _client_address(bind: str) -> str:
    """A bind address as a client connects to it (wildcard hosts become loopback)."""
    return bind.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


def _client_security(a, config):
    """CURVE options for a client from --server-key/--client-key or the config's security."""
    from pathwatch.edge.security import client_options

    server = a.server_key or (config.security.server_public_key if config else None)
    client = a.client_key or (config.security.client_key if config else None)
    if not server and not client:
        return None
    if not (server and client):
        raise ValueError("CURVE needs both the server's public key (--server-key) and this "
                         "client's secret key (--client-key)")
    return client_options(server, client)


def _endpoints(a):
    from pathwatch.edge.config import check_endpoint

    for given in (a.connect, a.replay):
        if given:
            check_endpoint(given)
    config = None if (a.connect and a.replay and not a.config) else find_config(a.config)[0]
    pub = a.connect or _client_address(config.publisher.bind)
    replay = a.replay or _client_address(config.publisher.replay_bind)
    return pub, replay, _client_security(a, config)


def _add_client_args(p) -> None:
    p.add_argument("--config", help="take the addresses (and keys) from this config")
    p.add_argument("--connect", help="publisher address (default from the config)")
    p.add_argument("--replay", help="replay address (default from the config)")
    p.add_argument("--server-key", help="CURVE: the daemon's public key file (NAME.key)")
    p.add_argument("--client-key", help="CURVE: this client's secret key file (NAME.key_secret)")


def cmd_tail(a) -> int:
    from pathwatch.edge.subscriber import tail_main

    if a.daemon and (a.connect or a.replay):
        raise ValueError("give either --daemon (one or more) or --connect/--replay, not both")
    if a.daemon:
        pub, replay, secure = None, None, _client_security(a, find_config(a.config)[0]
                                                           if a.config else None)
    else:
        pub, replay, secure = _endpoints(a)
    topics, fleet = tuple(a.topic or ["alert."]), None
    if a.daemon:
        from pathwatch.edge.fanin import FleetSubscriber
        fleet = FleetSubscriber(a.daemon, topics, a.since, secure=secure)
        pub = ", ".join(d.pub for d in a.daemon)
    try:
        return tail_main(pub, replay, a.since, topics, stop_after=a.count, secure=secure,
                         save_dir=a.save, subscriber=fleet) or 0
    except BrokenPipeError:  # `pathwatch tail | head` is normal use
        return 0


# ----------------------------------------------------------------------------------- view
def add_view(sub) -> None:
    p = sub.add_parser("view", help="live terminal view of a running daemon",
                       description="Per camera: state, frame rates, latency, score against "
                       "threshold, the tile grid; recent alerts. Keys: n/tab next camera, a all, "
                       "p pause, q quit.")
    _add_client_args(p)
    p.set_defaults(func=cmd_view)


# -------------------------------------------------------------------------------- forward
def add_forward(sub) -> None:
    p = sub.add_parser("forward", help="one endpoint pair for many daemons (live and replay)",
                       description="Connect to several daemons and re-publish their streams on "
                       "one publisher address, with one replay endpoint that asks every daemon: "
                       "subscribers (tail, view, bridge) use it as if it were one daemon. Camera "
                       "names must be unique across the daemons.")
    p.add_argument("--upstream", action="append", required=True, type=_upstream,
                   metavar="PUB,REPLAY", help="a daemon's publisher and replay addresses "
                   "(repeat for each daemon)")
    p.add_argument("--bind", default="tcp://127.0.0.1:6556", type=_endpoint,
                   help="where subscribers connect for the live stream (default %(default)s)")
    p.add_argument("--replay-bind", default="tcp://127.0.0.1:6557", type=_endpoint,
                   help="where subscribers ask for missed events (default %(default)s)")
    p.add_argument("--duration", type=positive_seconds, help="stop after this many seconds")
    p.add_argument("--server-key", help="CURVE towards the daemons: their public key file")
    p.add_argument("--client-key", help="CURVE towards the daemons: this forwarder's secret "
                   "key file")
    p.set_defaults(func=cmd_forward)


def _endpoint(text: str) -> str:
    from pathwatch.edge.config import check_endpoint
    return _argument(check_endpoint)(text)


def cmd_forward(a) -> int:
    import signal
    import threading

    from pathwatch.edge.fanin import Forwarder

    secure = _client_security(a, None)
    fwd = Forwarder(a.upstream, a.bind, a.replay_bind, secure_client=secure)
    fwd.start()
    console.print(f"forwarding {len(a.upstream)} daemons on {fwd.endpoint}, replay on "
                  f"{fwd.replay_endpoint}", highlight=False)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait(a.duration)
    fwd.stop()
    console.print(f"forwarded {fwd.forwarded} messages, answered {fwd.replays} replay requests",
                  highlight=False)
    return 0


def cmd_view(a) -> int:
    from pathwatch.edge.view import run_view

    pub, replay, secure = _endpoints(a)
    return run_view(pub, replay, secure=secure)


# ------------------------------------------------------------------------------- feedback
def add_feedback(sub) -> None:
    p = sub.add_parser("feedback", help="mark an alert as normal: its frames join the camera's "
                       "normal set and the calibration is refitted",
                       description="Add an ended alert's frames to its camera's calibration "
                       "window as normal, refit the tile densities and the threshold (the "
                       "network is not retrained) and save the calibration; a running daemon "
                       "switches to it within seconds.")
    p.add_argument("alert_id", help="as `pathwatch tail` prints it")
    p.add_argument("verdict", choices=["normal"], help="what the alert was")
    p.add_argument("--config")
    p.set_defaults(func=cmd_feedback)


def cmd_feedback(a) -> int:
    from pathwatch.edge.feedback import mark_normal

    config, _ = find_config(a.config)
    out.print(escape(mark_normal(config, a.alert_id)), highlight=False)
    return 0


# ----------------------------------------------------------------------------------- keys
def add_keys(sub) -> None:
    p = sub.add_parser("keys", help="CURVE key pairs for the publisher and its clients")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    g = ksub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (mode 600)")
    g.add_argument("directory", help="where to write the pair (created if missing)")
    g.add_argument("--name", required=True, type=plain_name,
                   help="e.g. server, or a client's name (a file name, no path)")
    g.set_defaults(func=cmd_keys_generate)


def cmd_keys_generate(a) -> int:
    from pathwatch.edge.security import generate_keys

    public, secret = generate_keys(a.directory, a.name)
    out.print(f"public key {public} (give it to the other side), secret key {secret} (keep it)")
    return 0


# --------------------------------------------------------------------------------- config
def add_config(sub) -> None:
    p = sub.add_parser("config", help="check a config file or print its JSON schema")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=cmd_config_check)
    s = csub.add_parser("schema", help="print the config's JSON schema")
    s.set_defaults(func=cmd_config_schema)


def cmd_config_check(a) -> int:
    from rich.table import Table

    from pathwatch.edge.config import ConfigError, config_summary, load_config

    try:
        config = load_config(a.file, check_sources=True)
    except ConfigError as e:
        if len(e.problems) == 1:
            raise
        console.print(f"[red]pathwatch config: {len(e.problems)} problems:[/]", highlight=False)
        for problem in e.problems:  # each its own line: a report, not a log line
            console.print(f"  {escape(one_line(problem))}", highlight=False, soft_wrap=True)
        return 2
    t = Table(title=f"{a.file}: valid", show_header=False)
    for k, v in config_summary(config):
        t.add_row(k, v)
    out.print(t)
    for warning in config_warnings(config):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    return 0


def config_warnings(config) -> list[str]:
    """Valid, but likely not what was meant (`run` says the same when it gets there)."""
    from pathwatch.edge.publisher import LOOPBACK_HOSTS, network_reachable

    out = []
    if not config.security.curve:
        for key, address in (("bind", config.publisher.bind),
                             ("replay_bind", config.publisher.replay_bind)):
            if network_reachable(address):
                out.append(f"publisher.{key} {address} is reachable from the network without "
                           "encryption; set security.curve: true (see the README's Security)")
    if config.metrics.enabled and config.metrics.host not in LOOPBACK_HOSTS:
        out.append(f"metrics.host {config.metrics.host} exposes the metrics endpoint, which has "
                   "no authentication, to the network; keep 127.0.0.1 unless a firewall or "
                   "proxy guards it")
    sec = config.security
    if not sec.curve:
        for key in ("server_key", "authorized_clients"):
            path = getattr(sec, key)
            if path and not Path(path).expanduser().exists():
                out.append(f"security.{key} {path} does not exist (unused while curve is "
                           "false; `run` refuses it once curve is true)")
    bundle = config.model.bundle
    if bundle != "default" and not (Path(bundle) / "manifest.json").is_file():
        out.append(f"model.bundle {bundle} is not a bundle directory (yet); `run` refuses it "
                   "until `pathwatch export --out` has written one there")
    return out


def cmd_config_schema(a) -> int:
    from pathwatch.edge.config import config_schema

    print(json.dumps(config_schema(), indent=1))
    return 0


def register(sub) -> None:
    for add in (add_run, add_calibrate, add_feedback, add_tail, add_view, add_forward, add_keys,
                add_config):
        add(sub)

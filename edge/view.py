"""`pathwatch view`: the live terminal view of a running daemon.

It is a subscriber like any other (heartbeat, score, status and alert topics, with gaps
filled from the replay endpoint). Everything it knows lives in a `Snapshot`; the screen is a
pure function of it (`render`), so tests render it to text without a terminal.
"""
from __future__ import annotations

import collections
import os
import sys
import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

BARS = "▁▂▃▄▅▆▇█"
SILENT_AFTER_S = 3.0  # no heartbeat for this long: the daemon is silent or gone


@dataclass
class CameraView:
    name: str
    state: str = "unknown"
    detail: str = ""
    source: str = ""  # the capture's own state, beside the reported one
    lifecycle: str = ""  # calibration: pending, collecting, scoring, refused
    camera_fps: float = 0.0
    process_fps: float = 0.0
    skipped_fps: float = 0.0
    skipped: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    score: float | None = None
    p_normal: float | None = None  # how often a normal frame scores this high
    threshold: float | None = None
    tiles: list = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=600))


@dataclass
class Snapshot:
    cameras: dict[str, CameraView] = field(default_factory=dict)
    alerts: collections.deque = field(default_factory=lambda: collections.deque(maxlen=12))
    last_heartbeat: float | None = None  # monotonic
    endpoint: str = ""
    started: float = field(default_factory=time.monotonic)
    paused: bool = False
    curve: bool = False
    focus: str | None = None  # one camera's panel only; None: all of them
    quit: bool = False

    def camera(self, name: str) -> CameraView:
        return self.cameras.setdefault(name, CameraView(name))

    def key(self, k: str) -> None:
        """A key press: p pauses the screen (messages are still folded in), n / tab shows the
        next camera alone, a shows all cameras, q quits."""
        k = k.lower()
        if k == "p":
            self.paused = not self.paused
        elif k in ("n", "\t") and self.cameras:
            names = sorted(self.cameras)
            i = names.index(self.focus) + 1 if self.focus in names else 0
            self.focus = names[i] if i < len(names) else None
        elif k == "a":
            self.focus = None
        elif k in ("q", "\x03"):
            self.quit = True

    def apply(self, topic: str, header: dict, now: float | None = None) -> None:
        """Fold one message into the snapshot."""
        now = time.monotonic() if now is None else now
        if topic == "heartbeat":
            self.last_heartbeat = now
            for name, c in (header.get("cameras") or {}).items():
                cam = self.camera(name)
                for key in ("state", "source", "lifecycle", "camera_fps", "process_fps",
                            "skipped_fps", "skipped", "latency_p50_ms", "latency_p99_ms",
                            "threshold"):
                    if c.get(key) is not None:
                        setattr(cam, key, c[key])
        elif topic.startswith("score."):
            cam = self.camera(header["camera"])
            cam.score, cam.threshold = header.get("score"), header.get("threshold")
            cam.p_normal = header.get("p_normal")
            cam.tiles, cam.grid = header.get("tiles") or [], tuple(header.get("grid") or (0, 0))
            if cam.score is not None:
                cam.history.append((now, cam.score))
        elif topic.startswith("status."):
            cam = self.camera(header["camera"])
            cam.state, cam.detail = header.get("state", cam.state), header.get("detail", "")
        elif topic.startswith("alert."):
            self._alert(header)

    def _alert(self, h: dict) -> None:
        for i, a in enumerate(self.alerts):
            if a["alert_id"] == h.get("alert_id"):
                self.alerts[i] = h
                break
        else:
            self.alerts.appendleft(h)
        cam = self.camera(h["camera"])
        if h.get("state") in ("start", "update"):
            cam.state = "alerting"
        elif cam.state == "alerting":
            cam.state = "online"


def sparkline(history, threshold: float | None, now: float, seconds: float = 60.0,
              width: int = 30) -> Text:
    """The last minute of scores, one character per bucket, red where over threshold."""
    text = Text()
    if not history:
        return text.append("·" * width, style="dim")
    span = seconds / width
    buckets: list[list[float]] = [[] for _ in range(width)]
    for t, s in history:
        i = int((t - (now - seconds)) / span)
        if 0 <= i < width:
            buckets[i].append(s)
    top = max([max(b) for b in buckets if b] + [threshold or 1.0]) or 1.0
    for b in buckets:
        if not b:
            text.append("·", style="dim")
            continue
        v = max(b)
        bar = BARS[min(len(BARS) - 1, max(0, int(v / top * (len(BARS) - 1))))]
        text.append(bar, style="bold red" if threshold is not None and v > threshold else "green")
    return text


def tile_grid(cam: CameraView) -> Text:
    """Tile scores as coloured cells: green below half the threshold, yellow below it, red over
    (ignored tiles dotted)."""
    cols, rows = cam.grid
    text = Text()
    if not cols or not cam.tiles:
        return text.append("(no scores yet)", style="dim")
    thr = cam.threshold or 1.0
    for r in range(rows):
        for c in range(cols):
            s = cam.tiles[r * cols + c]
            style = ("dim" if s is None else "red" if s > thr else
                     "yellow" if s > thr / 2 else "green")
            text.append("░░" if s is None else "██", style=style)
        text.append("\n")
    return text


def odds(p: float) -> str:
    """0.02 -> 'once in 50 frames', 1e-7 -> 'once in 1e+07 frames'."""
    if p >= 0.5:
        return "often"
    n = 1.0 / max(p, 1e-15)
    return f"once in {n:.0f} frames" if n < 1e5 else f"once in {n:.0e} frames"


STATE_STYLE = {"online": "green", "alerting": "bold red", "calibrating": "yellow",
               "reconnecting": "yellow", "connecting": "yellow", "offline": "red",
               "refused": "red"}


def camera_panel(cam: CameraView, now: float) -> Panel:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="dim")
    t.add_column()
    t.add_row("state", Text(cam.state + (f"  {cam.detail}" if cam.detail and cam.state != "online" else ""),
                            style=STATE_STYLE.get(cam.state, "")))
    if cam.source:
        t.add_row("camera", Text(f"source {cam.source}, calibration {cam.lifecycle or '-'}",
                                 style=STATE_STYLE.get(cam.source, "")))
    t.add_row("fps", f"camera {cam.camera_fps:.1f}  processed {cam.process_fps:.1f}  "
                     f"skipped {cam.skipped_fps:.1f} ({cam.skipped} frames)")
    lat = ("-" if cam.latency_p50_ms is None else
           f"p50 {cam.latency_p50_ms:.0f} ms  p99 {cam.latency_p99_ms:.0f} ms")
    t.add_row("latency", lat)
    score = "-" if cam.score is None else f"{cam.score:.2f}"
    thr = "-" if cam.threshold is None else f"{cam.threshold:.2f}"
    over = cam.score is not None and cam.threshold is not None and cam.score > cam.threshold
    rarity = "" if cam.p_normal is None else f"  (normal frames score this high {odds(cam.p_normal)})"
    t.add_row("score", Text(f"{score} / threshold {thr}{rarity}", style="bold red" if over else ""))
    t.add_row("last 60 s", sparkline(cam.history, cam.threshold, now))
    t.add_row("tiles", tile_grid(cam))
    return Panel(t, title=f"[bold]{cam.name}", border_style=STATE_STYLE.get(cam.state, "white"))


def alerts_table(alerts) -> Table:
    t = Table(title="recent alerts", expand=True)
    for col in ("time", "camera", "state", "peak score", "duration", "tile"):
        t.add_column(col)
    for a in alerts:
        t.add_row(str(a.get("time", ""))[11:19], a.get("camera", ""), a.get("state", ""),
                  f"{a.get('peak_score', 0):.2f}", f"{a.get('duration_s', 0):.1f} s",
                  str(a.get("peak_tile") or a.get("tile") or ""))
    return t


def render(snap: Snapshot, now: float | None = None):
    now = time.monotonic() if now is None else now
    if snap.last_heartbeat is None:
        waited = now - snap.started
        keys = (" With CURVE, a key the daemon does not authorise gets nothing: check "
                "--server-key/--client-key and the daemon's authorized_clients." if snap.curve else
                " If the daemon uses CURVE, pass --server-key and --client-key.")
        head = Text(f"waiting for the daemon at {snap.endpoint} ({waited:.0f} s): is "
                    f"`pathwatch run` running, and are the addresses right?{keys}",
                    style="bold yellow")
    elif now - snap.last_heartbeat > SILENT_AFTER_S:
        head = Text(f"daemon silent for {now - snap.last_heartbeat:.0f} s (no heartbeat from "
                    f"{snap.endpoint}); showing the last known state", style="bold red")
    else:
        head = Text(f"connected to {snap.endpoint}" + ("  [paused]" if snap.paused else ""),
                    style="green")
    shown = [c for c in snap.cameras.values() if snap.focus in (None, c.name)]
    alerts = [a for a in snap.alerts if snap.focus in (None, a.get("camera"))]
    panels = [camera_panel(c, now) for c in shown]
    keys = Text(f"{len(shown)} of {len(snap.cameras)} cameras  ·  n next camera  a all  "
                "p pause  q quit", style="dim")
    return Group(head, *panels, alerts_table(alerts), keys)


class Keys:
    """Single key presses from a terminal (cbreak mode, restored on exit); nothing when stdin
    is not a terminal, so the view also runs under a pipe or a service manager."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.saved = None

    def __enter__(self):
        try:
            import termios
            import tty
        except ImportError:
            return self  # not a POSIX system: no keys
        try:
            if self.stream.isatty():
                self.saved = termios.tcgetattr(self.stream)
                tty.setcbreak(self.stream)
        except (termios.error, OSError, ValueError):
            self.saved = None  # not a usable terminal: no keys
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.stream, termios.TCSADRAIN, self.saved)

    def pressed(self) -> str:
        """Whatever was typed since the last call (never waits)."""
        import select

        if self.saved is None:
            return ""
        out = ""
        while select.select([self.stream], [], [], 0)[0]:
            chunk = os.read(self.stream.fileno(), 32).decode(errors="ignore")
            if not chunk:
                break
            out += chunk.split("\x1b", 1)[0]  # arrows and F-keys are escapes, not letters
        return out


def run_view(pub: str, replay: str | None, refresh_hz: float = 4.0, secure=None,
             backlog: int = 50) -> int:
    from rich.live import Live

    from .subscriber import AlertSubscriber

    snap = Snapshot(endpoint=pub, curve=secure is not None)
    # The backlog brings each camera's recent alert events from the journal on connect.
    sub = AlertSubscriber(pub, replay, topics=("alert.", "score.", "status.", "heartbeat"),
                          secure=secure, backlog=backlog)
    try:
        # The terminal's alternate screen, as top and htop use: q leaves the shell as it was.
        with Keys() as keys, Live(render(snap), refresh_per_second=refresh_hz,
                                  screen=sys.stdout.isatty()) as live:
            last = 0.0
            while not snap.quit:
                for m in sub.events(timeout_s=1.0 / refresh_hz):
                    snap.apply(m.topic, m.header)
                    if time.monotonic() - last > 1.0 / refresh_hz:
                        break
                was_paused = snap.paused
                for k in keys.pressed():
                    snap.key(k)
                if not (snap.paused and was_paused):  # a paused screen stays as it was
                    live.update(render(snap))
                last = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
    return 0

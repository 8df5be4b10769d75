"""Soak: the daemon for a long stretch under kills and a flapping network camera.

    python benchmarks/soak.py --minutes 30 [--kill-every-min 2 6] [--flap] [--out results.json]

Two cameras: the built-in `demo` (its scripted anomalies every 48 s from 60 s after the capture
opens) and `net`, an MJPEG-over-HTTP camera served by this script from a child process (the
demo scene with another seed, on a scene clock that runs on across its restarts), which is
killed and restarted (`down`) or frozen with SIGSTOP and resumed (`stall`) at random. The
daemon (`python -m pathwatch.cli run`, the embedded default bundle on ONNX Runtime, 1 thread)
runs with NOTIFY_SOCKET on a datagram socket this script listens on and WATCHDOG_USEC, as under
systemd. The first run auto-calibrates both cameras; the soak clock starts once both score.
Then a killer SIGKILLs the daemon at random intervals and restarts it at once (as
Restart=on-failure does after a SIGKILL), except in the last `--calm-minutes`, so one run is
long enough to judge memory. One
AlertSubscriber (since=0) runs throughout, across the restarts, and a raw SUB socket counts
what came over the wire.

At the end: SIGTERM, then one short catch-up start of the daemon (the network camera's server
stopped, so it has nothing to alert on) so the subscriber can fill from replay what the
stopping daemon published and did not deliver (PUB sockets close with LINGER 0), then the
journal is compared with what was received: lost (journaled, never received), duplicated
(received twice; or an alert with two `start`s or two `end`s in the journal), seq holes, alerts
left open after the clean stop. Also: watchdog pings (largest gap within a run), heartbeat gaps
(the frame loop's stalls at 1 s resolution), restart-to-READY times, RSS / threads / open fds
every 10 s, scripted anomalies and the alerts they raised. Exit status 1 when anything was
lost, duplicated, left open or missing from the seq sequence.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
SAMPLE_S = 10.0
WARMUP_S = 60.0  # RSS/threads "start" of a run: the first sample this long after READY
MATCH_BEFORE_S, MATCH_AFTER_S = 1.0, 3.0  # an alert start within the anomaly +- this counts
SETTLE_S = 5.0  # a scripted anomaly counts only when the run went on this long after it ended


# ---------------------------------------------------------------------------- the network camera
def serve_camera(port: int, t0: float, fps: float, seed: int) -> None:
    """MJPEG over HTTP: the demo scene (seed `seed`) on a clock that started at epoch `t0`,
    so a restarted server shows the scene where it would be, anomalies on schedule."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import cv2

    from pathwatch.edge.demo import DemoScene

    scene = DemoScene(fps=fps, seed=seed)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            last = -1
            try:
                while True:
                    index = math.floor((time.time() - t0) * fps)
                    if index > last:
                        last = index
                        jpg = cv2.imencode(".jpg", scene.frame(index)[0],
                                           [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpg), jpg))
                        self.wfile.flush()
                    time.sleep(max(0.0, t0 + (last + 1) / fps - time.time()))
            except OSError:  # the reader went away
                pass

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


class CameraServer:
    """The network camera's process: down (killed, port closed) or stalled (SIGSTOP: the
    connection stays open and nothing comes), and back."""

    def __init__(self, port: int, t0: float, fps: float, seed: int, log):
        self.port, self.t0, self.fps, self.seed, self.log = port, t0, fps, seed, log
        self.proc: subprocess.Popen | None = None
        self.stalled = False

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE), "--serve-camera", str(self.port),
                                      repr(self.t0), str(self.fps), str(self.seed)],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.stalled = False

    def kill(self) -> None:
        if self.proc is not None:
            if self.stalled:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc, self.stalled = None, False

    def stall(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.stalled = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.stalled = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------- observers
class Notifications:
    """The NOTIFY_SOCKET end: every datagram with its time."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.events: list[tuple[float, float, str]] = []  # (monotonic, epoch, line)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            now, wall = time.monotonic(), time.time()
            for line in data.decode(errors="replace").splitlines():
                self.events.append((now, wall, line))

    def first(self, line: str, after: float) -> float | None:
        return next((t for t, _, s in list(self.events) if s == line and t >= after), None)


class Listener:
    """The AlertSubscriber (since=0, across restarts) plus a raw SUB counting the wire."""

    def __init__(self, pub: str, replay: str):
        self.pub, self.replay = pub, replay
        self.alerts: list[dict] = []  # every alert event the subscriber yielded
        self.missed: list[dict] = []
        self.heartbeats: list[tuple[float, float, dict]] = []  # (monotonic, epoch, header)
        self.status: list[tuple[float, str, str]] = []
        self.wire: collections.Counter = collections.Counter()  # (camera, seq) on the wire
        self.journal_topic: list[dict] = []
        self.recovered = 0
        self.seen: dict[str, int] = {}
        self.open: dict[str, str] = {}  # alert_id -> camera, as received (no `end` yet)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True),
                        threading.Thread(target=self._raw, daemon=True)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        from pathwatch.edge.subscriber import AlertSubscriber

        sub = AlertSubscriber(self.pub, self.replay, topics=("alert.", "status.", "heartbeat"),
                              since=0, replay_retry_s=2.0)
        try:
            while not self.stop.is_set():
                for m in sub.events(timeout_s=0.5):
                    now, wall = time.monotonic(), time.time()
                    h = m.header
                    if h.get("kind") == "missed":
                        self.missed.append(h)
                    elif m.topic.startswith("alert."):
                        replayed = sub.recovered > self.recovered
                        self.recovered = sub.recovered
                        if h["state"] == "end":
                            self.open.pop(h["alert_id"], None)
                        else:
                            self.open[h["alert_id"]] = h["camera"]
                        self.alerts.append({"camera": h["camera"], "seq": h["seq"],
                                            "state": h["state"], "alert_id": h["alert_id"],
                                            "replayed": replayed, "received": wall})
                    elif m.topic == "heartbeat":
                        self.heartbeats.append((now, wall, h))
                    elif m.topic.startswith("status."):
                        self.status.append((wall, h.get("camera"), h.get("state")))
                    self.seen = dict(sub.seen)
                    if self.stop.is_set():
                        break
        finally:
            sub.close()

    def _raw(self) -> None:
        import zmq

        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 100000)
        for topic in (b"alert.", b"journal"):
            s.setsockopt(zmq.SUBSCRIBE, topic)
        s.connect(self.pub)
        try:
            while not self.stop.is_set():
                if not s.poll(200):
                    continue
                parts = s.recv_multipart()
                h = json.loads(parts[1])
                if parts[0] == b"journal":
                    self.journal_topic.append(h)
                else:
                    self.wire[(h["camera"], h["seq"])] += 1
        finally:
            s.close(0)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


class Sampler:
    """RSS, threads, open fds and CPU time of the running daemon every SAMPLE_S."""

    def __init__(self, soak: "Soak"):
        self.soak = soak
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stop.wait(SAMPLE_S):
            run = self.soak.current
            load = os.getloadavg()[0]
            if run is None or run.get("ready") is None or run.get("end") is not None:
                self.samples.append({"t": time.monotonic(), "run": None, "load1": load})
                continue
            pid = run["pid"]
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            now = time.monotonic()
            self.samples.append({
                "t": now, "run": run["n"], "uptime_s": round(now - run["ready"], 1),
                "rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
                "fds": fds, "cpu_s": (int(stat[11]) + int(stat[12])) / tick, "load1": load})


# ---------------------------------------------------------------------------- the soak
class Soak:
    def __init__(self, a):
        self.a, self.argv = a, sys.argv[1:]
        self.rng = random.Random(a.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="pw-soak-"))
        self.log = open(self.tmp / "daemon.log", "ab", buffering=0)
        self.runs: list[dict] = []
        self.current: dict | None = None
        self.flaps: list[dict] = []
        self.pub, self.replay = f"ipc://{self.tmp}/pub.sock", f"ipc://{self.tmp}/replay.sock"
        self.t0_net = time.time()
        self.camera = CameraServer(free_port(), self.t0_net, a.net_scene_fps, a.net_seed, self.log)
        self.config = self.tmp / "pathwatch.yaml"
        self.write_config()
        self.notify = Notifications(self.tmp / "notify.sock")
        self.stop_flapping = threading.Event()
        self.soak_start = self.soak_end = None

    def write_config(self) -> None:
        import yaml

        cfg = {"state_dir": str(self.tmp / "state"), "cache_dir": str(self.tmp / "cache"),
               "model": {"bundle": "default", "backend": "onnxruntime", "threads": 1},
               "calibration": {"seconds": self.a.calibration_seconds},
               "publisher": {"bind": self.pub, "replay_bind": self.replay},
               "metrics": {"enabled": False},
               "cameras": [{"name": "demo", "source": "demo", "fps": self.a.demo_fps},
                           {"name": "net", "source": self.camera.url, "fps": self.a.net_fps}]}
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def say(self, text: str) -> None:
        t = "setup" if self.soak_start is None else f"{(time.monotonic() - self.soak_start) / 60:5.1f} min"
        print(f"[{t}] {text}", flush=True)

    # ------------------------------------------------------------------ the daemon
    def spawn(self) -> dict:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.tmp / "notify.sock"),
               "WATCHDOG_USEC": str(int(self.a.watchdog_sec * 1e6))}
        env.pop("WATCHDOG_PID", None)
        self.log.write(f"\n===== run {len(self.runs)} =====\n".encode())
        spawned = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config",
                                 str(self.config)], stdout=self.log, stderr=self.log, env=env)
        run = {"n": len(self.runs), "pid": proc.pid, "proc": proc, "spawned": spawned,
               "spawned_wall": time.time(), "ready": None, "end": None, "how": None}
        self.runs.append(run)
        self.current = run
        deadline = spawned + 180
        while time.monotonic() < deadline and proc.poll() is None:
            t = self.notify.first("READY=1", spawned)
            if t is not None:
                run["ready"] = t
                run["ready_wall"] = time.time() - (time.monotonic() - t)
                break
            time.sleep(0.05)
        if run["ready"] is None:
            raise SystemExit(f"the daemon did not become ready (exit {proc.poll()}); log: "
                             f"{self.tmp / 'daemon.log'}")
        return run

    def end(self, run: dict, how: str) -> None:
        proc = run["proc"]
        if how == "kill":
            proc.send_signal(signal.SIGKILL)
        elif how == "term":
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            how += " (hung at stop, killed after 60 s)"
        run["end"], run["end_wall"], run["how"], run["exit"] = time.monotonic(), time.time(), how, code

    def wait_scoring(self, cameras, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listener.heartbeats:
                cams = self.listener.heartbeats[-1][2].get("cameras", {})
                if all(cams.get(c, {}).get("lifecycle") == "scoring" for c in cameras):
                    return True
            time.sleep(1.0)
        return False

    # ------------------------------------------------------------------ the flapping camera
    def flapper(self) -> None:
        a = self.a
        while not self.stop_flapping.wait(self.rng.uniform(*a.flap_every_s)):
            mode = self.rng.choice(("down", "stall"))
            down_s = self.rng.uniform(*a.flap_down_s)
            flap = {"mode": mode, "from": time.time(), "for_s": round(down_s, 1)}
            self.say(f"network camera {mode} for {down_s:.0f} s")
            if mode == "down":
                self.camera.kill()
            else:
                self.camera.stall()
            self.stop_flapping.wait(down_s)
            if mode == "down":
                self.camera.start()
            else:
                self.camera.resume()
            flap["to"] = time.time()
            self.flaps.append(flap)

    # ------------------------------------------------------------------ main
    def run(self) -> dict:
        a = self.a
        self.camera.start()
        self.say(f"state and sockets in {self.tmp}; first run calibrates both cameras "
                 f"({a.calibration_seconds:g} s of scene)")
        run = self.spawn()
        self.listener = Listener(self.pub, self.replay)
        self.sampler = Sampler(self)
        if not self.wait_scoring(("demo", "net"), a.calibration_seconds + 300):
            raise SystemExit(f"calibration did not finish; log: {self.tmp / 'daemon.log'}")
        self.soak_start = time.monotonic()
        self.soak_start_wall = time.time()
        self.say("both cameras scoring: soak clock starts")
        finish = self.soak_start + a.minutes * 60
        calm_from = finish - a.calm_minutes * 60
        flapper = threading.Thread(target=self.flapper, daemon=True)
        if a.flap:
            flapper.start()
        next_kill = time.monotonic() + self.rng.uniform(*a.kill_every_min) * 60
        kill_in_alert = None
        while time.monotonic() < finish:
            time.sleep(0.2)
            if run["proc"].poll() is not None:  # died by itself: Restart=on-failure
                self.end(run, "crashed")
                self.say(f"daemon exited by itself with {run['exit']}; restarting")
                run = self.spawn()
            elif next_kill <= time.monotonic() < calm_from:
                if kill_in_alert is None:
                    kill_in_alert = self.rng.random() < a.kill_in_alert
                if kill_in_alert and not self.listener.open and \
                        time.monotonic() < next_kill + 60 and time.monotonic() < calm_from:
                    continue  # wait (up to a minute) for an alert to be open
                run["killed_with_open"] = sorted(self.listener.open)
                kill_in_alert = None
                self.end(run, "kill")
                time.sleep(a.restart_delay_s)
                opened = self.runs[-1]["killed_with_open"]
                run = self.spawn()
                self.say(f"SIGKILL run {run['n'] - 1} ({len(opened)} alerts open); run "
                         f"{run['n']} ready after {run['ready'] - run['spawned']:.1f} s")
                next_kill = time.monotonic() + self.rng.uniform(*a.kill_every_min) * 60
        self.soak_end = time.monotonic()
        self.stop_flapping.set()
        flapper.join(60) if a.flap else None
        self.end(run, "term")
        self.say(f"SIGTERM: exit {run['exit']} after {run['end'] - run['spawned']:.1f} s")
        self.current = None
        from pathwatch.edge.journal import Journal

        journal = Journal(self.tmp / "state" / "journal.sqlite", reader=True)
        left_open = journal.open_alerts()
        at_stop = journal.last_seqs()
        journal.close()
        # Catch up: the stopping daemon's last events may not have been delivered (LINGER 0).
        # A short start with the network camera gone (nothing to alert on) serves replay.
        self.camera.kill()
        catch = self.spawn()
        self.current = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                self.listener.seen.get(c, 0) < s for c, s in at_stop.items()):
            time.sleep(0.5)
        time.sleep(2.0)
        self.end(catch, "term")
        catch["catch_up"] = True
        self.say(f"catch-up run stopped (exit {catch['exit']})")
        self.listener.close()
        self.sampler.stop.set()
        self.notify.stop.set()
        self.dump(left_open, at_stop)
        return self.report(left_open, at_stop)

    RAW = ("runs", "flaps", "soak_start", "soak_start_wall", "soak_end", "t0_net", "argv")

    def dump(self, left_open, at_stop) -> None:
        """Everything the report is computed from, so it can be recomputed (--report-from)."""
        import pickle

        raw = {k: getattr(self, k) for k in self.RAW}
        raw["runs"] = [{k: v for k, v in r.items() if k != "proc"} for r in self.runs]
        raw.update(a=vars(self.a), notify=self.notify.events, samples=self.sampler.samples,
                   listener={k: getattr(self.listener, k) for k in
                             ("alerts", "missed", "heartbeats", "status", "wire", "journal_topic")},
                   left_open=left_open, at_stop=at_stop, tmp=str(self.tmp))
        with open(self.tmp / "raw.pickle", "wb") as f:
            pickle.dump(raw, f)

    @classmethod
    def from_raw(cls, path: str) -> tuple["Soak", list, dict]:
        import pickle
        import types

        with open(path, "rb") as f:
            raw = pickle.load(f)
        soak = cls.__new__(cls)
        for k in cls.RAW:
            setattr(soak, k, raw[k])
        soak.a = argparse.Namespace(**raw["a"])
        soak.tmp = Path(raw["tmp"])
        soak.notify = types.SimpleNamespace(events=raw["notify"])
        soak.sampler = types.SimpleNamespace(samples=raw["samples"])
        soak.listener = types.SimpleNamespace(**raw["listener"])
        return soak, raw["left_open"], raw["at_stop"]

    # ------------------------------------------------------------------ figures
    def report(self, left_open: list, at_stop: dict) -> dict:
        from pathwatch.edge.clock import parse_iso
        from pathwatch.edge.demo import DemoScene
        from pathwatch.edge.journal import Journal

        a, L = self.a, self.listener
        journal = Journal(self.tmp / "state" / "journal.sqlite", reader=True)
        events, position = [], {}
        while True:  # since() pages by 1000
            page = journal.since(position or 0, limit=1000)
            if not page:
                break
            events += page
            for e in page:
                cam = e.header["camera"]
                position[cam] = max(position.get(cam, 0), e.header["seq"])
        last_seqs = journal.last_seqs()
        journal.close()
        headers = [e.header for e in events if e.topic.startswith("alert.")]
        journaled = {(h["camera"], h["seq"]) for h in headers}
        received = collections.Counter((m["camera"], m["seq"]) for m in L.alerts)
        lost = sorted(journaled - set(received))
        duplicated = sorted(k for k, n in received.items() if n > 1)
        wire_dup = sorted(k for k, n in L.wire.items() if n > 1)
        holes = {}
        for cam, last in last_seqs.items():
            have = {s for c, s in journaled if c == cam}
            missing = sorted(set(range(1, last + 1)) - have)
            if missing:
                holes[cam] = missing
        per_alert = collections.defaultdict(collections.Counter)
        for h in headers:
            per_alert[(h["camera"], h["alert_id"])][h["state"]] += 1
        double = sorted(f"{c}/{i}" for (c, i), n in per_alert.items()
                        if n["start"] > 1 or n["end"] > 1)
        never_started = sorted(f"{c}/{i}" for (c, i), n in per_alert.items() if n["start"] == 0)
        reasons = collections.Counter(h.get("reason") or "?" for h in headers if h["state"] == "end")
        starts = [h for h in headers if h["state"] == "start"]

        # ---- runs: watchdog, heartbeats, restarts, memory
        soak_runs = [r for r in self.runs if not r.get("catch_up")]
        pings = [t for t, _, s in self.notify.events if s == "WATCHDOG=1"]
        beats = [t for t, _, _ in L.heartbeats]
        rows = []
        for r in soak_runs:
            end = r["end"]
            mine = [t for t in pings if r["ready"] <= t <= end]
            gaps = [b - a_ for a_, b in zip([r["ready"]] + mine, mine)]
            hb = [t for t in beats if r["ready"] <= t <= end]
            hb_gaps = [b - a_ for a_, b in zip(hb, hb[1:])]
            smp = [s for s in self.sampler.samples if s.get("run") == r["n"]]
            warm = [s for s in smp if s["uptime_s"] >= WARMUP_S] or smp[-1:]
            cpu = (warm[-1]["cpu_s"] - warm[0]["cpu_s"]) / max(1e-9, warm[-1]["t"] - warm[0]["t"]) \
                if len(warm) > 1 else None
            rows.append({
                "run": r["n"], "how_ended": r["how"], "exit": r["exit"],
                "ready_after_s": round(r["ready"] - r["spawned"], 2),
                "uptime_s": round(end - r["ready"], 1), "watchdog_pings": len(mine),
                "watchdog_max_gap_s": round(max(gaps), 2) if gaps else None,
                "heartbeat_max_gap_s": round(max(hb_gaps), 2) if hb_gaps else None,
                "rss_start_mb": round(warm[0]["rss_kb"] / 1024, 1) if warm else None,
                "rss_end_mb": round(smp[-1]["rss_kb"] / 1024, 1) if smp else None,
                "rss_max_mb": round(max(s["rss_kb"] for s in smp) / 1024, 1) if smp else None,
                "threads_start": warm[0]["threads"] if warm else None,
                "threads_end": smp[-1]["threads"] if smp else None,
                "threads_max": max(s["threads"] for s in smp) if smp else None,
                "fds_start": warm[0]["fds"] if warm else None,
                "fds_end": smp[-1]["fds"] if smp else None,
                "cpu_share": round(cpu, 2) if cpu is not None else None,
                "rss_slope_mb_per_h": _slope([(s["t"], s["rss_kb"] / 1024) for s in warm]),
            })
        longest = max(rows, key=lambda x: x["uptime_s"])

        # ---- scripted anomalies
        scene = DemoScene()
        demo_rows, demo_hits = [], 0
        demo_starts = [(parse_iso(h["time"]), h) for h in starts if h["camera"] == "demo"]
        net_starts = [(parse_iso(h["time"]), h) for h in starts if h["camera"] == "net"]
        matched = set()
        for r in soak_runs + [x for x in self.runs if x.get("catch_up")]:
            origin = r["ready_wall"]  # the demo capture opens just before READY=1
            scoring = self._scoring_from(r)
            for e in scene.events(r["end_wall"] - origin):
                t0, t1 = origin + e.start_s, origin + e.end_s
                hit = [(t, h) for t, h in demo_starts
                       if t0 - MATCH_BEFORE_S <= t <= t1 + MATCH_AFTER_S]
                matched |= {h["alert_id"] for _, h in hit}
                if scoring is None or t0 < scoring or t1 + SETTLE_S > r["end_wall"]:
                    continue
                demo_hits += bool(hit)
                demo_rows.append({"run": r["n"], "kind": e.kind, "at_s": round(t0 - self.soak_start_wall, 1),
                                  "alerted": bool(hit),
                                  "after_s": round(hit[0][0] - t0, 2) if hit else None})
        demo_false = [h["alert_id"] for _, h in demo_starts if h["alert_id"] not in matched]
        net_rows, net_hits, net_matched = [], 0, set()
        net_scene = DemoScene(fps=a.net_scene_fps, seed=a.net_seed)
        for e in net_scene.events(time.time() - self.t0_net):
            t0, t1 = self.t0_net + e.start_s, self.t0_net + e.end_s
            hit = [(t, h) for t, h in net_starts if t0 - MATCH_BEFORE_S <= t <= t1 + MATCH_AFTER_S]
            net_matched |= {h["alert_id"] for _, h in hit}
            if self._net_watched(t0 - 2, t1 + SETTLE_S):
                net_hits += bool(hit)
                net_rows.append({"kind": e.kind, "at_s": round(t0 - self.soak_start_wall, 1),
                                 "alerted": bool(hit),
                                 "after_s": round(hit[0][0] - t0, 2) if hit else None})
        net_false = [h["alert_id"] for _, h in net_starts if h["alert_id"] not in net_matched]
        samples = [s for s in self.sampler.samples if "load1" in s]
        fps = {}
        for cam in ("demo", "net"):
            vals = [h["cameras"][cam]["process_fps"] for _, _, h in L.heartbeats
                    if h.get("cameras", {}).get(cam, {}).get("lifecycle") == "scoring"
                    and h["cameras"][cam].get("source") == "online"]
            fps[cam] = round(statistics.median(vals), 2) if vals else None
        last_hb = L.heartbeats[-1][2] if L.heartbeats else {}
        result = {
            "command": " ".join([Path(sys.executable).name, "benchmarks/soak.py"] + self.argv),
            "soak_minutes": round((self.soak_end - self.soak_start) / 60, 2),
            "cpu_count": os.cpu_count(),
            "load1_mean": round(statistics.mean(s["load1"] for s in samples), 2) if samples else None,
            "load1_max": round(max(s["load1"] for s in samples), 2) if samples else None,
            "state_dir": str(self.tmp),
            "process_fps_median": fps, "fps_caps": {"demo": a.demo_fps, "net": a.net_fps},
            "alerts": {
                "journaled": len(journaled), "journal_last_seq": last_seqs,
                "last_seq_at_final_stop": at_stop,
                "published_last_seq_last_heartbeat": last_hb.get("last_seq"),
                "received": len(received), "received_live": sum(not m["replayed"] for m in L.alerts),
                "received_from_replay": sum(m["replayed"] for m in L.alerts),
                "on_the_wire": len(L.wire), "missed_notices": len(L.missed),
                "lost": [list(k) for k in lost], "duplicated": [list(k) for k in duplicated],
                "duplicated_on_the_wire": [list(k) for k in wire_dup],
                "journal_alerts_with_two_starts_or_ends": double,
                "journal_alerts_without_start": never_started,
                "seq_holes": holes, "left_open_after_stop": [h["alert_id"] for h in left_open],
                "alerts_started": len(starts), "end_reasons": dict(reasons),
                "journal_topic_messages": L.journal_topic,
            },
            "kills": sum(r["how"] == "kill" for r in soak_runs),
            "kills_with_an_alert_open": sum(bool(r.get("killed_with_open")) for r in soak_runs),
            "alerts_open_at_a_kill": sum(len(r.get("killed_with_open", [])) for r in soak_runs),
            "crashes": sum(r["how"] == "crashed" for r in soak_runs),
            "final_stop_exit": soak_runs[-1]["exit"],
            "restart_to_ready_s": {"max": max(r["ready_after_s"] for r in rows),
                                   "median": statistics.median(r["ready_after_s"] for r in rows)},
            "watchdog_sec": a.watchdog_sec,
            "watchdog_max_gap_s": max((r["watchdog_max_gap_s"] or 0) for r in rows),
            "heartbeat_max_gap_s": max((r["heartbeat_max_gap_s"] or 0) for r in rows),
            "longest_run": longest,
            "rss_mb_all_runs": {"min_after_warmup": min((r["rss_start_mb"] for r in rows if r["rss_start_mb"]), default=None),
                                "max": max((r["rss_max_mb"] for r in rows if r["rss_max_mb"]), default=None)},
            "threads_max": max((r["threads_max"] or 0) for r in rows),
            "flaps": {"down": sum(f["mode"] == "down" for f in self.flaps),
                      "stall": sum(f["mode"] == "stall" for f in self.flaps), "list": self.flaps},
            "demo_anomalies": {"scripted_while_scoring": len(demo_rows), "alerted": demo_hits,
                               "false_alert_starts": len(demo_false), "rows": demo_rows},
            "net_anomalies": {"scripted_while_watched": len(net_rows), "alerted": net_hits,
                              "false_alert_starts": len(net_false), "rows": net_rows},
            "runs": rows,
            "catch_up_run": [{"ready_after_s": round(r["ready"] - r["spawned"], 2), "exit": r["exit"]}
                             for r in self.runs if r.get("catch_up")],
        }
        fails = len(lost) + len(duplicated) + len(left_open) + len(double) + sum(map(len, holes.values()))
        result["ok"] = fails == 0
        return result

    def _scoring_from(self, r: dict) -> float | None:
        """Epoch of the first heartbeat of run r in which the demo camera scores."""
        for t, wall, h in self.listener.heartbeats:
            if r["ready"] <= t <= r["end"] and \
                    h.get("cameras", {}).get("demo", {}).get("lifecycle") == "scoring":
                return wall
        return None

    def _net_watched(self, t0: float, t1: float) -> bool:
        """The network camera was up, its server not flapping, and the daemon scoring it
        (heartbeats every <= 3 s, source online) throughout [t0, t1]."""
        if any(f["from"] < t1 and f.get("to", math.inf) > t0 for f in self.flaps):
            return False
        beats = [(w, h) for _, w, h in self.listener.heartbeats if t0 <= w <= t1]
        if not beats or beats[0][0] - t0 > 3 or t1 - beats[-1][0] > 3 or \
                any(b[0] - a_[0] > 3 for a_, b in zip(beats, beats[1:])):
            return False
        return all(h.get("cameras", {}).get("net", {}).get("lifecycle") == "scoring" and
                   h["cameras"]["net"].get("source") == "online" for _, h in beats)


def _slope(points) -> float | None:
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600, 1) if den else None


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    al = res["alerts"]
    lr = res["longest_run"]
    t = Table(title=f"pathwatch soak: {res['soak_minutes']} min, {res['kills']} kills, "
                    f"{res['flaps']['down']} camera downs + {res['flaps']['stall']} stalls",
              show_header=True)
    t.add_column("figure")
    t.add_column("value", justify="right")
    add = lambda k, v: t.add_row(k, str(v))  # noqa: E731
    add("demo: scripted anomalies while scoring / alerted",
        f"{res['demo_anomalies']['scripted_while_scoring']} / {res['demo_anomalies']['alerted']}")
    add("demo: alert starts matching no anomaly", res["demo_anomalies"]["false_alert_starts"])
    add("net: anomalies fully watched / alerted",
        f"{res['net_anomalies']['scripted_while_watched']} / {res['net_anomalies']['alerted']}")
    add("net: alert starts matching no anomaly", res["net_anomalies"]["false_alert_starts"])
    add("alert events journaled", al["journaled"])
    add("journal last seq per camera", al["journal_last_seq"])
    add("last seq in the last heartbeat (published)", al["published_last_seq_last_heartbeat"])
    add("received by the subscriber (live + replay)",
        f"{al['received']} ({al['received_live']} + {al['received_from_replay']})")
    add("seen on the wire (raw SUB, distinct)", al["on_the_wire"])
    add("lost / duplicated / seq holes", f"{len(al['lost'])} / {len(al['duplicated'])} / "
        f"{sum(map(len, al['seq_holes'].values()))}")
    add("alerts with two starts or ends (journal)", len(al["journal_alerts_with_two_starts_or_ends"]))
    add("left open after the final SIGTERM", len(al["left_open_after_stop"]))
    for k, v in al["end_reasons"].items():
        add(f"alerts ended: {k}", v)
    add("kills with an alert open (alerts open at those kills)",
        f"{res['kills_with_an_alert_open']} ({res['alerts_open_at_a_kill']})")
    add("final SIGTERM exit code", res["final_stop_exit"])
    add("crashes (unexpected exits)", res["crashes"])
    add("restart to READY=1, max / median (s)",
        f"{res['restart_to_ready_s']['max']} / {res['restart_to_ready_s']['median']}")
    add(f"watchdog max gap within a run (WatchdogSec {res['watchdog_sec']:g} s)",
        f"{res['watchdog_max_gap_s']} s")
    add("heartbeat max gap within a run (loop stall)", f"{res['heartbeat_max_gap_s']} s")
    add(f"longest run ({lr['uptime_s'] / 60:.1f} min) RSS start -> end (MB)",
        f"{lr['rss_start_mb']} -> {lr['rss_end_mb']} (max {lr['rss_max_mb']}, "
        f"slope {lr['rss_slope_mb_per_h']} MB/h)")
    add("longest run threads start -> end (max)",
        f"{lr['threads_start']} -> {lr['threads_end']} ({lr['threads_max']})")
    add("longest run open fds start -> end", f"{lr['fds_start']} -> {lr['fds_end']}")
    add("RSS over all runs: min after warm-up / max (MB)",
        f"{res['rss_mb_all_runs']['min_after_warmup']} / {res['rss_mb_all_runs']['max']}")
    add("processed fps per camera, median while scoring (caps)",
        f"{res['process_fps_median']} ({res['fps_caps']})")
    add("load average (1 min) mean / max, cores",
        f"{res['load1_mean']} / {res['load1_max']}, {res['cpu_count']}")
    add("verdict", "OK" if res["ok"] else "FAILED")
    Console(width=150).print(t)
    r = Table(title="runs")
    for col in ("run", "ended", "ready s", "up min", "pings", "wd gap s", "hb gap s",
                "RSS MB start/end", "threads", "fds", "cpu"):
        r.add_column(col, justify="right")
    for x in res["runs"]:
        r.add_row(str(x["run"]), x["how_ended"], str(x["ready_after_s"]),
                  f"{x['uptime_s'] / 60:.1f}", str(x["watchdog_pings"]),
                  str(x["watchdog_max_gap_s"]), str(x["heartbeat_max_gap_s"]),
                  f"{x['rss_start_mb']}/{x['rss_end_mb']}",
                  f"{x['threads_start']}/{x['threads_end']}", f"{x['fds_start']}/{x['fds_end']}",
                  str(x["cpu_share"]))
    Console(width=150).print(r)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-camera":
        serve_camera(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="soak length after calibration")
    p.add_argument("--kill-every-min", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"),
                   help="SIGKILL the daemon after a uniform random wait in this range (minutes)")
    p.add_argument("--calm-minutes", type=float, default=None,
                   help="no kills in the last this many minutes (default: a third, at most 10)")
    p.add_argument("--flap", action=argparse.BooleanOptionalAction, default=True,
                   help="take the network camera down or stall it at random (default on)")
    p.add_argument("--flap-every-s", type=float, nargs=2, default=(60.0, 180.0))
    p.add_argument("--flap-down-s", type=float, nargs=2, default=(5.0, 40.0))
    p.add_argument("--kill-in-alert", type=float, default=0.5, metavar="P",
                   help="share of kills that wait (up to a minute) for an open alert")
    p.add_argument("--restart-delay-s", type=float, default=0.1, help="like RestartSec=")
    p.add_argument("--watchdog-sec", type=float, default=30.0, help="WATCHDOG_USEC, in seconds")
    p.add_argument("--calibration-seconds", type=float, default=45.0)
    p.add_argument("--demo-fps", type=float, default=3.0)
    p.add_argument("--net-fps", type=float, default=2.0)
    p.add_argument("--net-scene-fps", type=float, default=5.0)
    p.add_argument("--net-seed", type=int, default=7)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--report-from", metavar="RAW",
                   help="recompute the report from a finished soak's raw.pickle")
    a = p.parse_args()
    if a.report_from:
        soak, left_open, at_stop = Soak.from_raw(a.report_from)
        res = soak.report(left_open, at_stop)
        a = soak.a
    else:
        if a.calm_minutes is None:
            a.calm_minutes = min(10.0, a.minutes / 3)
        soak = Soak(a)
        try:
            res = soak.run()
        finally:
            for r in soak.runs:
                if r["proc"].poll() is None:
                    r["proc"].kill()
            soak.camera.kill()
    print_table(res)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2, default=str))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

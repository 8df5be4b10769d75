"""The daemon in real time on the demo camera: frame rates, inference latency, alert latency.

    python benchmarks/daemon_live.py --seconds 240

Starts `pathwatch run` on the embedded default (demo camera, bundled model, auto-calibration)
with its own state directory and sockets, listens like any subscriber, and reports the camera
and processing frame rates and the inference latency from the heartbeats, and, for every
scripted anomaly, how long after it began the `start` alert arrived at the subscriber.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    from pathwatch.edge.demo import DemoScene
    from pathwatch.edge.subscriber import AlertSubscriber

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=240.0)
    p.add_argument("--json")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    config = tmp / "live.yaml"
    config.write_text(f"""state_dir: {tmp}/state
publisher:
  bind: ipc://{tmp}/pub.sock
  replay_bind: ipc://{tmp}/replay.sock
cameras:
  - name: demo
    source: demo
""")
    # Subscribe first: the demo's clock starts at the camera's `connecting` status.
    sub = AlertSubscriber(f"ipc://{tmp}/pub.sock", f"ipc://{tmp}/replay.sock",
                          topics=("alert.", "status.", "heartbeat"))
    proc = subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ})
    scene_start, beats, starts = None, [], []
    t_end = time.monotonic() + a.seconds
    try:
        while time.monotonic() < t_end:
            for m in sub.events(timeout_s=1.0):
                now = time.time()
                if m.topic.startswith("status.") and m.header["state"] in ("connecting", "online") \
                        and scene_start is None:
                    scene_start = now  # the demo scene's clock starts when the capture opens
                elif m.topic == "heartbeat":
                    cam = m.header.get("cameras", {}).get("demo")
                    if cam and cam["state"] not in ("calibrating", "connecting"):
                        beats.append(cam)
                elif m.topic.startswith("alert.") and m.header["state"] == "start":
                    starts.append((now, m.header))
                if time.monotonic() >= t_end:
                    break
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    events = DemoScene().events(a.seconds)
    rows = []
    for e in events:
        hit = [(t, h) for t, h in starts if scene_start and
               scene_start + e.start_s <= t <= scene_start + e.end_s + 5]
        rows.append({"kind": e.kind, "start_s": e.start_s, "detected": bool(hit),
                     "alert_latency_s": round(hit[0][0] - scene_start - e.start_s, 2) if hit else None})
    med = lambda k: round(statistics.median([b[k] for b in beats if b.get(k) is not None]), 2) if beats else None  # noqa: E731
    report = {"seconds": a.seconds, "exit_code": code, "camera_fps": med("camera_fps"),
              "process_fps": med("process_fps"), "latency_p50_ms": med("latency_p50_ms"),
              "latency_p99_ms": med("latency_p99_ms"), "events": rows,
              "alerts_started": len(starts),
              "alert_starts_s": [round(t - scene_start, 2) for t, _ in starts] if scene_start else [],
              "false_alerts": len(starts) - sum(r["detected"] for r in rows)}
    print(json.dumps(report, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

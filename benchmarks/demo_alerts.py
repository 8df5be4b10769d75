"""Alerts on the demo camera's scripted anomalies, and false alerts on a long normal stretch.

    python benchmarks/demo_alerts.py --minutes 10 --normal-minutes 10 --json demo_alerts.json

Runs the daemon's own stages (tiles, backend, calibration, alert state machine) on the demo
scene in scene time, as fast as the CPU allows, so ten minutes of video need not take ten
minutes of wall time (on a 2-core CPU it takes about as long). Calibration uses the opening
normal stretch, exactly like the daemon's auto-calibration. An anomaly counts as detected when
an alert starts between its first frame and `--slack` seconds after its last; every other alert
start is a false alert.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run_stream(scene, backend, grid, calibration, policy, seconds: float, fps: float,
               start_s: float = 0.0):
    from pathwatch.edge.alerts import AlertTracker

    tracker = AlertTracker("demo", policy)
    starts, scores = [], []
    step = max(1, int(round(scene.fps / fps)))
    first, last = int(start_s * scene.fps), int((start_s + seconds) * scene.fps)
    for i in range(first, last, step):
        image, labels = scene.frame(i)
        feats, _ = backend(grid.cut(image))
        score, tile = calibration.frame_score(calibration.tile_scores(feats))
        t = i / scene.fps
        scores.append((t, score, bool(labels)))
        for e in tracker.update(t, score, calibration.threshold, list(grid.position(tile)), i):
            if e.state == "start":
                starts.append((t, list(labels)))
    return starts, scores


def calibrate(scene, backend, grid, bundle, seconds: float, fps: float, policy_cfg: dict):
    """The daemon's auto-calibration: the opening `seconds` of scene (scripted events in it
    are trimmed from the normal set)."""
    from pathwatch.edge.calibration import fit_calibration

    step = max(1, int(round(scene.fps / fps)))
    frames = int(round(seconds * scene.fps / step))
    feats = np.stack([backend(grid.cut(scene.frame(i * step)[0]))[0] for i in range(frames)])
    return fit_calibration("demo", feats, grid, bundle.identity(), bundle.label,
                           density=bundle.default_density, fps=scene.fps / step,
                           seconds=seconds, **policy_cfg)


def main() -> int:
    from pathwatch.edge.alerts import AlertPolicy
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.bundle import Bundle
    from pathwatch.edge.demo import DemoScene
    from pathwatch.edge.models import default_bundle
    from pathwatch.edge.tiles import TileGrid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="bundle directory (default: the embedded default model)")
    p.add_argument("--minutes", type=float, default=10.0, help="scripted stretch to run")
    p.add_argument("--normal-minutes", type=float, default=10.0, help="anomaly-free stretch")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--calibration-seconds", type=float, default=120.0)
    p.add_argument("--tiles", default="4x3")
    p.add_argument("--false-alarms-per-hour", type=float, default=0.5)
    p.add_argument("--slack", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    cache = Path.home() / ".cache" / "pathwatch"
    bundle = Bundle.load(a.bundle) if a.bundle else default_bundle(cache)
    backend = load_backend(bundle, "auto", log=print)
    cols, rows = (int(v) for v in a.tiles.split("x"))
    policy_cfg = {"trigger": 3, "window": 5}
    policy = AlertPolicy(trigger_frames=3, window_frames=5, update_interval_s=2.0, quiet_s=3.0,
                         cooldown_s=10.0)
    report: dict = {"bundle": bundle.label, "fps": a.fps, "tiles": a.tiles}

    scene = DemoScene(seed=a.seed)
    image, _ = scene.frame(0)
    grid = TileGrid(image.shape[1], image.shape[0], bundle.image_size[0], cols, rows)
    t0 = time.perf_counter()
    cal = calibrate(scene, backend, grid, bundle, a.calibration_seconds, a.fps,
                    {**policy_cfg, "false_alarms_per_hour": a.false_alarms_per_hour})
    cal_end = a.calibration_seconds
    report["calibration"] = {"seconds": a.calibration_seconds, "frames": cal.frames_total,
                             "trimmed": cal.trimmed, "threshold": cal.threshold,
                             "method": cal.threshold_method}
    events = [e for e in scene.events(a.minutes * 60) if e.start_s >= cal_end]
    starts, scores = run_stream(scene, backend, grid, cal, policy, a.minutes * 60 - cal_end,
                                a.fps, start_s=cal_end)
    per_event, matched = [], set()
    for e in events:
        hits = [i for i, (t, _) in enumerate(starts) if e.start_s <= t <= e.end_s + a.slack]
        matched.update(hits)
        delay = starts[hits[0]][0] - e.start_s if hits else None
        peak = max((s for t, s, _ in scores if e.start_s <= t <= e.end_s), default=None)
        per_event.append({"kind": e.kind, "start_s": e.start_s, "end_s": e.end_s,
                          "detected": bool(hits), "delay_s": delay, "peak_score": peak})
    false_starts = [starts[i][0] for i in range(len(starts)) if i not in matched]
    report["scripted"] = {"minutes": a.minutes, "events": per_event,
                          "detected": sum(e["detected"] for e in per_event),
                          "total": len(per_event), "false_alerts": len(false_starts),
                          "false_alert_times_s": false_starts}

    normal = DemoScene(seed=a.seed, script="normal")
    n_starts, n_scores = run_stream(normal, backend, grid, cal, policy, a.normal_minutes * 60,
                                    a.fps, start_s=cal_end)
    s = np.array([x[1] for x in n_scores])
    report["normal"] = {"minutes": a.normal_minutes, "alerts": len(n_starts),
                        "frames": len(s), "frames_over_threshold": int((s > cal.threshold).sum()),
                        "score_max": float(s.max()) if len(s) else None,
                        "score_p99": float(np.percentile(s, 99)) if len(s) else None}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    sc = report["scripted"]
    print(f"threshold {cal.threshold:.2f} ({report['calibration']['method']}); calibration "
          f"{cal.coverage()}: trimmed {[(t['from_s'], t['to_s']) for t in cal.trimmed]}")
    for e in per_event:
        delay = f"{e['delay_s']:.1f} s" if e["delay_s"] is not None else "-"
        print(f"  {e['kind']:<8} at {e['start_s']:6.1f} s: {'detected' if e['detected'] else 'MISSED'}"
              f" (delay {delay}, peak score {e['peak_score']:.1f})")
    print(f"scripted: {sc['detected']}/{sc['total']} detected, {sc['false_alerts']} false alerts "
          f"in {a.minutes:g} min; normal: {report['normal']['alerts']} alerts in "
          f"{a.normal_minutes:g} min ({report['normal']['frames_over_threshold']} of "
          f"{len(s)} frames over threshold); wall {report['wall_s']} s")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Change gating measured: tiles sent to the backend, and events missed or delayed, against
scoring every tile, on the demo camera and on real footage.

    python benchmarks/change_gating.py --json change_gating.json

Both streams are scored from the same per-frame features (computed once, cached under
~/.cache/pathwatch/bench): "every tile" uses each frame's own features; "gated" reuses a
tile's features from its last evaluation wherever edge.gating.ChangeGate says the tile did not
change, exactly as the camera does. The calibration (tile densities, threshold, and the noise
level the gate uses) comes from the first `--window` seconds, as auto-calibration does; the
rest is scored through the alert state machine.

Demo: the default script (scripted anomalies every 48 s from 60 s) at 5 fps. Real footage:
OpenCV's vtest.avi (people walking across a forecourt) with a cat and a parcel pasted in
(benchmarks/false_alarms.py VTEST_EVENTS).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from false_alarms import (CACHE, VTEST, VTEST_EVENTS, VTEST_FPS, calibrate,  # noqa: E402
                          vtest_features, vtest_frames)


def demo_stream(backend, bundle, minutes: float, fps: float = 5.0):
    """Tiles, features and events of the demo's default script (features cached)."""
    import hashlib

    from pathwatch.edge.demo import DemoScene
    from pathwatch.edge.tiles import TileGrid

    scene = DemoScene(seed=0, script="default")
    first, _ = scene.frame(0)
    grid = TileGrid(first.shape[1], first.shape[0], bundle.image_size[0], 4, 3)
    step = int(round(scene.fps / fps))
    n = int(minutes * 60 * fps)
    tiles = np.stack([grid.cut(scene.frame(i * step)[0]) for i in range(n)])
    key = hashlib.sha256(f"{bundle.identity()['graph_sha256']}default{minutes}{fps}".encode()
                         ).hexdigest()[:16]
    path = CACHE / f"demo-default-{key}.npy"
    if path.is_file():
        feats = np.load(path)
    else:
        feats = np.stack([backend(t)[0] for t in tiles])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
    events = [(e.kind, e.start_s, e.end_s) for e in scene.events(minutes * 60)]
    return grid, tiles, feats, events


def vtest_tiles(bundle, cols=4, rows=3):
    from pathwatch.edge.tiles import TileGrid

    grid, out = None, []
    for image in vtest_frames():
        grid = grid or TileGrid(image.shape[1], image.shape[0], bundle.image_size[0], cols, rows)
        out.append(grid.cut(image))
    return grid, np.stack(out)


def gated_features(tiles, feats, noise: float, fps: float, max_age_s: float):
    """Each frame's features as the gated camera has them, and the share of tiles sent."""
    from pathwatch.edge.gating import ChangeGate

    gate = ChangeGate(noise, max_age_s=max_age_s)
    maps = np.zeros((tiles.shape[1], 1))
    out = []
    for i, (t, f) in enumerate(zip(tiles, feats)):
        now = i / fps
        mask = gate.select(t, now)
        out.append(gate.merge(mask, t, f[mask], maps[mask], now)[0])
    return np.stack(out), gate.share_sent()


def alerts(cal, feats, fps, t0, policy):
    from pathwatch.edge.alerts import AlertTracker

    tracker, starts = AlertTracker("bench", policy), []
    for i, f in enumerate(feats):
        score = cal.frame_score(cal.tile_scores(f))[0]
        starts += [t0 + e.time for e in tracker.update(i / fps, score, cal.threshold)
                   if e.state == "start"]
    return starts


def judge(starts, events, tail_s=3.0):
    found = []
    for name, a, b in events:
        hit = [t for t in starts if a <= t <= b + tail_s]
        found.append({"event": name, "start_s": a, "delay_s": round(hit[0] - a, 1) if hit else None})
    false = [round(t, 1) for t in starts if not any(a <= t <= b + tail_s for _, a, b in events)]
    return found, false


def measure(name, grid, tiles, feats, events, fps, bundle, args, policy) -> dict:
    from pathwatch.edge.gating import noise_level

    n_cal = int(args.window * fps)
    cal = calibrate(feats[:n_cal], grid, bundle, fps, args)
    noise = float(np.median([noise_level(tiles[i - 1], tiles[i]) for i in range(1, n_cal)]))
    rest_t, rest_f = tiles[n_cal:], feats[n_cal:]
    gated, share = gated_features(rest_t, rest_f, noise, fps, args.max_age)
    events = [e for e in events if e[1] >= args.window]
    full_found, full_false = judge(alerts(cal, rest_f, fps, args.window, policy), events)
    gate_found, gate_false = judge(alerts(cal, gated, fps, args.window, policy), events)
    row = {"stream": name, "noise_level": round(noise, 2), "share_sent": round(share, 3),
           "threshold": round(cal.threshold, 2), "events": len(events),
           "every_tile": {"found": full_found, "false_alerts": full_false},
           "gated": {"found": gate_found, "false_alerts": gate_false}}
    missed = sum(g["delay_s"] is None and f["delay_s"] is not None
                 for f, g in zip(full_found, gate_found))
    later = [round(g["delay_s"] - f["delay_s"], 1) for f, g in zip(full_found, gate_found)
             if f["delay_s"] is not None and g["delay_s"] is not None]
    row.update(missed_by_gating=missed, extra_delay_s=later)
    print(f"{name}: noise level {noise:.2f}, tiles sent {share:.1%}; every tile "
          f"{[f['delay_s'] for f in full_found]} false {full_false}; gated "
          f"{[g['delay_s'] for g in gate_found]} false {gate_false}; missed by gating {missed}, "
          f"extra delay {later} s")
    return row


def main() -> int:
    from pathwatch.edge.alerts import AlertPolicy
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.models import load_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0, help="demo stream length")
    p.add_argument("--window", type=float, default=55.0, help="calibration seconds")
    p.add_argument("--max-age", type=float, default=2.0, help="gate: most seconds a tile's "
                   "features are reused")
    p.add_argument("--false-alarms-per-hour", type=float, default=0.5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    bundle = load_bundle("default", Path.home() / ".cache" / "pathwatch", print)
    backend = load_backend(bundle, "onnxruntime", threads=2, log=print)
    policy = AlertPolicy(trigger_frames=3, window_frames=5)
    rows = []
    grid, tiles, feats, events = demo_stream(backend, bundle, args.minutes)
    rows.append(measure("demo", grid, tiles, feats, events, 5.0, bundle, args, policy))
    if VTEST.is_file():
        grid, tiles = vtest_tiles(bundle)
        feats = vtest_features(backend, bundle, 4, 3)
        events = [(name, a, b) for name, a, b, *_ in VTEST_EVENTS]
        window = args.window
        args.window = 30.0  # vtest is 80 s long: its first 30 s calibrate
        rows.append(measure("vtest", grid, tiles, feats, events, VTEST_FPS, bundle, args, policy))
        args.window = window
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

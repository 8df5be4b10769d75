"""People in new places: on real footage, how a person in a tile where none stood during
calibration scores against an object added to the scene, for several ways of pooling the
normal model across tile positions; and what marking false alerts normal (feedback) does.

    python benchmarks/new_places.py --tiles 4 3 --json new_places.json

Footage: vtest.avi with a cat and a parcel pasted in (see benchmarks/false_alarms.py), 5 fps,
the first `--window` seconds calibrate. Pooling variants, each a density per tile position
fitted on the features of:
  position  that tile only (what pathwatch does)
  row       every tile of its row (same distance from a tilted camera, same scale)
  neigh4/8  the tile and its 4 / 8 neighbours
  scene     every tile of the frame
  min(a,b)  a tile counts as unusual only when unusual under both
Scores are standardised per tile by the median and MAD of the window's out-of-fold scores (3
contiguous blocks); a frame's score is its worst tile; the threshold shown is the window's
largest out-of-fold frame score (a fixed reference level for every pooling). "separation" is the
lower of the two objects' peaks over the highest normal frame after the window: above 1, a
threshold exists that alerts on both objects and never on people.

All normal: position densities on every normal frame of the clip, scored out of fold: the most
normal data the clip has, and how far the objects then stand out in their own tile.

Feedback: the daemon's own calibration (fit_calibration) and alert rule run over the stream;
each alert that ends outside the objects' time is marked normal as `pathwatch feedback` does
(its frames join the window, declared normal, and everything is refitted), and the stream
goes on from there.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = ("position", "row", "neigh4", "neigh8", "scene")


def pools(kind: str, cols: int, rows: int) -> list[list[int]]:
    pos = [(i % cols, i // cols) for i in range(cols * rows)]
    near = {"position": lambda dc, dr: dc == dr == 0, "row": lambda dc, dr: dr == 0,
            "neigh4": lambda dc, dr: dc + dr <= 1, "neigh8": lambda dc, dr: max(dc, dr) <= 1,
            "scene": lambda dc, dr: True}[kind]
    return [[j for j, (c2, r2) in enumerate(pos) if near(abs(c2 - c), abs(r2 - r))]
            for c, r in pos]


def pooled_scores(feats: np.ndarray, n_cal: int, kind: str, cols: int, rows: int) -> np.ndarray:
    """(frames, tiles) standardised scores: the window out of fold, the rest by the full fit."""
    from pathwatch.edge.calibration import fit_tile_density, fold_blocks, refit_like

    n, tiles, dim = feats.shape
    nll = np.full((n, tiles), np.nan)
    for i, pool in enumerate(pools(kind, cols, rows)):
        d = fit_tile_density("gmm-bic", feats[:n_cal][:, pool].reshape(-1, dim))
        nll[n_cal:, i] = -d.score(feats[n_cal:, i])
        for a, b in fold_blocks(n_cal, 3):
            rest = np.r_[0:a, b:n_cal]
            nll[a:b, i] = -refit_like(d, feats[rest][:, pool].reshape(-1, dim)).score(feats[a:b, i])
    med = np.median(nll[:n_cal], axis=0)
    mad = 1.4826 * np.median(np.abs(nll[:n_cal] - med), axis=0)
    return (nll - med) / np.maximum(mad, 1e-3)


def pooling_table(feats, n_cal, times, events, cols, rows) -> list[dict]:
    after = np.zeros(len(times), bool)
    for _, a, b in events:
        after |= (times >= a) & (times < b + 3.0)
    normal = (np.arange(len(times)) >= n_cal) & ~after
    scores = {k: pooled_scores(feats, n_cal, k, cols, rows) for k in VARIANTS}
    scores["min(position,scene)"] = np.minimum(scores["position"], scores["scene"])
    scores["min(position,row)"] = np.minimum(scores["position"], scores["row"])
    rows_out = []
    for name, z in scores.items():
        s = z.max(axis=1)
        thr, top = float(s[:n_cal].max()), float(s[normal].max())
        peaks = [float(s[(times >= a) & (times < b)].max()) for _, a, b in events]
        row = {"variant": name, "threshold": thr, "normal_max": top,
               "normal_frames_over": int((s[normal] > thr).sum()),
               "normal_frames": int(normal.sum()),
               **{f"peak {e[0]}": p for e, p in zip(events, peaks)},
               "separation": min(peaks) / top}
        rows_out.append(row)
        print(f"{name:21s} threshold {thr:8.1f}  normal max {top:9.1f} "
              f"({row['normal_frames_over']:3d} of {row['normal_frames']} over)  peaks "
              + "  ".join(f"{p:9.1f}" for p in peaks) + f"  separation {min(peaks) / top:5.2f}")
    return rows_out


def all_normal_bound(feats, times, events) -> dict:
    """The most normal data this clip has: position densities fitted on every normal frame
    (objects' times left out), each frame scored out of fold (5 contiguous blocks), the
    objects' frames by the full fit. How far do the objects stand out in their own tile?"""
    from pathwatch.edge.calibration import fit_tile_density, fold_blocks, refit_like

    busy = np.zeros(len(times), bool)
    for _, a, b in events:
        busy |= (times >= a) & (times < b + 3.0)
    idx, ev = np.flatnonzero(~busy), np.flatnonzero(busy)
    nll = np.full(feats.shape[:2], np.nan)
    for i in range(feats.shape[1]):
        x = feats[idx, i]
        d = fit_tile_density("gmm-bic", x)
        nll[ev, i] = -d.score(feats[ev, i])
        for a, b in fold_blocks(len(idx), 5):
            nll[idx[a:b], i] = -refit_like(d, x[np.r_[0:a, b:len(idx)]]).score(x[a:b])
    med = np.median(nll[idx], axis=0)
    z = (nll - med) / np.maximum(1.4826 * np.median(np.abs(nll[idx] - med), axis=0), 1e-3)
    out = {"normal_max": float(z[idx].max(axis=1).max()), "objects": []}
    for name, a, b in events:
        m = (times >= a) & (times < b)
        tile = int(z[m].max(axis=0).argmax())
        out["objects"].append({"event": name, "tile": tile,
                               "scores": [float(z[m][:, tile].min()), float(z[m][:, tile].max())],
                               "normal_max_in_tile": float(z[idx][:, tile].max())})
    print(f"all normal frames, out of fold: normal max {out['normal_max']:.1f}; " + "; ".join(
        f"{o['event']}: tile {o['tile']} scores {o['scores'][0]:.1f}-{o['scores'][1]:.1f}, "
        f"normal max there {o['normal_max_in_tile']:.1f}" for o in out["objects"]))
    return out


def with_feedback(feats, n_cal, times, events, grid, bundle, policy, fps, mark: bool) -> dict:
    """Alerts over the stream after the window; with `mark`, every alert that ends outside
    the objects' time is marked normal and everything refitted, as `pathwatch feedback`."""
    from pathwatch.edge.alerts import AlertTracker
    from pathwatch.edge.calibration import fit_calibration

    def fit(x, declared):
        return fit_calibration("bench", x, grid, bundle.identity(), bundle.label,
                               density=bundle.default_density, fps=fps, trigger=3, window=5,
                               seconds=len(x) / fps, declared_normal=declared)

    window, declared = feats[:n_cal], np.zeros(n_cal, bool)
    cal, tracker = fit(window, declared), AlertTracker("bench", policy)
    alerts, first, marked, refits = [], None, 0, []
    for i in range(n_cal, len(feats)):
        score = cal.frame_score(cal.tile_scores(feats[i]))[0]
        for e in tracker.update(times[i], score, cal.threshold):
            if e.state == "start":
                first = i - policy.window_frames + 1  # the frames that raised it, as kept
                alerts.append({"start_s": round(float(times[i]), 1)})
            if e.state != "end":
                continue
            alerts[-1]["end_s"] = round(float(times[i]), 1)
            a, b = alerts[-1]["start_s"], alerts[-1]["end_s"]
            true = any(a <= eb + 3.0 and b >= ea for _, ea, eb in events)
            alerts[-1]["during_an_object"] = true
            if mark and not true:
                t0 = time.perf_counter()
                window = np.concatenate([window, feats[first:i + 1]])
                declared = np.concatenate([declared, np.ones(i + 1 - first, bool)])
                old, cal = cal.threshold, fit(window, declared)
                refits.append({"alert_start_s": a, "frames": i + 1 - first,
                               "threshold": [round(old, 1), round(cal.threshold, 1)],
                               "fit_s": round(time.perf_counter() - t0, 1)})
                marked += 1
    found = [{"event": name, "alerted": any(a <= s["start_s"] <= b + 3.0 for s in alerts)}
             for name, a, b in events]
    false = [s for s in alerts if not any(a <= s["start_s"] <= b + 3.0 for _, a, b in events)]
    out = {"feedback": mark, "alerts": alerts, "false_alert_starts": len(false),
           "events": found, "marked_normal": marked, "refits": refits}
    print(f"feedback {'on ' if mark else 'off'}: {len(alerts)} alerts, {len(false)} false; "
          f"objects alerted {[(f['event'], f['alerted']) for f in found]}; refits {refits}")
    return out


def main() -> int:
    from false_alarms import VTEST_EVENTS, VTEST_FPS, vtest_features

    from pathwatch.edge.alerts import AlertPolicy
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.models import load_bundle
    from pathwatch.edge.tiles import TileGrid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--tiles", type=int, nargs=2, default=[4, 3])
    p.add_argument("--window", type=float, default=40.0, help="calibration seconds")
    p.add_argument("--json")
    args = p.parse_args()
    bundle = load_bundle(args.bundle, Path.home() / ".cache" / "pathwatch", print)
    backend = load_backend(bundle, "onnxruntime", log=print)
    cols, rows = args.tiles
    feats = vtest_features(backend, bundle, cols, rows)
    if feats is None:
        return 1
    times = np.arange(len(feats)) / VTEST_FPS
    n_cal = int(args.window * VTEST_FPS)
    events = [(name, a, b) for name, a, b, *_ in VTEST_EVENTS]
    print(f"vtest {cols}x{rows}, {args.window:g} s window, {len(feats)} frames")
    table = pooling_table(feats.astype(np.float64), n_cal, times, events, cols, rows)
    bound = all_normal_bound(feats.astype(np.float64), times, events)
    grid = TileGrid(768, 576, bundle.image_size[0], cols, rows)  # vtest.avi is 768x576
    policy = AlertPolicy(trigger_frames=3, window_frames=5, update_interval_s=2.0, quiet_s=3.0,
                         cooldown_s=10.0)
    runs = [with_feedback(feats, n_cal, times, events, grid, bundle, policy, VTEST_FPS, mark)
            for mark in (False, True)]
    if args.json:
        Path(args.json).write_text(json.dumps({"tiles": [cols, rows], "window_s": args.window,
                                               "pooling": table, "all_normal": bound,
                                               "feedback": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

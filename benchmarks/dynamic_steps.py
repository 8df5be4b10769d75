"""Dynamic steps measured: a one-step cheap pass on every tile, the full K=3 schedule only on
tiles whose cheap score is near or over the cheap head's own threshold. Does it pay, and what
does it cost in events and accuracy?

    python benchmarks/dynamic_steps.py --json dynamic_steps.json

Both heads are the default model's 6d+ssim features: the shipped K=3 bundle, and K=1 (timestep
0 alone) exported with the project's exporter (cached, as benchmarks/speed.py does). Each head
is calibrated on the same first `--window` seconds exactly as the daemon calibrates (tile
densities, out-of-fold threshold). The rest of the stream runs through the camera's own
edge.dynamic_steps.DynamicSteps (a tile is escalated when its cheap standardised score
reaches `margin` x the cheap threshold, every tile while an alert is open; spared tiles keep
their cheap score on the full scale) and the alert state machine, at several margins, and at
the default margin once more with change gating (edge.gating.ChangeGate, the noise level
measured on the window) in front, as the camera runs both. Streams: the demo's default script
and vtest.avi with a cat and a parcel pasted in (benchmarks/false_alarms.py), judged like
benchmarks/change_gating.py: events found, extra delay, false alerts.

Cost: tiles/s of the K=1 and K=3 graphs timed in the same interleaved rounds; per tile of the
stream, a one-step pass on each evaluated tile plus a full pass on each escalated one.

Accuracy: the zero-shot Fashion-MNIST (normal) vs digits task of docs/accuracy.md with the
default (photos) model: AUROC of the full head, the cheap head, and the cascade that sends
the top `p` of test images by cheap score to the full head (the rest rank below them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from change_gating import alerts, demo_stream, judge, vtest_tiles  # noqa: E402
from false_alarms import VTEST, VTEST_EVENTS, VTEST_FPS, calibrate, vtest_features  # noqa: E402

MARGINS = (1.0, 0.75, 0.5, 0.25)
DEFAULT_MARGIN = 0.25
SHARES = (0.05, 0.1, 0.2, 0.5)


def cascade_run(cal, tiles, cheap, full, fps: float, t0: float, policy, margin: float,
                noise: float | None = None, max_age_s: float = 2.0) -> dict:
    """The camera's frame path over a stream, with edge.dynamic_steps.DynamicSteps (and, with a
    `noise` level, edge.gating.ChangeGate) exactly as the camera runs them: alert starts and
    the shares of tiles evaluated and escalated."""
    from pathwatch.edge.alerts import AlertTracker
    from pathwatch.edge.dynamic_steps import DynamicSteps
    from pathwatch.edge.gating import ChangeGate

    steps = DynamicSteps(cal, margin)
    gate = None if noise is None else ChangeGate(noise, max_age_s)
    tracker, starts = AlertTracker("bench", policy), []
    n = tiles.shape[1]
    for i in range(len(full)):
        now = i / fps
        mask = gate.select(tiles[i], now) if gate is not None else np.ones(n, bool)
        idx = np.flatnonzero(mask)
        up = steps.select(idx, cheap[i][idx], force=tracker.active)
        feats, maps, scores = steps.merge(full[i][idx][up], np.zeros((int(up.sum()), 1)),
                                          np.zeros((len(idx), 1)))
        if gate is not None:
            gate.merge(mask, tiles[i], feats, maps, now, scores)
            scores = gate.scores
        starts += [t0 + e.time for e in tracker.update(now, float(np.max(scores)), cal.threshold)
                   if e.state == "start"]
    return {"starts": starts, "escalated": steps.share_escalated(),
            "sent": 1.0 if gate is None else gate.share_sent()}


def measure(name, grid, tiles, cheap, full, events, fps, bundles, args, policy) -> dict:
    from pathwatch.edge.gating import noise_level

    n_cal = int(args.window * fps)
    cal1 = calibrate(cheap[:n_cal], grid, bundles[0], fps, args)
    cal3 = calibrate(full[:n_cal], grid, bundles[1], fps, args)
    cal = cal3.with_cheap(cal1)
    noise = float(np.median([noise_level(tiles[i - 1], tiles[i]) for i in range(1, n_cal)]))
    events = [e for e in events if e[1] >= args.window]
    rest_t, rest1, rest3 = tiles[n_cal:], cheap[n_cal:], full[n_cal:]
    base_found, base_false = judge(alerts(cal3, rest3, fps, args.window, policy), events)
    one_found, one_false = judge(alerts(cal1, rest1, fps, args.window, policy), events)
    row = {"stream": name, "events": len(events), "noise_level": round(noise, 2),
           "thresholds": {"k1": cal1.threshold, "k3": cal3.threshold},
           "full": {"found": base_found, "false_alerts": base_false},
           "cheap_alone": {"found": one_found, "false_alerts": one_false}, "cascade": []}
    print(f"{name}: K=3 {[f['delay_s'] for f in base_found]} false {base_false}; "
          f"K=1 alone {[f['delay_s'] for f in one_found]} false {one_false}")
    runs = [(m, False) for m in MARGINS] + [(DEFAULT_MARGIN, True)]
    for m, gated in runs:
        r = cascade_run(cal, rest_t, rest1, rest3, fps, args.window, policy, m,
                        noise if gated else None, args.max_age)
        found, false = judge(r["starts"], events)
        missed = sum(g["delay_s"] is None and f["delay_s"] is not None
                     for f, g in zip(base_found, found))
        later = [round(g["delay_s"] - f["delay_s"], 1) for f, g in zip(base_found, found)
                 if f["delay_s"] is not None and g["delay_s"] is not None]
        row["cascade"].append({"margin": m, "gating": gated, "sent": round(r["sent"], 4),
                               "escalated": round(r["escalated"], 4), "found": found,
                               "false_alerts": false, "missed": missed, "extra_delay_s": later})
        print(f"  margin {m}{' + gating' if gated else ''}: sent {r['sent']:.1%}, escalated "
              f"{r['escalated']:.1%}, found {[g['delay_s'] for g in found]}, false {false}, "
              f"missed {missed}, extra delay {later}")
    return row


def timing(backends, tiles, rounds: int) -> dict:
    """tiles/s of each head in interleaved rounds (one frame's 12 tiles per call)."""
    rates = {k: [] for k in backends}
    for r in range(rounds):
        for k in (list(backends) if r % 2 == 0 else list(backends)[::-1]):
            t0 = time.perf_counter()
            for i in range(0, len(tiles), 12):
                backends[k](tiles[i:i + 12])
            rates[k].append(len(tiles) / (time.perf_counter() - t0))
    return rates


def zero_shot(backends, n: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from pathwatch.edge.datasets import load_images
    from pathwatch.edge.density import fit_gmm

    sets = {k: load_images(s, 32, n, seed=0).images
            for k, s in (("fit", "fmnist:train"), ("test", "fmnist:test"), ("ood", "digits"))}
    scores = {}
    for head, b in backends.items():
        f = {k: b(v)[0].astype(np.float64) for k, v in sets.items()}
        d = fit_gmm(f["fit"], seed=0)
        scores[head] = -np.r_[d.score(f["test"]), d.score(f["ood"])]  # anomalies high
    y = np.r_[np.zeros(len(sets["test"])), np.ones(len(sets["ood"]))]
    out = {"k3": float(roc_auc_score(y, scores["k3"])), "k1": float(roc_auc_score(y, scores["k1"]))}
    for p in SHARES:
        cut = np.quantile(scores["k1"], 1 - p)
        up = scores["k1"] >= cut
        # escalated images keep their full score, the rest rank below every escalated one
        z = np.where(up, scores["k3"], scores["k3"].min() - 1 - (cut - scores["k1"]))
        out[f"cascade top {p:g}"] = float(roc_auc_score(y, z))
    return out


def main() -> int:
    from pathwatch.edge.alerts import AlertPolicy
    from pathwatch.edge.backends import load_backend
    from speed import bundle_for_k

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0, help="demo stream length")
    p.add_argument("--window", type=float, default=55.0, help="calibration seconds (demo)")
    p.add_argument("--false-alarms-per-hour", type=float, default=0.5)
    p.add_argument("--max-age", type=float, default=2.0, help="gating: most seconds a tile's "
                   "evaluation is reused")
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--zero-shot", type=int, default=1000, help="images per zero-shot set")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    cache = Path.home() / ".cache" / "pathwatch"
    bundles = [bundle_for_k(k, cache, print)[0] for k in (1, 3)]
    backends = {f"k{k}": load_backend(b, "onnxruntime", threads=args.threads, log=print)
                for k, b in zip((1, 3), bundles)}
    policy = AlertPolicy(trigger_frames=3, window_frames=5)
    rows = []
    grid, tiles, full, events = demo_stream(backends["k3"], bundles[1], args.minutes)
    cheap = demo_stream(backends["k1"], bundles[0], args.minutes)[2]
    rows.append(measure("demo", grid, tiles, cheap, full, events, 5.0, bundles, args, policy))
    if VTEST.is_file():
        grid, tiles = vtest_tiles(bundles[1])
        full = vtest_features(backends["k3"], bundles[1], 4, 3)
        cheap = vtest_features(backends["k1"], bundles[0], 4, 3)
        events = [(name, a, b) for name, a, b, *_ in VTEST_EVENTS]
        args.window, window = 30.0, args.window  # vtest is 80 s long: its first 30 s calibrate
        rows.append(measure("vtest", grid, tiles, cheap, full, events, VTEST_FPS, bundles, args,
                            policy))
        args.window = window
    flat = tiles[:20].reshape(-1, *tiles.shape[2:])
    loads = [os.getloadavg()[0]]
    rates = timing(backends, flat, args.rounds)
    loads.append(os.getloadavg()[0])
    r1, r3 = np.median(rates["k1"]), np.median(rates["k3"])
    print(f"\ntiles/s, {args.threads} thread(s), {args.rounds} rounds, load {loads[0]:.2f}-{loads[1]:.2f}: "
          f"K=1 {r1:.1f} [{min(rates['k1']):.1f}-{max(rates['k1']):.1f}], "
          f"K=3 {r3:.1f} [{min(rates['k3']):.1f}-{max(rates['k3']):.1f}]")
    for row in rows:
        for c in row["cascade"]:
            # per tile of the stream: a one-step pass on each evaluated tile, a full pass on
            # each escalated one, against a full pass on every tile
            c["x_full"] = round(float(1.0 / (c["sent"] * (r3 / r1 + c["escalated"]))), 2)
            print(f"{row['stream']} margin {c['margin']}{' + gating' if c['gating'] else ''}: "
                  f"sent {c['sent']:.1%}, escalated {c['escalated']:.1%} -> {c['x_full']:.2f}x the "
                  f"full schedule's tiles/s; missed {c['missed']}, extra delay "
                  f"{c['extra_delay_s']} s, false {c['false_alerts']}")
    acc = zero_shot(backends, args.zero_shot)
    print("zero-shot fmnist vs digits AUROC: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"streams": rows, "tiles_per_s": rates,
                                               "zero_shot_auroc": acc, "load": loads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A scene that drifts: does the normal model follow it, and what does following cost?

    python benchmarks/drift.py --json drift.json

The stream: OpenCV's vtest.avi (Debian package opencv-doc; PETS 2009 S2.L1, people walking
across a campus forecourt, fixed camera), looped for `--minutes` at 2.5 fps (every 4th of its
10 fps frames). The first pass is calibration, undisturbed. From then on dusk falls over
`--ramp-minutes`: the light drops to 45% (exposure normalisation undoes a plain gain, not
what comes with it), from one side more than the other, warmer, with a steeper gamma and
three times the sensor noise; then it stays dark. Objects pasted in (before the light is
applied, so they darken with the scene): a cat on the lawn and a parcel by the road, seconds
each, and a bin that is put down and stays to the end (a lasting change).

Every frame is scored twice: by the calibration as fitted (static) and by a camera that adapts
(edge/adaptation.py, the class the daemon runs, replayed here in scene time with its refits
done inline). Reported per mode: false alert starts outside the events, each event's alert and
delay, the threshold over time, and each refresh.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
CACHE = Path.home() / ".cache" / "pathwatch" / "bench"
FPS = 2.5
STEP = 4  # vtest.avi is 10 fps
# name, from s, to s (None: to the end), skimage image, size, top-left
EVENTS = [("cat on the lawn", 300.0, 305.0, "chelsea", (90, 70), (330, 420)),
          ("parcel by the road", 540.0, 546.0, "coffee", (80, 60), (560, 300)),
          ("bin left on the lawn", 720.0, None, "rocket", (70, 90), (150, 430))]
# The demo camera (320 x 240): the same objects, scaled, after a 120 s calibration.
# per scene: frame size, calibration seconds (then the dusk starts), default minutes and ramp
SCENES = {"vtest": ((768, 576), 80.0, 16.0, 10.0),  # calibration: one pass of the clip
          "demo": ((320, 240), 120.0, 12.0, 6.0)}
DEMO_EVENTS = [("cat", 300.0, 305.0, "chelsea", (45, 35), (60, 150)),
               ("parcel", 420.0, 426.0, "coffee", (40, 30), (200, 100)),
               ("bin left in view", 540.0, None, "rocket", (35, 45), (120, 170))]


def dusk(image: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """The frame under dusk level f (0: as filmed, 1: full dusk)."""
    x = image.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    side = 1.0 - 0.35 * f * np.linspace(0.0, 1.0, w, dtype=np.float32)  # light from the left
    x = x * (1.0 - 0.55 * f) * side[None, :, None]
    x[..., 0] *= 1.0 - 0.25 * f  # less blue
    x[..., 2] *= 1.0 + 0.10 * f  # more red
    x = np.clip(x, 0.0, 1.0) ** (1.0 + 0.3 * f)
    x += rng.normal(0.0, (1.0 + 2.0 * f) * 2.0 / 255.0, x.shape).astype(np.float32)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def dusk_level(t: float, calib_s: float, ramp_s: float) -> float:
    return float(np.clip((t - calib_s) / ramp_s, 0.0, 1.0))


def vtest_clip() -> list[np.ndarray]:
    import cv2

    cap, clip, i = cv2.VideoCapture(str(VTEST)), [], 0
    while True:
        ok, image = cap.read()
        if not ok:
            return clip
        if i % STEP == 0:
            clip.append(image)
        i += 1


def scene_events(scene: str, at: list[float] | None = None) -> list[tuple]:
    """The scene's events, moved to start at `at` (one time per event) when given."""
    events = EVENTS if scene == "vtest" else DEMO_EVENTS
    if at is None:
        return events
    return [(name, t, None if b is None else t + (b - a), *rest)
            for (name, a, b, *rest), t in zip(events, at)]


def frames(scene: str, minutes: float, calib_s: float, ramp_s: float, events: list[tuple]):
    """(scene time, frame) of the darkening stream with the objects pasted in."""
    import cv2
    from skimage import data

    if scene == "vtest":
        clip = vtest_clip()
        source = lambda n: clip[n % len(clip)].copy()  # noqa: E731
    else:
        from pathwatch.edge.demo import DemoScene

        demo = DemoScene(seed=0, script="normal")
        source = lambda n: demo.frame(int(n * demo.fps / FPS))[0]  # noqa: E731
    patches = [(a, b, cv2.resize(cv2.cvtColor(getattr(data, img)(), cv2.COLOR_RGB2BGR), size), xy)
               for _, a, b, img, size, xy in events]
    rng = np.random.default_rng(0)
    for n in range(int(minutes * 60 * FPS)):
        t = n / FPS
        image = source(n)
        for a, b, patch, (x, y) in patches:
            if a <= t and (b is None or t < b):
                image[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        yield t, dusk(image, dusk_level(t, calib_s, ramp_s), rng)


def stream_features(bundle, backends, scene, minutes, calib_s, ramp_s, cols, rows, events):
    """(full features, one-step features) per frame, (frames, tiles, D) each, cached."""
    from pathwatch.edge.tiles import TileGrid

    key = hashlib.sha256(f"{bundle.identity()['graph_sha256']}{minutes}{calib_s}{ramp_s}"
                         f"{cols}x{rows}{events}{FPS}".encode()).hexdigest()[:16]
    path = CACHE / f"drift-{scene}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["full"], z["cheap"]
    grid, full, cheap = None, [], []
    t0 = time.perf_counter()
    for t, image in frames(scene, minutes, calib_s, ramp_s, events):
        if grid is None:
            grid = TileGrid(image.shape[1], image.shape[0], bundle.image_size[0], cols, rows)
        tiles = grid.cut(image)
        full.append(backends[0](tiles)[0])
        cheap.append(backends[1](tiles)[0])
        if len(full) % 250 == 0:
            print(f"  {t:.0f} s of scene ({time.perf_counter() - t0:.0f} s)", flush=True)
    full, cheap = np.stack(full), np.stack(cheap)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, full=full, cheap=cheap)
    return full, cheap


def calibrate(bundle, full, cheap, n: int, size, args):
    """The camera's calibration of both heads on the first n frames, and its normal set."""
    from pathwatch.edge.calibration import CalibrationWindow, fit_calibration
    from pathwatch.edge.tiles import TileGrid

    grid = TileGrid(*size, bundle.image_size[0], *args.tiles)
    times = np.arange(n) / FPS

    def fit(x, label):
        return fit_calibration("drift", x, grid, bundle.identity(), label,
                               density=bundle.default_density, fps=FPS, seconds=n / FPS,
                               times=times, false_alarms_per_hour=0.5, trigger=3, window=5)

    cal = fit(full[:n], bundle.label).with_cheap(fit(cheap[:n], bundle.cheap_head().label))
    return cal, CalibrationWindow(full[:n], times, np.zeros(n, bool), cheap[:n])


def replay(cal, window, full, cheap, start: int, policy, settings) -> dict:
    """Score frames start.. in scene time; with `settings` (an adaptation section) the camera's
    Adaptation samples, refreshes and adopts as in the daemon (its refits waited for)."""
    from pathwatch.edge.adaptation import Adaptation
    from pathwatch.edge.alerts import AlertTracker

    tracker = AlertTracker("drift", policy)
    options = {"holdout": 0.3, "false_alarms_per_hour": 0.5, "trigger": 3, "window_frames": 5}
    adapt = Adaptation(settings, cal, window, options) if settings else None
    starts, ends, scores, thresholds, refreshes = [], [], [], [], []
    for n in range(start, len(full)):
        t = n / FPS
        score = cal.frame_score(cal.tile_scores(full[n]))[0]
        events = tracker.update(t, score, cal.threshold)
        starts += [t for e in events if e.state == "start"]
        ends += [(t, e.reason) for e in events if e.state == "end"]
        scores.append(score)
        thresholds.append(cal.threshold)
        if adapt is None or not adapt.wants_sample(t):
            continue
        adapt.observe(t, full[n], cheap[n], cal.p_normal(score), tracker.active)
        reason = adapt.due(t)
        if reason is None:
            continue
        t0 = time.perf_counter()
        adapt.start(t, reason, "drift", fit_cheap=True)
        refresh = adapt.wait()
        adapt.installed(refresh)
        cal = refresh.calibration
        refreshes.append({"at_s": t, "fit_s": round(time.perf_counter() - t0, 1),
                          **{k: v for k, v in cal.data["adaptation"].items() if k != "history"}})
        print(f"  {t:6.1f} s: {refresh.summary}", flush=True)
        if reason == "lasting change":
            ended = tracker.close(t, "lasting change adopted as normal")
            ends += [(t, ended.reason)] if ended else []
    return {"starts": starts, "ends": ends, "scores": np.array(scores),
            "thresholds": np.array(thresholds), "refreshes": refreshes}


def judge(run: dict, start: int, events) -> dict:
    """Alert starts against the events: detections (start within an event or 3 s after it
    began... ended), false starts, and how the lasting change was handled."""
    times = np.arange(start, start + len(run["scores"])) / FPS
    found = []
    for name, a, b, *_ in events:
        end = b if b is not None else times[-1] + 1
        hit = [t for t in run["starts"] if a <= t <= end + 3.0]
        found.append({"event": name, "start_s": a, "detected": bool(hit),
                      "delay_s": round(hit[0] - a, 1) if hit else None})
    def in_event(t):
        return any(a <= t <= (b if b is not None else np.inf) + 3.0 for _, a, b, *_ in events)
    false = [round(t, 1) for t in run["starts"] if not in_event(t)]
    return {"events": found, "false_alert_starts_s": false, "alert_ends": run["ends"],
            "refreshes": run["refreshes"],
            "threshold_first_last": [round(float(run["thresholds"][0]), 2),
                                     round(float(run["thresholds"][-1]), 2)]}


def main() -> int:
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.models import load_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--scene", choices=sorted(SCENES), default="demo")
    p.add_argument("--minutes", type=float, help="stream length (demo 12, vtest 16)")
    p.add_argument("--ramp-minutes", type=float, help="dusk falls over this (demo 6, vtest 10)")
    p.add_argument("--tiles", type=int, nargs=2, default=[4, 3])
    p.add_argument("--every-s", type=float, default=120.0, help="adaptation.every_s")
    p.add_argument("--quiet", type=float, default=0.1, help="adaptation.quiet")
    p.add_argument("--adopt-after-s", type=float, default=120.0, help="adaptation.adopt_after_s")
    p.add_argument("--event-times", type=float, nargs=3, metavar=("CAT", "PARCEL", "BIN"),
                   help="scene seconds the three objects appear at (a longer, slower dusk)")
    p.add_argument("--json")
    args = p.parse_args()
    if not VTEST.is_file():
        print(f"{VTEST} is not here (apt-get install opencv-doc)")
        return 1
    bundle = load_bundle(args.bundle, Path.home() / ".cache" / "pathwatch", print)
    backends = [load_backend(bundle, "onnxruntime", log=print),
                load_backend(bundle.cheap_head(), "onnxruntime", log=print)]
    size, calib_s, minutes, ramp = SCENES[args.scene]
    minutes, ramp = args.minutes or minutes, args.ramp_minutes or ramp
    events = scene_events(args.scene, args.event_times)
    full, cheap = stream_features(bundle, backends, args.scene, minutes, calib_s, ramp * 60,
                                  *args.tiles, events)
    from pathwatch.edge.alerts import AlertPolicy
    from pathwatch.edge.config import AdaptationSection

    policy = AlertPolicy(trigger_frames=3, window_frames=5, update_interval_s=2.0, quiet_s=3.0,
                         cooldown_s=10.0)
    n = int(calib_s * FPS)
    cal, window = calibrate(bundle, full, cheap, n, size, args)
    print(f"calibrated on {n} frames: threshold {cal.threshold:.2f}")
    settings = AdaptationSection(enabled=True, every_s=args.every_s, quiet=args.quiet,
                                 adopt_after_s=args.adopt_after_s)
    report = {"bundle": bundle.label, "scene": args.scene, "fps": FPS, "minutes": minutes,
              "ramp_minutes": ramp, "calibration_s": calib_s,
              "settings": settings.model_dump(), "modes": {}}
    for mode, s in (("static", None), ("adapting", settings)):
        print(f"{mode}:")
        run = replay(cal, window, full, cheap, n, policy, s)
        report["modes"][mode] = r = judge(run, n, events)
        print(f"  events {[(e['event'], e['detected'], e['delay_s']) for e in r['events']]}; "
              f"false alert starts at {r['false_alert_starts_s']} s; ends {r['alert_ends']}; "
              f"threshold {r['threshold_first_last']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

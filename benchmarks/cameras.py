"""Cameras the daemon sustains at 5 fps, with dynamic steps and change gating off and on.

    python benchmarks/cameras.py --json cameras.json

Each run is `pathwatch run` on N cameras, every one a 5 fps, 640 x 480 MJPEG recording of
vtest.avi (people walking across a forecourt: a normal stream of a busy fixed scene) decoding
its own copy in real time, 4 x 3 tiles, K = 3, ONNX Runtime, the shipped default bundle. Every
camera starts from the same calibration, fitted for both heads on the clip's first frames (with
its sensor noise for gating) on the whole clip, so no run spends its time calibrating and the
looping footage is all normal to it. A camera is sustained when
its median processed rate over the measured seconds is at least 95% of 5 fps (benchmarks/
speed.py's live runs, whose daemon this reuses).

Configurations: dense (every tile, full schedule), dynamic steps (the default), and dynamic
steps with change gating. The camera counts tried rise until one is not sustained.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import CAMERA_FPS, live_run, read_footage, write_clip  # noqa: E402

CONFIGS = {
    "dense": "dynamic_steps:\n  enabled: false\ngating:\n  enabled: false\n",
    "dynamic steps": "dynamic_steps:\n  enabled: true\ngating:\n  enabled: false\n",
    "dynamic steps + gating": "dynamic_steps:\n  enabled: true\ngating:\n  enabled: true\n",
}


def calibration_file(frames, bundle_dir: Path, out: Path) -> Path:
    """Both heads calibrated on `frames` (BGR 640x480), with the clip's sensor noise."""
    import cv2

    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.bundle import Bundle
    from pathwatch.edge.calibration import fit_calibration
    from pathwatch.edge.gating import noise_level
    from pathwatch.edge.tiles import TileGrid

    full = Bundle.load(bundle_dir)
    cheap = full.cheap_head()
    grid = TileGrid(frames[0].shape[1], frames[0].shape[0], full.image_size[0], 4, 3)
    # what the camera sees: the clip's frames after an MJPEG round trip
    frames = [cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], 1)
              for f in frames]
    tiles = [grid.cut(f) for f in frames]
    cals = []
    for b in (full, cheap):
        backend = load_backend(b, "onnxruntime", log=lambda m: None)
        feats = np.stack([backend(t)[0] for t in tiles])
        cals.append(fit_calibration("bench", feats, grid, b.identity(), b.label,
                                    density=b.default_density, fps=CAMERA_FPS))
        backend.close()
    cal = cals[0].with_cheap(cals[1])
    noise = [noise_level(tiles[i - 1], tiles[i]) for i in range(1, len(tiles))]
    cal.data["noise"] = {"level": round(float(np.median(noise)), 3), "frame_pairs": len(noise)}
    cal.save(out)
    return out


def main() -> int:
    from pathwatch.edge.models import default_bundle

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", default="1,2,4,6,8,10,12", help="camera counts to try, rising")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--calibration-frames", type=int, default=400, help="frames of the clip "
                   "the calibration is fitted on (400: all of it, so the loop is normal footage "
                   "the cameras know and alerts do not force full evaluations)")
    p.add_argument("--threads", type=int, default=None, help="model.threads (default: the library's)")
    p.add_argument("--json", help="write the runs here")
    a = p.parse_args()
    counts = [int(x) for x in a.cameras.split(",")]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = default_bundle(tmp / "cache", lambda m: None)
        _, small = read_footage(400)
        clip = write_clip(small, tmp / "vtest-5fps.avi", CAMERA_FPS)
        cal = calibration_file(small[:a.calibration_frames], bundle.root, tmp / "calibration.json")
        runs = []
        for name in a.configs.split(","):
            for n in counts:
                t0 = time.time()
                load0 = os.getloadavg()[0]
                res = live_run(n, a.seconds, a.warmup, clip, bundle.root, cal, "onnxruntime",
                               "fp32", a.threads, tmp, extra=CONFIGS[name])
                res.update(config=name, load=[round(load0, 2), round(os.getloadavg()[0], 2)],
                           wall_s=round(time.time() - t0, 1))
                runs.append(res)
                print(f"{name}: {n} cameras, lowest {res['min_process_fps']} fps, total "
                      f"{res['total_process_fps']}, sustained {res['sustained']}, alert events "
                      f"{res['alert_events']}, load {res['load']}", flush=True)
                if res["log_tail"]:
                    print(res["log_tail"])
                if not res["sustained"]:
                    break
    print(f"\n{time.time() - started:.0f} s; most cameras sustained at 5 fps:")
    for name in a.configs.split(","):
        ok = [r["cameras"] for r in runs if r["config"] == name and r["sustained"]]
        print(f"  {name}: {max(ok) if ok else 0}")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

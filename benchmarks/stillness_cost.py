"""What `passing: ignore` costs a frame: edge/stillness.py's update against the backend's
evaluation of the same frame's tiles, timed interleaved in one run on vtest.avi.

    python benchmarks/stillness_cost.py --tiles 4 3 --frames 200

Each round times one frame both ways, back to back (the stillness update on the frame's raw
tiles, then ONNX Runtime on its tiles with the full schedule), so load affects both alike;
reported: the median of each and their ratio.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from false_alarms import VTEST, vtest_frames  # noqa: E402


def main() -> int:
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.config import StillnessSection
    from pathwatch.edge.models import load_bundle
    from pathwatch.edge.stillness import StillContent
    from pathwatch.edge.tiles import TileGrid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="default")
    p.add_argument("--tiles", type=int, nargs=2, default=[4, 3])
    p.add_argument("--frames", type=int, default=200)
    args = p.parse_args()
    if not VTEST.is_file():
        print(f"{VTEST} is not here (apt-get install opencv-doc)")
        return 1
    bundle = load_bundle(args.bundle, Path.home() / ".cache" / "pathwatch", print)
    backend = load_backend(bundle, "onnxruntime", threads=1, log=print)
    grid = raw = None
    still, t_still, t_backend = None, [], []
    for i, image in enumerate(vtest_frames()):
        if i >= args.frames:
            break
        if grid is None:
            grid = TileGrid(image.shape[1], image.shape[0], bundle.image_size[0], *args.tiles)
            raw = dataclasses.replace(grid, exposure="off")
            # As the camera builds it from its settings (min_area: a share of the view).
            still = StillContent.for_grid(StillnessSection().model_dump(), grid.count)
        t0 = time.perf_counter()
        still.update(raw.cut(image), i / 5.0)
        t1 = time.perf_counter()
        backend(grid.cut(image))
        t2 = time.perf_counter()
        if i >= 30:  # past the background's warm-up, when every comparison runs
            t_still.append(t1 - t0)
            t_backend.append(t2 - t1)
    s, b = np.median(t_still) * 1e3, np.median(t_backend) * 1e3
    print(f"{args.tiles[0]}x{args.tiles[1]} tiles, {len(t_still)} frames: stillness {s:.2f} ms "
          f"a frame (with its raw cut), backend {b:.1f} ms; stillness adds {s / b:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Path features for every (base model, image pool, schedule), cached on disk as .npz.

One DDIM inversion per (model, pool, K, placement) feeds every inversion variant at once;
the forward trajectory is a second path. The cache key holds the weights hash, the schedule,
the feature spec and the pool, so a rerun only computes what changed.
"""
from __future__ import annotations

import time

import numpy as np

from pathwatch.edge.datasets import load_images
from pathwatch.edge.evaluation import FeatureCache

from .plan import DEMO, SETS, Schedule, placement_timesteps


def extractor_for(loaded, sched: Schedule):
    from pathwatch.export.pipeline import TorchExtractor
    from pathwatch.export.schedule import ReducedSchedule

    cfg = loaded.config
    rs = ReducedSchedule(cfg.noise_schedule, cfg.diffusion_steps,
                         placement_timesteps(sched.placement, sched.k, cfg.diffusion_steps))
    return TorchExtractor(loaded, rs, sched.specs(), batch_size=128)


def _cached(extractor, pool_key: dict, images_fn, cache: FeatureCache, log) -> list[np.ndarray]:
    ident = extractor.identity()
    common = {k: v for k, v in ident.items() if k != "features"}
    keys = [{**common, "features": f, "pool": pool_key, "format": 2} for f in ident["features"]]
    cached = [cache.get(k) for k in keys]
    if all(c is not None for c in cached):
        return cached
    images = images_fn()
    t0 = time.perf_counter()
    feats = extractor.extract(images)
    dt = time.perf_counter() - t0
    log(f"  {pool_key.get('name')}: {len(images)} images in {dt:.0f} s "
        f"({len(images) * extractor.sched.k / dt:.0f} UNet evaluations/s)")
    for k, f in zip(keys, feats):
        cache.put(k, f)
    return feats


def pool_features(loaded, model_name: str, set_names, scheds, limits: dict, cache: FeatureCache,
                  log) -> dict:
    """{(set, schedule name, variant label): (N, D) features} for one base model."""
    out = {}
    for sched in scheds:
        ex = extractor_for(loaded, sched)
        log(f"{model_name} {sched.name}")
        for name in set_names:
            pool = SETS[name]
            limit = limits.get(name, pool.limit)
            key = {"name": name, "spec": pool.spec, "limit": limit, "seed": pool.seed}
            feats = _cached(ex, key, lambda: load_images(pool.spec, ex.image_size, limit,
                                                           pool.seed).images, cache, log)
            for label, f in zip(ex.labels, feats):
                out[(name, sched.name, label)] = f
    return out


def pool_labels(set_name: str, limit: int) -> np.ndarray | None:
    pool = SETS[set_name]
    return load_images(pool.spec, 32, limit, pool.seed).labels


# ---------------------------------------------------------------- the demo camera

def demo_frames(stride: int = 1) -> dict[str, list[int]]:
    """Frame indices of the demo camera: calibration, normal test, and each scripted event."""
    from pathwatch.edge.demo import DemoScene

    scene = DemoScene(*DEMO["size"], fps=DEMO["fps"])
    frames = {"calibration": list(DEMO["calibration_frames"])[::stride],
              "normal": list(DEMO["normal_frames"])[::stride]}
    for ev in scene.events(1e9)[:DEMO["events"]]:
        idx = np.linspace(ev.start_frame, ev.end_frame, DEMO["frames_per_event"] // stride)
        frames[ev.kind] = sorted({int(round(i)) for i in idx})
    return frames


def demo_tiles(indices: list[int]) -> np.ndarray:
    """(frames * tiles, t, t, 3) tiles, cut exactly as the daemon cuts them."""
    from pathwatch.edge.demo import DemoScene
    from pathwatch.edge.tiles import TileGrid

    scene = DemoScene(*DEMO["size"], fps=DEMO["fps"])
    grid = TileGrid(*DEMO["size"], 32, *DEMO["tiles"])
    return np.concatenate([grid.cut(scene.frame(i)[0]) for i in indices])


def demo_features(loaded, scheds, stride: int, cache: FeatureCache, log) -> dict:
    """{(group, schedule name, variant label): (frames, tiles, D)}."""
    n_tiles = DEMO["tiles"][0] * DEMO["tiles"][1]
    out = {}
    for sched in scheds:
        ex = extractor_for(loaded, sched)
        log(f"demo {sched.name}")
        for group, idx in demo_frames(stride).items():
            key = {"name": f"demo-{group}", "frames": idx, "grid": list(DEMO["tiles"])}
            feats = _cached(ex, key, lambda: demo_tiles(idx), cache, log)
            for label, f in zip(ex.labels, feats):
                out[(group, sched.name, label)] = f.reshape(len(idx), n_tiles, -1)
    return out

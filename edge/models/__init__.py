"""The embedded default model: a small UNet shipped with the package (see docs/default-model.md).

Only its weights ship; the bundle is exported from them into the cache directory on first use
(this needs torch once; afterwards the daemon runs the cached bundle without it).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ..bundle import Bundle, BundleError, sha256_of

HERE = Path(__file__).parent
CARD = HERE / "default.json"


def default_settings() -> dict:
    return json.loads(CARD.read_text())


def default_weights() -> Path:
    return HERE / default_settings()["weights"]


def default_bundle(cache_dir: str | Path, say: Callable[[str], None] = print) -> Bundle:
    s = default_settings()
    weights = default_weights()
    if not weights.is_file():
        raise BundleError(f"the default model {weights} is missing from this installation; "
                          "reinstall pathwatch or set model.bundle to an exported bundle")
    ts = "-".join(str(t) for t in s["timesteps"])
    name = f"default-{s['sha256'][:12]}-{s['variant'].replace('/', '-')}-t{ts}"
    target = Path(cache_dir).expanduser() / "bundles" / name
    if (target / "manifest.json").is_file():
        try:
            return Bundle.load(target)
        except BundleError as e:
            say(f"cached default bundle is unusable ({e}); exporting it again")
            shutil.rmtree(target, ignore_errors=True)
    if sha256_of(weights) != s["sha256"]:
        raise BundleError(f"{weights} does not match its recorded sha256; reinstall pathwatch")
    try:
        from export.bundle_export import export_bundle
        from export.checkpoint import load_checkpoint
        from export.features import FeatureSpec
        from export.schedule import ReducedSchedule
    except ImportError as e:
        raise BundleError(f"exporting the default bundle needs {e.name} once; pip install "
                          "'pathwatch[export]', or export a bundle elsewhere and set "
                          "model.bundle to it") from None
    say(f"exporting the default model to {target} (first run only)")
    variant, _, trajectory = s["variant"].partition("/")
    spec = FeatureSpec(variant, trajectory or "inversion", s.get("lam", 1.0), s.get("ssim_sigma", 1.5))
    cfg = load_checkpoint(weights).config
    sched = ReducedSchedule(cfg.noise_schedule, cfg.diffusion_steps, tuple(s["timesteps"]))
    return export_bundle(weights, target, spec, sched, parity_n=64, log=say).bundle

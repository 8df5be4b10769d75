"""The embedded default model's bundle: exported from edge/models/default.safetensors with the
settings in edge/models/default.json.

    python -m pathwatch.export.default_bundle      # regenerate edge/models/default-bundle/

The package ships that export (manifest, graph, parity references; the weights are already
there), so the daemon runs the default model where torch is not installed. Run this after
changing the weights, default.json, or the pipeline graph.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pathwatch.edge.bundle import CHEAP, Bundle
from pathwatch.edge.models import SHIPPED, SHIPPED_FILES, default_weights

from .bundle_export import export_bundle
from .checkpoint import load_checkpoint
from .defaults import DEFAULTS
from .features import FeatureSpec
from .schedule import ReducedSchedule


def export_default(out: str | Path, parity_n: int = 64, log=print) -> Bundle:
    weights = default_weights()
    spec = FeatureSpec(**DEFAULTS.spec())  # the defaults `pathwatch eval` and `export` use too
    cfg = load_checkpoint(weights).config
    sched = ReducedSchedule(cfg.noise_schedule, cfg.diffusion_steps, DEFAULTS.timesteps)
    return export_bundle(weights, out, spec, sched, parity_n=parity_n, log=log).bundle


def main() -> int:
    stage = SHIPPED.with_name(SHIPPED.name + ".export")
    shutil.rmtree(stage, ignore_errors=True)
    bundle = export_default(stage)
    shutil.rmtree(SHIPPED, ignore_errors=True)
    SHIPPED.mkdir()
    for name in SHIPPED_FILES:  # the weights stay where they are, not twice in the package
        shutil.copyfile(bundle.root / name, SHIPPED / name)
    if (bundle.root / CHEAP).is_dir():  # the one-step head of dynamic steps
        (SHIPPED / CHEAP).mkdir()
        for name in SHIPPED_FILES:
            shutil.copyfile(bundle.root / CHEAP / name, SHIPPED / CHEAP / name)
    shutil.rmtree(stage)
    print(f"wrote {SHIPPED} ({bundle.label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

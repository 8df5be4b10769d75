"""The embedded default model: its shipped export is current and runs without torch."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from conftest import NO_TORCH
from pathwatch.edge.bundle import Bundle
from pathwatch.edge.models import SHIPPED, default_settings, default_weights, shipped_matches


def test_the_shipped_export_is_the_default_weights_with_the_default_settings():
    assert shipped_matches(default_settings()), (
        "edge/models/default-bundle is stale: run `python -m pathwatch.export.default_bundle`")


def test_the_command_defaults_are_the_default_models_settings():
    """eval and export default to DEFAULTS, which is default.json: K and the placement give
    the default model's recorded timesteps on its own schedule."""
    from pathwatch.edge.models import default_spec
    from pathwatch.export.checkpoint import load_checkpoint
    from pathwatch.export.defaults import DEFAULTS
    from pathwatch.export.schedule import placed_timesteps

    s = default_settings()
    assert DEFAULTS.spec() == default_spec(s) and DEFAULTS.variant == s["variant"]
    cfg = load_checkpoint(default_weights()).config
    assert placed_timesteps(cfg.diffusion_steps, DEFAULTS.k, DEFAULTS.placement) == \
        list(DEFAULTS.timesteps) == s["timesteps"]


def test_the_shipped_graph_reproduces_the_current_torch_pipeline():
    """After a change to the pipeline code the shipped graph would no longer be what an export
    writes: its recorded images are run through today's torch module and compared."""
    import torch

    from pathwatch.edge.parity import compare
    from pathwatch.export.bundle_export import build_pipeline
    from pathwatch.export.checkpoint import load_checkpoint
    from pathwatch.export.features import FeatureSpec
    from pathwatch.export.schedule import ReducedSchedule

    s = default_settings()
    shipped = SHIPPED / "parity.npz"
    with np.load(shipped) as z:
        images, feats, maps = z["images"], z["features"], z["heatmap"]
    loaded = load_checkpoint(default_weights())
    cfg = loaded.config
    sched = ReducedSchedule(cfg.noise_schedule, cfg.diffusion_steps, tuple(s["timesteps"]))
    pipe = build_pipeline(loaded, sched, FeatureSpec(s["variant"], lam=s["lam"],
                                                     ssim_sigma=s["ssim_sigma"]))
    with torch.no_grad():
        f, h = pipe(torch.from_numpy(images))
    names = [f"f{i}" for i in range(feats.shape[1])]
    report = compare("torch-now", names, feats, maps, f.numpy(), h.numpy(), "fp32")
    assert report.passed, (report.summary(), "run `python -m pathwatch.export.default_bundle`")


def test_the_default_bundle_installs_and_runs_without_torch(tmp_path):
    code = NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        from pathwatch.edge.backends import load_backend
        from pathwatch.edge.models import default_bundle
        b = default_bundle({str(tmp_path)!r}, print)
        f, h = load_backend(b, "onnxruntime", log=print)(np.zeros((2, 32, 32, 3), np.uint8))
        assert f.shape == (2, len(b.feature_names)) and h.shape == (2, 32, 32)
        assert default_bundle({str(tmp_path)!r}, print).root == b.root  # cached now
        assert "torch" not in sys.modules
        print("OK", b.root)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "shipped export, no torch needed" in res.stdout and "OK" in res.stdout
    root = Path(res.stdout.split("OK ")[-1].strip())
    assert (root / "weights.safetensors").read_bytes() == default_weights().read_bytes()
    assert not list(root.parent.glob("*.partial"))
    Bundle.load(root)

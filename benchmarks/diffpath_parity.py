"""Check pathwatch's DiffPath-6D features against the official DiffPath code.

Needs a checkout of the official repository (github.com/clear-nus/diffpath), which this
project does not ship; it imports its `improved_diffusion` package from --reference.

    python benchmarks/diffpath_parity.py --reference ~/src/diffpath \
        --checkpoint celeba_ema_0.9999_499999.pt --config configs/models/diffpath_celeba32.yaml \
        --data fmnist:test --n 64 --k 10

Without --checkpoint the check runs on random weights in the given config (all layers, the
zero-initialised ones included, drawn from N(0, 0.05)), which exercises every code path.
Prints the largest relative error per feature; exits 1 if any exceeds --tolerance.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def official_features(reference: str, cfg: dict, state: dict, x0: torch.Tensor, k: int) -> np.ndarray:
    sys.path.insert(0, reference)
    from improved_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    args = model_and_diffusion_defaults()
    args.update({key: v for key, v in cfg.items() if key in args})
    args["timestep_respacing"] = f"ddim{k}"
    model, diffusion = create_model_and_diffusion(**args)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        _, eps = diffusion.ddim_reverse_sample_loop(model, x0.shape, x0, clip_denoised=cfg.get(
            "clip_denoised", True), return_eps=True)
    # The statistics exactly as DiffPath's save_*_statistics.py compute them.
    eps = np.array([e.numpy() for e in eps]).transpose(1, 0, 2, 3, 4)
    d = np.diff(eps, axis=1) * len(diffusion.betas)
    ax = (1, 2, 3, 4)
    return np.stack([eps.sum(ax), (eps ** 2).sum(ax), (eps ** 3).sum(ax),
                     d.sum(ax), (d ** 2).sum(ax), (d ** 3).sum(ax)], axis=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="checkout of clear-nus/diffpath")
    p.add_argument("--config", required=True, help="model config YAML (improved-diffusion flags)")
    p.add_argument("--checkpoint", help="improved-diffusion .pt (default: random weights)")
    p.add_argument("--data", default="fmnist:test")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tolerance", type=float, default=1e-4)
    a = p.parse_args()

    import yaml

    from pathwatch.edge.datasets import load_images, to_model_input
    from pathwatch.export.checkpoint import load_checkpoint, read_config_file
    from pathwatch.export.features import POWER_NAMES, FeatureSpec
    from pathwatch.export.pipeline import DiffPathPipeline
    from pathwatch.export.schedule import ReducedSchedule
    from pathwatch.export.unet import UNetModel

    cfg_dict = yaml.safe_load(open(a.config))
    if a.checkpoint:
        loaded = load_checkpoint(a.checkpoint, a.config)
        model, config = loaded.model, loaded.config
    else:
        config = read_config_file(a.config)
        torch.manual_seed(0)
        model = UNetModel(config).eval()
        for prm in model.parameters():
            torch.nn.init.normal_(prm, 0, 0.05)
    x0 = torch.from_numpy(to_model_input(load_images(a.data, config.image_size, a.n).images))
    sched = ReducedSchedule.ddim(config.noise_schedule, config.diffusion_steps, a.k)
    ours = DiffPathPipeline(model, sched, FeatureSpec("diffpath6d"))(x0)[0].numpy()
    ref = official_features(a.reference, cfg_dict, model.state_dict(), x0, a.k)
    rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)
    for i, name in enumerate(POWER_NAMES):
        print(f"{name:12s} max rel err {rel[:, i].max():.2e}  median {np.median(rel[:, i]):.2e}")
    worst = float(rel.max())
    print(f"worst relative error {worst:.2e} over {a.n} images, K={a.k} (tolerance {a.tolerance:g})")
    return 0 if worst <= a.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

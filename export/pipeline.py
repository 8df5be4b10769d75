"""The whole reduced-schedule pipeline as one module: images in, features and heatmap out.

This is what `eval` runs in torch and what the exporter turns into one ONNX graph: K UNet
evaluations unrolled with shared weights, then the chosen path statistic.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pathwatch.edge.datasets import to_model_input, to_unit_range

from .features import FeatureSpec, features_from_path, path_for, ssim_dissimilarity
from .paths import eps_fn_for
from .schedule import ReducedSchedule
from .unet import UNetModel


class DiffPathPipeline(nn.Module):
    """images -> (features (B, D), heatmap (B, H, W)).

    With `uint8_input`, images are uint8 (B, H, W, 3) RGB and are scaled to [-1, 1] inside
    (what a camera daemon holds); otherwise float (B, 3, H, W) already in [-1, 1].
    """

    def __init__(self, model: UNetModel, sched: ReducedSchedule, spec: FeatureSpec,
                 uint8_input: bool = False, acc_dtype: torch.dtype = torch.float64):
        super().__init__()
        self.model = model.eval()
        self.sched, self.spec = sched, spec
        self.uint8_input, self.acc_dtype = uint8_input, acc_dtype
        self.eval()  # the whole module, so tracing (which restores modes) never enables dropout

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if not self.uint8_input:
            return images
        # Cast first: TensorRT wants a uint8 input converted before any other layer.
        return to_unit_range(images.float().permute(0, 3, 1, 2))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.normalise(images)
        cfg = self.model.config
        path = path_for(self.spec, eps_fn_for(self.model), x0, self.sched,
                        cfg.clip_denoised, cfg.rescale_timesteps)
        return features_from_path(self.spec, x0, path, self.acc_dtype)


@torch.no_grad()
def features_for_specs(model: UNetModel, sched: ReducedSchedule, specs: list[FeatureSpec],
                       x0: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Several feature variants of one batch, running each distinct path only once."""
    cfg, eps_fn = model.config, eps_fn_for(model)
    paths: dict[tuple, object] = {}
    ssim: dict[tuple, torch.Tensor] = {}
    out = []
    for spec in specs:
        key = (spec.trajectory, spec.noise_seed if spec.trajectory == "forward" else None)
        if key not in paths:
            paths[key] = path_for(spec, eps_fn, x0, sched, cfg.clip_denoised, cfg.rescale_timesteps)
        w = None
        if spec.variant not in ("diffpath6d", "diffpath1d"):
            wkey = (*key, spec.ssim_sigma)
            if wkey not in ssim:
                ssim[wkey] = ssim_dissimilarity(x0, paths[key].x0_hat, spec.ssim_sigma)
            w = ssim[wkey]
        out.append(features_from_path(spec, x0, paths[key], w=w))
    return out


class TorchExtractor:
    """The evaluation FeatureExtractor for a torch checkpoint (see edge.evaluation)."""

    def __init__(self, loaded, sched: ReducedSchedule, specs: list[FeatureSpec],
                 batch_size: int = 64, device: str = "cpu"):
        self.model, self.sha = loaded.model.to(device), loaded.weights_sha256
        self.sched, self.specs = sched, specs
        self.batch_size, self.device = batch_size, device
        self.image_size = loaded.config.image_size
        self.labels = [s.label for s in specs]

    def identity(self) -> dict:
        return {"weights_sha256": self.sha, "schedule": self.sched.to_dict(),
                "features": [s.to_dict() for s in self.specs]}

    def extract(self, images, progress=None) -> list:
        chunks: list[list] = [[] for _ in self.specs]
        for start in range(0, len(images), self.batch_size):
            x0 = torch.from_numpy(to_model_input(images[start:start + self.batch_size]))
            for out, (f, _) in zip(chunks, features_for_specs(self.model, self.sched, self.specs,
                                                              x0.to(self.device))):
                out.append(f.cpu().numpy())
            if progress:
                progress(len(x0))
        return [np.concatenate(c) for c in chunks]

"""Training a base diffusion UNet on an image source (`pathwatch train`).

A run directory holds everything: `model.safetensors` (raw weights), `ema.safetensors` (the
EMA weights that eval and export use), `optimizer.safetensors` + `train.json` (resume state,
loss history, throughput), and `samples.png` (a preview grid from the EMA model).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pathwatch.edge.datasets import from_unit_range, load_images, to_model_input
from pathwatch.edge.files import write_atomic

from .checkpoint import save_checkpoint
from .paths import ddim_sample, eps_fn_for, training_loss
from .schedule import beta_schedule
from .unet import ModelConfig, UNetModel, count_parameters


@dataclass
class TrainSettings:
    data: str
    out: str
    image_size: int = 32
    batch_size: int = 64
    lr: float = 2e-4
    ema_rate: float = 0.999
    steps: int = 2000
    minutes: float | None = None  # wall-clock budget; stops early when reached
    save_every: int = 500
    seed: int = 0
    device: str = "cpu"
    limit: int | None = None  # use at most this many training images
    samples: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    images: int = 0
    losses: list = field(default_factory=list)  # [step, mean loss since the last entry]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


class Trainer:
    """One run: model, EMA copy, optimizer, data; `run()` trains until steps or time run out."""

    def __init__(self, settings: TrainSettings, config: ModelConfig, resume: bool = False):
        self.s, self.out = settings, Path(settings.out)
        torch.manual_seed(settings.seed)
        self.model = UNetModel(config).to(settings.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=0.0)
        self.state = TrainState()
        if resume:
            self._load_resume_state()
        abar = np.cumprod(1.0 - beta_schedule(config.noise_schedule, config.diffusion_steps))
        self.abar = torch.tensor(abar, dtype=torch.float32, device=settings.device)
        self.gen = torch.Generator().manual_seed(settings.seed + self.state.step)
        images = load_images(settings.data, settings.image_size, settings.limit, settings.seed).images
        self.data = torch.from_numpy(to_model_input(images))

    @property
    def parameters(self) -> int:
        return count_parameters(self.model)

    def _load_resume_state(self) -> None:
        from safetensors.torch import load_file

        meta = json.loads((self.out / "train.json").read_text())
        self.model.load_state_dict(load_file(self.out / "model.safetensors"))
        self.ema.load_state_dict(load_file(self.out / "ema.safetensors"))
        self.opt.load_state_dict(_unflatten_optimizer(load_file(self.out / "optimizer.safetensors"),
                                                      meta["optimizer"]))
        self.state = TrainState(**meta["state"])

    def step(self) -> float:
        idx = torch.randint(0, len(self.data), (self.s.batch_size,), generator=self.gen)
        x0 = self.data[idx].to(self.s.device)
        cfg = self.model.config
        loss = training_loss(eps_fn_for(self.model), x0, self.abar, cfg.diffusion_steps,
                             self.gen, cfg.rescale_timesteps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self._update_ema()
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up so a short run's EMA is not dominated by the random initialisation.
        rate = min(self.s.ema_rate, (1 + self.state.step) / (10 + self.state.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.mul_(rate).add_(p.detach(), alpha=1 - rate)

    def run(self, on_step: Callable[[TrainState, float], None] | None = None) -> TrainState:
        st, pending, t0 = self.state, [], time.perf_counter()
        start_seconds = st.seconds
        self.model.train()
        while st.step < self.s.steps:
            if self.s.minutes and st.seconds >= self.s.minutes * 60:
                break
            pending.append(self.step())
            st.step += 1
            st.images += self.s.batch_size
            st.seconds = start_seconds + time.perf_counter() - t0
            if st.step % 50 == 0 or st.step == self.s.steps:
                st.losses.append([st.step, float(np.mean(pending))])
                pending = []
            if on_step:
                on_step(st, st.losses[-1][1] if st.losses else float("nan"))
            if st.step % self.s.save_every == 0:
                self.save()
        if pending:
            st.losses.append([st.step, float(np.mean(pending))])
        self.save()
        return st

    def save(self) -> dict:
        from safetensors.torch import save

        self.out.mkdir(parents=True, exist_ok=True)
        meta = {"step": self.state.step, "data": self.s.data}
        save_checkpoint(self.model, self.out / "model.safetensors", meta)
        ema_sha = save_checkpoint(self.ema, self.out / "ema.safetensors", meta)
        tensors, layout = _flatten_optimizer(self.opt.state_dict())
        write_atomic(self.out / "optimizer.safetensors", save(tensors))
        info = {"settings": self.s.to_dict(), "model_config": self.model.config.to_dict(),
                "parameters": self.parameters, "state": asdict(self.state),
                "images_per_second": round(self.state.images_per_second, 2),
                "final_loss": self.state.losses[-1][1] if self.state.losses else None,
                "ema_sha256": ema_sha, "optimizer": layout}
        write_atomic(self.out / "train.json", json.dumps(info, indent=1))
        return info

    def save_preview(self, steps: int = 50) -> Path:
        """A grid of EMA samples (DDIM, `steps` steps) as PNG: a quick look at what it learned."""
        import cv2

        cfg = self.ema.config
        g = torch.Generator().manual_seed(self.s.seed)
        x = ddim_sample(eps_fn_for(self.ema), (self.s.samples, cfg.in_channels, cfg.image_size,
                                                cfg.image_size), cfg, steps, g, self.s.device)
        imgs = from_unit_range(x.clamp(-1, 1)).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        path = self.out / "samples.png"
        cv2.imwrite(str(path), cv2.cvtColor(image_grid(imgs), cv2.COLOR_RGB2BGR))
        return path


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one near-square grid image, upscaled x4 so small images are visible."""
    import cv2

    n, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
    return cv2.resize(grid, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (for safetensors) plus a JSON layout of the rest."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(layout["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": layout["param_groups"]}

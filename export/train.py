"""Training a base diffusion UNet on an image source (`pathwatch train`).

A run directory holds everything: `model.safetensors` (raw weights), `ema.safetensors` (the
EMA weights that eval and export use), `optimizer.safetensors` (the optimizer's state for
--resume: its tensors, with the rest of its state dict in the file's metadata), `train.json`
(settings, model config, loss history, throughput; human-readable, no optimizer internals),
and `samples.png` (a preview grid from the EMA model).

`minutes` is a wall-clock budget for the whole command: it counts from `started` (the
command's start, so imports and data loading are inside it), and training stops early enough
that the periodic saves, the final save and the sample grid fit too (`should_stop`; the grid
takes fewer DDIM steps when a full one would not fit a quarter of a short budget,
`preview_steps_for`).
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
    minutes: float | None = None  # wall-clock budget for the whole command (see the docstring)
    save_every: int = 500
    seed: int = 0
    device: str = "cpu"
    limit: int | None = None  # use at most this many training images
    samples: int = 16
    preview_steps: int = 50  # DDIM steps of the sample grid (fewer when a budget is short)

    def to_dict(self) -> dict:
        return asdict(self)


PREVIEW_STEPS = (50, 40, 25, 20, 10)  # DDIM step counts with an integer stride of T=1000
PREVIEW_SHARE = 0.25  # of a --minutes budget the sample grid may take before it gets fewer steps
SAFETY = 1.25  # margin on the estimated time of the final save and sample grid
RETIME_EVERY = 25  # steps between timings of a forward pass (a shared machine's load changes)


def preview_steps_for(budget_s: float | None, forward_s: float, save_s: float,
                      diffusion_steps: int = 1000, most: int = 50) -> int:
    """DDIM steps for the sample grid: `most`, or fewer (down to 10) when that many would take
    more than PREVIEW_SHARE of the budget. forward_s: one EMA forward at the grid's batch."""
    from .schedule import ddim_timesteps

    valid = []
    for k in PREVIEW_STEPS:
        try:
            if k <= most and ddim_timesteps(diffusion_steps, k):
                valid.append(k)
        except ValueError:
            pass
    valid = valid or [min(most, diffusion_steps)]
    if budget_s is None:
        return valid[0]
    room = PREVIEW_SHARE * budget_s - save_s
    return next((k for k in valid if k * forward_s * SAFETY <= room), valid[-1])


def final_seconds(preview_steps: int, forward_s: float, save_s: float) -> float:
    """Estimated time of what comes after the last step: the final save and the sample grid."""
    return SAFETY * (save_s + preview_steps * forward_s)


def should_stop(left_s: float, step_s: float, final_s: float, save_s: float = 0.0) -> bool:
    """Whether one more training step (step_s, plus save_s when a periodic save follows it)
    would leave less than final_s of the budget for the final save and samples."""
    return left_s < step_s + save_s + final_s


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

    def __init__(self, settings: TrainSettings, config: ModelConfig, resume: bool = False,
                 started: float | None = None):
        # The budget's clock: time.monotonic() at the command's start (default: now).
        self.started = time.monotonic() if started is None else started
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
        self.info: dict = {}  # what the last save wrote to train.json
        self.preview_steps = settings.preview_steps
        # Estimates for the budget, replaced by measurements as the run goes: a save writes
        # the weights three times over and the optimizer's two moments (float32).
        self.save_s = 0.2 + 4 * 4 * self.parameters / 100e6
        self.forward_s: float | None = None
        self._forwards: list[float] = []  # the last few timings of one forward pass

    @property
    def parameters(self) -> int:
        return count_parameters(self.model)

    def budget_left(self) -> float | None:
        """Seconds left of the --minutes budget (None without one)."""
        if not self.s.minutes:
            return None
        return self.s.minutes * 60 - (time.monotonic() - self.started)

    def final_seconds(self) -> float:
        return final_seconds(self.preview_steps, self.forward_s or 0.0, self.save_s)

    @torch.no_grad()
    def _time_forward(self) -> float:
        """One EMA forward at the sample grid's batch (the best of two, past warm-up)."""
        cfg = self.ema.config
        x = torch.zeros((self.s.samples, cfg.in_channels, cfg.image_size, cfg.image_size),
                        device=self.s.device)
        t = torch.full((self.s.samples,), cfg.diffusion_steps / 2, device=self.s.device)
        eps, times = eps_fn_for(self.ema), []
        for _ in range(2):
            t0 = time.perf_counter()
            eps(x, t)
            if self.s.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    def _plan_final(self) -> None:
        """Time a forward pass (the slowest of the last three timings counts) and size the
        sample grid to the budget."""
        self._forwards = [*self._forwards[-2:], self._time_forward()]
        self.forward_s = max(self._forwards)
        self.preview_steps = preview_steps_for(self.s.minutes * 60, self.forward_s, self.save_s,
                                               self.model.config.diffusion_steps,
                                               self.s.preview_steps)

    def _load_resume_state(self) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        meta = json.loads((self.out / "train.json").read_text())
        self.model.load_state_dict(load_file(self.out / "model.safetensors"))
        self.ema.load_state_dict(load_file(self.out / "ema.safetensors"))
        path = self.out / "optimizer.safetensors"
        with safe_open(path, "pt") as f:
            layout = (f.metadata() or {}).get(OPTIMIZER_KEY)
        # Runs written before the layout moved into the state file kept it in train.json.
        layout = json.loads(layout) if layout else meta["optimizer"]
        self.opt.load_state_dict(_unflatten_optimizer(load_file(path), layout))
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
        """Train until `steps`, or until the budget has only room left for the final save and
        sample grid (at least one step is always taken); then save."""
        st, pending, t0 = self.state, [], time.perf_counter()
        start_seconds, first = st.seconds, st.step
        step_s = 0.0
        self.model.train()
        while st.step < self.s.steps:
            if self.s.minutes and st.step > first:
                if (st.step - first - 1) % RETIME_EVERY == 0:
                    self._plan_final()
                periodic = self.save_s if (st.step + 1) % self.s.save_every == 0 else 0.0
                if should_stop(self.budget_left(), step_s, self.final_seconds(), periodic):
                    break
            t_step = time.perf_counter()
            pending.append(self.step())
            took = time.perf_counter() - t_step
            step_s = took if st.step == first else 0.7 * step_s + 0.3 * took
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
                st.seconds = start_seconds + time.perf_counter() - t0
        if pending:
            st.losses.append([st.step, float(np.mean(pending))])
        self.save()
        return st

    def save(self) -> dict:
        """Weights, EMA weights, optimizer state (for --resume) and train.json. The optimizer's
        state dict goes whole into optimizer.safetensors: its tensors, and its parameter groups
        and scalars as JSON in the file's metadata; train.json holds none of it."""
        from safetensors.torch import save

        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        meta = {"step": self.state.step, "data": self.s.data}
        save_checkpoint(self.model, self.out / "model.safetensors", meta)
        ema_sha = save_checkpoint(self.ema, self.out / "ema.safetensors", meta)
        tensors, layout = _flatten_optimizer(self.opt.state_dict())
        write_atomic(self.out / "optimizer.safetensors",
                     save(tensors, metadata={OPTIMIZER_KEY: json.dumps(layout)}))
        info = {"settings": self.s.to_dict(), "model_config": self.model.config.to_dict(),
                "parameters": self.parameters, "state": asdict(self.state),
                "images_per_second": round(self.state.images_per_second, 2),
                "final_loss": self.state.losses[-1][1] if self.state.losses else None,
                "ema_sha256": ema_sha}
        write_atomic(self.out / "train.json", json.dumps(info, indent=1))
        self.info = info
        self.save_s = time.perf_counter() - t0
        return info

    def save_preview(self, steps: int | None = None,
                     on_step: Callable[[int, int], None] | None = None) -> Path:
        """A grid of EMA samples (DDIM, `steps` steps; default: what the budget left room for)
        as PNG: a quick look at what it learned. on_step(done, total) after each step."""
        import cv2

        cfg = self.ema.config
        steps = steps or self.preview_steps
        g = torch.Generator().manual_seed(self.s.seed)
        eps, done = eps_fn_for(self.ema), [0]

        def counted(x, t):
            y = eps(x, t)
            done[0] += 1
            if on_step:
                on_step(done[0], steps)
            return y
        x = ddim_sample(counted, (self.s.samples, cfg.in_channels, cfg.image_size,
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


OPTIMIZER_KEY = "pathwatch.optimizer"  # optimizer.safetensors metadata: the state dict's non-tensors


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

"""The improved-diffusion UNet (Nichol & Dhariwal 2021), as DiffPath's checkpoints use it.

Module and parameter names follow openai/improved-diffusion exactly, so its checkpoints
(DiffPath's CelebA 32x32 model, OpenAI's ImageNet-64 model) load with `strict=True`. The
forward pass is written for export: no einsum, no Python-side shape asserts, SiLU as a module.

Shapes: x is (B, C, H, W) in [-1, 1]; t is (B,) float timesteps already rescaled to 0..1000.
Output is (B, C, H, W), or (B, 2C, H, W) with learned variance (the first C channels are eps).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# improved-diffusion's fixed channel multipliers per resolution (script_util.create_model).
_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a checkpoint's network and its diffusion.

    Field names are improved-diffusion's command-line flags, so a DiffPath YAML config reads
    straight into it. `attention_resolutions` are feature-map sizes ("16,8"), as there.
    """

    image_size: int = 32
    in_channels: int = 3
    num_channels: int = 128
    num_res_blocks: int = 3
    channel_mult: tuple[int, ...] = ()  # empty: improved-diffusion's default for image_size
    attention_resolutions: str = "16,8"
    num_heads: int = 4
    num_heads_upsample: int = -1
    dropout: float = 0.0
    learn_sigma: bool = False
    use_scale_shift_norm: bool = True
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    clip_denoised: bool = True
    rescale_timesteps: bool = True
    extra: dict = field(default_factory=dict)  # foreign flags we keep but do not use

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult) or self._default_mult()
        if self.num_channels % 32:
            raise ValueError(f"num_channels={self.num_channels}: must be a multiple of 32 "
                             "(GroupNorm with 32 groups)")
        if self.noise_schedule not in ("linear", "cosine"):
            raise ValueError(f"noise_schedule={self.noise_schedule!r}: use 'linear' or 'cosine'")

    def _default_mult(self) -> tuple[int, ...]:
        if self.image_size not in _CHANNEL_MULT:
            raise ValueError(f"image_size={self.image_size} has no default channel_mult; "
                             "set channel_mult explicitly, e.g. [1, 2, 2]")
        return _CHANNEL_MULT[self.image_size]

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_downsample_rates(self) -> tuple[int, ...]:
        return tuple(self.image_size // int(r) for r in str(self.attention_resolutions).split(",") if r)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known and k != "extra"}
        extra = {**d.get("extra", {}), **{k: v for k, v in d.items() if k not in known}}
        if isinstance(kwargs.get("attention_resolutions"), (list, tuple)):
            kwargs["attention_resolutions"] = ",".join(str(r) for r in kwargs["attention_resolutions"])
        return cls(**kwargs, extra=extra)


@functools.lru_cache(maxsize=None)  # never evicted: a captured CUDA graph points at these
def _frequencies(half: int, max_period: float, device: torch.device) -> torch.Tensor:
    """Computed on the CPU as improved-diffusion does, moved once per device (no copy inside a
    CUDA graph capture)."""
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(device)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin], computed in float32 exactly as improved-diffusion does."""
    args = t[:, None].float() * _frequencies(dim // 2, max_period, t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 (keeps fp16 inference stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class TimestepBlock(nn.Module):
    """A layer whose forward takes the timestep embedding as a second argument."""


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block; the timestep embedding scales and shifts the second norm."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 scale_shift: bool = True):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)  # start as identity, as improved-diffusion does
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with improved-diffusion's (legacy) qkv channel layout:
    the 3C channels are split into heads first, then into q, k, v inside each head."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        x = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(x)).reshape(b * self.num_heads, 3 * c // self.num_heads, hgt * wid)
        q, k, v = torch.chunk(qkv, 3, dim=1)  # each (B*heads, ch, T)
        scale = 1.0 / math.sqrt(math.sqrt(c // self.num_heads))
        weight = torch.bmm((q * scale).transpose(1, 2), k * scale)  # (B*heads, T, T)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.bmm(v, weight.transpose(1, 2)).reshape(b, c, hgt * wid)
        return (x + self.proj_out(h)).reshape(b, c, hgt, wid)


class UNetModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        ch = mc = cfg.num_channels
        emb = mc * 4
        attn_ds = cfg.attention_downsample_rates
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb, cfg.dropout, cout, cfg.use_scale_shift_norm)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res(ch, ch), AttentionBlock(ch, cfg.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Architectures for training our own base models (32x32). Sizes measured by count_parameters.
PRESETS: dict[str, dict] = {
    "tiny": dict(num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                 attention_resolutions="8", num_heads=4, dropout=0.1),
    "small": dict(num_channels=64, num_res_blocks=1, channel_mult=(1, 2, 2),
                  attention_resolutions="8", num_heads=4, dropout=0.1),
    "base": dict(num_channels=64, num_res_blocks=2, channel_mult=(1, 2, 2, 2),
                 attention_resolutions="16,8", num_heads=4, dropout=0.1),
}


def preset_config(name: str, image_size: int = 32, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r} is unknown: use one of {', '.join(PRESETS)}")
    base = dict(PRESETS[name], image_size=image_size, diffusion_steps=1000,
                noise_schedule="cosine", learn_sigma=False, clip_denoised=True)
    return ModelConfig(**{**base, **overrides})

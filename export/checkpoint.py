"""Checkpoints: our own (safetensors weights + JSON config) and foreign improved-diffusion `.pt`.

A pathwatch checkpoint is a `.safetensors` file whose metadata holds the model config as JSON,
so the file alone rebuilds the network. Foreign `.pt` state dicts load with
`torch.load(weights_only=True)` (never unpickling code) plus a YAML/JSON config in
improved-diffusion's flag names (DiffPath's configs/*.yaml work as they are).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pathwatch.edge.bundle import sha256_of
from pathwatch.edge.files import write_atomic

from .unet import ModelConfig, UNetModel

CONFIG_KEY = "pathwatch.model_config"


@dataclass
class LoadedModel:
    model: UNetModel
    config: ModelConfig
    weights_sha256: str
    path: Path


file_sha256 = sha256_of  # one definition of a weights file's identity, shared with bundles


def save_checkpoint(model: UNetModel, path: str | Path, extra_meta: dict | None = None) -> str:
    """Write weights + config into one safetensors file; returns its sha256."""
    from safetensors.torch import save

    meta = {CONFIG_KEY: json.dumps(model.config.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extra_meta or {}).items()})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # atomic: an interrupted save never leaves a half-written checkpoint
    write_atomic(path, save(state, metadata=meta))
    return file_sha256(path)


def read_config_file(path: str | Path) -> ModelConfig:
    import yaml

    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of improved-diffusion flags")
    return ModelConfig.from_dict(data)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its EMA weights (falling back to the raw ones)."""
    p = Path(path)
    if p.is_dir():
        for name in ("ema.safetensors", "model.safetensors"):
            if (p / name).exists():
                return p / name
        raise ValueError(f"{p}: no ema.safetensors or model.safetensors in this directory")
    if not p.exists():
        raise ValueError(f"checkpoint {p} does not exist")
    return p


def load_checkpoint(path: str | Path, config: str | Path | ModelConfig | None = None,
                    device: str = "cpu") -> LoadedModel:
    p = resolve_checkpoint(path)
    if p.suffix == ".safetensors":
        state, cfg = _read_safetensors(p)
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        cfg = None
    if config is not None:
        cfg = config if isinstance(config, ModelConfig) else read_config_file(config)
    if cfg is None:
        raise ValueError(f"{p}: no model config inside; pass --config with the "
                         "checkpoint's flags (image_size, num_channels, ...)")
    model = UNetModel(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{p}: weights do not fit the config: "
                         f"{str(e).splitlines()[1].strip()}") from None
    if missing or unexpected:
        raise ValueError(f"{p}: weights do not fit the config ({len(missing)} missing, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    return LoadedModel(model.to(device).eval(), cfg, file_sha256(p), p)


def _read_safetensors(p: Path) -> tuple[dict, ModelConfig | None]:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    cfg = ModelConfig.from_dict(json.loads(meta[CONFIG_KEY])) if CONFIG_KEY in meta else None
    return state, cfg

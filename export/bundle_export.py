"""`pathwatch export`: checkpoint + feature variant + reduced schedule -> a bundle directory.

The whole K-step path and the feature statistic go into one ONNX graph that takes uint8
(N, H, W, 3) RGB images: the daemon hands over its tiles as they are and the scaling to
[-1, 1] happens inside the graph. Sums are accumulated in float32 so the same graph builds
under TensorRT (which has no float64). Before the bundle is moved into place, ONNX Runtime
must reproduce the torch module on real images (the parity gate); a bundle that fails is left
at `<out>.failed` with its report, never at `<out>`.

`export_bundle(..., progress=...)` reports its stages (`STAGES`) and counts the parity images
as they run, for the command's progress display; without it nothing is shown.
"""
from __future__ import annotations

import io
import json
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from pathwatch.edge.bundle import (CHEAP, CONTRACT_KEY, FORMAT, FORMAT_VERSION, GRAPH, PARITY, WEIGHTS, Bundle,
                                   canonical, contract_of, default_density, sha256_of)
from pathwatch.edge.clock import iso_now
from pathwatch.edge.datasets import PIXEL_SCALE, load_images
from pathwatch.edge.files import write_json_atomic
from pathwatch.edge.parity import ParityReport, compare

from .checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from .features import FeatureSpec
from .pipeline import DiffPathPipeline
from .schedule import ReducedSchedule

DEFAULT_PARITY_DATA = ("photos:test", "digits")
PARITY_KEEP = 96  # images (with torch outputs) stored in the bundle for `bundle verify`
PARITY_CHUNK = 32  # images per call in the parity gate (a progress step)
# The export's stages in order, as `ExportProgress.stage` is told them.
STAGES = ("load checkpoint", "trace to ONNX", "check graph", "parity images", "parity gate",
          "write bundle")

Advance = Callable[..., None]  # advance(n, info=None): n more done, optionally a new note


class ExportProgress(Protocol):
    def stage(self, name: str | None) -> None:
        """The next of STAGES begins (None: all done)."""

    def count(self, name: str, total: int) -> Advance:
        """A counted step (the parity images): returns advance(n, info=None)."""


class NoProgress:
    def stage(self, name: str | None) -> None:
        pass

    def count(self, name: str, total: int) -> Advance:
        return lambda n, info=None: None


class ParityFailure(Exception):
    """The exported graph does not reproduce torch; carries the report."""

    def __init__(self, report: ParityReport, where: Path):
        super().__init__(f"parity gate failed, bundle left at {where}: {report.summary()}")
        self.report, self.where = report, where


@dataclass
class ExportResult:
    bundle: Bundle
    parity: ParityReport
    seconds: dict


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_pipeline(loaded: LoadedModel, sched: ReducedSchedule, spec: FeatureSpec) -> DiffPathPipeline:
    return DiffPathPipeline(loaded.model.float().eval(), sched, spec, uint8_input=True,
                            acc_dtype=torch.float32)


def export_onnx(pipeline: DiffPathPipeline, path: Path, opset: int, contract: dict,
                progress: ExportProgress | None = None) -> None:
    """Trace to ONNX (TorchScript exporter: no extra dependency, stable for this graph), embed
    the contract in the model metadata, run the checker."""
    import onnx

    progress = progress or NoProgress()
    progress.stage("trace to ONNX")

    size = pipeline.model.config.image_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    pipeline(example)  # draws any fixed noise outside the trace, where it is a constant
    with warnings.catch_warnings():
        # Tracing warns about Python constants (schedule tables, SSIM border indices); they
        # are constants of the bundle by design: H, W and the timesteps are fixed per export.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own notices
        torch.onnx.export(pipeline, (example,), buf, input_names=["images"],
                          output_names=["features", "heatmap"], opset_version=opset,
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"},
                                        "heatmap": {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
    progress.stage("check graph")
    model = onnx.load_from_string(buf.getvalue())
    model.producer_name, model.doc_string = "pathwatch", "DiffPath features over a reduced DDIM path"
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, canonical(contract)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def parity_images(specs: list[str] | tuple[str, ...], size: int, n: int, seed: int = 0) -> np.ndarray:
    per = max(1, n // len(specs))
    sets = [load_images(s, size, per, seed).images for s in specs]
    return np.concatenate(sets)[:n]


def torch_outputs(pipeline: DiffPathPipeline, images: np.ndarray, batch: int = PARITY_CHUNK,
                  advance: Advance | None = None):
    feats, maps = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            f, h = pipeline(torch.from_numpy(images[start:start + batch]))
            feats.append(f.numpy())
            maps.append(h.numpy())
            if advance:
                advance(len(f))
    return np.concatenate(feats).astype(np.float32), np.concatenate(maps).astype(np.float32)


def run_parity(bundle: Bundle, images: np.ndarray, ref_f: np.ndarray, ref_h: np.ndarray,
               threads: int | None = None, advance: Advance | None = None,
               tolerance: str = "fp32") -> ParityReport:
    from pathwatch.edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(bundle, max_batch=64, threads=threads,
                                 providers=["CPUExecutionProvider"])
    feats, maps = [], []
    for start in range(0, len(images), PARITY_CHUNK):
        f, h = backend(images[start:start + PARITY_CHUNK])
        feats.append(f)
        maps.append(h)
        if advance:
            advance(len(f))
    feats, maps = np.concatenate(feats), np.concatenate(maps)
    return compare("onnxruntime-cpu", bundle.feature_names, ref_f, ref_h, feats, maps, tolerance)


def make_manifest(loaded: LoadedModel, source_sha: str, name: str, sched: ReducedSchedule,
                  spec: FeatureSpec, opset: int, max_batch: int) -> dict:
    cfg = loaded.config
    label = spec.label
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": iso_now("seconds"),
        "model": {"name": name, "config": cfg.to_dict(), "weights_sha256": loaded.weights_sha256,
                  "source_sha256": source_sha, "parameters": sum(p.numel() for p in loaded.model.parameters())},
        "weights_file": WEIGHTS,
        "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "height": cfg.image_size,
                  "width": cfg.image_size, "channels": 3, "color_order": "RGB",
                  "value_range": [0, 255], "normalisation": f"x / {PIXEL_SCALE} - 1 (inside the graph)",
                  "grayscale": "repeat to 3 channels", "resize": "area"},
        "schedule": {**sched.to_dict(), "k": sched.k, "clip_denoised": cfg.clip_denoised,
                     "rescale_timesteps": cfg.rescale_timesteps},
        "features": {"spec": spec.to_dict(), "label": label, "names": list(spec.names)},
        "defaults": {"density": default_density(label), "max_batch": max_batch},
        "graph": {"file": GRAPH, "sha256": None, "opset": opset,
                  "exporter": "torch.onnx.export (TorchScript)", "accumulation": "float32",
                  "outputs": {"features": "float32 (N, D)", "heatmap": "float32 (N, H, W)"}},
        "versions": {"pathwatch": version_of("pathwatch"), "torch": torch.__version__,
                     "onnx": version_of("onnx"), "onnxruntime": version_of("onnxruntime"),
                     "python": platform.python_version()},
        "parity": {}, "engines": [],
    }


def export_bundle(checkpoint: str | Path, out: str | Path, spec: FeatureSpec,
                  sched: ReducedSchedule | None = None, k: int = 3, config=None,
                  parity_data=DEFAULT_PARITY_DATA, parity_n: int = 128, opset: int = 17,
                  max_batch: int = 64, threads: int | None = None, log=print,
                  progress: ExportProgress | None = None, cheap_head: bool = True,
                  model_name: str | None = None, tolerance: str = "fp32") -> ExportResult:
    """`cheap_head`: with K > 1, also export the one-step head (the schedule's first timestep)
    into `cheap/`, for dynamic steps (docs/performance.md). `tolerance`: the parity gate's
    (edge.parity.TOLERANCES)."""
    out = Path(out)
    progress = progress or NoProgress()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    progress.stage("load checkpoint")
    loaded = load_checkpoint(checkpoint, config)
    cfg = loaded.config
    sched = sched or ReducedSchedule.ddim(cfg.noise_schedule, cfg.diffusion_steps, k)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    source_sha = loaded.weights_sha256
    if loaded.path.suffix == ".safetensors":
        shutil.copyfile(loaded.path, stage / WEIGHTS)
    else:  # a foreign .pt becomes safetensors with its config inside
        save_checkpoint(loaded.model, stage / WEIGHTS)
    loaded.weights_sha256 = sha256_of(stage / WEIGHTS)
    name = model_name or (loaded.path.parent.name if loaded.path.stem in ("ema", "model")
                          else loaded.path.stem)
    manifest = make_manifest(loaded, source_sha, name, sched, spec, opset, max_batch)

    pipeline = build_pipeline(loaded, sched, spec)
    export_onnx(pipeline, stage / GRAPH, opset, contract_of(manifest), progress)
    manifest["graph"]["sha256"] = sha256_of(stage / GRAPH)
    manifest["graph"]["bytes"] = (stage / GRAPH).stat().st_size
    seconds["export"] = time.perf_counter() - t0
    log(f"exported {GRAPH} ({manifest['graph']['bytes'] / 1e6:.1f} MB) in {seconds['export']:.1f} s")

    t1 = time.perf_counter()
    progress.stage("parity images")
    images = parity_images(list(parity_data), cfg.image_size, parity_n)
    progress.stage("parity gate")
    advance = progress.count("parity", 2 * len(images))  # torch, then ONNX Runtime
    advance(0, "torch")
    ref_f, ref_h = torch_outputs(pipeline, images, advance=advance)
    write_json_atomic(stage / "manifest.json", manifest)
    bundle = Bundle.load(stage)
    advance(0, "onnxruntime")
    report = run_parity(bundle, images, ref_f, ref_h, threads, advance, tolerance)
    advance(0, "passed" if report.passed else "FAILED")
    seconds["parity"] = time.perf_counter() - t1
    progress.stage("write bundle")
    keep = min(PARITY_KEEP, len(images))
    np.savez_compressed(stage / PARITY, images=images[:keep], features=ref_f[:keep],
                        heatmap=ref_h[:keep])
    manifest["parity"] = {"data": list(parity_data), "onnxruntime_cpu": report.to_dict()}
    manifest["export_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    write_json_atomic(stage / "manifest.json", manifest)
    log(report.summary())
    if not report.passed:
        failed = out.with_name(out.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        stage.rename(failed)
        raise ParityFailure(report, failed)
    if cheap_head and len(sched.timesteps) > 1:
        _export_cheap_head(stage, loaded, sched, spec, parity_data, parity_n, opset, max_batch,
                           threads, log, name)
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    progress.stage(None)
    return ExportResult(Bundle.load(out), report, seconds)


def _export_cheap_head(stage: Path, loaded: LoadedModel, sched: ReducedSchedule, spec, parity_data,
                       parity_n: int, opset: int, max_batch: int, threads, log, name: str) -> None:
    """The one-step head beside the bundle (`cheap/`, a bundle of its own, same weights); a
    head that misses its parity gate is left out with the reason (dynamic steps stay off).
    It only picks the tiles the full head sees, so its gate is on scores ("cheap")."""
    cfg = loaded.config
    one = ReducedSchedule(cfg.noise_schedule, cfg.diffusion_steps, [int(sched.timesteps[0])])
    try:
        # the model as loaded (its config), not whatever the copied weights file says
        export_bundle(stage / WEIGHTS, stage / CHEAP, spec, one, config=cfg,
                      parity_data=parity_data, parity_n=parity_n, opset=opset,
                      max_batch=max_batch, threads=threads, log=lambda m: None,
                      cheap_head=False, model_name=name, tolerance="cheap")
        log(f"cheap head for dynamic steps (timestep {one.timesteps[0]}) in {CHEAP}/")
    except ParityFailure as e:
        shutil.rmtree(e.where, ignore_errors=True)
        log(f"no cheap head (dynamic steps off for this bundle): {e.report.summary()}")
    except Exception as e:  # the full bundle stands without it
        for leftover in (CHEAP + ".partial", CHEAP + ".failed", CHEAP):
            shutil.rmtree(stage / leftover, ignore_errors=True)
        log(f"no cheap head (dynamic steps off for this bundle): {e}")


def parity_json(report: ParityReport) -> str:
    return json.dumps(report.to_dict(), indent=1)

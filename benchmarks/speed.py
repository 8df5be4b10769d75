"""Speed of the frame path: every backend and precision this machine can run, against a
reference loop measured in the same run, and what each stage of a frame costs.

    python benchmarks/speed.py                          # quick: K=3, batch 12/48/64, a few minutes
    python benchmarks/speed.py --device cuda            # on a GPU (benchmarks/gpu_check.sh runs it)

docs/performance.md comes from (about 20 minutes on a busy 2-core CPU):

    python benchmarks/speed.py --k 1 --k 3 --k 5 --k 10 --batch 12 --batch 64 --grid 4x3 --grid 8x6 \
        --threads default --threads 1 --sweep-threads 1 --sweep-backends onnxruntime \
        --rounds 5 --repeats 2 --live auto --live-threads default --live-threads 1 --json speed.json

What it measures, all in one process and one run:

- Backends: tiles/s and ms per call of the bundle's pipeline graph for each K (--k), batch
  (--batch, plus one frame's tiles of each --grid) and backend, as ratios against the
  reference loop: eager PyTorch calling the UNet once per DDIM step, the path statistics
  computed in numpy afterwards (DiffPath's way). Before any timing, the reference loop's
  features must reproduce the bundle's recorded export outputs (fp32 parity tolerances) and
  every backend is checked against the reference loop, so the comparison is like for like.
- FLOPs per tile (convolutions and matrix products, torch's FlopCounterMode: the UNet per
  evaluation, times K, plus the SSIM window products) and the share of a float32 matrix
  multiply rate measured in the same rounds (torch and numpy).
- The frame path per stage on real footage (vtest.avi, resized to 640x480): decode (a
  640x480 JPEG, and a frame of the original MPEG-4 video), tiling, the backend call for one
  frame, scoring (a calibration fitted on --calibration-frames frames of the same footage),
  encoding (snapshot JPEG, heatmap PNG, overlay JPEG), publishing (a real ZeroMQ PUB with a
  subscriber; journal + publish for an alert).
- Cameras sustained at 5 fps: computed from the per-frame cost (all stages in series, the
  backend alone per frame or batched with other cameras' tiles), and measured (--live) by
  running the daemon on N copies of a 5 fps 640x480 MJPEG recording of the same footage,
  pre-calibrated, and reading the processed fps from its heartbeats.

Thread settings (--threads, each library's default or a number) are configurations of their
own: on a shared CPU the thread count changes the figures more than anything else. At K other
than --stage-k only --sweep-threads and --sweep-backends run, to keep the run short.
Exported graphs for K other than the shipped default's, and the calibrations, are cached
(--cache-dir, default ~/.cache/pathwatch-bench).

Every timed configuration runs once per round, in an order that rotates each round; figures
are medians over rounds with [min-max] ranges, ratios are medians of the per-round ratios.
The 1-minute load average is sampled throughout and printed with the results.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
FRAME_W, FRAME_H = 640, 480
CAMERA_FPS = 5.0
EXPORT_FILES = ("pipeline.py", "features.py", "paths.py", "unet.py", "ssim.py", "schedule.py")


# ---------------------------------------------------------------------------- small helpers
def say(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def span(xs) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (float("nan"), float("nan"))


def fmt(x: float, digits: int = 1) -> str:
    if x is None or x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_mr(xs, digits: int = 1, scale: float = 1.0) -> str:
    """median [min-max] of a list."""
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return "-"
    lo, hi = span(xs)
    return f"{fmt(med(xs), digits)} [{fmt(lo, digits)}-{fmt(hi, digits)}]"


class LoadMonitor:
    """Samples the 1-minute load average every few seconds, tagged with the current section."""

    def __init__(self, every_s: float = 2.0):
        self.samples: list[tuple[float, str, float]] = []
        self.section = "setup"
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._every)

    def sample(self) -> None:
        self.samples.append((time.time(), self.section, os.getloadavg()[0]))

    def start(self) -> "LoadMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.sample()

    def summary(self, section: str | None = None) -> dict:
        xs = [v for _, s, v in self.samples if section is None or s == section]
        if not xs:
            return {}
        return {"min": round(min(xs), 2), "median": round(med(xs), 2), "max": round(max(xs), 2),
                "samples": len(xs)}


def describe_load(d: dict) -> str:
    return f"{d['median']:.2f} median, {d['min']:.2f}-{d['max']:.2f}" if d else "-"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


class Printer:
    """Tables with rich when it is installed, plain aligned text otherwise."""

    def __init__(self):
        try:
            from rich.console import Console
            self.console = Console(width=200)
        except ImportError:
            self.console = None

    def text(self, s: str = "") -> None:
        if self.console is not None:
            self.console.print(s, markup=False, highlight=False, soft_wrap=True)
        else:
            print(s)

    def table(self, title: str, headers: list[str], rows: list[list[str]],
              note: str | None = None) -> None:
        if self.console is not None:
            from rich.markup import escape
            from rich.table import Table
            t = Table(title=escape(title), title_justify="left", show_lines=False)
            for i, h in enumerate(headers):
                t.add_column(escape(h), justify="left" if i == 0 else "right", overflow="fold")
            for r in rows:
                t.add_row(*[escape(str(c)) for c in r])
            self.console.print(t)
        else:
            print(f"\n{title}")
            widths = [max(len(str(x)) for x in [h, *[r[i] for r in rows]]) for i, h in enumerate(headers)]
            print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
            for r in rows:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if note:
            self.text(note)
        self.text()


# ---------------------------------------------------------------------------- bundles per K
def code_hash() -> str:
    import torch

    import pathwatch.export as exp
    h = hashlib.sha256(torch.__version__.encode())
    root = Path(exp.__file__).parent
    for name in EXPORT_FILES:
        h.update((root / name).read_bytes())
    return h.hexdigest()[:12]


def bundle_for_k(k: int, cache: Path, log=say):
    """The default model's bundle at K steps (default placement): the shipped export where K
    is the default's, else exported once into the cache with the project's exporter."""
    from pathwatch.edge.bundle import Bundle
    from pathwatch.edge.models import BundleError, default_bundle, default_weights
    from pathwatch.export.defaults import DEFAULTS
    from pathwatch.export.features import FeatureSpec
    from pathwatch.export.schedule import ReducedSchedule

    weights = default_weights()
    spec = FeatureSpec(**DEFAULTS.spec())
    from pathwatch.export.checkpoint import load_checkpoint
    cfg = load_checkpoint(weights).config
    sched = ReducedSchedule.placed(cfg.noise_schedule, cfg.diffusion_steps, k, DEFAULTS.placement)
    if tuple(sched.timesteps) == tuple(DEFAULTS.timesteps):
        try:
            return default_bundle(cache, lambda m: log(m)), sched, spec, "shipped default bundle"
        except BundleError as e:
            log(f"shipped bundle unusable ({e}); exporting K={k}")
    ts = "-".join(str(t) for t in sched.timesteps)
    name = f"k{k}-t{ts}-{spec.variant}-{code_hash()}"
    out = cache / "speed-bundles" / name
    if (out / "manifest.json").is_file():
        with contextlib.suppress(Exception):
            origin = f"exported (cached in {out})"
            if (out / "speed-note.txt").is_file():
                origin += "; " + (out / "speed-note.txt").read_text()
            return Bundle.load(out), sched, spec, origin
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise RuntimeError(f"K={k} needs an export and the `onnx` package is not installed") from None
    from pathwatch.export.bundle_export import ParityFailure, export_bundle
    log(f"exporting the K={k} graph (timesteps {list(sched.timesteps)}) into {out}")
    t0 = time.perf_counter()
    note = out / "speed-note.txt"
    try:
        export_bundle(weights, out, spec, sched, parity_n=64, log=lambda m: None)
    except ParityFailure as e:
        # Timing needs the graph, not the gate's verdict: a graph whose features pass and only
        # the heatmap misses the gate's relative tolerance is used, and the run says so.
        if not all(f.startswith("heatmap") for f in e.report.failures):
            raise
        shutil.rmtree(out, ignore_errors=True)
        Path(e.where).rename(out)
        note.write_text(f"the export's parity gate refused this graph for its heatmap only: "
                        f"{e.report.summary()}")
    log(f"  exported K={k} in {time.perf_counter() - t0:.0f} s")
    origin = f"exported in this run ({out})"
    if note.is_file():
        origin += "; " + note.read_text()
        log(f"  K={k}: {note.read_text()}")
    return Bundle.load(out), sched, spec, origin


# ---------------------------------------------------------------------------- the reference loop
def gaussian_taps(sigma: float, truncate: float = 3.5) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return w / w.sum()


def blur_np(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian over the last two axes, symmetric borders (scipy's 'reflect')."""
    r = len(taps) // 2
    h, w = x.shape[-2:]
    lead = [(0, 0)] * (x.ndim - 2)
    p = np.pad(x, lead + [(r, r), (0, 0)], mode="symmetric")
    y = sum(taps[j] * p[..., j:j + h, :] for j in range(len(taps)))
    p = np.pad(y, lead + [(0, 0), (r, r)], mode="symmetric")
    return sum(taps[j] * p[..., :, j:j + w] for j in range(len(taps)))


def ssim_np(a: np.ndarray, b: np.ndarray, sigma: float, data_range: float = 2.0) -> np.ndarray:
    """skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False,
    full=True) map, per channel, in float64."""
    taps = gaussian_taps(sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur_np(a, taps), blur_np(b, taps)
    var_a = blur_np(a * a, taps) - mu_a * mu_a
    var_b = blur_np(b * b, taps) - mu_b * mu_b
    cov = blur_np(a * b, taps) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def power_sums_np(v: np.ndarray) -> np.ndarray:
    k, b = v.shape[:2]
    d = (v[1:] - v[:-1]) * k
    cols = []
    for x in (v, d):
        x = np.moveaxis(x, 1, 0).reshape(b, -1)
        cols += [x.sum(1), (x * x).sum(1), (x * x * x).sum(1)]
    return np.stack(cols, axis=1)


class ReferenceLoop:
    """Eager PyTorch, one UNet call per DDIM step for the whole batch (improved-diffusion's
    ddim_reverse_sample arithmetic, float32), the per-step eps and x0 estimates copied to the
    host, then DiffPath's statistics (and the SSIM terms of `6d+ssim`) in numpy float64."""

    def __init__(self, model, config, sched, spec, device: str):
        import torch

        if spec.variant != "6d+ssim" or spec.trajectory != "inversion":
            raise ValueError(f"the reference loop implements 6d+ssim on the inversion path, not {spec.label}")
        self.torch, self.model, self.device = torch, model, device
        self.c, self.clip = config.in_channels, config.clip_denoised
        abar = sched.abar
        f32 = lambda a: [float(np.float32(v)) for v in a]  # noqa: E731 (float64 tables cast to float32)
        self.sra, self.srm1 = f32(np.sqrt(1.0 / abar)), f32(np.sqrt(1.0 / abar - 1.0))
        self.sa_next, self.s1m_next = f32(np.sqrt(sched.abar_next)), f32(np.sqrt(1.0 - sched.abar_next))
        self.t_model = [float(t) for t in sched.model_timesteps(config.rescale_timesteps)]
        self.k, self.lam, self.sigma = sched.k, spec.lam, spec.ssim_sigma

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        x0_np = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(127.5) - np.float32(1.0)
        b = len(images)
        eps_steps, x0_steps = [], []
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(x0_np)).to(self.device)
            for i in range(self.k):
                t = torch.full((b,), self.t_model[i], dtype=torch.float32, device=self.device)
                out = self.model(x, t)[:, :self.c]
                x0_hat = self.sra[i] * x - self.srm1[i] * out
                if self.clip:
                    x0_hat = x0_hat.clamp(-1, 1)
                eps = (self.sra[i] * x - x0_hat) / self.srm1[i]
                eps_steps.append(eps.cpu().numpy())
                x0_steps.append(x0_hat.cpu().numpy())
                x = x0_hat * self.sa_next[i] + self.s1m_next[i] * eps
        eps = np.stack(eps_steps).astype(np.float64)          # (K, B, C, H, W)
        x0_hat = np.stack(x0_steps).astype(np.float64)
        ref = np.broadcast_to(x0_np.astype(np.float64), x0_hat.shape)
        w = 1.0 - ssim_np(ref, x0_hat, self.sigma).mean(axis=2)  # (K, B, H, W)
        s = w.reshape(self.k, b, -1).sum(2)
        ds = (s[1:] - s[:-1]) * self.k
        feats = np.concatenate([power_sums_np(eps),
                                np.stack([s.sum(0), (s * s).sum(0), ds.sum(0)], axis=1)], axis=1)
        return feats.astype(np.float32), w.sum(0).astype(np.float32)


# ---------------------------------------------------------------------------- runners
@dataclass
class Runner:
    key: str          # backend label as printed
    device: str
    precision: str
    k: int
    fn: Callable[[np.ndarray], tuple]
    threads: int | None = None  # CPU threads; None: the library's default
    reference: bool = False
    close: Callable[[], None] = lambda: None
    parity: dict | None = None
    build: dict = field(default_factory=dict)


def torch_sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.synchronize
    return lambda: None


TORCH_DEFAULT_THREADS: int | None = None  # torch's own choice, read before anything sets it


def with_torch_threads(fn, threads: int | None):
    """torch's thread count is global: set it before every call of a torch-based runner."""
    import torch
    n = threads or TORCH_DEFAULT_THREADS

    def call(images):
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return fn(images)
    return call


def make_runners(k: int, threads: int | None, bundle, sched, spec, a, skipped: list[str],
                 model_cache: dict, sweep: bool) -> list[Runner]:
    """The reference loop and every backend that runs here, at K steps and `threads` CPU
    threads (None: each library's default). `sweep`: this (K, threads) is outside the stage
    configuration, so only the --sweep-backends run."""
    from pathwatch.edge.backends import BackendError
    from pathwatch.export.checkpoint import load_checkpoint

    dev = a.device
    want = set(a.backends.split(",")) if a.backends else None
    if sweep and a.sweep_backends:
        want = (want or {"onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "torch", "tensorrt"}) \
            & set(a.sweep_backends.split(","))
    max_batch = max(64, *a.batches)
    if dev not in model_cache:
        model_cache[dev] = load_checkpoint(bundle.weights_path, device=dev)
    loaded = model_cache[dev]
    model = loaded.model.float().eval()
    ref = ReferenceLoop(model, loaded.config, sched, spec, dev)
    runners = [Runner("reference (eager torch + numpy)", dev, "fp32", k, with_torch_threads(ref, threads),
                      threads=threads, reference=True)]

    def wanted(name: str) -> bool:
        return want is None or name in want

    def skip(name: str, why: str) -> None:
        line = f"{name}: skipped, {why}"
        if line not in skipped:
            skipped.append(line)

    try:
        import onnxruntime as ort
        providers = ort.get_available_providers()
    except ImportError:
        ort, providers = None, []
        skip("onnxruntime", "the onnxruntime package is not installed")
    if ort is not None:
        from pathwatch.edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    if ort is not None and wanted("onnxruntime"):
        b = OnnxRuntimeBackend(bundle, max_batch, threads, providers=["CPUExecutionProvider"])
        runners.append(Runner("onnxruntime (CPU EP)", "cpu", "fp32", k, b, threads=threads, close=b.close))
    gpu_threads_ok = threads == (a.sweep_threads if sweep else a.threads)[0]  # GPU runners once
    if dev.startswith("cuda") and ort is not None and gpu_threads_ok:
        for ep, label, prec in (("CUDAExecutionProvider", "onnxruntime (CUDA EP)", "fp32"),
                                ("TensorrtExecutionProvider", "onnxruntime (TensorRT EP)", "fp16")):
            name = "onnxruntime-cuda" if ep.startswith("CUDA") else "onnxruntime-trt"
            if not wanted(name):
                continue
            if ep not in providers:
                skip(label, f"this onnxruntime build ({ort.__version__}) has no {ep} "
                            f"(providers: {', '.join(providers)}); it needs the onnxruntime-gpu wheel, "
                            "which cannot be installed without network access")
                continue
            try:
                b = OnnxRuntimeBackend(bundle, max_batch, threads, providers=[ep, "CPUExecutionProvider"],
                                       cache_dir=Path(a.cache_dir) / "ort-cache", fp16=prec == "fp16")
                if b.providers[0] != ep:
                    skip(label, f"the session fell back to {b.providers[0]}")
                    continue
                runners.append(Runner(label, "cuda", prec, k, b, threads=threads, close=b.close))
            except BackendError as e:
                skip(label, str(e))
    if wanted("torch") and (gpu_threads_ok or not dev.startswith("cuda")):
        from pathwatch.edge.backends.torch_backend import TorchBackend
        precisions = ("fp16", "fp32") if dev.startswith("cuda") else ("fp32",)
        for prec in precisions:
            b = TorchBackend(bundle, max_batch, device=dev, fp16=prec == "fp16")
            what = "torch (pipeline module" + (", CUDA graphs)" if b.use_graphs else ")")
            runners.append(Runner(what, dev, prec + (" autocast" if b.fp16 else ""), k,
                                  with_torch_threads(b, threads), threads=threads, close=b.close))
    if dev.startswith("cuda") and wanted("tensorrt") and gpu_threads_ok:
        if a.trt_k and k not in a.trt_k:
            skip(f"tensorrt K={k}", f"engines are built only for K in {a.trt_k} (--trt-k)")
        else:
            runners += tensorrt_runner(k, bundle, max_batch, skip)
    return runners


def tensorrt_runner(k: int, bundle, max_batch: int, skip) -> list[Runner]:
    import importlib.util
    if importlib.util.find_spec("tensorrt") is None:
        skip("tensorrt", "the `tensorrt` Python package is not installed (pip install tensorrt needs "
                         "network access, which this machine does not have)")
        return []
    if importlib.util.find_spec("cuda") is None:
        skip("tensorrt", "TensorRT is installed but cuda-python (device memory for the runtime) is not")
        return []
    from pathwatch.edge.backends import BackendError
    from pathwatch.edge.backends.tensorrt_backend import TensorRTBackend, build_checked_engine
    try:
        t0 = time.perf_counter()
        entry, report = build_checked_engine(bundle, "fp16", max_batch, log=say)
        build = {"engine": entry["file"], "build_s": round(time.perf_counter() - t0, 1),
                 "parity_vs_export": report.summary(), "passed": report.passed}
        say(f"TensorRT fp16 K={k}: {report.summary()}")
        if not report.passed:
            skip(f"tensorrt K={k}", f"the fp16 engine failed the parity check ({report.summary()})")
            return []
        b = TensorRTBackend(bundle, max_batch, "fp16", log=say)
        return [Runner("tensorrt (native runtime)", "cuda", "fp16", k, b, close=b.close, build=build)]
    except (BackendError, OSError, RuntimeError) as e:
        skip(f"tensorrt K={k}", f"{type(e).__name__}: {e}")
        return []


# ---------------------------------------------------------------------------- FLOPs and matmul
def count_flops(model, pipeline_cls, sched, spec, device: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config.image_size
    x = torch.zeros(1, model.config.in_channels, size, size, device=device)
    t = torch.zeros(1, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, t)
    unet = fc.get_total_flops()
    pipe = pipeline_cls(model, sched, spec, uint8_input=True, acc_dtype=torch.float32).eval()
    img = torch.zeros(1, size, size, 3, dtype=torch.uint8, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        pipe(img)
    total = fc.get_total_flops()
    return {"unet_per_eval": int(unet), "unet_times_k": int(unet * sched.k), "pipeline": int(total),
            "extra_passes": int(total - unet * sched.k)}


def matmul_key(device: str, precision: str, threads: int | None) -> str:
    if device.startswith("cuda"):
        return f"cuda torch {'fp16' if precision.startswith('fp16') else 'fp32'}"
    return f"cpu torch fp32, threads {tlabel(threads)}"


class MatmulRate:
    """n x n float32 products: torch on the CPU at every thread setting of the run (the same
    global setting the torch runners use), numpy (its BLAS's own threads), and on a GPU torch
    FP32 (TF32 off) and FP16."""

    def __init__(self, device: str, n: int, threads: list):
        import torch
        self.torch, self.device, self.n, self.threads = torch, device, n, threads
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        self.na, self.nb = self.a.numpy(), self.b.numpy()
        self.rates: dict[str, list[float]] = {matmul_key("cpu", "fp32", t): [] for t in threads}
        self.rates["cpu numpy fp32, BLAS threads"] = []
        if device.startswith("cuda"):
            self.ga, self.gb = self.a.to(device), self.b.to(device)
            self.ha, self.hb = self.ga.half(), self.gb.half()
            self.rates[matmul_key(device, "fp32", None)] = []
            self.rates[matmul_key(device, "fp16", None)] = []
        self.measure(reps=1, record=False)

    def _time(self, fn, reps: int, sync=lambda: None) -> float:
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return 2.0 * self.n ** 3 * reps / (time.perf_counter() - t0)

    def measure(self, reps: int = 3, record: bool = True) -> None:
        torch = self.torch
        r = {}
        for t in self.threads:
            torch.set_num_threads(t or TORCH_DEFAULT_THREADS)
            r[matmul_key("cpu", "fp32", t)] = self._time(lambda: torch.matmul(self.a, self.b), reps)
        r["cpu numpy fp32, BLAS threads"] = self._time(lambda: np.matmul(self.na, self.nb), reps)
        if self.device.startswith("cuda"):
            sync = torch.cuda.synchronize
            r[matmul_key(self.device, "fp32", None)] = self._time(lambda: torch.matmul(self.ga, self.gb), reps * 20, sync)
            r[matmul_key(self.device, "fp16", None)] = self._time(lambda: torch.matmul(self.ha, self.hb), reps * 20, sync)
        if record:
            for k, v in r.items():
                self.rates[k].append(v)


# ---------------------------------------------------------------------------- footage
def read_footage(n: int, stride: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n frames of vtest.avi (every `stride`-th: 10 fps -> 5 fps), original and 640x480."""
    import cv2
    cap = cv2.VideoCapture(VTEST)
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {VTEST} (Debian package opencv-doc)")
    orig, small = [], []
    i = 0
    while len(orig) < n:
        ok, f = cap.read()
        if not ok:
            cap.release()
            cap = cv2.VideoCapture(VTEST)
            continue
        if i % stride == 0:
            orig.append(f)
            small.append(cv2.resize(f, (FRAME_W, FRAME_H), interpolation=cv2.INTER_AREA))
        i += 1
    cap.release()
    return orig, small


def write_clip(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    import cv2
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (FRAME_W, FRAME_H))
    for f in frames:
        w.write(f)
    w.release()
    return path


# ---------------------------------------------------------------------------- frame path stages
class FramePath:
    """One grid's stages on real frames, with a calibration fitted on the first frames."""

    def __init__(self, grid_spec: tuple[int, int], bundle, backend, frames: list[np.ndarray],
                 calib_n: int, cache: Path, bus):
        import cv2

        from pathwatch.edge.calibration import Calibration, fit_calibration
        from pathwatch.edge.tiles import TileGrid
        self.cv2 = cv2
        cols, rows = grid_spec
        self.name = f"{cols}x{rows}"
        self.grid = TileGrid(FRAME_W, FRAME_H, bundle.image_size[0], cols, rows)
        self.backend, self.bus = backend, bus
        calib, self.test = frames[:calib_n], frames[calib_n:]
        density = bundle.default_density
        ident = bundle.identity()
        key = hashlib.sha256(json.dumps([ident["weights_sha256"], ident["graph_sha256"], self.name,
                                         calib_n, density, VTEST]).encode()).hexdigest()[:16]
        cached = cache / "speed-calibrations" / f"{self.name}-{key}.json"
        self.fit_s, self.cached = 0.0, cached.is_file()
        if self.cached:
            self.cal = Calibration.load(cached)
        else:
            t0 = time.perf_counter()
            feats = np.stack([backend(self.grid.cut(f))[0] for f in calib])
            self.cal = fit_calibration(f"bench-{self.name}", feats, self.grid, ident, bundle.label,
                                       density=density, fps=CAMERA_FPS)
            self.fit_s = time.perf_counter() - t0
            cached.parent.mkdir(parents=True, exist_ok=True)
            self.cal.save(cached)
        self.density = density
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in self.test]
        self.i = 0
        self.times: dict[str, list[float]] = {}

    def _next(self) -> tuple[np.ndarray, bytes]:
        self.i = (self.i + 1) % len(self.test)
        return self.test[self.i], self.jpegs[self.i]

    def measure(self, reps: int, video: "VideoDecode") -> None:
        from pathwatch.edge.alerts import AlertEvent
        from pathwatch.edge.publisher import encode_jpeg, encode_png
        from pathwatch.edge.tiles import heatmap_image, overlay_image
        cv2, grid, cal = self.cv2, self.grid, self.cal
        per: dict[str, list[float]] = {}

        def tick(name: str, t0: float) -> float:
            t1 = time.perf_counter()
            per.setdefault(name, []).append(t1 - t0)
            return t1

        for r in range(reps):
            frame, jpeg = self._next()
            t = time.perf_counter()
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            t = tick("decode: JPEG 640x480 (cv2.imdecode)", t)
            video.read()
            t = tick("decode: MPEG-4 768x576 video frame (vtest.avi)", t)
            tiles = grid.cut(img)
            t = tick("tiling (ROI, area resize, exposure, cut)", t)
            feats, maps = self.backend(tiles)
            t = tick("backend (one frame's tiles, one call)", t)
            scores = cal.tile_scores(feats)
            score, tile = cal.frame_score(scores)
            cal.p_normal(score)
            t = tick("scoring (tile densities, frame score, p_normal)", t)
            col, row = grid.position(tile)
            payload = {"score": round(score, 3), "threshold": round(cal.threshold, 3), "tile": [col, row],
                       "frame": self.i, "latency_ms": 0.0,
                       "tiles": [round(float(s), 2) if np.isfinite(s) else None for s in scores],
                       "grid": [grid.cols, grid.rows]}
            t = time.perf_counter()
            self.bus.score(f"bench-{self.name}", payload)
            t = tick("publishing: score message (ZeroMQ PUB)", t)
            if r % 2 == 0:  # the alert-only stages at half the rate: they are costlier
                snap = encode_jpeg(img)
                t = tick("encoding: snapshot JPEG", t)
                heat = encode_png(heatmap_image(grid, scores, maps, cal.threshold))
                t = tick("encoding: heatmap PNG", t)
                over = encode_jpeg(overlay_image(grid, img, scores, maps, cal.threshold))
                t = tick("encoding: overlay JPEG", t)
                now = time.time()
                event = AlertEvent("update", "bench", f"bench-{self.name}", now, score, cal.threshold,
                                   score, [col, row], [col, row], now, 1.0, 3, self.i)
                self.bus.alert(event, {"latency_ms": 0.0, "labels": []},
                               {"snapshot.jpg": snap, "heatmap.png": heat, "overlay.jpg": over})
                tick("publishing: alert with 3 attachments (journal + PUB)", t)
        for name, xs in per.items():
            self.times.setdefault(name, []).append(med(xs))


PER_FRAME = ("decode: JPEG 640x480 (cv2.imdecode)", "tiling (ROI, area resize, exposure, cut)",
             "backend (one frame's tiles, one call)", "scoring (tile densities, frame score, p_normal)",
             "publishing: score message (ZeroMQ PUB)")
PER_ALERT = ("encoding: snapshot JPEG", "encoding: heatmap PNG", "encoding: overlay JPEG",
             "publishing: alert with 3 attachments (journal + PUB)")


class VideoDecode:
    def __init__(self):
        import cv2
        self.cv2 = cv2
        self.cap = cv2.VideoCapture(VTEST)

    def read(self) -> None:
        ok, _ = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = self.cv2.VideoCapture(VTEST)
            self.cap.read()


class Bus:
    """A real AlertBus: journal in a temp dir, PUB on loopback, one subscriber draining it."""

    def __init__(self, tmp: Path):
        import zmq

        from pathwatch.edge.journal import Journal
        from pathwatch.edge.publisher import AlertBus, Publisher
        self.ctx = zmq.Context()
        self.pub = Publisher("tcp://127.0.0.1:*", context=self.ctx)
        self.journal = Journal(tmp / "journal.sqlite")
        self.bus = AlertBus(self.journal, self.pub)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.pub.endpoint)
        self.received = 0
        self._stop = threading.Event()
        self._zmq = zmq
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        time.sleep(0.3)  # let the subscription arrive

    def _drain(self) -> None:
        poller = self._zmq.Poller()
        poller.register(self.sub, self._zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(100):
                self.sub.recv_multipart()
                self.received += 1

    def score(self, camera: str, payload: dict) -> None:
        self.bus.score(camera, payload)

    def alert(self, event, extra, attachments) -> None:
        self.bus.alert(event, extra, attachments)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sub.close(0)
        self.bus.close()
        self.pub.close()
        self.journal.close()
        self.ctx.destroy(linger=0)


# ---------------------------------------------------------------------------- the live daemon
def live_run(n: int, seconds: float, warmup: float, clip: Path, bundle_dir: Path, calibration: Path,
             backend: str, precision: str, threads: int | None, tmp: Path, extra: str = "") -> dict:
    """`extra`: more top-level config sections (YAML), e.g. dynamic_steps or gating."""
    from pathwatch.edge.subscriber import AlertSubscriber
    run = tmp / f"live-{n}"
    shutil.rmtree(run, ignore_errors=True)
    (run / "state" / "calibration").mkdir(parents=True)
    cams = []
    for i in range(n):
        name = f"cam{i}"
        shutil.copyfile(calibration, run / "state" / "calibration" / f"{name}.json")
        cams.append(f"  - name: {name}\n    source: {clip}\n    fps: null\n    realtime: true\n"
                    f"    on_end: loop\n    tiles: [4, 3]\n")
    config = run / "live.yaml"
    config.write_text(
        f"state_dir: {run}/state\ncache_dir: {run}/cache\n"
        f"model:\n  bundle: {bundle_dir}\n  backend: {backend}\n  precision: {precision}\n"
        + (f"  threads: {threads}\n" if threads else "")
        + f"publisher:\n  bind: ipc://{run}/pub.sock\n  replay_bind: ipc://{run}/replay.sock\n"
        "metrics:\n  enabled: false\nlogging:\n  level: warning\n" + extra
        + "cameras:\n" + "".join(cams))
    sub = AlertSubscriber(f"ipc://{run}/pub.sock", f"ipc://{run}/replay.sock", topics=("alert.", "heartbeat"))
    errlog = open(run / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config", str(config)],
                            stdout=errlog, stderr=subprocess.STDOUT, env={**os.environ})
    beats: dict[str, list[dict]] = {f"cam{i}": [] for i in range(n)}
    alerts = 0
    start = time.monotonic()
    t_first = None  # when every camera was first seen scoring
    startup_limit_s = 90.0
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if t_first is None and now - start > startup_limit_s:
                break
            if t_first is not None and now - t_first >= warmup + seconds:
                break
            for m in sub.events(timeout_s=1.0):
                if m.topic.startswith("alert."):
                    alerts += 1
                elif m.topic == "heartbeat":
                    cams_hb = m.header.get("cameras", {})
                    if t_first is None and len(cams_hb) == n and \
                            all(c.get("lifecycle") == "scoring" for c in cams_hb.values()):
                        t_first = time.monotonic()
                    if t_first is not None and time.monotonic() - t_first >= warmup:
                        for name, c in cams_hb.items():
                            if name in beats:
                                beats[name].append(c)
                if t_first is not None and time.monotonic() - t_first >= warmup + seconds:
                    break
    finally:
        sub.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errlog.close()
    per_cam = {}
    for name, bs in beats.items():
        per_cam[name] = {"process_fps": round(med([b.get("process_fps") for b in bs]), 2),
                         "camera_fps": round(med([b.get("camera_fps") for b in bs]), 2),
                         "skipped_fps": round(med([b.get("skipped_fps") for b in bs]), 2),
                         "dropped_per_s": round((bs[-1]["dropped"] - bs[0]["dropped"]) / max(len(bs) - 1, 1), 2)
                         if len(bs) > 1 else None,
                         "latency_p50_ms": round(med([b.get("latency_p50_ms") for b in bs]), 1),
                         "latency_p99_ms": round(med([b.get("latency_p99_ms") for b in bs]), 1),
                         **{k: (round(med(v), 3) if v else None) for k, v in (
                             (k, [b[k] for b in bs if b.get(k) is not None])
                             for k in ("tiles_sent", "tiles_escalated"))},
                         "heartbeats": len(bs)}
    fps = [c["process_fps"] for c in per_cam.values()]
    ok = bool(fps) and all(c["heartbeats"] > 0 for c in per_cam.values())
    tail = (run / "daemon.log").read_text()[-2000:] if not ok else ""
    return {"cameras": n, "per_camera": per_cam, "min_process_fps": min(fps) if ok else None,
            "total_process_fps": round(sum(fps), 2) if ok else None,
            "sustained": ok and min(fps) >= 0.95 * CAMERA_FPS, "alert_events": alerts,
            "exit_code": proc.returncode, "measured_s": seconds, "log_tail": tail}


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, action="append", help="DDIM steps (repeatable; default 3)")
    p.add_argument("--batch", type=int, action="append", help="tiles per call (repeatable; default 12 and 64)")
    p.add_argument("--grid", action="append", help="tile grids COLSxROWS (repeatable; default 4x3 and 8x6)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="timed calls per configuration and round")
    p.add_argument("--warm-every-round", action="store_true",
                   help="an untimed call before each configuration in every round, not only the first")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the reference loop and torch backends)")
    p.add_argument("--backends", help="comma list: onnxruntime,onnxruntime-cuda,onnxruntime-trt,torch,"
                                      "tensorrt (default: all that exist here); the reference always runs")
    p.add_argument("--threads", action="append",
                   help="CPU threads for torch and onnxruntime: a number or 'default' (each library's "
                        "own choice); repeatable, each a configuration of its own (default: default)")
    p.add_argument("--sweep-threads", action="append",
                   help="thread settings that also run at K other than --stage-k (default: all --threads)")
    p.add_argument("--sweep-backends", help="comma list of backends that also run at K other than --stage-k "
                                            "(default: all); the reference always runs")
    p.add_argument("--stage-threads", help="thread setting of the frame path and the live daemon "
                                           "(default: the first --threads)")
    p.add_argument("--trt-k", type=int, action="append", help="build TensorRT engines only for these K")
    p.add_argument("--stage-k", type=int, default=3, help="K of the frame-path breakdown (default 3)")
    p.add_argument("--stage-reps", type=int, default=8, help="frames per stage measurement and round")
    p.add_argument("--calibration-frames", type=int, default=40)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--live", default="auto", help="cameras for the live daemon check: 'auto' (the "
                                                  "computed figure and one more), a comma list, or 'none'")
    p.add_argument("--live-seconds", type=float, default=30.0)
    p.add_argument("--live-max", type=int, default=32, help="most cameras 'auto' starts")
    p.add_argument("--live-threads", action="append", help="model.threads of the live daemon (repeatable; "
                                                           "default: the frame path's setting)")
    p.add_argument("--live-warmup", type=float, default=8.0)
    p.add_argument("--cache-dir", default=os.environ.get("PATHWATCH_BENCH_CACHE",
                                                          str(Path.home() / ".cache" / "pathwatch-bench")))
    p.add_argument("--json", help="write every figure here")
    a = p.parse_args(argv)
    a.ks = sorted(set(a.k or [3]))
    parse_t = lambda v: None if v in (None, "default", "0") else int(v)  # noqa: E731
    a.threads = list(dict.fromkeys(parse_t(t) for t in (a.threads or ["default"])))
    a.sweep_threads = [parse_t(t) for t in a.sweep_threads] if a.sweep_threads else a.threads
    a.stage_threads = parse_t(a.stage_threads) if a.stage_threads else a.threads[0]
    if a.stage_threads not in a.threads:
        a.threads.append(a.stage_threads)
    a.live_threads = [parse_t(t) for t in a.live_threads] if a.live_threads else [a.stage_threads]
    a.grids = [tuple(int(v) for v in g.lower().split("x")) for g in (a.grid or ["4x3", "8x6"])]
    a.batches = sorted(set((a.batch or [12, 64]) + [c * r for c, r in a.grids]))
    if a.stage_k not in a.ks:
        a.ks = sorted(set(a.ks + [a.stage_k]))
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    monitor = LoadMonitor().start()
    out = Printer()
    cmdline = "python " + shlex.join([os.path.relpath(sys.argv[0]) if Path(sys.argv[0]).exists()
                                      else sys.argv[0], *sys.argv[1:]])
    import torch
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {a.device}: torch {torch.__version__} sees no CUDA device "
              f"(torch.version.cuda = {torch.version.cuda}); nothing to measure on a GPU here",
              file=sys.stderr)
        return 3
    if a.device.startswith("cuda"):
        # The reference is FP32: no TF32 in cuDNN convolutions or matrix products.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    global TORCH_DEFAULT_THREADS
    TORCH_DEFAULT_THREADS = torch.get_num_threads()
    cache = Path(a.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pathwatch-speed-"))
    load_start = os.getloadavg()
    try:
        import onnxruntime as ort
        ort_desc = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
    except ImportError:
        ort_desc = "not installed"
    env = {"command": cmdline, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "load_average_at_start": [round(x, 2) for x in load_start],
           "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "onnxruntime": ort_desc,
           "device": a.device}
    if a.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    out.text(f"$ {cmdline}")
    out.text(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_start)}; "
             f"{env['cores']} cores, {env['cpu']}" + (f"; GPU {env['gpu']} (CUDA {env['cuda']})"
                                                      if "gpu" in env else ""))
    out.text(f"torch {env['torch']} ({env['torch_threads']} threads), onnxruntime {ort_desc}")
    out.text()

    from pathwatch.export.pipeline import DiffPathPipeline

    from pathwatch.edge.parity import compare

    # --- bundles, runners, parity -------------------------------------------------------
    skipped: list[str] = []
    runners: list[Runner] = []
    flops: dict[int, dict] = {}
    bundles: dict[int, object] = {}
    parity_rows = []
    model_cache: dict = {}
    for k in list(a.ks):
        try:
            bundle, sched, spec, origin = bundle_for_k(k, cache)
        except Exception as e:  # e.g. no `onnx` to export with: the other K still run
            if k == a.stage_k:
                raise
            skipped.append(f"K={k}: skipped, no graph ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            say(skipped[-1])
            a.ks.remove(k)
            continue
        bundles[k] = bundle
        threads_here = a.threads if k == a.stage_k else a.sweep_threads
        rs = []
        for t in threads_here:
            rs += make_runners(k, t, bundle, sched, spec, a, skipped, model_cache, sweep=k != a.stage_k)
        ref_images = bundle.parity_reference()
        if ref_images is None:
            raise SystemExit(f"{bundle.root} has no parity.npz; cannot check the reference loop")
        imgs = ref_images["images"]
        ref = rs[0]
        rf, rh = ref.fn(imgs)
        rep = compare("reference loop vs export", bundle.feature_names, ref_images["features"],
                      ref_images["heatmap"], rf, rh, "fp32")
        parity_rows.append({"k": k, "against": "the bundle's export outputs (torch, parity.npz)",
                            "config": ref.key, "report": rep.to_dict(), "summary": rep.summary(),
                            "bundle": origin})
        say(f"K={k} ({origin}): reference loop vs export: {rep.summary()}")
        if not features_pass(rep):
            print(f"FAILED: the reference loop does not reproduce the bundle at K={k}: {rep.summary()}",
                  file=sys.stderr)
            return 1
        checked: dict[tuple, dict] = {}
        for r in rs:
            if r.reference:
                continue
            prec = "fp16" if r.precision.startswith("fp16") else "fp32"
            if (r.key, r.precision) not in checked:  # numerics do not depend on the thread count
                f, h = r.fn(imgs)
                p = compare(r.key, bundle.feature_names, rf, rh, f, h, prec)
                checked[(r.key, r.precision)] = {"precision": prec, **p.to_dict()}
                parity_rows.append({"k": k, "against": "the reference loop",
                                    "config": f"{r.key} {r.precision}",
                                    "report": p.to_dict(), "summary": p.summary()})
                if not features_pass(p):
                    say(f"WARNING K={k} {r.key}: {p.summary()}")
            r.parity = checked[(r.key, r.precision)]
            if r.build and (r.key, "build") not in checked:
                checked[(r.key, "build")] = r.build
                parity_rows.append({"k": k, "against": "the bundle's export outputs (build check)",
                                    "config": f"{r.key} {r.precision} engine, built in {r.build['build_s']} s",
                                    "report": r.build, "summary": r.build["parity_vs_export"]})
        model = model_cache[a.device].model
        flops[k] = count_flops(model, DiffPathPipeline, sched, spec, a.device)
        runners += rs

    # --- footage, frame path setup -------------------------------------------------------
    stage_backend = None
    paths: list[FramePath] = []
    video = bus = None
    clip = None
    try:
        import cv2  # noqa: F401
        import zmq  # noqa: F401
        have_frame_path = Path(VTEST).is_file()
        why_not = "" if have_frame_path else f"{VTEST} is missing (Debian package opencv-doc)"
    except ImportError as e:
        have_frame_path, why_not = False, f"{e.name} is not installed"
    stage_runners = [r for r in runners if r.k == a.stage_k and not r.reference
                     and r.threads == a.stage_threads]
    order = ["tensorrt", "onnxruntime (TensorRT", "onnxruntime (CUDA", "torch", "onnxruntime (CPU"] \
        if a.device.startswith("cuda") else ["onnxruntime (CPU", "torch"]
    for prefix in order:
        hit = [r for r in stage_runners if r.key.startswith(prefix)]
        if hit:
            stage_backend = hit[0]
            break
    if have_frame_path and stage_backend is None:
        have_frame_path, why_not = False, f"no backend runs K={a.stage_k} here"
    tiles_pool = None
    if have_frame_path:
        monitor.section = "setup"
        orig, small = read_footage(max(200, a.calibration_frames + 20))
        clip = write_clip(small[:200], tmp / "vtest-640x480-5fps-mjpg.avi", CAMERA_FPS)
        from pathwatch.edge.tiles import TileGrid
        g = TileGrid(FRAME_W, FRAME_H, bundles[a.stage_k].image_size[0], 8, 6)
        tiles_pool = np.concatenate([g.cut(f) for f in small[a.calibration_frames:a.calibration_frames + 4]])
        bus = Bus(tmp)
        video = VideoDecode()
        for gs in a.grids:
            fp = FramePath(gs, bundles[a.stage_k], stage_backend.fn, small[:a.calibration_frames + 20],
                           a.calibration_frames, cache, bus)
            say(f"grid {fp.name}: calibration on {a.calibration_frames} frames "
                + ("(cached)" if fp.cached else f"fitted in {fp.fit_s:.1f} s")
                + f" ({fp.density}, threshold {fp.cal.threshold:.2f})")
            paths.append(fp)
    else:
        skipped.append(f"frame-path stages and the live daemon: skipped, {why_not}")
    if tiles_pool is None:  # time on the export's parity images instead
        tiles_pool = bundles[a.ks[0]].parity_reference()["images"]
    pool = np.concatenate([tiles_pool] * (max(a.batches) // len(tiles_pool) + 1))

    # --- the rounds ------------------------------------------------------------------------
    matmul = MatmulRate(a.device, a.matmul_n, list(dict.fromkeys(a.threads + a.sweep_threads)))
    jobs: list[tuple] = [("backend", r, b) for r in runners for b in a.batches]
    jobs += [("stages", fp, None) for fp in paths]
    jobs += [("matmul", None, None)]
    times: dict[tuple, list[list[float]]] = {}
    syncs = {r.key: torch_sync(r.device) for r in runners}
    monitor.section = "rounds"
    say(f"{len(jobs)} jobs per round, {a.rounds} rounds")
    t_rounds = time.perf_counter()
    for rnd in range(a.rounds):
        shift = (rnd * len(jobs)) // max(a.rounds, 1)
        order_r = jobs[shift:] + jobs[:shift]
        if rnd % 2:
            order_r = order_r[::-1]
        t0 = time.perf_counter()
        for kind, obj, batch in order_r:
            if kind == "matmul":
                matmul.measure()
            elif kind == "stages":
                obj.measure(a.stage_reps, video)
            else:
                images = pool[:batch]
                if rnd == 0 or a.warm_every_round:
                    obj.fn(images)  # warm: allocator, CUDA graph buckets, engine contexts
                calls = []
                for _ in range(a.repeats):
                    s0 = time.perf_counter()
                    obj.fn(images)
                    syncs[obj.key]()
                    calls.append(time.perf_counter() - s0)
                times.setdefault((obj.key, obj.precision, obj.k, obj.threads, batch), []).append(calls)
        say(f"round {rnd + 1}/{a.rounds} in {time.perf_counter() - t0:.0f} s "
            f"(load {os.getloadavg()[0]:.2f})")
    rounds_s = time.perf_counter() - t_rounds

    # --- results: backends -----------------------------------------------------------------
    mm = matmul.rates
    results = []
    for r in runners:
        for b in a.batches:
            calls = times[(r.key, r.precision, r.k, r.threads, b)]
            rates = [b * len(c) / sum(c) for c in calls]
            ref_r = runners_ref(runners, r.k, r.threads)
            refcalls = times[(ref_r.key, ref_r.precision, r.k, ref_r.threads, b)]
            ratios = [rt / (b * len(rc) / sum(rc)) for rt, rc in zip(rates, refcalls)]
            ms = [x * 1000 for c in calls for x in c]
            fl = flops[r.k]["pipeline"]
            rate_key = matmul_key(r.device, r.precision, r.threads)
            achieved = [fl * x for x in rates]
            results.append({
                "backend": r.key, "device": r.device, "precision": r.precision, "k": r.k,
                "threads": tlabel(r.threads), "batch": b,
                "tiles_per_s": rates, "tiles_per_s_median": med(rates),
                "ms_per_call": [med(c) * 1000 for c in calls], "ms_per_call_median": med(ms),
                "ms_per_call_p90": float(np.percentile(ms, 90)),
                "ratio_vs_reference": ratios, "ratio_vs_reference_median": med(ratios),
                "gflops_achieved": [x / 1e9 for x in achieved],
                "share_of_matmul": med(achieved) / med(mm[rate_key]), "matmul_reference": rate_key,
                "parity_vs_reference": r.parity,
            })
    # --- results: stages, cameras ---------------------------------------------------------
    stage_results = {}
    for fp in paths:
        st = {name: [x * 1000 for x in xs] for name, xs in fp.times.items()}
        per_frame_rounds = [sum(st[n][i] for n in PER_FRAME) for i in range(len(st[PER_FRAME[0]]))]
        per_alert_rounds = [sum(st[n][i] for n in PER_ALERT) for i in range(len(st[PER_ALERT[0]]))]
        other_rounds = [t - st["backend (one frame's tiles, one call)"][i] for i, t in enumerate(per_frame_rounds)]
        stage_results[fp.name] = {"ms": st, "per_frame_ms": per_frame_rounds, "per_alert_ms": per_alert_rounds,
                                  "other_than_backend_ms": other_rounds, "tiles": fp.grid.count,
                                  "calibration": {"frames": a.calibration_frames, "fit_s": round(fp.fit_s, 2),
                                                  "cached": fp.cached,
                                                  "density": fp.density,
                                                  "threshold": round(fp.cal.threshold, 3)},
                                  "backend": f"{stage_backend.key} {stage_backend.precision}, "
                                             f"threads {tlabel(stage_backend.threads)}"}
    cameras = camera_estimates(results, stage_results, a)

    live = []
    if paths and a.live != "none":
        grid43 = next((fp for fp in paths if fp.name == "4x3"), None)
        if grid43 is None:
            skipped.append("live daemon: skipped, it runs the 4x3 grid (add --grid 4x3)")
        else:
            cal_path = tmp / "calibration-4x3.json"
            grid43.cal.save(cal_path)
            backend_cfg, precision_cfg = daemon_backend(stage_backend)
            plan: dict = {}
            for t in a.live_threads:
                est = next((c for c in cameras if c["grid"] == "4x3" and c["backend"] == stage_backend.key
                            and c["precision"] == stage_backend.precision and c["k"] == a.stage_k
                            and c["threads"] == tlabel(t)), None)
                if a.live == "auto":
                    n0 = min(max(1, est["cameras_batched"]) if est else 1, a.live_max)
                    plan[t] = [n0, n0 + 1] if n0 < a.live_max else [n0]
                else:
                    plan[t] = [int(x) for x in a.live.split(",")]
            runs = [(t, counts[i]) for i in range(max(len(c) for c in plan.values()))
                    for t, counts in plan.items() if i < len(counts)]
            monitor.section = "live"
            for t, n in runs:
                say(f"live daemon: {n} cameras of the 640x480 5 fps clip for {a.live_seconds:.0f} s "
                    f"({backend_cfg} {precision_cfg}, threads {tlabel(t)})")
                i0 = len(monitor.samples)
                # dense: every tile, full schedule (benchmarks/cameras.py runs dynamic steps)
                res = live_run(n, a.live_seconds, a.live_warmup, clip, bundles[a.stage_k].root, cal_path,
                               backend_cfg, precision_cfg, t, tmp,
                               extra="dynamic_steps:\n  enabled: false\n")
                res["threads"] = tlabel(t)
                res["backend"] = f"{backend_cfg} {precision_cfg}"
                res["load"] = [round(v, 2) for _, _, v in monitor.samples[i0:]]
                say(f"  {n} cameras: min processed fps {res['min_process_fps']}, sustained {res['sustained']}")
                if res["log_tail"]:
                    say("  daemon log tail:\n" + res["log_tail"])
                live.append(res)
    monitor.stop()
    if bus is not None:
        bus.close()
    for r in runners:
        with contextlib.suppress(Exception):
            r.close()

    report(out, a, env, monitor, results, flops, mm, stage_results, cameras, live, parity_rows,
           skipped, rounds_s, stage_backend)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "environment": env, "args": {k: v for k, v in vars(a).items()},
            "load_average": {"all": monitor.summary(), "rounds": monitor.summary("rounds"),
                             "live": monitor.summary("live"),
                             "samples": [(round(t, 1), s, round(v, 2)) for t, s, v in monitor.samples]},
            "flops_per_tile": flops, "matmul_flops_per_s": mm, "backends": results,
            "parity": parity_rows, "stages": stage_results, "cameras_at_5fps": cameras, "live": live,
            "skipped": skipped, "rounds_seconds": round(rounds_s, 1)}, indent=1, default=float))
        say(f"wrote {a.json}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def features_pass(report) -> bool:
    """The features (and the scores a density gives them) within tolerance. Heatmaps are
    reported, not asserted: at K=1 the map (1 - SSIM at t = 0) is close to zero everywhere and
    its relative error is float32 rounding."""
    return all(f.startswith("heatmap") for f in report.failures)


def tlabel(threads: int | None) -> str:
    return "default" if threads is None else str(threads)


def runners_ref(runners: list[Runner], k: int, threads: int | None) -> Runner:
    """The reference loop at the same K and thread setting (GPU runners: the first one)."""
    refs = [r for r in runners if r.reference and r.k == k]
    return next((r for r in refs if r.threads == threads), refs[0])


def daemon_backend(r: Runner) -> tuple[str, str]:
    if r.key.startswith("tensorrt"):
        return "tensorrt", "fp16"
    if r.key.startswith("torch"):
        return "torch", "fp16" if r.precision.startswith("fp16") else "fp32"
    if r.key.startswith("onnxruntime (TensorRT"):
        return "onnxruntime", "fp16"
    return "onnxruntime", "fp32"


def camera_estimates(results: list[dict], stages: dict, a) -> list[dict]:
    """Cameras at 5 fps from the per-frame cost: every stage in series (the frame loop is one
    thread; decode runs in capture threads but shares the same cores), the backend either
    alone per frame (one call per frame) or batched with other cameras' tiles (the daemon's
    one call per pass, up to the largest batch measured)."""
    out = []
    by = {}
    for r in results:
        by.setdefault((r["backend"], r["precision"], r["k"], r["threads"]), {})[r["batch"]] = r
    for name, st in stages.items():
        n_tiles = st["tiles"]
        other = st["other_than_backend_ms"]
        for (backend, prec, k, threads), batches in by.items():
            if backend.startswith("reference"):
                continue
            alone = batches.get(n_tiles)
            big = batches[max(batches)]
            if alone is None:
                continue
            # per round: other stages of that round + backend cost of that round
            nr = min(len(other), len(alone["tiles_per_s"]))
            cam_alone = [1000.0 / (CAMERA_FPS * (other[i] + 1000.0 * n_tiles / alone["tiles_per_s"][i]))
                         for i in range(nr)]
            cam_batched = [1000.0 / (CAMERA_FPS * (other[i] + 1000.0 * n_tiles / big["tiles_per_s"][i]))
                           for i in range(nr)]
            out.append({"grid": name, "backend": backend, "precision": prec, "k": k, "threads": threads,
                        "other_stages_ms": med(other),
                        "backend_ms_per_frame_alone": 1000.0 * n_tiles / alone["tiles_per_s_median"],
                        "backend_ms_per_frame_batched": 1000.0 * n_tiles / big["tiles_per_s_median"],
                        "batched_at": max(batches),
                        "cameras_alone_float": cam_alone, "cameras_batched_float": cam_batched,
                        "cameras_alone": int(med(cam_alone)), "cameras_batched": int(med(cam_batched))})
    return out


def headline(out: Printer, a, results, stages, cameras, live) -> None:
    """The few figures most asked for, restated from the tables above."""
    out.text(f"Headline (K={a.stage_k}):")
    for r in results:
        if r["k"] == a.stage_k and not r["backend"].startswith("reference"):
            out.text(f"  {r['backend']} {r['precision']}, threads {r['threads']}, batch {r['batch']}: "
                     f"{fmt(r['tiles_per_s_median'])} tiles/s, x{r['ratio_vs_reference_median']:.2f} the reference "
                     f"loop (rounds {fmt(min(r['ratio_vs_reference']), 2)}-{fmt(max(r['ratio_vs_reference']), 2)})")
    for name, st in stages.items():
        out.text(f"  frame path {name}: {fmt(med(st['per_frame_ms']), 1)} ms per frame, of which backend "
                 f"{fmt(med(st['ms']['backend (one frame' + chr(39) + 's tiles, one call)']), 1)} ms "
                 f"({st['backend']}); an alert event adds {fmt(med(st['per_alert_ms']), 1)} ms")
    for c in cameras:
        if c["k"] == a.stage_k:
            out.text(f"  cameras at 5 fps, {c['grid']}, {c['backend']} threads {c['threads']}: "
                     f"{c['cameras_batched']} computed, batched ({fmt(med(c['cameras_batched_float']), 2)}); "
                     f"{c['cameras_alone']} with one call per frame ({fmt(med(c['cameras_alone_float']), 2)})")
    for r in live:
        out.text(f"  live daemon, threads {r['threads']}, {r['cameras']} cameras: min {r['min_process_fps']} "
                 f"processed fps per camera -> {'sustained' if r['sustained'] else 'NOT sustained'}")
    out.text()


def report(out: Printer, a, env, monitor, results, flops, mm, stages, cameras, live, parity_rows,
           skipped, rounds_s, stage_backend) -> None:
    ld = monitor.summary("rounds")
    own = max((t or env["torch_threads"]) for t in a.threads)
    out.text(f"{a.rounds} interleaved rounds in {rounds_s:.0f} s; 1-min load average during the rounds: "
             f"{describe_load(ld)} ({ld.get('samples', 0)} samples) on {env['cores']} cores, this run's "
             f"own threads (up to {own}) included")
    start_load = env["load_average_at_start"][0]
    if env["cores"] and ld and (start_load > 0.5 or ld["median"] > own + 0.5):
        out.text(f"other work shared the machine (load average {start_load:.2f} before this run started): "
                 "absolute figures are low and move between rounds; ratios measured within a round move less")
    out.text()
    rows = [[f"{k}", f"{f['unet_per_eval'] / 1e6:.1f}", f"{f['unet_times_k'] / 1e6:.1f}",
             f"{f['extra_passes'] / 1e6:.2f}", f"{f['pipeline'] / 1e6:.1f}"] for k, f in sorted(flops.items())]
    out.table("FLOPs per 32x32 tile (convolutions and matrix products; torch FlopCounterMode)",
              ["K", "UNet per eval (MFLOP)", "UNet x K", "SSIM window products", "pipeline total"], rows,
              "norms, activations and the path's elementwise arithmetic are not counted")
    out.table(f"Matrix-multiply rate, {a.matmul_n}x{a.matmul_n}, measured in every round (GFLOP/s)",
              ["kernel", "median [min-max]"], [[k, fmt_mr(v, 1, 1e-9)] for k, v in mm.items()])
    rows = []
    for r in results:
        rows.append([r["backend"], r["device"], r["precision"], r["threads"], r["k"], r["batch"],
                     fmt_mr(r["tiles_per_s"]), fmt_mr(r["ms_per_call"]),
                     fmt_mr(r["ratio_vs_reference"], 2),
                     f"{med(r['gflops_achieved']):.2f}", f"{100 * r['share_of_matmul']:.1f}%"])
    out.table("Backends: tiles/s and ms per call, median [min-max] over rounds; x reference: median of "
              "per-round ratios",
              ["backend", "device", "precision", "threads", "K", "batch", "tiles/s", "ms/call", "x reference",
               "GFLOP/s", "of matmul"], rows,
              "reference = eager torch, one UNet call per DDIM step, statistics in numpy (float64) afterwards; "
              "'of matmul': achieved FLOP/s over the torch matmul rate on the same device, precision and "
              "thread setting, measured in the same rounds")
    # per frame
    rows = []
    for r in results:
        for gs in a.grids:
            n = gs[0] * gs[1]
            if r["batch"] == n:
                rows.append([f"{gs[0]}x{gs[1]}", r["backend"], r["precision"], r["threads"], r["k"],
                             fmt_mr([x / n for x in r["tiles_per_s"]], 2), fmt_mr(r["ms_per_call"])])
    out.table("Per frame (one frame's tiles in one call): frames/s and backend latency (ms)",
              ["grid", "backend", "precision", "threads", "K", "frames/s", "ms/frame"], rows)
    for name, st in stages.items():
        tot = med(st["per_frame_ms"])
        rows = []
        for n in PER_FRAME:
            rows.append([n, fmt_mr(st["ms"][n], 2), f"{100 * med(st['ms'][n]) / tot:.1f}%"])
        rows.append(["per frame (sum)", fmt_mr(st["per_frame_ms"], 2), "100%"])
        rows.append(["decode: MPEG-4 768x576 video frame (vtest.avi), for comparison",
                     fmt_mr(st["ms"]["decode: MPEG-4 768x576 video frame (vtest.avi)"], 2), ""])
        for n in PER_ALERT:
            rows.append([n + " (per alert event)", fmt_mr(st["ms"][n], 2), ""])
        rows.append(["per alert event (sum)", fmt_mr(st["per_alert_ms"], 2), ""])
        out.table(f"Frame path, grid {name} ({st['tiles']} tiles), K={a.stage_k}, backend {st['backend']}: "
                  f"ms, median [min-max] over rounds",
                  ["stage", "ms", "share"], rows,
                  f"calibration: {st['calibration']['frames']} frames of vtest.avi at 640x480, "
                  f"{st['calibration']['density']}"
                  + (" (from the cache)" if st["calibration"]["cached"] else
                     f", fitted in {st['calibration']['fit_s']} s"))
    rows = [[c["grid"], c["backend"], c["precision"], c["threads"], c["k"], fmt(c["other_stages_ms"], 2),
             fmt(c["backend_ms_per_frame_alone"], 1), fmt(c["backend_ms_per_frame_batched"], 1),
             f"{c['cameras_alone']} ({fmt_mr(c['cameras_alone_float'], 2)})",
             f"{c['cameras_batched']} ({fmt_mr(c['cameras_batched_float'], 2)})"]
            for c in cameras]
    out.table("Cameras sustained at 5 fps, computed: floor of the median over rounds of 1 / (5 x per-frame s) "
              "(in brackets: that value, median [min-max])",
              ["grid", "backend", "precision", "threads", "K", "other stages ms", "backend ms/frame alone",
               "batched", "cameras (one call per frame)", "cameras (batched)"], rows,
              "other stages = decode (640x480 JPEG) + tiling + scoring + score message, measured in the same "
              "rounds; batched = the backend at the largest batch measured, as the daemon batches every "
              "camera's tiles into one call")
    if live:
        rows = []
        for r in live:
            pc = r["per_camera"]
            rows.append([r["threads"], r["cameras"], r["min_process_fps"], r["total_process_fps"],
                         fmt(med([c["camera_fps"] for c in pc.values()]), 2),
                         fmt(med([c["dropped_per_s"] for c in pc.values()]), 2),
                         fmt(med([c["latency_p50_ms"] for c in pc.values()]), 0),
                         fmt(med([c["latency_p99_ms"] for c in pc.values()]), 0),
                         r["alert_events"], "yes" if r["sustained"] else "no",
                         describe_load({"min": min(r["load"]), "max": max(r["load"]), "median": med(r["load"])})
                         if r["load"] else "-"])
        out.table(f"Live daemon (pathwatch run, backend {live[0]['backend']}), "
                  f"N cameras of a 640x480 5 fps MJPEG clip of vtest.avi, "
                  f"4x3 tiles, K={a.stage_k}, pre-calibrated; {a.live_seconds:.0f} s after "
                  f"{a.live_warmup:.0f} s of warm-up; heartbeat medians",
                  ["threads", "cameras", "min processed fps", "total fps", "camera fps", "dropped/s", "latency p50 ms",
                   "p99 ms", "alert events", ">= 4.75 fps each", "load avg"], rows)
    rows = []
    for p in parity_rows:
        res = p["summary"].split(": ", 1)[-1]
        fails = p["report"].get("failures") or []
        if fails and all(f.startswith("heatmap") for f in fails):
            res += " (features within tolerance, which is what is asserted; the heatmap is reported only)"
        rows.append([p["k"], p["config"], p["against"], res])
    out.table("Parity (checked before timing)", ["K", "configuration", "against", "result"], rows)
    if skipped:
        out.text("Skipped:")
        for s in skipped:
            out.text(f"  - {s}")
    headline(out, a, results, stages, cameras, live)
    la = monitor.summary()
    out.text(f"1-min load average over the whole run: {describe_load(la)}; at the end: "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ModuleNotFoundError as e:
        print(f"speed.py: the module {e.name!r} is not installed here ({e}); install it, or run on a machine "
              "that has it (benchmarks/gpu_check.sh lists what is present)", file=sys.stderr)
        raise SystemExit(4) from None

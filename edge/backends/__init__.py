"""Backends run a bundle's pipeline graph: onnxruntime, tensorrt, torch, openvino, or a Triton
server, chosen by config (`auto` never picks triton: it needs a server named in the config; nor
openvino: on the CPUs measured its FP32 is slower than onnxruntime and its BF16 misses the
parity gate, docs/performance.md).

`auto` takes the fastest one this machine can run and says why; every choice is logged, so a
device that quietly fell back to the CPU is visible in the first lines of the log.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field

from ..bundle import Bundle
from .base import Backend, BackendError
from .triton_backend import BackendUnavailable, TritonBackend

KINDS = ("auto", "onnxruntime", "tensorrt", "torch", "openvino", "triton")


@dataclass
class Capabilities:
    """What this machine offers, gathered without importing torch or touching a GPU needlessly."""

    ort_providers: list[str] = field(default_factory=list)
    tensorrt: bool = False  # tensorrt + cuda-python importable and a GPU visible
    torch: bool = False
    torch_cuda: bool = False


def has_module(name: str) -> bool:
    """Installed and importable in principle, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent missing, or an import hook refusing it
        return False


def probe(check_torch_cuda: bool = True) -> Capabilities:
    from .onnxruntime_backend import available_providers

    caps = Capabilities(ort_providers=available_providers())
    if has_module("tensorrt") and (has_module("cuda.bindings") or has_module("cuda")):
        try:
            from .tensorrt_backend import gpu_identity
            gpu_identity()
            caps.tensorrt = True
        except Exception:  # no driver, no device: TensorRT is simply not an option here
            caps.tensorrt = False
    caps.torch = has_module("torch")
    if check_torch_cuda and not caps.tensorrt:
        caps.torch_cuda = _torch_cuda(caps)
    return caps


def _torch_cuda(caps: Capabilities) -> bool:
    """Whether torch sees a GPU; asked only when torch is the sole route to one (importing
    torch costs seconds)."""
    if not caps.torch or "CUDAExecutionProvider" in caps.ort_providers:
        return False
    import torch
    return torch.cuda.is_available()


def choose(requested: str, caps: Capabilities) -> tuple[str, str]:
    """(backend, reason). Pure, so the policy is testable on any machine."""
    if requested not in KINDS:
        raise BackendError(f"backend {requested!r} is unknown; use one of {', '.join(KINDS)}")
    if requested != "auto":
        return requested, "as requested"
    gpu_ep = [p for p in caps.ort_providers if p != "CPUExecutionProvider"]
    if caps.tensorrt:
        return "tensorrt", "TensorRT and a CUDA GPU are available"
    if gpu_ep:
        return "onnxruntime", f"onnxruntime has {gpu_ep[0]}"
    if caps.torch_cuda:
        return "torch", "torch sees a CUDA GPU and no TensorRT/onnxruntime GPU build is installed"
    if caps.ort_providers:
        return "onnxruntime", "no GPU runtime found; onnxruntime on the CPU"
    if caps.torch:
        return "torch", "onnxruntime is not installed; torch on the CPU"
    raise BackendError("no backend can run here: install onnxruntime (pip install onnxruntime)")


def load_backend(bundle: Bundle, kind: str = "auto", *, max_batch: int = 64,
                 threads: int | None = None, cache_dir=None, precision: str = "fp16",
                 rebuild_engines: bool = False, warmup: bool = True, log=print,
                 caps: Capabilities | None = None, triton=None) -> Backend:
    """`caps`: what `auto` may choose from (default: probe this machine). `triton`: the
    model.triton settings (url, model, protocol, timeout_s), a mapping or the config section."""
    caps = caps or (probe() if kind == "auto" else Capabilities())
    name, reason = choose(kind, caps)
    if kind == "auto" and name == "tensorrt":
        try:
            return _loaded(_tensorrt(bundle, max_batch, cache_dir, precision, rebuild_engines,
                                     log), reason, warmup, log)
        except (BackendError, OSError) as e:  # e.g. no engine for this GPU: take the next
            caps = dataclasses.replace(caps, tensorrt=False)
            caps.torch_cuda = caps.torch_cuda or _torch_cuda(caps)
            name, reason = choose(kind, caps)
            reason = f"TensorRT not usable: {e}; {reason}"
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend
        backend: Backend = OnnxRuntimeBackend(bundle, max_batch, threads, cache_dir=cache_dir,
                                              fp16=precision == "fp16")
    elif name == "tensorrt":
        backend = _tensorrt(bundle, max_batch, cache_dir, precision, rebuild_engines, log)
    elif name == "openvino":
        from .openvino_backend import OpenVinoBackend
        backend = OpenVinoBackend(bundle, max_batch, threads, precision)
    elif name == "triton":
        backend = TritonBackend(bundle, max_batch, **dict(triton or {}))
    else:
        from .torch_backend import TorchBackend
        backend = TorchBackend(bundle, max_batch, fp16=precision == "fp16", threads=threads)
    return _loaded(backend, reason, warmup, log)


def _tensorrt(bundle, max_batch, cache_dir, precision, rebuild_engines, log) -> Backend:
    from .tensorrt_backend import TensorRTBackend
    return TensorRTBackend(bundle, max_batch, precision, rebuild_engines, cache_dir=cache_dir,
                           log=log)


def _loaded(backend: Backend, reason: str, warmup: bool, log) -> Backend:
    if warmup:
        try:
            backend.warmup()
        except BaseException:
            backend.close()  # device buffers of a backend that cannot run
            raise
    log(f"backend {backend.name} on {backend.device} ({reason}); max batch {backend.max_batch}"
        + (f", warm-up {backend.warmup_s:.2f} s" if warmup else ""))
    return backend


__all__ = ["Backend", "BackendError", "BackendUnavailable", "Capabilities", "KINDS", "choose",
           "load_backend", "probe"]

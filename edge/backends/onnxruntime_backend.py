"""ONNX Runtime backend: TensorRT -> CUDA -> CPU execution providers, whichever exist.

On a GPU build the TensorRT provider keeps its engines and timing cache under the cache
directory (building them takes minutes; reusing them takes milliseconds). On small CPUs the
thread count matters more than anything else, so it is a setting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import Bundle
from .base import Backend, BackendError

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return [p for p in PREFERENCE if p in ort.get_available_providers()]


def provider_options(name: str, cache_dir: Path | None, fp16: bool, max_batch: int,
                     shape: tuple[int, int]) -> dict:
    if name == "TensorrtExecutionProvider":
        opts = {"trt_fp16_enable": fp16, "trt_max_workspace_size": 2 << 30}
        if cache_dir is not None:
            cache = cache_dir / "ort-trt"
            cache.mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache),
                        trt_timing_cache_enable=True, trt_timing_cache_path=str(cache))
        h, w = shape
        opts.update(trt_profile_min_shapes=f"images:1x{h}x{w}x3",
                    trt_profile_opt_shapes=f"images:{max_batch}x{h}x{w}x3",
                    trt_profile_max_shapes=f"images:{max_batch}x{h}x{w}x3")
        return opts
    return {}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, max_batch: int = 64, threads: int | None = None,
                 providers: list[str] | None = None, cache_dir: str | Path | None = None,
                 fp16: bool = True):
        super().__init__(bundle, max_batch)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed; pip install onnxruntime "
                               "(CPU) or onnxruntime-gpu (CUDA), not both") from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initialisers are noise here
        chosen = providers or available_providers()
        cache = Path(cache_dir).expanduser() if cache_dir else None
        plist = [(p, provider_options(p, cache, fp16, self.max_batch, self.bundle.image_size))
                 for p in chosen]
        try:
            self.session = ort.InferenceSession(str(bundle.graph_path), opts, providers=plist)
        except Exception as e:  # ORT raises its own exception types for bad graphs
            raise BackendError(f"onnxruntime cannot load {bundle.graph_path}: "
                               f"{str(e).splitlines()[0]}; re-export the bundle") from None
        self.providers = self.session.get_providers()
        self.device = {"TensorrtExecutionProvider": "cuda (TensorRT EP)",
                       "CUDAExecutionProvider": "cuda"}.get(self.providers[0], "cpu")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._binding = self.providers[0] != "CPUExecutionProvider"

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._binding:
            feats, maps = self.session.run(self.output_names, {self.input_name: images})
            return feats, maps
        # On a GPU, IO binding copies the uint8 batch once and lets ORT allocate outputs on
        # the host directly instead of staging them through its default allocator per call.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, images)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        feats, maps = binding.copy_outputs_to_cpu()
        return feats, maps

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers,
                "threads": self.session.get_session_options().intra_op_num_threads}

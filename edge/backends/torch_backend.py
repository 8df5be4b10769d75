"""Torch backend: runs the pipeline module itself from the bundle's weights.

For development and for GPUs without TensorRT. On CUDA it runs the UNet in FP16 (autocast)
and replays CUDA graphs captured per batch bucket (powers of two up to max_batch): a camera
loop sends the same few shapes forever, so launch overhead is paid once at capture.
torch is imported only when this backend is constructed.
"""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from .base import Backend, BackendError


def buckets(max_batch: int) -> list[int]:
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return sizes + [max_batch]


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle, max_batch: int = 64, device: str | None = None,
                 fp16: bool = True, cuda_graphs: bool = True, threads: int | None = None):
        super().__init__(bundle, max_batch)
        try:
            import torch
            from pathwatch.export.checkpoint import load_checkpoint
            from pathwatch.export.features import FeatureSpec
            from pathwatch.export.pipeline import DiffPathPipeline
            from pathwatch.export.schedule import ReducedSchedule
        except ImportError as e:
            raise BackendError(f"the torch backend needs {e.name}; pip install "
                               "'pathwatch[export]' or choose backend onnxruntime") from None
        if not bundle.weights_path.is_file():
            raise BackendError(f"{bundle.weights_path} is missing; the torch backend needs the "
                               "bundle's weights (re-export the bundle)")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_checkpoint(bundle.weights_path, device=self.device)
        if loaded.weights_sha256 != bundle.weights_sha256:
            raise BackendError(f"{bundle.weights_path} does not match the weights hash in the "
                               "manifest; re-export the bundle")
        s = bundle.manifest.schedule
        sched = ReducedSchedule(s.kind, s.steps, s.timesteps)
        spec = FeatureSpec.from_dict(bundle.feature_spec)
        self.pipeline = DiffPathPipeline(loaded.model, sched, spec, uint8_input=True,
                                         acc_dtype=torch.float32).to(self.device).eval()
        on_gpu = self.device.startswith("cuda")
        self.fp16 = fp16 and on_gpu
        self.use_graphs = cuda_graphs and on_gpu
        self.graphs: dict[int, tuple] = {}

    def _forward(self, x):
        torch = self.torch
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self.fp16):
            f, h = self.pipeline(x)
        return f.float(), h.float()

    def _capture(self, n: int):
        torch = self.torch
        static_in = torch.zeros((n, self.height, self.width, 3), dtype=torch.uint8,
                                device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm the allocator and cuDNN choices before capture
                self._forward(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(images)
        if not self.use_graphs:
            f, h = self._forward(x.to(self.device))
            return f.cpu().numpy(), h.cpu().numpy()
        n = len(images)
        size = next(b for b in buckets(self.max_batch) if b >= n)
        if size not in self.graphs:
            self.graphs[size] = self._capture(size)
        graph, static_in, (f, h) = self.graphs[size]
        static_in.zero_()
        static_in[:n].copy_(x, non_blocking=False)
        graph.replay()
        return f[:n].cpu().numpy(), h[:n].cpu().numpy()

    def describe(self) -> dict:
        return {**super().describe(), "fp16": self.fp16, "cuda_graphs": self.use_graphs}

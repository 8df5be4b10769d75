"""TensorRT: engine build from the bundle's ONNX graph, engine matching, and the native runtime.

No torch here: building needs only the `tensorrt` package and the runtime needs `tensorrt`
plus `cuda-python` for device memory and streams (both in the `gpu` extra). An engine is
only valid for the TensorRT version and GPU it was built on, and for the weights it was
built from; all three are recorded next to it in the manifest and checked before loading.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..clock import iso_now
from .base import Backend, BackendError

PRECISIONS = ("fp16", "fp32")


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed (pip install 'pathwatch[gpu]' on a CUDA "
                           "machine, or use JetPack's python3-libnvinfer on a Jetson)") from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError("the TensorRT runtime needs cuda-python for device memory; "
                               "pip install cuda-python") from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity() -> dict:
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}


def engine_filename(gpu: str, cc: str, trt_version: str, precision: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return f"{slug}-sm{cc.replace('.', '')}_trt{trt_version}_{precision}.engine"


def engine_mismatch(entry: dict, bundle: Bundle, here: dict, trt_version: str) -> str | None:
    """Why this engine cannot run here (None when it can)."""
    if entry.get("weights_sha256") != bundle.weights_sha256:
        return "it was built from other weights than the bundle's"
    if entry.get("graph_sha256") != bundle.manifest.graph.sha256:
        return "it was built from another pipeline.onnx"
    if entry.get("tensorrt") != trt_version:
        return f"it was built with TensorRT {entry.get('tensorrt')}, this is {trt_version}"
    if entry.get("gpu") != here["gpu"] or entry.get("compute_capability") != here["compute_capability"]:
        return f"it was built on {entry.get('gpu')}, this is {here['gpu']}"
    return None


def build_engine(bundle: Bundle, precision: str = "fp16", max_batch: int = 64,
                 opt_batch: int | None = None, cache_dir: str | Path | None = None,
                 workspace_gib: float = 2.0, log=print) -> dict:
    """Build and save an engine for this GPU; returns its manifest entry, not yet recorded
    (`accept_engine` records it once it has passed the parity check)."""
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r}: use fp16 or fp32")
    trt = _trt()
    here = gpu_identity()
    engines = bundle.root / "engines"
    if not os.access(engines if engines.is_dir() else bundle.root, os.W_OK):
        raise BackendError(f"cannot write engines into {engines}; copy the bundle somewhere "
                           "writable (e.g. under cache_dir) or build with `pathwatch export "
                           "--tensorrt` where it is")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle.graph_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {bundle.graph_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # TF32 (on by default on Ampere and later) is not FP32 accuracy; the gate expects it
        config.clear_flag(trt.BuilderFlag.TF32)
    h, w = bundle.image_size
    name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    opt = opt_batch or max_batch
    profile.set_shape(name, (1, h, w, 3), (opt, h, w, 3), (max_batch, h, w, 3))
    config.add_optimization_profile(profile)
    # The timing cache makes rebuilds (new weights, other precision) minutes faster.
    cache_file = Path(cache_dir or bundle.root / "engines").expanduser() / \
        f"timing-{engine_filename(here['gpu'], here['compute_capability'], trt.__version__, 'cache')}"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see the log above)")
    seconds = time.perf_counter() - t0
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    fname = engine_filename(here["gpu"], here["compute_capability"], trt.__version__, precision)
    (bundle.root / "engines").mkdir(exist_ok=True)
    (bundle.root / "engines" / fname).write_bytes(bytes(serialized))
    entry = {"file": f"engines/{fname}", **here, "tensorrt": trt.__version__,
             "precision": precision, "weights_sha256": bundle.weights_sha256,
             "graph_sha256": bundle.manifest.graph.sha256, "min_batch": 1,
             "opt_batch": opt, "max_batch": max_batch, "build_s": round(seconds, 1),
             "built": iso_now("seconds")}
    log(f"built {entry['file']} in {seconds:.0f} s")
    return entry


def accept_engine(bundle: Bundle, entry: dict, report) -> bool:
    """Record an engine in the manifest if its parity report passed; otherwise delete its
    file, so a failed build is never found and loaded later."""
    entry = {**entry, "parity": report.to_dict()}
    bundle.engines = [e for e in bundle.engines if e.get("file") != entry["file"]]
    if report.passed:
        bundle.engines.append(entry)
    else:
        (bundle.root / entry["file"]).unlink(missing_ok=True)
    bundle.write_manifest()
    return report.passed


def verify_engine(bundle: Bundle, entry: dict, log=print):
    """Run a freshly built engine on the images recorded at export, with the tolerances of
    its precision."""
    from ..parity import compare

    ref = bundle.parity_reference()
    if ref is None:
        raise BackendError(f"{bundle.root} has no parity.npz, so a new engine cannot be "
                           "checked; re-export the bundle")
    backend = TensorRTBackend(bundle, int(entry["max_batch"]), entry["precision"],
                              entry=entry, log=log)
    try:
        feats, maps = backend(ref["images"])
    finally:
        backend.close()
    return compare(f"tensorrt-{entry['precision']}", bundle.feature_names, ref["features"],
                   ref["heatmap"], feats, maps, entry["precision"])


def build_checked_engine(bundle: Bundle, precision: str, max_batch: int = 64, cache_dir=None,
                         log=print):
    """Build, check against the recorded torch outputs, record if it passed: (entry, report)."""
    entry = build_engine(bundle, precision, max_batch, cache_dir=cache_dir, log=log)
    report = verify_engine(bundle, entry, log=log)
    if not accept_engine(bundle, entry, report):
        log(f"{entry['file']} failed the parity check and was removed")
    return entry, report


def find_engine(bundle: Bundle, precision: str, rebuild: bool = False, max_batch: int = 64,
                cache_dir=None, log=print) -> dict:
    trt = _trt()
    here = gpu_identity()
    reasons = []
    for entry in bundle.engines:
        if entry.get("precision") != precision:
            continue
        why = engine_mismatch(entry, bundle, here, trt.__version__)
        if why is None and (bundle.root / entry["file"]).is_file():
            return entry
        reasons.append(f"{entry['file']}: {why or 'file missing'}")
    if rebuild:
        log(f"building a {precision} TensorRT engine for {here['gpu']} "
            f"({'; '.join(reasons) or 'none in the bundle'})")
        entry, report = build_checked_engine(bundle, precision, max_batch, cache_dir, log)
        if not report.passed:
            raise BackendError(f"the {precision} TensorRT engine built here does not reproduce "
                               f"the bundle's outputs ({report.summary()}); use "
                               "model.backend: onnxruntime or model.precision: fp32")
        return entry
    detail = "; ".join(reasons) or "the bundle has no engine"
    raise BackendError(f"no usable {precision} TensorRT engine for {here['gpu']} "
                       f"({detail}); run `pathwatch export --tensorrt` on this device or set "
                       "model.rebuild_engines: true")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, max_batch: int = 64, precision: str = "fp16",
                 rebuild: bool = False, cuda_graphs: bool = True, cache_dir=None, log=print,
                 entry: dict | None = None):
        """`entry`: run this engine (a new build under test) instead of looking one up."""
        super().__init__(bundle, max_batch)
        trt, self.cudart = _trt(), _cudart()
        self.log = log
        entry = entry or find_engine(bundle, precision, rebuild, max_batch, cache_dir, log)
        self.max_batch = min(self.max_batch, int(entry["max_batch"]))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine((bundle.root / entry["file"]).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not load {entry['file']}; rebuild it")
        self.context = self.engine.create_execution_context()
        self.device = f"cuda ({entry['gpu']}, TensorRT {entry['tensorrt']} {precision})"
        self.entry, self.use_graphs, self.graphs = entry, cuda_graphs, {}
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._allocate(trt)

    def _allocate(self, trt) -> None:
        """Device and pinned-free host buffers at max batch; addresses never change, which is
        what lets a captured CUDA graph be replayed."""
        h, w = self.bundle.image_size
        self.io: dict[str, tuple] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = (self.max_batch, h, w, 3) if is_input else \
                (self.max_batch, *tuple(self.engine.get_tensor_shape(name))[1:])
            host = np.zeros(shape, dtype)
            ptr = _check(self.cudart.cudaMalloc(host.nbytes))
            self.context.set_tensor_address(name, int(ptr))
            self.io[name] = (is_input, host, ptr)
        self.input_name = next(n for n, v in self.io.items() if v[0])
        self.output_names = [n for n, v in self.io.items() if not v[0]]

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise BackendError("TensorRT failed to enqueue the engine (see the log above)")

    def _enqueue(self, n: int) -> None:
        h, w = self.bundle.image_size
        self.context.set_input_shape(self.input_name, (n, h, w, 3))
        if not self.use_graphs:
            self._execute()
            return
        if n not in self.graphs:
            self._execute()  # settles shape-dependent state before capture
            try:
                self.graphs[n] = self._capture()
            except BackendError as e:
                # Some engines hold operations a capture does not allow: run them eagerly.
                self.log(f"TensorRT: CUDA graph capture failed ({e}); running without graphs")
                self.use_graphs = False
                self._execute()
                return
        _check(self.cudart.cudaGraphLaunch(self.graphs[n], self.stream))

    def _capture(self):
        cudart = self.cudart
        _check(cudart.cudaStreamBeginCapture(
            self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        ok = self.context.execute_async_v3(int(self.stream))
        graph = _check(cudart.cudaStreamEndCapture(self.stream))  # always end the capture
        if not ok:
            raise BackendError("enqueue refused while capturing")
        # ...WithFlags has the same signature in every cuda-python release.
        return _check(cudart.cudaGraphInstantiateWithFlags(graph, 0))

    def _copy(self, dst, src, nbytes, kind) -> None:
        _check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream))

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kinds = self.cudart.cudaMemcpyKind
        n = len(images)
        _, host_in, dev_in = self.io[self.input_name]
        self._copy(dev_in, images.ctypes.data, images.nbytes, kinds.cudaMemcpyHostToDevice)
        self._enqueue(n)
        outs = []
        for name in self.output_names:
            _, host, dev = self.io[name]
            view = host[:n]
            self._copy(view.ctypes.data, dev, view.nbytes, kinds.cudaMemcpyDeviceToHost)
            outs.append(view)
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        named = dict(zip(self.output_names, outs))
        return named["features"].copy(), named["heatmap"].copy()

    def describe(self) -> dict:
        return {**super().describe(), "engine": self.entry["file"], "cuda_graphs": self.use_graphs}

    def close(self) -> None:
        for _, _, ptr in getattr(self, "io", {}).values():
            self.cudart.cudaFree(ptr)
        self.io = {}

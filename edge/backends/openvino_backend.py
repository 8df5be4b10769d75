"""OpenVINO backend: the bundle's graph on Intel CPUs (and the runtime for Intel iGPUs/NPUs).

On a CPU with BF16 (AVX512-BF16 or AMX) the UNet calls run in BF16 and everything around them
in FP32. Running the whole graph in BF16 is not an option: the path arithmetic divides by
sqrt(1/abar - 1) (about 0.006 at the first step) and the SSIM terms subtract nearly equal
blurred moments, so BF16's 8-bit mantissa there wrecks the SSIM features (measured: 80% of
their column range). The graph is therefore cut at each UNet call (its first convolution's
input, its output convolution's bias add) into K UNet models compiled in BF16 and K + 1 small
FP32 models that recompute the path up to the next call and, last, the statistics.

A BF16 backend must pass the parity gate on the bundle's recorded images before it runs
(`TOLERANCES["bf16"]`: tile scores rank-correlate >= 0.999 with the FP32 reference); a bundle
that misses it is refused with the measured numbers.
"""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from .base import Backend, BackendError

# Where one UNet call starts and ends in an exported pipeline graph (export/unet.py's module
# names, kept by the ONNX exporter in node names).
UNET_FIRST_CONV = "/input_blocks.0/"
UNET_OUT_CONV = "/out/out.2"


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin offers native BF16 here (it emulates it, slowly, where not)."""
    try:
        import openvino as ov
    except ImportError:
        return False
    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def unet_boundaries(model) -> tuple[list, list]:
    """(inputs, outputs) of the K UNet calls in graph order: the noisy image each call gets and
    its raw output (before the learned-variance half is dropped)."""
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    firsts = [c for c in convs if UNET_FIRST_CONV in c.get_friendly_name()]
    lasts = [c for c in convs if UNET_OUT_CONV in c.get_friendly_name()]
    outputs = []
    for conv in lasts:
        adds = [t.get_node() for t in conv.output(0).get_target_inputs()
                if t.get_node().get_type_name() == "Add"]
        if len(adds) != 1:
            return [], []
        outputs.append(adds[0].output(0))
    return [c.input(0).get_source_output() for c in firsts], outputs


def _same_output(model, out):
    """`out` (a port of another copy of the graph) in `model`, found by node name and index."""
    name = out.get_node().get_friendly_name()
    nodes = [op for op in model.get_ops() if op.get_friendly_name() == name]
    if len(nodes) != 1:
        raise BackendError(f"node {name!r} is not unique in the graph; use model.precision: fp32")
    return nodes[0].output(out.get_index())


def cut(model, results: list, cuts: list):
    """A copy of the graph computing `results`, with each port in `cuts` made an input."""
    import openvino as ov
    from openvino import opset13

    copy = model.clone()
    params = list(copy.get_parameters())
    outs = [_same_output(copy, r) for r in results]
    for c in cuts:
        port = _same_output(copy, c)
        param = opset13.parameter(port.get_partial_shape(), port.get_element_type(),
                                  name=f"{port.get_node().get_friendly_name()}:in")
        for target in list(port.get_target_inputs()):
            target.replace_source_output(param.output(0))
        params.append(param)
    return ov.Model([opset13.result(o) for o in outs], params)


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, bundle: Bundle, max_batch: int = 64, threads: int | None = None,
                 precision: str = "bf16", device: str = "CPU", gate: bool = True):
        """`gate=False` skips the BF16 parity gate: for benchmarks that measure what it
        would refuse, never for scoring."""
        super().__init__(bundle, max_batch)
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("openvino is not installed; pip install openvino") from None
        self.core = ov.Core()
        self.parity = None
        self.device = device.lower()
        self.config = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = self.core.read_model(str(bundle.graph_path))
        except RuntimeError as e:
            raise BackendError(f"openvino cannot read {bundle.graph_path}: "
                               f"{str(e).splitlines()[0]}; re-export the bundle") from None
        self.precision = self._precision(precision, device)
        if self.precision == "bf16":
            self._compile_split(model, device)
            self.parity = self._gate() if gate else None
        else:
            whole = self.core.compile_model(model, device, {**self.config,
                                                            "INFERENCE_PRECISION_HINT": "f32"})
            self._requests = [whole.create_infer_request()]
            self._unets = []

    def _precision(self, requested: str, device: str) -> str:
        """bf16 only when asked for (it must pass the gate); fp32 otherwise, the GPU default
        'fp16' included."""
        if requested != "bf16":
            return "fp32"
        if device.upper() != "CPU" or not cpu_has_bf16():
            raise BackendError("model.precision bf16 needs a CPU with native BF16 (AVX512-BF16 "
                               "or AMX); set model.precision: fp32")
        return "bf16"

    def _compile_split(self, model, device: str) -> None:
        inputs, outputs = unet_boundaries(model)
        steps = len(self.bundle.manifest.schedule.timesteps)
        if not (len(inputs) == len(outputs) == steps):
            raise BackendError(f"cannot find the {steps} UNet calls in {self.bundle.graph_path} "
                               f"(found {len(inputs)} starts, {len(outputs)} ends); set "
                               "model.precision: fp32")
        finals = [r.input(0).get_source_output() for r in model.get_results()]
        # FP32 path up to each call (and, last, the statistics) from the images and the
        # UNet outputs so far; each UNet call in BF16 from its noisy input.
        paths = [cut(model, [inputs[k]], outputs[:k]) for k in range(steps)]
        paths.append(cut(model, finals, outputs))
        unets = [cut(model, [outputs[k]], [inputs[k]]) for k in range(steps)]
        fp32 = {**self.config, "INFERENCE_PRECISION_HINT": "f32"}
        bf16 = {**self.config, "INFERENCE_PRECISION_HINT": "bf16"}
        self._requests = [self.core.compile_model(m, device, fp32).create_infer_request()
                          for m in paths]
        self._unets = [self.core.compile_model(m, device, bf16).create_infer_request()
                       for m in unets]

    def _gate(self):
        """The BF16 parity gate on the bundle's recorded images and FP32 outputs."""
        from ..parity import compare

        ref = self.bundle.parity_reference()
        if ref is None:
            raise BackendError(f"{self.bundle.root} has no parity.npz to check BF16 against; "
                               "re-export the bundle or set model.precision: fp32")
        feats, maps = self(ref["images"])
        report = compare("openvino bf16", self.bundle.feature_names, ref["features"],
                         ref["heatmap"], feats, maps, "bf16")
        if not report.passed:
            raise BackendError(f"BF16 misses the parity gate ({'; '.join(report.failures)}); "
                               "set model.precision: fp32")
        return report

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw: list[np.ndarray] = []
        for path, unet in zip(self._requests, self._unets):
            noisy = path.infer([images, *raw])[0]
            # copy: the request reuses its output buffer on the next call
            raw.append(np.array(unet.infer([images, noisy])[0]))
        out = self._requests[-1].infer([images, *raw])
        return np.array(out[0]), np.array(out[1])

    def describe(self) -> dict:
        return {**super().describe(), "precision": self.precision,
                "threads": self.config.get("INFERENCE_NUM_THREADS")}

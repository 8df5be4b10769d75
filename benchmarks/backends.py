"""Throughput of the pipeline on each backend, as ratios against torch measured in the same run.

    python benchmarks/backends.py --checkpoint edge/models/default.safetensors --batch 12 --batch 64

Exports two graphs from one checkpoint: the bundle's (uint8 NHWC in, scaling inside) and a
float one (float32 NCHW in [-1, 1], scaling done by the caller in numpy, timed with it), so the
cost of putting the normalisation in the graph is measured, not assumed. Every configuration
runs interleaved for --rounds rounds and the median is reported, since this machine is noisy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, images, repeats: int) -> float:
    fn(images)  # warm
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(images)
    return repeats * len(images) / (time.perf_counter() - t0)


def main() -> int:
    from pathwatch.edge.backends import load_backend
    from pathwatch.edge.bundle import Bundle
    from pathwatch.edge.datasets import load_images, to_model_input
    from pathwatch.export.bundle_export import build_pipeline, export_bundle
    from pathwatch.export.checkpoint import load_checkpoint
    from pathwatch.export.features import FeatureSpec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="edge/models/default.safetensors")
    p.add_argument("--variant", default="6d+ssim")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--batch", type=int, action="append", help="batch sizes (default 12 and 64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every backend")
    p.add_argument("--json", help="write results here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = FeatureSpec(a.variant)
    tmp = Path(tempfile.mkdtemp())
    bundle = Bundle.load(export_bundle(a.checkpoint, tmp / "bundle", spec, k=a.k, parity_n=32,
                                       log=lambda m: None).bundle.root)
    loaded = load_checkpoint(a.checkpoint)
    s = bundle.manifest.schedule
    from pathwatch.export.schedule import ReducedSchedule
    sched = ReducedSchedule(s.kind, s.steps, s.timesteps)
    float_graph = tmp / "float.onnx"
    float_pipe = build_pipeline(loaded, sched, spec)
    float_pipe.uint8_input = False
    size = loaded.config.image_size
    torch.onnx.export(float_pipe, (torch.zeros(2, 3, size, size),), str(float_graph),
                      input_names=["x"], output_names=["features", "heatmap"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if a.threads:
        opts.intra_op_num_threads = a.threads
    float_sess = ort.InferenceSession(str(float_graph), opts, providers=["CPUExecutionProvider"])
    ort_u8 = load_backend(bundle, "onnxruntime", threads=a.threads, warmup=False, log=lambda m: None)
    torch_b = load_backend(bundle, "torch", threads=a.threads, warmup=False, log=lambda m: None)

    def ort_float(images):
        return float_sess.run(None, {"x": to_model_input(images)})

    configs = {"torch (uint8 in)": torch_b, "onnxruntime uint8 NHWC in": ort_u8,
               "onnxruntime float NCHW in": ort_float}
    results = []
    for batch in a.batch or [12, 64]:
        images = load_images("photos:test", size, batch, seed=1).images
        rates: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(a.rounds):
            for name, fn in configs.items():
                rates[name].append(timed(fn, images, a.repeats))
        base = statistics.median(rates["torch (uint8 in)"])
        for name, r in rates.items():
            med = statistics.median(r)
            results.append({"batch": batch, "config": name, "images_per_s": round(med, 1),
                            "ratio_vs_torch": round(med / base, 3)})
    print(f"{'batch':>5}  {'configuration':<28} {'img/s':>8}  {'vs torch':>8}")
    for r in results:
        print(f"{r['batch']:>5}  {r['config']:<28} {r['images_per_s']:>8.1f}  {r['ratio_vs_torch']:>8.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"k": a.k, "variant": a.variant, "threads": a.threads,
                                            "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

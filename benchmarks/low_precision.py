"""Lower precision on the CPU, behind the parity gate on scores: is it faster, and does it
score the same?

    python benchmarks/low_precision.py                     # about 10 minutes on 2 cores
    python benchmarks/low_precision.py --json low_precision.json

Variants of the shipped bundle's graph (K = 3, 6d+ssim), all against ONNX Runtime FP32
measured in the same interleaved rounds:

- openvino fp32: the whole graph in OpenVINO at FP32.
- openvino bf16 (UNet calls): the backend's BF16 mode: each UNet call in BF16, the path
  arithmetic and statistics in FP32 (edge/backends/openvino_backend.py), gate skipped.
- openvino bf16 (whole graph): the whole graph at OpenVINO's BF16 inference precision.
- onnxruntime int8 / openvino int8: static QDQ quantisation of the UNet's convolutions
  (per-channel symmetric weights, activations calibrated with min/max on normal tiles of the
  same footage), the rest of the graph in FP32.

The gate (issue: rank correlation of tile scores with FP32 >= 0.999, zero-shot AUROC within
.005): per-position densities are fitted on the FP32 features of the first half of vtest.avi's
frames (4 x 3 tiles of 32 x 32), and the second half's tiles are scored from FP32 features and
from each variant's; Spearman per position (the worst is reported) and over all tiles. Zero-
shot AUROC: the default model (trained on photos) on Fashion-MNIST test (normal) against
scikit-learn's digits, a density fitted on each variant's own Fashion-MNIST training features.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
GRID = (4, 3)
TILE = 32
BATCH = 12  # one frame of the default 4 x 3 grid


def say(msg: str) -> None:
    print(msg, flush=True)


def vtest_tiles(stride: int) -> np.ndarray:
    """(frames, 12, 32, 32, 3) uint8 RGB tiles of vtest.avi resized to the 4 x 3 grid."""
    import cv2
    cap = cv2.VideoCapture(VTEST)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {VTEST}: apt-get install opencv-doc")
    frames, i = [], 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        if i % stride == 0:
            f = cv2.resize(f, (GRID[0] * TILE, GRID[1] * TILE), interpolation=cv2.INTER_AREA)
            f = cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
            frames.append([f[y:y + TILE, x:x + TILE] for y in range(0, f.shape[0], TILE)
                           for x in range(0, f.shape[1], TILE)])
        i += 1
    return np.asarray(frames, np.uint8)


def quantized_graph(graph: Path, calib: np.ndarray, out: Path) -> Path:
    """Static QDQ INT8 of the UNet convolutions, calibrated on `calib` tiles."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calib[i:i + BATCH]}
                                 for i in range(0, len(calib), BATCH)])

        def get_next(self):
            return next(self.batches, None)

    nodes = [n.name for n in onnx.load(str(graph)).graph.node
             if n.name.startswith("/model/") and n.op_type == "Conv"]
    quantize_static(str(graph), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    nodes_to_quantize=nodes, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True})
    return out


def ort_runner(graph: Path, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    return lambda b: s.run(["features"], {"images": b})[0]


def ov_whole_runner(graph: Path, threads: int, precision: str):
    import openvino as ov
    cm = ov.Core().compile_model(str(graph), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    req = cm.create_infer_request()
    return lambda b: np.array(req.infer([b])[0])


def make_variants(bundle, threads: int, calib: np.ndarray, tmp: Path) -> dict:
    from pathwatch.edge.backends.openvino_backend import OpenVinoBackend, cpu_has_bf16

    graph = bundle.graph_path
    v = {"onnxruntime fp32": ort_runner(graph, threads),
         "openvino fp32": ov_whole_runner(graph, threads, "f32")}
    if cpu_has_bf16():
        split = OpenVinoBackend(bundle, 64, threads, "bf16", gate=False)
        v["openvino bf16 (UNet calls)"] = lambda b: split(b)[0]
        v["openvino bf16 (whole graph)"] = ov_whole_runner(graph, threads, "bf16")
    else:
        say("this CPU has no native BF16: the BF16 variants are left out")
    q = quantized_graph(graph, calib, tmp / "int8.onnx")
    v["onnxruntime int8 (UNet convs)"] = ort_runner(q, threads)
    v["openvino int8 (UNet convs)"] = ov_whole_runner(q, threads, "f32")
    return v


def features(run, tiles: np.ndarray) -> np.ndarray:
    return np.concatenate([run(tiles[i:i + BATCH]) for i in range(0, len(tiles), BATCH)])


def score_agreement(ref_fit, ref_test, got_test) -> dict:
    """Per-position densities fitted on FP32 features; Spearman of FP32 vs variant scores."""
    from scipy.stats import spearmanr

    from pathwatch.edge.density import fit_gmm
    per, a_all, b_all = [], [], []
    for p in range(ref_fit.shape[1]):
        d = fit_gmm(ref_fit[:, p].astype(np.float64), components=(1, 2, 3), seed=0)
        a, b = d.score(ref_test[:, p]), d.score(got_test[:, p])
        per.append(float(spearmanr(a, b).statistic))
        a_all.append(a)
        b_all.append(b)
    return {"spearman_worst_position": min(per), "spearman_all_tiles":
            float(spearmanr(np.concatenate(a_all), np.concatenate(b_all)).statistic)}


def zero_shot_auroc(run, sets: dict) -> float:
    from sklearn.metrics import roc_auc_score

    from pathwatch.edge.density import fit_gmm
    f = {k: features(run, v).astype(np.float64) for k, v in sets.items()}
    d = fit_gmm(f["fit"], seed=0)
    s_in, s_out = -d.score(f["test"]), -d.score(f["ood"])  # anomalies positive
    return float(roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--timed-tiles", type=int, default=120, help="tiles per variant per round")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every variant")
    p.add_argument("--stride", type=int, default=4, help="every n-th vtest frame (795 frames)")
    p.add_argument("--zero-shot", type=int, default=1000, help="images per zero-shot set")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from pathwatch.edge.bundle import Bundle
    from pathwatch.edge.datasets import load_images

    bundle = Bundle.load(ROOT / "edge" / "models" / "default-bundle")
    tiles = vtest_tiles(a.stride)
    half = len(tiles) // 2
    fit_t, test_t = tiles[:half], tiles[half:]
    flat = lambda t: t.reshape(-1, TILE, TILE, 3)  # noqa: E731
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        variants = make_variants(bundle, a.threads, flat(fit_t)[::4], Path(tmp))
        names = list(variants)
        say(f"{len(tiles)} frames x 12 tiles; variants: {', '.join(names)}")
        feats = {n: features(r, flat(test_t)).reshape(len(test_t), 12, -1)
                 for n, r in variants.items()}
        ref_fit = features(variants[names[0]], flat(fit_t)).reshape(half, 12, -1)
        sets = {k: load_images(s, TILE, a.zero_shot, seed=0).images
                for k, s in (("fit", "fmnist:train"), ("test", "fmnist:test"), ("ood", "digits"))}
        rows = {n: {"auroc": zero_shot_auroc(variants[n], sets),
                    **score_agreement(ref_fit, feats[names[0]], feats[n])} for n in names}
        timed = flat(test_t)[:a.timed_tiles]
        speed = {n: [] for n in names}
        loads = []
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                t0 = time.perf_counter()
                features(variants[n], timed)
                speed[n].append(len(timed) / (time.perf_counter() - t0))
            loads.append(os.getloadavg()[0])
    base = np.array(speed[names[0]])
    auroc0 = rows[names[0]]["auroc"]
    for n in names:
        x = np.array(speed[n])
        rows[n].update(tiles_per_s=float(np.median(x)), tiles_per_s_range=[float(x.min()), float(x.max())],
                       x_fp32=float(np.median(x / base)), x_fp32_range=[float((x / base).min()), float((x / base).max())])
        r = rows[n]
        r["gate"] = ("pass" if r["spearman_worst_position"] >= 0.999 and r["spearman_all_tiles"] >= 0.999
                     and abs(r["auroc"] - auroc0) <= 0.005 else "refused")
    say(f"\nthreads {a.threads}, batch {BATCH}, {a.rounds} rounds, load average "
        f"{np.median(loads):.2f} median ({min(loads):.2f}-{max(loads):.2f}), {time.time() - started:.0f} s\n")
    say("| variant | tiles/s | x onnxruntime fp32 | score Spearman, worst position | all tiles | "
        "zero-shot AUROC | gate |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for n in names:
        r = rows[n]
        say(f"| {n} | {r['tiles_per_s']:.1f} [{r['tiles_per_s_range'][0]:.1f}-{r['tiles_per_s_range'][1]:.1f}] "
            f"| {r['x_fp32']:.2f} [{r['x_fp32_range'][0]:.2f}-{r['x_fp32_range'][1]:.2f}] "
            f"| {r['spearman_worst_position']:.4f} | {r['spearman_all_tiles']:.4f} | {r['auroc']:.4f} | {r['gate']} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "rounds": a.rounds, "threads": a.threads,
                                            "load": loads}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One Triton server shared by capture daemons: tiles/s per client and the batches it formed.

Serves the shipped default bundle's exported repository with the `tritonserver` binary of
the nvidia-pytriton wheel (the same server and Python-backend stand-in for Triton's
onnxruntime backend the tests use: see tests/test_triton.py), then runs rounds of 1 and of 2
concurrent daemon-equivalent clients. A client is a process with the daemon's backend
(`TritonBackend`, gRPC) sending one camera's pass (the default 4 x 3 grid: 12 tiles of real
images) in a closed loop, as a daemon without an fps cap does. Batches formed by the server
come from its metrics endpoint: nv_inference_count / nv_inference_exec_count (tiles per
execution) and nv_inference_request_success / nv_inference_exec_count (requests merged per
execution). In-process onnxruntime on the same tiles is the reference row.

    python benchmarks/triton_share.py --seconds 6 --rounds 6 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

BUNDLE = ROOT / "edge" / "models" / "default-bundle"
MODEL = "pathwatch"


def _tiles(n: int):
    from pathwatch.edge.bundle import Bundle
    return Bundle.load(BUNDLE).parity_reference()["images"][:n]


def client(url: str, tiles: int, start_at: float, seconds: float, out) -> None:
    from pathwatch.edge.backends.triton_backend import TritonBackend
    from pathwatch.edge.bundle import Bundle

    backend = TritonBackend(Bundle.load(BUNDLE), 64, url=url, model=MODEL, timeout_s=30.0)
    images = _tiles(tiles)
    backend(images)  # warm
    time.sleep(max(0.0, start_at - time.time()))
    calls, latencies = 0, []
    end = start_at + seconds
    while (t0 := time.time()) < end:
        backend(images)
        latencies.append(time.time() - t0)
        calls += 1
    wall = time.time() - start_at
    backend.close()
    out.put({"tiles_s": calls * tiles / wall, "calls": calls,
             "latency_ms_p50": 1000 * statistics.median(latencies)})


def metrics(server) -> dict[str, float]:
    found = {}
    for name in ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_count"):
        m = re.search(rf'^{name}{{[^}}]*model="{MODEL}"[^}}]*}} (\S+)$', server.metrics(), re.M)
        found[name] = float(m.group(1)) if m else float("nan")
    return found


def run_clients(server, n: int, tiles: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 8.0  # every client connected and warm first
    procs = [ctx.Process(target=client, args=(server.grpc_url, tiles, start_at, seconds, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time() - 0.5))
    before = metrics(server)
    results = [out.get(timeout=seconds + 120) for _ in procs]
    after = metrics(server)
    for p in procs:
        p.join()
    d = {k: after[k] - before[k] for k in after}
    execs = d["nv_inference_exec_count"]
    return {"clients": n, "tiles_s_per_client": [round(r["tiles_s"], 1) for r in results],
            "tiles_s_total": round(sum(r["tiles_s"] for r in results), 1),
            "latency_ms_p50": [round(r["latency_ms_p50"], 1) for r in results],
            "tiles_per_execution": round(d["nv_inference_count"] / execs, 2) if execs else None,
            "requests_per_execution": round(d["nv_inference_request_success"] / execs, 2)
            if execs else None}


def local_reference(tiles: int, seconds: float) -> float:
    from pathwatch.edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    from pathwatch.edge.bundle import Bundle

    backend = OnnxRuntimeBackend(Bundle.load(BUNDLE), 64)
    images = _tiles(tiles)
    backend(images)
    calls, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        backend(images)
        calls += 1
    return calls * tiles / (time.time() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tiles", type=int, default=12, help="tiles per call (one camera's pass)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from pathwatch.cli import main as cli
    from test_triton import TritonServer, serving_copy

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        assert cli(["export", "--bundle", str(BUNDLE), "--triton-repository",
                    str(tmp / "models")]) == 0
        server = TritonServer(serving_copy(tmp / "models", MODEL, tmp / "serving"), tmp).start()
        load = [os.getloadavg()]
        rows = {1: [], 2: [], "local": []}
        try:
            for r in range(a.rounds):  # interleaved, the order flipped every round
                rows["local"].append(round(local_reference(a.tiles, a.seconds), 1))
                for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                    rows[n].append(run_clients(server, n, a.tiles, a.seconds))
                    print(json.dumps(rows[n][-1]), flush=True)
                load.append(os.getloadavg())
        finally:
            server.kill()
    report = {"cpus": os.cpu_count(), "loadavg_1_5_15": [list(map(lambda x: round(x, 2), l))
                                                         for l in load],
              "seconds": a.seconds, "rounds": a.rounds, "tiles_per_call": a.tiles,
              "local_onnxruntime_tiles_s": rows["local"],
              "one_client": rows[1], "two_clients": rows[2]}
    summary = {
        "local onnxruntime, tiles/s (median)": statistics.median(rows["local"]),
        "1 client, tiles/s (median)": statistics.median(r["tiles_s_total"] for r in rows[1]),
        "2 clients, tiles/s per client (median)": statistics.median(
            t for r in rows[2] for t in r["tiles_s_per_client"]),
        "2 clients, tiles/s total (median)": statistics.median(r["tiles_s_total"] for r in rows[2]),
        "1 client, tiles per execution": statistics.median(r["tiles_per_execution"] for r in rows[1]),
        "2 clients, tiles per execution": statistics.median(r["tiles_per_execution"] for r in rows[2]),
        "2 clients, requests per execution": statistics.median(
            r["requests_per_execution"] for r in rows[2]),
    }
    report["summary"] = summary
    print(json.dumps(report, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

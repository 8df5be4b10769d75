"""A Triton model repository for a bundle: `pathwatch export --triton-repository DIR`.

    DIR/<model>/config.pbtxt              inputs, outputs, max batch, dynamic batching, and the
                                          bundle's contract as the parameter pathwatch.contract
    DIR/<model>/<N>/model.onnx            the bundle's graph (platform onnxruntime_onnx), or
    DIR/<model>/<N>/model.plan            one of its TensorRT engines (platform tensorrt_plan)
    DIR/<model>/pathwatch-contract.json   the same contract, for people and tools

The daemon's triton backend reads the contract back through the server's model-config API and
refuses a model that serves another bundle. The version N starts at 1 and goes up by one each
time the model is written for another graph (the same graph keeps its number); older versions
are removed. The contract names N and the backend pins its requests to it, so a server that
reloads the model for another bundle fails those requests (and the reconnect refuses the new
contract) rather than answering with other numbers. No torch needed: this only reads a bundle.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pathwatch.edge.backends.triton_backend import (CONTRACT_FILE, contract_parameters,
                                                    serving_contract, tensor_specs)
from pathwatch.edge.bundle import Bundle, BundleError, sha256_of
from pathwatch.edge.files import write_atomic

PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"),
             "tensorrt": ("tensorrt_plan", "model.plan")}


def pbtxt_string(s: str) -> str:
    """A protobuf text-format string literal."""
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{out}"'


def _tensor(t: dict) -> str:
    dims = ", ".join(str(d) for d in t["dims"])
    return (f'  {{\n    name: {pbtxt_string(t["name"])}\n    data_type: TYPE_{t["datatype"]}\n'
            f"    dims: [ {dims} ]\n  }}")


def model_config(bundle: Bundle, model: str, platform: str, max_batch: int,
                 queue_delay_us: int, parameters: dict[str, str]) -> str:
    """config.pbtxt text. No instance_group: Triton then puts one instance on every GPU it
    sees (or on the CPU without one); edit it on the server if you want otherwise."""
    image, outputs = tensor_specs(bundle)
    params = "\n".join(f"parameters {{\n  key: {pbtxt_string(k)}\n  value: {{ string_value: "
                       f"{pbtxt_string(v)} }}\n}}" for k, v in parameters.items())
    return (f"# Written by `pathwatch export --triton-repository` for bundle {bundle.label}.\n"
            f"# The pathwatch.contract parameter is checked by the daemon's triton backend;\n"
            f"# export again rather than editing inputs, outputs or the model file.\n"
            f"name: {pbtxt_string(model)}\n"
            f"platform: {pbtxt_string(PLATFORMS[platform][0])}\n"
            f"max_batch_size: {max_batch}\n"
            f"input [\n{_tensor(image)}\n]\n"
            f"output [\n" + ",\n".join(_tensor(o) for o in outputs) + "\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            f"version_policy: {{ latest: {{ num_versions: 1 }} }}\n"
            f"{params}\n")


def _engine(bundle: Bundle, precision: str) -> dict:
    for entry in bundle.engines:
        if entry.get("precision") == precision and (bundle.root / entry["file"]).is_file():
            return entry
    raise BundleError(f"{bundle.root} has no {precision} TensorRT engine; build one with "
                      "`pathwatch export --tensorrt` on a machine with the server's GPU and the "
                      "TensorRT version of its Triton container, or use --triton-platform "
                      "onnxruntime")


def write_repository(bundle: Bundle, directory: str | Path, model: str = "pathwatch",
                     platform: str = "onnxruntime", max_batch: int | None = None,
                     precision: str = "fp16", queue_delay_us: int = 2000) -> Path:
    """Write (or replace) DIR/<model>; returns that directory. `max_batch`: default the
    bundle's (capped by the engine's for a TensorRT plan)."""
    if platform not in PLATFORMS:
        raise BundleError(f"Triton platform {platform!r}: use onnxruntime or tensorrt")
    max_batch = max_batch or bundle.manifest.defaults.max_batch or 64
    extra: dict = {"platform": PLATFORMS[platform][0]}
    if platform == "tensorrt":
        entry = _engine(bundle, precision)
        source = bundle.root / entry["file"]
        max_batch = min(max_batch, int(entry.get("max_batch", max_batch)))
        extra["engine"] = {k: entry.get(k) for k in ("file", "gpu", "compute_capability",
                                                      "tensorrt", "precision", "max_batch")}
        extra["engine"]["sha256"] = sha256_of(source)
    else:
        source = bundle.graph_path
    target = Path(directory).expanduser() / model
    extra["model_version"] = version = _version(target, extra, bundle)
    version_dir = target / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    # The model file first, the config last: a server polling the repository never sees a
    # config that names a model file not yet there.
    filename = PLATFORMS[platform][1]
    tmp = version_dir / f".{filename}.partial"
    shutil.copyfile(source, tmp)
    tmp.replace(version_dir / filename)
    for other in {f for _, f in PLATFORMS.values()} - {filename}:
        (version_dir / other).unlink(missing_ok=True)  # left from an export for the other one
    params = contract_parameters(bundle, **extra)
    contract = serving_contract(bundle, **extra)
    write_atomic(target / CONTRACT_FILE, json.dumps(contract, indent=1) + "\n")
    write_atomic(target / "config.pbtxt",
                 model_config(bundle, model, platform, max_batch, queue_delay_us, params))
    for old in _versions(target):
        if old != version:
            shutil.rmtree(target / str(old))  # `latest: 1` would not serve it; nothing should
    return target


def _versions(target: Path) -> list[int]:
    if not target.is_dir():
        return []
    return sorted(int(p.name) for p in target.iterdir()
                  if p.is_dir() and re.fullmatch(r"[0-9]+", p.name))


def _version(target: Path, extra: dict, bundle: Bundle) -> int:
    """The version this export gets: the one already there for the same graph and model file,
    else one more than the highest there."""
    versions = _versions(target)
    try:
        old = json.loads((target / CONTRACT_FILE).read_text())
    except (OSError, ValueError):
        old = {}
    same = (isinstance(old, dict) and old.get("graph_sha256") == bundle.manifest.graph.sha256
            and all(old.get(k) == extra.get(k) for k in ("platform", "engine")))
    if same and old.get("model_version") in versions:
        return old["model_version"]
    return (versions[-1] if versions else 0) + 1

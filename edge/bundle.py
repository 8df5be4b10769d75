"""The bundle: what `pathwatch export` writes and the edge runtime reads (no torch here).

A bundle is a directory:

    manifest.json        the contract: model, weights hash, input format, schedule, features,
                         graph file and hash, exporter and versions, parity figures, engines
    pipeline.onnx        the whole K-step path and feature statistic as one graph
    weights.safetensors  the UNet weights (for the torch backend and for re-exports)
    parity.npz           a few real images with the torch outputs recorded at export, so
                         `pathwatch bundle verify` can check any backend on any device
    engines/             TensorRT engines, named by GPU, TensorRT version and precision

Loading checks the manifest's shape and the graph's hash, and that the contract embedded in
the graph's metadata agrees with the manifest (read from the ONNX file directly, so every
backend gets the check), so an edited manifest or a swapped graph is refused instead of
silently mis-scoring.
"""
from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "pathwatch-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH = "pipeline.onnx"
WEIGHTS = "weights.safetensors"
PARITY = "parity.npz"
CONTRACT_KEY = "pathwatch.contract"  # ONNX metadata_props key holding contract_of(manifest)

REQUIRED = {
    "model": ("name", "config", "weights_sha256"),
    "input": ("name", "dtype", "layout", "height", "width", "channels", "color_order",
              "value_range", "resize"),
    "schedule": ("kind", "steps", "timesteps"),
    "features": ("spec", "names"),
    "graph": ("file", "sha256", "opset", "exporter", "outputs"),
}


# Manifest fields that are lists, and what their entries must be.
LIST_FIELDS = {("features", "names"): str, ("schedule", "timesteps"): int}


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message says what and how to fix it."""


def _varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """(field number, wire type, value) of one protobuf message (bytes or memoryview, whose
    slices copy nothing), top level only."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """ModelProto.metadata_props (field 14, entries of key = 1, value = 2) without the onnx
    package, which a device that only runs bundles need not have."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)  # the graph field is skipped, not copied
            props, problem = _metadata_props(view)
            view.release()  # no slice of the map may outlive it
    except (ValueError, OSError) as e:
        props, problem = {}, str(e)
    if problem is not None:
        raise BundleError(f"{path} is not a readable ONNX file ({problem}); re-export the bundle")
    return props


def _metadata_props(view) -> tuple[dict[str, str], str | None]:
    """(props, None), or ({}, what is wrong); returns no view into `view`, and leaves no
    exception (whose traceback would hold one) behind."""
    props = {}
    try:
        for number, wire, value in _fields(view):
            if number == 14 and wire == 2:
                entry = {n: bytes(v) for n, w, v in _fields(value) if w == 2}
                props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    except (ValueError, UnicodeDecodeError) as e:
        return {}, str(e)
    return props, None


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def contract_of(manifest: dict) -> dict:
    """The part of the manifest the graph's numbers depend on; embedded in the graph too."""
    return {"weights_sha256": manifest["model"]["weights_sha256"],
            "input": {k: manifest["input"][k] for k in REQUIRED["input"]},
            "schedule": {k: manifest["schedule"][k] for k in REQUIRED["schedule"]},
            "features": manifest["features"]}


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass
class Bundle:
    root: Path
    manifest: dict
    engines: list[dict] = field(default_factory=list)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, root: str | Path, check_hash: bool = True) -> "Bundle":
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BundleError(f"bundle {root} is not a directory; create one with "
                              "`pathwatch export --checkpoint RUN --out DIR`")
        path = root / MANIFEST
        if not path.is_file():
            raise BundleError(f"{path} is missing; this is not a bundle directory (re-export it)")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
        bundle = cls(root, manifest, list(manifest.get("engines", [])))
        bundle.validate(check_hash)
        return bundle

    def validate(self, check_hash: bool = True) -> None:
        m, where = self.manifest, self.root / MANIFEST
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BundleError(f"{where}: not a pathwatch bundle manifest (format is "
                              f"{m.get('format') if isinstance(m, dict) else type(m).__name__!r})")
        if m.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where}: format_version {m.get('format_version')} is not "
                              f"supported (this pathwatch reads {FORMAT_VERSION}); re-export it")
        for section, keys in REQUIRED.items():
            if not isinstance(m.get(section), dict):
                raise BundleError(f"{where}: section '{section}' is missing; re-export the bundle")
            missing = [k for k in keys if k not in m[section]]
            if missing:
                raise BundleError(f"{where}: {section}.{missing[0]} is missing; re-export the bundle")
        for (section, key), kind in LIST_FIELDS.items():
            value = m[section][key]
            if not isinstance(value, list) or not value or \
                    not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                raise BundleError(f"{where}: {section}.{key} must be a non-empty list of "
                                  f"{kind.__name__}s (got {value!r:.60}); re-export the bundle")
        graph = self.graph_path
        if not graph.is_file():
            raise BundleError(f"{graph} is missing; re-export the bundle")
        if check_hash and sha256_of(graph) != m["graph"]["sha256"]:
            raise BundleError(f"{graph} does not match the sha256 in {MANIFEST} (the graph or the "
                              "manifest was changed after export); re-export the bundle")
        self.check_graph_contract(onnx_metadata(graph).get(CONTRACT_KEY))

    def check_graph_contract(self, embedded: str | None) -> None:
        """Compare the contract stored in the graph's metadata with the manifest."""
        if embedded is None:
            raise BundleError(f"{self.graph_path} has no '{CONTRACT_KEY}' metadata; it was not "
                              "written by `pathwatch export` (re-export the bundle)")
        try:
            graph = json.loads(embedded)
        except json.JSONDecodeError:
            graph = None
        if not isinstance(graph, dict):
            raise BundleError(f"{self.graph_path}: its '{CONTRACT_KEY}' metadata is not a JSON "
                              "object; re-export the bundle")
        try:
            manifest = contract_of(self.manifest)
        except (KeyError, TypeError) as e:
            raise BundleError(f"{self.root / MANIFEST}: cannot read the contract ({e}); "
                              "re-export the bundle") from None
        for key in manifest:
            if canonical(graph.get(key)) != canonical(manifest[key]):
                raise BundleError(f"{self.root / MANIFEST}: '{key}' disagrees with the graph it "
                                  f"describes (manifest edited after export?); re-export the bundle")

    # ------------------------------------------------------------------ facts
    @property
    def graph_path(self) -> Path:
        return self.root / self.manifest["graph"]["file"]

    @property
    def weights_path(self) -> Path:
        return self.root / self.manifest.get("weights_file", WEIGHTS)

    @property
    def parity_path(self) -> Path:
        return self.root / PARITY

    @property
    def weights_sha256(self) -> str:
        return self.manifest["model"]["weights_sha256"]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.manifest["input"]["height"]), int(self.manifest["input"]["width"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["features"]["names"])

    @property
    def feature_spec(self) -> dict:
        return dict(self.manifest["features"]["spec"])

    @property
    def timesteps(self) -> list[int]:
        return list(self.manifest["schedule"]["timesteps"])

    @property
    def label(self) -> str:
        spec = self.feature_spec
        variant = spec["variant"] + (f"/{spec['trajectory']}" if spec["variant"] == "error" else "")
        return f"{self.manifest['model']['name']} {variant} K={len(self.timesteps)}"

    def identity(self) -> dict:
        """What determines this bundle's numbers (for caches and calibration files)."""
        return {"weights_sha256": self.weights_sha256, "graph_sha256": self.manifest["graph"]["sha256"],
                "schedule": self.manifest["schedule"], "features": self.manifest["features"]}

    def parity_reference(self) -> dict[str, np.ndarray] | None:
        """Images and torch outputs recorded at export (None for a bundle without them)."""
        if not self.parity_path.is_file():
            return None
        with np.load(self.parity_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def write_manifest(self) -> None:
        self.manifest["engines"] = self.engines
        write_json_atomic(self.root / MANIFEST, self.manifest)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)

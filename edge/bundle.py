"""The bundle: what `pathwatch export` writes and the edge runtime reads (no torch here).

A bundle is a directory:

    manifest.json        the contract: model, weights hash, input format, schedule, features,
                         graph file and hash, exporter and versions, parity figures, engines
    pipeline.onnx        the whole K-step path and feature statistic as one graph
    weights.safetensors  the UNet weights (for the torch backend and for re-exports)
    parity.npz           a few real images with the torch outputs recorded at export, so
                         `pathwatch bundle verify` can check any backend on any device
    engines/             TensorRT engines, named by GPU, TensorRT version and precision
    cheap/               optional: the same model at the schedule's first timestep alone (a
                         bundle of its own), the cheap pass of dynamic steps

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

from .files import write_json_atomic

FORMAT = "pathwatch-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH = "pipeline.onnx"
WEIGHTS = "weights.safetensors"
PARITY = "parity.npz"
CHEAP = "cheap"  # the one-step head for dynamic steps: a bundle of its own inside this one
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
# How a field's expected type is named in messages (JSON's words: the file is JSON).
JSON_KINDS = {str: "a string", int: "an integer", float: "a number", dict: "an object",
              list: "a list"}


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message says what and how to fix it."""


def default_density(label: str) -> str:
    """DiffPath-1D pairs a 1-D statistic with a KDE; everything else with a selected GMM."""
    return "kde" if label.startswith("diffpath1d") else "gmm-bic"


# ---------------------------------------------------------------------- the typed manifest
@dataclass(frozen=True)
class ModelInfo:
    name: str
    config: dict  # the improved-diffusion flags, as exported
    weights_sha256: str
    source_sha256: str | None  # the checkpoint exported (a .pt differs from the safetensors)
    parameters: int | None


@dataclass(frozen=True)
class InputFormat:
    name: str
    dtype: str
    layout: str
    height: int
    width: int
    channels: int
    color_order: str
    value_range: tuple[float, ...]
    resize: str


@dataclass(frozen=True)
class Schedule:
    kind: str
    steps: int
    timesteps: tuple[int, ...]


@dataclass(frozen=True)
class Features:
    spec: dict  # FeatureSpec.to_dict(); copied out by Bundle.feature_spec
    names: tuple[str, ...]
    label: str | None  # FeatureSpec.label, as the exporter wrote it


@dataclass(frozen=True)
class GraphInfo:
    file: str
    sha256: str
    opset: int
    exporter: str


@dataclass(frozen=True)
class Defaults:
    density: str  # the density kind the feature variant was measured with
    max_batch: int | None


@dataclass(frozen=True)
class Manifest:
    """manifest.json, checked and parsed once; `raw` is the file's JSON, kept to write it back
    and to compare the contract with the one embedded in the graph."""
    raw: dict
    model: ModelInfo
    input: InputFormat
    schedule: Schedule
    features: Features
    graph: GraphInfo
    defaults: Defaults
    weights_file: str
    engines: tuple[dict, ...]
    parity: dict  # the parity reports recorded at export (free-form)

    @classmethod
    def parse(cls, raw, where: Path) -> "Manifest":
        """Every field the runtime reads, type-checked: a manifest of another shape is a
        BundleError naming the field, not an exception deep inside a backend."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise BundleError(f"{where}: not a pathwatch bundle manifest (format is {found!r}); "
                              "re-export the bundle")
        if raw.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where}: format_version {raw.get('format_version')} is not "
                              f"supported (this pathwatch reads {FORMAT_VERSION}); re-export it")
        for section, keys in REQUIRED.items():
            if not isinstance(raw.get(section), dict):
                raise BundleError(f"{where}: section '{section}' is missing or not an object; "
                                  "re-export the bundle")
            missing = [k for k in keys if k not in raw[section]]
            if missing:
                raise BundleError(f"{where}: {section}.{missing[0]} is missing; re-export the bundle")
        for (section, key), kind in LIST_FIELDS.items():
            value = raw[section][key]
            if not isinstance(value, list) or not value or not all(_is(v, kind) for v in value):
                raise BundleError(f"{where}: {section}.{key} must be a non-empty list of "
                                  f"{kind.__name__}s (got {value!r:.60}); re-export the bundle")
        field_of = _FieldReader(raw, where)
        return cls(raw=raw, model=_model(field_of), input=_input(field_of),
                   schedule=_schedule(field_of), features=_features(field_of),
                   graph=_graph(field_of), defaults=_defaults(field_of),
                   weights_file=field_of("weights_file", str, WEIGHTS),
                   engines=_engines(field_of), parity=field_of("parity", dict, {}))


def _is(value, kind) -> bool:
    # JSON true/false are not numbers here; an integer is a valid float.
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


class _FieldReader:
    """field_of("section.key", type[, default]): the value, or a BundleError naming it."""
    MISSING = object()

    def __init__(self, raw: dict, where: Path):
        self.raw, self.where = raw, where

    def __call__(self, dotted: str, kind, default=MISSING):
        value = self.raw
        for part in dotted.split("."):
            value = value.get(part, self.MISSING) if isinstance(value, dict) else self.MISSING
        if value is self.MISSING or (value is None and default is not self.MISSING):
            if default is self.MISSING:
                raise BundleError(f"{self.where}: {dotted} is missing; re-export the bundle")
            return default
        if not _is(value, kind):
            raise BundleError(f"{self.where}: {dotted} must be {JSON_KINDS[kind]} (got "
                              f"{value!r:.60}); re-export the bundle")
        return value


def _model(f: _FieldReader) -> ModelInfo:
    return ModelInfo(f("model.name", str), f("model.config", dict), f("model.weights_sha256", str),
                     f("model.source_sha256", str, None), f("model.parameters", int, None))


def _input(f: _FieldReader) -> InputFormat:
    value_range = f("input.value_range", list)
    if not all(_is(v, float) for v in value_range):
        raise BundleError(f"{f.where}: input.value_range must be a list of numbers; "
                          "re-export the bundle")
    return InputFormat(f("input.name", str), f("input.dtype", str), f("input.layout", str),
                       f("input.height", int), f("input.width", int), f("input.channels", int),
                       f("input.color_order", str), tuple(value_range), f("input.resize", str))


def _schedule(f: _FieldReader) -> Schedule:
    return Schedule(f("schedule.kind", str), f("schedule.steps", int),
                    tuple(f("schedule.timesteps", list)))


def _features(f: _FieldReader) -> Features:
    spec = f("features.spec", dict)
    if f("features.spec.variant", str) == "error":
        f("features.spec.trajectory", str)  # part of Bundle.label for that variant
    return Features(spec, tuple(f("features.names", list)), f("features.label", str, None))


def _graph(f: _FieldReader) -> GraphInfo:
    return GraphInfo(f("graph.file", str), f("graph.sha256", str), f("graph.opset", int),
                     f("graph.exporter", str))


def _defaults(f: _FieldReader) -> Defaults:
    # Bundles exported before `defaults` existed: the density their feature label pairs with,
    # as the exporter would have written it.
    f("defaults", dict, {})
    label = f("features.label", str, None) or f("features.spec.variant", str)
    return Defaults(f("defaults.density", str, default_density(label)),
                    f("defaults.max_batch", int, None))


def _engines(f: _FieldReader) -> tuple[dict, ...]:
    engines = f("engines", list, [])
    for i, entry in enumerate(engines):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise BundleError(f"{f.where}: engines[{i}] is not an engine entry with a 'file' "
                              f"(got {entry!r:.60}); re-export the bundle")
    return tuple(engines)


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
    manifest: Manifest
    engines: list[dict] = field(default_factory=list)  # grows as engines are built here

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
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
        manifest = Manifest.parse(raw, path)
        bundle = cls(root, manifest, list(manifest.engines))
        bundle.validate(check_hash)
        return bundle

    def validate(self, check_hash: bool = True) -> None:
        """The graph file against the (already parsed) manifest: its hash and its contract."""
        graph = self.graph_path
        if not graph.is_file():
            raise BundleError(f"{graph} is missing; re-export the bundle")
        if check_hash and sha256_of(graph) != self.manifest.graph.sha256:
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
        # Compared as JSON, so a field the typed manifest does not model still counts.
        manifest = contract_of(self.manifest.raw)
        for key in manifest:
            if canonical(graph.get(key)) != canonical(manifest[key]):
                raise BundleError(f"{self.root / MANIFEST}: '{key}' disagrees with the graph it "
                                  f"describes (manifest edited after export?); re-export the bundle")

    # ------------------------------------------------------------------ facts
    @property
    def graph_path(self) -> Path:
        return self.root / self.manifest.graph.file

    @property
    def weights_path(self) -> Path:
        return self.root / self.manifest.weights_file

    @property
    def parity_path(self) -> Path:
        return self.root / PARITY

    @property
    def weights_sha256(self) -> str:
        return self.manifest.model.weights_sha256

    @property
    def image_size(self) -> tuple[int, int]:
        return self.manifest.input.height, self.manifest.input.width

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest.features.names)

    @property
    def feature_spec(self) -> dict:
        return dict(self.manifest.features.spec)

    @property
    def timesteps(self) -> list[int]:
        return list(self.manifest.schedule.timesteps)

    @property
    def default_density(self) -> str:
        """The density kind for `density: auto` (the one the feature variant was measured with)."""
        return self.manifest.defaults.density

    @property
    def label(self) -> str:
        spec = self.manifest.features.spec
        variant = spec["variant"] + (f"/{spec['trajectory']}" if spec["variant"] == "error" else "")
        return f"{self.manifest.model.name} {variant} K={len(self.timesteps)}"

    def identity(self) -> dict:
        """What determines this bundle's numbers (for caches and calibration files); the
        schedule and features sections as written, so cache keys stay those of the file."""
        raw = self.manifest.raw
        return {"weights_sha256": self.weights_sha256, "graph_sha256": self.manifest.graph.sha256,
                "schedule": raw["schedule"], "features": raw["features"]}

    def cheap_head(self) -> "Bundle | None":
        """The one-step head for dynamic steps (None when the bundle has none); refused when
        it is not this model's first step with the same features."""
        root = self.root / CHEAP
        if not (root / MANIFEST).is_file():
            return None
        head = Bundle.load(root)
        if head.weights_sha256 != self.weights_sha256 or head.feature_names != self.feature_names \
                or head.feature_spec != self.feature_spec or head.timesteps != self.timesteps[:1]:
            raise BundleError(f"{root} is not this bundle's one-step head (other weights, "
                              "features or timestep); re-export the bundle")
        return head

    def parity_reference(self) -> dict[str, np.ndarray] | None:
        """Images and torch outputs recorded at export (None for a bundle without them)."""
        if not self.parity_path.is_file():
            return None
        with np.load(self.parity_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def write_manifest(self) -> None:
        """Record `engines` in manifest.json (the one field written after export)."""
        where = self.root / MANIFEST
        manifest = Manifest.parse({**self.manifest.raw, "engines": list(self.engines)}, where)
        write_json_atomic(where, manifest.raw)
        self.manifest = manifest

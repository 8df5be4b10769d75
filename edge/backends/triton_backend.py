"""Triton Inference Server backend: each pass's tile batch goes to a Triton server.

Many capture daemons can share one GPU server this way, and Triton's dynamic batcher merges
their requests into larger batches. The served model is the bundle's graph (ONNX on Triton's
onnxruntime backend, or a TensorRT plan), written with `pathwatch export --bundle B
--triton-repository DIR`; its config.pbtxt carries the bundle's contract as a parameter
(`pathwatch.contract`), which this backend reads back through the server's model-config API
at start-up and after every reconnect, and compares with the bundle it was given together
with the model's input and output names, datatypes and shapes. A model serving another
bundle is a one-line BackendError, never scores computed from the wrong graph.

Server gone: a call that cannot be served raises BackendUnavailable (a BackendError) at once;
the backend then waits with exponential back-off (0.5 s doubling to 30 s) before it tries the
server again, and every call in between is refused without touching the network, so a dead
server costs the frame loop no time. Refused calls and their tiles are counted (`describe()`).

tritonclient is imported only when this backend is built: importing pathwatch.edge never
needs it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time

import numpy as np

from ..bundle import Bundle, canonical, contract_of
from .base import Backend, BackendError

log = logging.getLogger("pathwatch")

CONTRACT_PARAMETER = "pathwatch.contract"  # config.pbtxt parameters key
CONTRACT_FILE = "pathwatch-contract.json"  # the same contract beside config.pbtxt, for people
CONTRACT_FORMAT = "pathwatch-triton"
CONTRACT_VERSION = 1
PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# Bundle dtype -> Triton datatype (metadata API) and config.pbtxt data_type.
DATATYPES = {"uint8": "UINT8", "float32": "FP32", "float16": "FP16", "int64": "INT64"}
BACKOFF_S = (0.5, 30.0)  # first wait after a failure, longest wait


class BackendUnavailable(BackendError):
    """The server cannot serve this call now (gone, restarting, timed out, or serving another
    bundle after a restart). Nothing was scored; the backend retries by itself with back-off,
    so the caller drops the frames and goes on."""


# ------------------------------------------------------------------ what a served model must be
def tensor_specs(bundle: Bundle) -> tuple[dict, list[dict]]:
    """The bundle's input and outputs as Triton sees them: name, datatype and dims without
    the batch dimension (Triton's max_batch_size > 0 adds it)."""
    m = bundle.manifest
    dtype = DATATYPES.get(m.input.dtype)
    if dtype is None:
        raise BackendError(f"bundle input dtype {m.input.dtype!r} has no Triton datatype; "
                           "re-export the bundle")
    h, w = bundle.image_size
    image = {"name": m.input.name, "datatype": dtype, "dims": [h, w, m.input.channels]}
    names = list(m.raw["graph"]["outputs"])
    if len(names) != 2:
        raise BackendError(f"{bundle.root}: graph.outputs must name two outputs (features and "
                           f"heatmap), got {names}; re-export the bundle")
    outputs = [{"name": names[0], "datatype": "FP32", "dims": [len(bundle.feature_names)]},
               {"name": names[1], "datatype": "FP32", "dims": [h, w]}]
    return image, outputs


def serving_contract(bundle: Bundle, **extra) -> dict:
    """What a served model promises about its numbers: written into config.pbtxt (parameter
    `pathwatch.contract`) and pathwatch-contract.json by the repository writer, and compared
    with the bundle by this backend. `contract_sha256` covers the manifest's contract (weights,
    input format, schedule, features) as embedded in the graph."""
    m = bundle.manifest
    image, outputs = tensor_specs(bundle)
    return {"format": CONTRACT_FORMAT, "format_version": CONTRACT_VERSION,
            "bundle": bundle.label,
            "graph_sha256": m.graph.sha256,
            "weights_sha256": m.model.weights_sha256,
            "contract_sha256": hashlib.sha256(canonical(contract_of(m.raw)).encode()).hexdigest(),
            "input": image, "outputs": outputs,
            "feature_names": list(bundle.feature_names),
            "timesteps": list(bundle.timesteps), **extra}


def contract_parameters(bundle: Bundle, **extra) -> dict[str, str]:
    """config.pbtxt `parameters` (key -> string_value) that carry the contract."""
    return {CONTRACT_PARAMETER: canonical(serving_contract(bundle, **extra))}


# Compared in this order: the first difference is the one reported.
CONTRACT_KEYS = (("format_version", "contract format"), ("weights_sha256", "weights"),
                 ("contract_sha256", "contract (input format, schedule, features)"),
                 ("graph_sha256", "graph"))


def served_model(metadata: dict, config: dict) -> dict:
    """The server's model metadata and config (gRPC or HTTP JSON) as one plain dict."""
    config = config.get("config", config)  # gRPC wraps it; HTTP does not

    def tensors(entries):
        return {t["name"]: (t.get("datatype"), [int(d) for d in t.get("shape", [])])
                for t in entries or []}

    params = {k: (v.get("string_value", "") if isinstance(v, dict) else str(v))
              for k, v in (config.get("parameters") or {}).items()}
    return {"inputs": tensors(metadata.get("inputs")), "outputs": tensors(metadata.get("outputs")),
            "versions": [str(v) for v in metadata.get("versions") or []],
            "max_batch": int(config.get("max_batch_size") or 0),
            "platform": metadata.get("platform") or config.get("platform") or config.get("backend"),
            "parameters": params}


def served_version(served: dict) -> str:
    """The model version the contract was written for ('' when it names none: then the
    server's latest). Requests are pinned to it, so a model replaced on the server (a new
    version, as the repository writer numbers them) fails them instead of answering with
    another bundle's numbers, and the reconnect checks the new contract."""
    try:
        contract = json.loads(served["parameters"].get(CONTRACT_PARAMETER, "{}"))
        version = contract.get("model_version")
    except (json.JSONDecodeError, AttributeError):
        version = None
    return "" if version is None else str(version)


def check_served(bundle: Bundle, served: dict, where: str) -> int:
    """Raise a one-line BackendError naming the first difference between the served model and
    the bundle; returns the server's max batch size."""
    fix = ("write the model with `pathwatch export --bundle BUNDLE --triton-repository DIR` for "
           "this bundle and load it on the server, or set model.triton.model to the model that "
           "serves it")

    def refuse(what: str):
        raise BackendError(f"Triton model {where} does not match bundle {bundle.root} "
                           f"({bundle.label}): {what}; {fix}")

    raw = served["parameters"].get(CONTRACT_PARAMETER)
    if raw is None:
        refuse(f"its config has no '{CONTRACT_PARAMETER}' parameter (it was not written by "
               "`pathwatch export --triton-repository`)")
    try:
        theirs = json.loads(raw)
    except json.JSONDecodeError:
        theirs = None
    if not isinstance(theirs, dict) or theirs.get("format") != CONTRACT_FORMAT:
        refuse(f"its '{CONTRACT_PARAMETER}' parameter is not a pathwatch contract")
    ours = serving_contract(bundle)
    for key, what in CONTRACT_KEYS:
        if theirs.get(key) != ours[key]:
            refuse(f"it serves another {what}: {_short(theirs.get(key))}, this bundle's is "
                   f"{_short(ours[key])}")
    version = theirs.get("model_version")
    if version is not None and served.get("versions") and str(version) not in served["versions"]:
        refuse(f"its contract is for version {version}, the server has version(s) "
               f"{', '.join(served['versions'])} (a repository edited by hand?)")
    if served["max_batch"] < 1:
        refuse("its max_batch_size is 0 (no batch dimension); pathwatch sends batches of tiles")
    image, outputs = tensor_specs(bundle)
    _check_tensors("input", [image], served["inputs"], refuse, exact=True)
    _check_tensors("output", outputs, served["outputs"], refuse, exact=False)
    return served["max_batch"]


def _check_tensors(kind: str, wanted: list[dict], served: dict, refuse, exact: bool) -> None:
    for t in wanted:
        if t["name"] not in served:
            refuse(f"it has no {kind} '{t['name']}' (its {kind}s: {', '.join(served) or 'none'})")
        datatype, shape = served[t["name"]]
        if datatype != t["datatype"]:
            refuse(f"{kind} '{t['name']}' is {datatype}, the bundle's is {t['datatype']}")
        if shape[1:] != t["dims"] or (shape and shape[0] != -1):
            refuse(f"{kind} '{t['name']}' has shape {shape}, the bundle's is {[-1, *t['dims']]}")
    extra = set(served) - {t["name"] for t in wanted}
    if exact and extra:
        refuse(f"it takes {kind}s the bundle does not have: {', '.join(sorted(extra))}")


def _short(value) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12] + "..."
    return "missing" if value is None else repr(value)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# ------------------------------------------------------------------ the backend
class TritonBackend(Backend):
    """Runs the bundle's graph on a Triton server (gRPC or HTTP)."""

    name = "triton"

    def __init__(self, bundle: Bundle, max_batch: int = 64, *, url: str | None = None,
                 model: str = "pathwatch", protocol: str = "grpc", timeout_s: float = 5.0,
                 backoff_s: tuple[float, float] = BACKOFF_S, clock=time.monotonic):
        super().__init__(bundle, max_batch)
        if protocol not in PROTOCOLS:
            raise BackendError(f"model.triton.protocol {protocol!r}: use grpc or http")
        self.protocol, self.model, self.timeout_s = protocol, model, float(timeout_s)
        self.url = url or f"localhost:{DEFAULT_PORTS[protocol]}"
        self.where = f"'{model}' at {self.url} ({protocol})"
        self.requested_batch = self.max_batch
        self.backoff_s, self.clock = backoff_s, clock
        try:
            if protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
        except ImportError:
            raise BackendError(f"model.backend: triton needs tritonclient; pip install "
                               f"'tritonclient[{protocol}]' (or 'pathwatch[triton]')") from None
        self._tc = tc
        self._client = None
        self.image_spec, self.output_specs = tensor_specs(bundle)
        self.output_names = [o["name"] for o in self.output_specs]
        # Outage state and counters (describe() reports them).
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._wait = backoff_s[0]
        self.last_error: str | None = None
        self.refused_calls = self.refused_tiles = self.outages = self.reconnects = 0
        try:
            self._connect()
        except BackendError as e:
            if not isinstance(e, BackendUnavailable):
                raise  # a contract mismatch: its message says what to do
            why = str(e)
        except Exception as e:  # connection refused, timeout
            why = _first_line(e)
        else:
            why = None
        if why is not None:
            raise BackendError(f"cannot use Triton model {self.where}: {why}; start the server "
                               "and load the model, or check model.triton.url, model and "
                               "protocol")
        self.device = f"triton {self.url} ({self.platform})"

    # -------------------------------------------------------------- connection
    def _new_client(self):
        if self.protocol == "grpc":
            return self._tc.InferenceServerClient(self.url)
        return self._tc.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                              network_timeout=self.timeout_s)

    def _ask(self, method: str, *args, **kw):
        if self.protocol == "grpc":
            kw["client_timeout"] = self.timeout_s
        return getattr(self._client, method)(*args, **kw)

    def _connect(self) -> None:
        """A fresh client (a gRPC channel keeps its own, much longer, reconnect back-off), the
        model ready, and its contract checked against the bundle."""
        self._close_client()
        self._client = self._new_client()
        if not self._ask("is_model_ready", self.model):
            raise BackendUnavailable("the server answers but the model is not ready (not "
                                     "loaded, still loading, or another name)")
        as_json = {"as_json": True} if self.protocol == "grpc" else {}  # HTTP gives JSON
        metadata = self._ask("get_model_metadata", self.model, **as_json)
        config = self._ask("get_model_config", self.model, **as_json)
        served = served_model(metadata, config)
        server_batch = check_served(self.bundle, served, self.where)
        self.version = served_version(served)
        self.server_max_batch = server_batch
        self.platform = served["platform"]
        self.max_batch = min(self.requested_batch, server_batch)

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a client of a dead server may fail to close; it is dropped
                pass

    # -------------------------------------------------------------- running
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            return super().__call__(images)
        except BackendUnavailable:
            self.refused_calls += 1
            self.refused_tiles += len(images)
            raise

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        now = self.clock()
        if self._down_since is not None:
            if now < self._retry_at:
                raise BackendUnavailable(
                    f"Triton model {self.where} unavailable for {now - self._down_since:.1f} s "
                    f"({self.last_error}); next try in {self._retry_at - now:.1f} s")
            self._reconnect(now)
        try:
            result = self._infer(images)
        except Exception as e:  # gone, timed out, unloaded: all mean "not now"
            self._went_down(self.clock(), _first_line(e))
            raise BackendUnavailable(f"Triton model {self.where} failed a request ("
                                     f"{self.last_error}); retrying in {self._wait:.1f} s") from None
        return result

    def _infer(self, images: np.ndarray):
        tc = self._tc
        image = tc.InferInput(self.image_spec["name"], list(images.shape),
                              self.image_spec["datatype"])
        image.set_data_from_numpy(images)
        outputs = [tc.InferRequestedOutput(n) for n in self.output_names]
        result = self._ask("infer", self.model, [image], model_version=self.version,
                           outputs=outputs)
        feats, maps = (result.as_numpy(n) for n in self.output_names)
        n = len(images)
        if feats is None or maps is None or len(feats) != n or len(maps) != n:
            got = 0 if feats is None else len(feats)
            raise BackendError(f"Triton model {self.where} returned {got} results for {n} tiles")
        return feats, maps

    def _went_down(self, now: float, why: str) -> None:
        if self._down_since is None:
            self._down_since = now
            self.outages += 1
            self._wait = self.backoff_s[0]
            log.warning("triton: model %s unavailable (%s); frames are dropped until it is back, "
                        "next try in %.1f s", self.where, why, self._wait)
        self.last_error = why
        self._retry_at = now + self._wait

    def _reconnect(self, now: float) -> None:
        try:
            self._connect()
        except Exception as e:  # a contract mismatch too: another model loaded under the name
            why = str(e) if isinstance(e, BackendError) else _first_line(e)
            self._wait = min(self._wait * 2, self.backoff_s[1])
            self.last_error = why
            self._retry_at = self.clock() + self._wait
            log.warning("triton: model %s still unavailable after %.1f s (%s); next try in %.1f s",
                        self.where, now - self._down_since, why, self._wait)
            raise BackendUnavailable(f"Triton model {self.where} unavailable for "
                                     f"{now - self._down_since:.1f} s ({why}); next try in "
                                     f"{self._wait:.1f} s") from None
        self.reconnects += 1
        log.info("triton: model %s is back after %.1f s (%d calls, %d tiles refused so far)",
                 self.where, now - self._down_since, self.refused_calls, self.refused_tiles)
        self._down_since, self.last_error, self._wait = None, None, self.backoff_s[0]

    # -------------------------------------------------------------- reporting
    @property
    def available(self) -> bool:
        return self._down_since is None

    def describe(self) -> dict:
        return {**super().describe(), "url": self.url, "model": self.model,
                "protocol": self.protocol, "version": self.version,
                "server_max_batch": self.server_max_batch,
                "available": self.available, "outages": self.outages,
                "reconnects": self.reconnects, "refused_calls": self.refused_calls,
                "refused_tiles": self.refused_tiles, "last_error": self.last_error}

    def close(self) -> None:
        self._close_client()

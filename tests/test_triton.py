"""model.backend: triton against a real Triton Inference Server on the CPU.

`pathwatch export --bundle B --triton-repository DIR` writes the repository; the test serves
that repository with the `tritonserver` binary that the nvidia-pytriton wheel ships. The wheel
has no onnxruntime backend, only the Python backend, so the served copy differs from the
written one in one line (`platform: "onnxruntime_onnx"` -> `backend: "python"`) plus a
model.py that runs the same 1/model.onnx with onnxruntime: inputs, outputs, max batch,
dynamic batching and the contract parameter are the exported ones, read back by the daemon's
backend over real gRPC (and HTTP). The server runs in its own process group, so a test can
SIGKILL it and start it again on the same ports.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from pathwatch.cli import main
from pathwatch.edge.backends import BackendError, BackendUnavailable, load_backend
from pathwatch.edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from pathwatch.edge.backends.triton_backend import (CONTRACT_FILE, CONTRACT_PARAMETER,
                                                    check_served, served_model, serving_contract)
from pathwatch.edge.bundle import Bundle, sha256_of

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("tritonclient.http")


def _pytriton_dist() -> Path | None:
    spec = importlib.util.find_spec("pytriton")  # located, not imported (it is slow to import)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


PYTRITON = _pytriton_dist()
TRITONSERVER = PYTRITON / "tritonserver" / "bin" / "tritonserver" if PYTRITON else None
STUB = (PYTRITON / "tritonserver" / "python_backend_stubs" /
        f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
        if PYTRITON else None)
needs_server = pytest.mark.skipif(
    not (TRITONSERVER and TRITONSERVER.is_file() and STUB.is_file()),
    reason="no tritonserver binary (pip install nvidia-pytriton on Linux x86_64)")

# The Python-backend stand-in for Triton's onnxruntime backend: the same model.onnx, run by
# onnxruntime on each batch the dynamic batcher forms (all requests of the batch in one run).
MODEL_PY = '''
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = cfg["input"][0]["name"]
        self.outputs = [o["name"] for o in cfg["output"]]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        results = self.session.run(self.outputs, {self.input: np.concatenate(arrays)})
        responses, start = [], 0
        for a in arrays:
            part = slice(start, start + len(a))
            start += len(a)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(n, np.ascontiguousarray(r[part]))
                 for n, r in zip(self.outputs, results)]))
        return responses
'''


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def serving_copy(repository: Path, model: str, target: Path) -> Path:
    """The exported repository as the wheel's server can run it (see the module docstring)."""
    src, dst = repository / model, target / model
    dst.mkdir(parents=True, exist_ok=True)
    for version in (p for p in src.iterdir() if p.is_dir()):
        (dst / version.name).mkdir()
        os.link(version / "model.onnx", dst / version.name / "model.onnx")
        (dst / version.name / "model.py").write_text(MODEL_PY)
    config = (src / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config
    (dst / "config.pbtxt").write_text(config.replace('platform: "onnxruntime_onnx"',
                                                     'backend: "python"'))
    return target


class TritonServer:
    """tritonserver from the nvidia-pytriton wheel serving one repository, in its own process
    group (the Python backend's stub processes die with it on SIGKILL)."""

    def __init__(self, repository: Path, workdir: Path, *args: str):
        self.repository, self.workdir, self.args = repository, workdir, list(args)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.proc: subprocess.Popen | None = None
        self.shm_prefix = f"pwtest{os.getpid()}x{self.grpc_port}_"
        backends = workdir / "backends"
        if not (backends / "python" / "triton_python_backend_stub").is_file():
            import shutil
            shutil.copytree(PYTRITON / "tritonserver" / "backends", backends, dirs_exist_ok=True)
            shutil.copy(STUB, backends / "python" / "triton_python_backend_stub")
        self.backends = backends

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def env(self) -> dict:
        # The stub embeds libpython: it must be this interpreter's (a system libpython of
        # another patch release next to this stdlib fails), and find this environment's
        # numpy and onnxruntime through PATH, as pytriton arranges it.
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(PYTRITON.parent / "nvidia_pytriton.libs")]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self, timeout: float = 60.0) -> "TritonServer":
        log = open(self.workdir / "tritonserver.log", "ab")
        self.proc = subprocess.Popen(
            [str(TRITONSERVER), f"--model-repository={self.repository}",
             f"--backend-directory={self.backends}", f"--http-port={self.http_port}",
             f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
             "--allow-gpu-metrics=false", "--exit-timeout-secs=2", "--log-verbose=0",
             f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}", *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        log.close()
        import tritonclient.http as http

        client = http.InferenceServerClient(self.http_url, connection_timeout=1.0,
                                            network_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited ({self.proc.returncode}):\n{self.log()}")
                try:
                    if client.is_server_ready() and client.is_model_ready("pathwatch"):
                        return self
                except Exception:
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"tritonserver not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return (self.workdir / "tritonserver.log").read_text(errors="replace")[-4000:]

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the group this test started: server and stubs
            self.proc.wait(timeout=30)
        self.proc = None
        for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)  # a SIGKILLed server cannot remove its regions

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


# ------------------------------------------------------------------------------ fixtures
# The model the daemon runs by default (`model.bundle: default`), as shipped in the package: a
# real exported bundle that needs neither torch nor a training run, so this file stays fast.
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "edge" / "models" / "default-bundle"


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    return DEFAULT_BUNDLE


@pytest.fixture(scope="module")
def repository(bundle_dir, tmp_path_factory) -> Path:
    """`pathwatch` for the bundle, and `stale`: the same export, its contract naming another
    graph (a model left from an earlier export of the bundle)."""
    out = tmp_path_factory.mktemp("triton") / "models"
    for name in ("pathwatch", "stale"):
        assert main(["export", "--bundle", str(bundle_dir), "--triton-repository", str(out),
                     "--triton-model", name]) == 0
    stale = out / "stale" / "config.pbtxt"
    graph = Bundle.load(bundle_dir).manifest.graph.sha256
    stale.write_text(stale.read_text().replace(graph, "0" * 64))
    return out


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    if not (TRITONSERVER and TRITONSERVER.is_file() and STUB.is_file()):
        pytest.skip("no tritonserver binary (pip install nvidia-pytriton on Linux x86_64)")
    work = tmp_path_factory.mktemp("tritonserver")
    serving = work / "serving"
    for name in ("pathwatch", "stale"):
        serving_copy(repository, name, serving)
    srv = TritonServer(serving, work).start()
    yield srv
    srv.kill(signal.SIGTERM)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference per column (features) or overall (heatmaps), relative to the
    largest magnitude there, as the parity report measures it."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    scale = np.maximum(np.abs(b).max(axis=0), 1e-12)
    return float((np.abs(a - b).max(axis=0) / scale).max())


# ------------------------------------------------------------------------------ the repository
def test_export_writes_a_repository_whose_config_matches_the_bundle(repository, bundle_dir):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    bundle = Bundle.load(bundle_dir)
    model = repository / "pathwatch"
    config = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "pathwatch" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == bundle.manifest.defaults.max_batch == 64
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    h, w = bundle.image_size
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims))
            for t in config.input] == [("images", "TYPE_UINT8", [h, w, 3])]
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims))
            for t in config.output] == [("features", "TYPE_FP32", [len(bundle.feature_names)]),
                                        ("heatmap", "TYPE_FP32", [h, w])]
    assert sha256_of(model / "1" / "model.onnx") == bundle.manifest.graph.sha256
    contract = json.loads(config.parameters[CONTRACT_PARAMETER].string_value)
    assert contract == json.loads((model / CONTRACT_FILE).read_text())
    assert contract["graph_sha256"] == bundle.manifest.graph.sha256
    assert contract["feature_names"] == bundle.feature_names

    # What the backend checks, from the file as Triton's own protobuf parser reads it (the
    # metadata a server derives from such a config: the batch dimension first, as -1).
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    metadata = {kind: [{"name": t["name"], "datatype": t["data_type"][len("TYPE_"):],
                        "shape": [-1, *t["dims"]]} for t in as_json[key]]
                for kind, key in (("inputs", "input"), ("outputs", "output"))}
    assert check_served(bundle, served_model(metadata, {"config": as_json}), "test") == 64


def test_export_numbers_versions_by_graph_and_keeps_one(bundle_dir, tmp_path):
    from pathwatch.export.triton_repository import write_repository

    bundle = Bundle.load(bundle_dir)
    model = write_repository(bundle, tmp_path)
    assert write_repository(bundle, tmp_path) == model  # the same graph again: still version 1
    assert sorted(p.name for p in model.iterdir()) == ["1", "config.pbtxt", CONTRACT_FILE]
    # As if version 1 had been written for another bundle: the next export is version 2, the
    # only one left, and its contract names it.
    contract = json.loads((model / CONTRACT_FILE).read_text())
    assert contract["model_version"] == 1
    contract["graph_sha256"] = "0" * 64
    (model / CONTRACT_FILE).write_text(json.dumps(contract))
    write_repository(bundle, tmp_path)
    assert sorted(p.name for p in model.iterdir()) == ["2", "config.pbtxt", CONTRACT_FILE]
    assert json.loads((model / CONTRACT_FILE).read_text())["model_version"] == 2
    assert '\\"model_version\\":2' in (model / "config.pbtxt").read_text()


def test_export_refusals_are_one_line(bundle_dir, tmp_path, capsys):
    assert main(["export", "--bundle", str(bundle_dir), "--triton-repository", str(tmp_path),
                 "--triton-platform", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "has no fp16 TensorRT engine" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--bundle", str(bundle_dir)]) == 2
    assert "add --triton-repository DIR" in capsys.readouterr().err


def test_served_model_checks_name_the_first_difference(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    params = {CONTRACT_PARAMETER: json.dumps(serving_contract(bundle))}
    h, w = bundle.image_size
    good = {"inputs": {"images": ("UINT8", [-1, h, w, 3])},
            "outputs": {"features": ("FP32", [-1, len(bundle.feature_names)]),
                        "heatmap": ("FP32", [-1, h, w])},
            "max_batch": 8, "platform": "onnxruntime_onnx", "parameters": params}
    assert check_served(bundle, good, "m") == 8
    cases = [({"parameters": {}}, "has no 'pathwatch.contract' parameter"),
             ({"parameters": {CONTRACT_PARAMETER: json.dumps(
                 {**serving_contract(bundle), "graph_sha256": "0" * 64})}}, "another graph"),
             ({"max_batch": 0}, "max_batch_size is 0"),
             ({"inputs": {"images": ("FP32", [-1, h, w, 3])}}, "input 'images' is FP32"),
             ({"outputs": {"features": ("FP32", [-1, 3]), "heatmap": ("FP32", [-1, h, w])}},
              "output 'features' has shape [-1, 3]"),
             ({"outputs": {"features": ("FP32", [-1, len(bundle.feature_names)])}},
              "no output 'heatmap'")]
    for change, expected in cases:
        with pytest.raises(BackendError) as e:
            check_served(bundle, {**good, **change}, "m")
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert "--triton-repository" in str(e.value)


# ------------------------------------------------------------------------------ the config
def test_model_triton_section_is_validated():
    from pathwatch.edge.config import ConfigError, parse_config

    camera = "cameras:\n  - name: a\n    source: demo\n"
    config = parse_config("model:\n  backend: triton\n  triton:\n    url: gpu-1.lan:8001\n"
                          "    model: pw-default\n    timeout_s: 2\n" + camera)
    assert config.model.backend == "triton"
    assert dict(config.model.triton) == {"url": "gpu-1.lan:8001", "model": "pw-default",
                                         "protocol": "grpc", "timeout_s": 2.0}
    assert parse_config(camera).model.triton.url is None  # the protocol's port on localhost
    for body, expected in [
        ("    url: http://gpu-1:8000\n", "pathwatch.yaml:4: model.triton.url: 'http://gpu-1:8000' "
                                          "must be HOST:PORT without a scheme"),
        ("    url: gpu-1:70000\n", "pathwatch.yaml:4: model.triton.url: 'gpu-1:70000' must be"),
        ("    protocol: grcp\n", "pathwatch.yaml:4: model.triton.protocol: must be 'grpc' or "
                                  "'http' (got 'grcp')"),
        ("    timeout_s: 0\n", "pathwatch.yaml:4: model.triton.timeout_s: must be greater than 0"),
        ("    model: a/b\n", "pathwatch.yaml:4: model.triton.model: 'a/b' must be a Triton model name"),
        ("    adress: x:1\n", "pathwatch.yaml:4: model.triton.adress: unknown key (known keys:"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_config("model:\n  backend: triton\n  triton:\n" + body + camera,
                         "pathwatch.yaml")
        assert str(e.value).startswith(expected), str(e.value)


# ------------------------------------------------------------------------------ a real server
@needs_server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_scores_equal_onnxruntime_on_the_same_tiles(server, bundle_dir, protocol):
    bundle = Bundle.load(bundle_dir)
    images = bundle.parity_reference()["images"]
    images = np.concatenate([images, images[::-1], images[:16]])  # 80 tiles: > the server's 64
    url = server.grpc_url if protocol == "grpc" else server.http_url
    backend = load_backend(bundle, "triton", max_batch=256, log=lambda m: None,
                           triton={"url": url, "model": "pathwatch", "protocol": protocol})
    try:
        assert backend.max_batch == 64  # the server's max batch caps the configured one
        feats, maps = backend(images)
        assert backend.describe()["available"] and backend.refused_calls == 0
    finally:
        backend.close()
    reference = OnnxRuntimeBackend(bundle, 64)
    ref_f, ref_m = reference(images)
    assert feats.shape == ref_f.shape and maps.shape == ref_m.shape
    assert _rel(feats, ref_f) < 1e-5 and _rel(maps, ref_m) < 1e-5


@needs_server
def test_a_server_model_of_another_bundle_or_name_is_refused_at_start(server, bundle_dir):
    bundle = Bundle.load(bundle_dir)
    with pytest.raises(BackendError) as e:
        load_backend(bundle, "triton", log=lambda m: None,
                     triton={"url": server.grpc_url, "model": "stale"})
    message = str(e.value)
    assert "\n" not in message and "it serves another graph: 000000000000..." in message
    assert "--triton-repository" in message
    with pytest.raises(BackendError, match="cannot use Triton model 'nope'"):
        load_backend(bundle, "triton", log=lambda m: None,
                     triton={"url": server.grpc_url, "model": "nope"})
    with pytest.raises(BackendError, match="cannot use Triton model 'pathwatch' at 127.0.0.1:1 "):
        load_backend(bundle, "triton", log=lambda m: None,
                     triton={"url": "127.0.0.1:1", "timeout_s": 1.0})


@needs_server
def test_server_gone_mid_run_frames_refused_and_counted_then_reconnects(
        repository, bundle_dir, tmp_path):
    bundle = Bundle.load(bundle_dir)
    images = bundle.parity_reference()["images"][:12]
    srv = TritonServer(serving_copy(repository, "pathwatch", tmp_path / "serving"), tmp_path)
    srv.start()
    from pathwatch.edge.backends.triton_backend import TritonBackend
    backend = TritonBackend(bundle, 64, url=srv.grpc_url, timeout_s=2.0, backoff_s=(0.3, 1.2))
    try:
        before = backend(images)
        srv.kill()  # SIGKILL: no goodbye, connections reset
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match="retrying in 0.3 s"):
            backend(images)
        assert time.monotonic() - t0 < 2.5  # a reset connection fails fast, within timeout_s
        # During the back-off the network is not touched: refused at once.
        t0 = time.monotonic()
        for _ in range(20):
            with pytest.raises(BackendUnavailable, match="next try in"):
                backend(images)
        assert time.monotonic() - t0 < 0.2
        assert backend.refused_calls == 21 and backend.refused_tiles == 21 * 12
        assert backend.outages == 1 and not backend.describe()["available"]
        time.sleep(1.5)  # the back-off doubles while the server stays away: 0.3 -> 0.6 -> 1.2
        for _ in range(3):
            with pytest.raises(BackendUnavailable):
                backend(images)
            time.sleep(backend._retry_at - time.monotonic() + 0.01)
        assert backend._wait == 1.2

        srv.start()  # same ports
        deadline, after = time.monotonic() + 10, None
        while after is None and time.monotonic() < deadline:
            try:
                after = backend(images)
            except BackendUnavailable:
                time.sleep(0.1)
        assert after is not None, "the backend did not reconnect"
        assert backend.reconnects == 1 and backend.describe()["available"]
        assert backend.describe()["last_error"] is None
        assert _rel(after[0], before[0]) < 1e-6 and _rel(after[1], before[1]) < 1e-6
    finally:
        backend.close()
        srv.kill()


@needs_server
def test_a_model_replaced_on_the_server_is_never_used_with_the_old_contract(
        repository, bundle_dir, tmp_path):
    """The server reloads the model for another bundle (version 2, as a new export numbers
    it) while the backend runs: requests pinned to version 1 fail, the reconnect reads the new
    contract and refuses it; no score comes from the new model. (The reload is asked for
    through the repository API, as an operator or a polling server does.)"""
    bundle = Bundle.load(bundle_dir)
    images = bundle.parity_reference()["images"][:4]
    serving = serving_copy(repository, "pathwatch", tmp_path / "serving")
    srv = TritonServer(serving, tmp_path, "--model-control-mode=explicit",
                       "--load-model=pathwatch").start()
    from pathwatch.edge.backends.triton_backend import TritonBackend
    backend = TritonBackend(bundle, 64, url=srv.grpc_url, timeout_s=2.0, backoff_s=(0.2, 0.4))
    try:
        backend(images)
        assert backend.version == "1"
        model = serving / "pathwatch"
        graph = bundle.manifest.graph.sha256
        config = (model / "config.pbtxt").read_text()
        (model / "1").rename(model / "2")
        (model / "config.pbtxt").write_text(config.replace(graph, "0" * 64).replace(
            '\\"model_version\\":1', '\\"model_version\\":2'))
        import tritonclient.http as http
        admin = http.InferenceServerClient(srv.http_url, network_timeout=30.0)
        admin.load_model("pathwatch")  # loads version 2, unloads version 1
        admin.close()
        deadline, refused = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            try:
                backend(images)  # version 1 until the server has unloaded it
            except BackendUnavailable as e:
                refused = str(e)
                if "serves another graph" in refused:
                    break
            time.sleep(0.1)
        assert refused and "serves another graph: 000000000000..." in refused, refused
        assert not backend.available and backend.outages == 1
    finally:
        backend.close()
        srv.kill()


# ------------------------------------------------------------------------------ the daemon
def _latest(sub, topics: dict, seconds: float) -> None:
    """Read the daemon's bus for `seconds`, keeping the last header of each topic."""
    import zmq

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sub.poll(int(left * 1000)):
            topic, header, *_ = sub.recv_multipart(zmq.NOBLOCK)
            topics[topic.decode()] = json.loads(header)


@needs_server
def test_the_daemon_stays_up_while_the_server_is_gone(repository, bundle_dir, tmp_path):
    import yaml
    import zmq

    from conftest import daemon_config

    srv = TritonServer(serving_copy(repository, "pathwatch", tmp_path / "serving"), tmp_path)
    srv.start()
    config = daemon_config(tmp_path, bundle_dir, "demo", fps=10.0)
    cfg = yaml.safe_load(config.read_text())
    # 10 s: on a loaded machine the server's first answer can take over 2 s, and a daemon that
    # cannot reach its server at start exits (systemd restarts it); that is not under test here.
    cfg["model"] = {"bundle": str(bundle_dir), "backend": "triton",
                    "triton": {"url": srv.grpc_url, "timeout_s": 10.0}}
    cfg["publisher"]["heartbeat_s"] = 0.2
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(cfg["publisher"]["bind"])
    for topic in (b"heartbeat", b"stats"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    seen: dict = {}

    def wait_for(predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            _latest(sub, seen, 0.3)
            if "heartbeat" in seen and "stats" in seen and predicate():
                return True
        return False

    try:
        assert wait_for(lambda: seen["heartbeat"]["frames"] >= 5, 60), \
            "daemon still running" if proc.poll() is None else \
            f"daemon exited {proc.returncode}: {proc.communicate()[0][-2000:]}"
        srv.kill()
        assert wait_for(lambda: seen["heartbeat"]["frames_unscored"] >= 5
                        and not seen["stats"]["backend"]["available"], 30)
        frames = seen["heartbeat"]["frames"]
        _latest(sub, seen, 2.0)
        assert proc.poll() is None, "the daemon exited when the server went away"
        assert seen["heartbeat"]["frames"] == frames  # nothing scored without the server
        assert seen["stats"]["backend"]["refused_tiles"] >= 5 * 12
        srv.start()
        assert wait_for(lambda: seen["stats"]["backend"]["available"]
                        and seen["heartbeat"]["frames"] > frames + 5, 60)
        assert seen["stats"]["backend"]["reconnects"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        sub.close(linger=0)
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate()[0] if proc.stdout else ""
        srv.kill()
    assert "triton: model 'pathwatch'" in log and "is back after" in log, log[-3000:]

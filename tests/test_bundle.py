"""Export a real (tiny) trained model as a bundle and run it on the edge backends."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import NO_TORCH
from pathwatch.edge.backends import BackendError, Capabilities, choose, load_backend
from pathwatch.edge.bundle import CONTRACT_KEY, MANIFEST, Bundle, BundleError, Manifest, onnx_metadata
from pathwatch.edge.models import SHIPPED
from pathwatch.cli import main


@pytest.fixture(scope="module")
def export_run(tiny_run, tmp_path_factory):
    """`pathwatch export` run as a user runs it, with its output piped (as in CI)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-6dssim"
    res = subprocess.run([sys.executable, "-m", "pathwatch.cli", "export", "--checkpoint",
                          str(tiny_run), "--out", str(out), "--variant", "6d+ssim", "--k", "3",
                          "--parity-n", "48", "--parity-data", "digits", "--parity-data",
                          "photos:test"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return out, res


@pytest.fixture(scope="module")
def bundle_dir(export_run):
    return export_run[0]


def test_export_progress_off_a_terminal_is_a_few_lines(export_run):
    """On a terminal export draws progress bars; piped, rich prints each bar once, in its
    final state: no carriage returns, no escape codes, a handful of lines."""
    _, res = export_run
    lines = res.stderr.splitlines()
    assert len(lines) <= 6, res.stderr
    assert "\r" not in res.stderr and "\x1b[" not in res.stderr
    stages = [line for line in lines if line.startswith("export ")]
    assert len(stages) == 1 and "6/6" in stages[0] and "done" in stages[0], res.stderr
    parity = [line for line in lines if line.startswith("parity ")]
    assert len(parity) == 1 and "96/96" in parity[0] and "passed" in parity[0], res.stderr
    assert "bundle written to" in res.stdout


def test_export_writes_a_complete_bundle(bundle_dir):
    b = Bundle.load(bundle_dir)
    m = b.manifest
    assert m.graph.opset >= 17 and m.input.dtype == "uint8"
    assert b.timesteps == [0, 111, 444] and b.image_size == (16, 16)  # the default placement
    assert b.feature_names[-3:] == ["ssim_sum", "ssim_sum_sq", "dssim_dt"]
    assert b.default_density == "gmm-bic" and m.model.source_sha256 == b.weights_sha256
    for f in ("pipeline.onnx", "weights.safetensors", "parity.npz"):
        assert (bundle_dir / f).is_file()
    report = m.parity["onnxruntime_cpu"]
    assert report["passed"] and report["images"] == 48
    assert not (bundle_dir.parent / "tiny-6dssim.partial").exists()


def test_onnx_graph_passes_checker_and_has_dynamic_batch(bundle_dir):
    import onnx

    model = onnx.load(str(bundle_dir / "pipeline.onnx"))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [16, 16, 3]


def test_onnxruntime_matches_torch_on_real_images(tiny_run, bundle_dir):
    import torch

    from pathwatch.edge.datasets import load_images
    from pathwatch.export.bundle_export import build_pipeline
    from pathwatch.export.checkpoint import load_checkpoint
    from pathwatch.export.features import FeatureSpec
    from pathwatch.export.schedule import ReducedSchedule

    images = load_images("digits", 16, 40, seed=3).images
    loaded = load_checkpoint(tiny_run)
    sched = ReducedSchedule.placed("cosine", 1000, 3, "quadratic")
    with torch.no_grad():
        ref_f, ref_h = build_pipeline(loaded, sched, FeatureSpec("6d+ssim"))(torch.from_numpy(images))
    backend = load_backend(Bundle.load(bundle_dir), "onnxruntime", max_batch=16, log=lambda m: None)
    feats, maps = backend(images)  # three chunks of <= 16 exercise the batching
    ref_f, ref_h = ref_f.numpy().astype(np.float64), ref_h.numpy().astype(np.float64)
    rel_l2 = np.linalg.norm(feats - ref_f, axis=0) / np.linalg.norm(ref_f, axis=0)
    assert rel_l2.max() < 1e-4
    assert np.linalg.norm(maps - ref_h) / np.linalg.norm(ref_h) < 1e-4


def test_bundle_verify_passes_for_every_cpu_backend(bundle_dir, tiny_run, tmp_path):
    report = tmp_path / "verify.json"
    assert main(["bundle", "verify", str(bundle_dir), "--backend", "onnxruntime", "--backend",
                 "torch", "--checkpoint", str(tiny_run / "ema.safetensors"), "--json",
                 str(report)]) == 0
    reports = json.loads(report.read_text())
    assert [r["backend"] for r in reports] == ["onnxruntime", "torch"]
    assert all(r["passed"] for r in reports)


def test_mismatched_weights_hash_is_refused(bundle_dir, tiny_run, capsys):
    assert main(["bundle", "verify", str(bundle_dir), "--checkpoint",
                 str(tiny_run / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "weights hash mismatch" in err and "re-export" in err and "Traceback" not in err


def _copy(bundle_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    return dst


def test_tampered_manifest_is_refused(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["schedule"]["timesteps"] = [0, 500, 900]
    (b / "manifest.json").write_text(json.dumps(m))
    # Refused at load, so every backend (torch and TensorRT read the schedule from the
    # manifest) and `bundle info` get the check, not only onnxruntime.
    with pytest.raises(BundleError, match="'schedule' disagrees with the graph"):
        Bundle.load(b)
    assert main(["bundle", "info", str(b)]) == 2
    m["schedule"]["timesteps"] = [0, 111, 444]
    m["features"]["names"] = 5
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="features.names must be a non-empty list of strs"):
        Bundle.load(b)


@pytest.fixture
def shipped_copy(tmp_path):
    """The shipped default export (manifest, graph, parity; no weights): a real bundle that
    loads without a training run."""
    dst = tmp_path / "shipped"
    shutil.copytree(SHIPPED, dst)
    return dst


def _rewrite(root, edit):
    raw = json.loads((root / MANIFEST).read_text())
    raw = edit(raw)
    (root / MANIFEST).write_text(json.dumps(raw))


def test_the_manifest_is_parsed_into_typed_fields(shipped_copy):
    b = Bundle.load(shipped_copy)
    m, raw = b.manifest, json.loads((shipped_copy / MANIFEST).read_text())
    assert isinstance(m, Manifest) and m.raw == raw
    assert m.model.name == "default" and m.model.weights_sha256 == raw["model"]["weights_sha256"]
    assert m.model.source_sha256 == raw["model"]["source_sha256"] and m.model.parameters > 0
    assert (m.input.height, m.input.width, m.input.channels) == (32, 32, 3)
    assert m.input.value_range == (0, 255) and m.input.layout == "NHWC"
    assert (m.schedule.kind, m.schedule.steps, m.schedule.timesteps) == ("cosine", 1000, (0, 111, 444))
    assert m.features.names == tuple(raw["features"]["names"]) and m.features.label == "6d+ssim l=1 s=1.5"
    assert m.graph.file == "pipeline.onnx" and m.graph.sha256 == raw["graph"]["sha256"]
    assert m.defaults.density == b.default_density == "gmm-bic" and m.defaults.max_batch == 64
    assert m.engines == () and b.engines == [] and m.weights_file == "weights.safetensors"
    # The members other code relies on keep their meaning.
    assert b.image_size == (32, 32) and b.timesteps == [0, 111, 444]
    assert b.feature_spec == raw["features"]["spec"] and b.label == "default 6d+ssim K=3"
    assert b.identity() == {"weights_sha256": raw["model"]["weights_sha256"],
                            "graph_sha256": raw["graph"]["sha256"],
                            "schedule": raw["schedule"], "features": raw["features"]}
    assert b.graph_path == shipped_copy / "pipeline.onnx" and b.parity_reference() is not None


def test_a_bundle_without_defaults_gets_the_density_its_features_were_measured_with(shipped_copy):
    _rewrite(shipped_copy, lambda m: {k: v for k, v in m.items() if k != "defaults"})
    assert Bundle.load(shipped_copy).default_density == "gmm-bic"
    # DiffPath-1D pairs with a KDE (what the exporter writes for it); parsed directly, since
    # another label would no longer match the graph's contract.
    raw = json.loads((shipped_copy / MANIFEST).read_text())
    raw["features"]["label"] = "diffpath1d"
    assert Manifest.parse(raw, shipped_copy / MANIFEST).defaults.density == "kde"


def test_engines_written_back_are_parsed_again(shipped_copy):
    b = Bundle.load(shipped_copy)
    b.engines.append({"file": "engines/x.engine", "precision": "fp16"})
    b.write_manifest()
    assert b.manifest.engines == ({"file": "engines/x.engine", "precision": "fp16"},)
    again = Bundle.load(shipped_copy)
    assert again.engines == list(b.manifest.engines) and again.manifest.parity == b.manifest.parity
    assert [p.name for p in shipped_copy.iterdir() if p.name.endswith(".tmp")] == []


def _set(path, value):
    def edit(m):
        *sections, key = path.split(".")
        target = m
        for s in sections:
            target = target[s]
        target[key] = value
        return m
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], "not a pathwatch bundle manifest .format is 'list'"),
    (lambda m: "text", "not a pathwatch bundle manifest .format is 'str'"),
    (_set("engines", {"file": "x"}), "engines must be a list"),
    (_set("engines", ["engines/x.engine"]), r"engines\[0\] is not an engine entry"),
    (_set("model", ["default"]), "section 'model' is missing or not an object"),
    (_set("input.height", "32"), "input.height must be an integer"),
    (_set("input.width", True), "input.width must be an integer"),
    (_set("input.value_range", [0, "255"]), "input.value_range must be a list of numbers"),
    (_set("graph.sha256", None), "graph.sha256 must be a string"),
    (_set("graph.file", 3), "graph.file must be a string"),
    (_set("features.spec", "6d+ssim"), "features.spec must be an object"),
    (_set("features.spec.variant", None), "features.spec.variant must be a string"),
    (_set("defaults", ["gmm-bic"]), "defaults must be an object"),
    (_set("defaults.density", 5), "defaults.density must be a string"),
    (_set("model.source_sha256", 7), "model.source_sha256 must be a string"),
    (_set("weights_file", ["w"]), "weights_file must be a string"),
    (_set("parity", []), "parity must be an object"),
])
def test_a_manifest_of_the_wrong_shape_is_one_bundle_error(shipped_copy, edit, message):
    _rewrite(shipped_copy, edit)
    with pytest.raises(BundleError, match=message) as e:
        Bundle.load(shipped_copy)
    assert "re-export" in str(e.value) and "\n" not in str(e.value)


def test_bundle_info_prints_the_typed_manifest(shipped_copy, capsys):
    assert main(["bundle", "info", str(shipped_copy)]) == 0
    out = capsys.readouterr().out
    assert "1,192,387 parameters" in out and "uint8 NHWC 32x32 RGB" in out and "opset 17" in out


def test_the_contract_is_read_from_the_graph_without_onnx(bundle_dir, tmp_path):
    import onnx

    graph = bundle_dir / "pipeline.onnx"
    expected = {e.key: e.value for e in onnx.load(graph, load_external_data=False).metadata_props}
    assert onnx_metadata(graph) == expected and CONTRACT_KEY in expected
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(graph.read_bytes()[:100_000])
    with pytest.raises(BundleError, match="is not a readable ONNX file .truncated"):
        onnx_metadata(cut)


def test_swapped_graph_and_broken_manifest_are_refused(bundle_dir, tmp_path, capsys):
    b = _copy(bundle_dir, tmp_path)
    with open(b / "pipeline.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="does not match the sha256"):
        Bundle.load(b)
    (b / "manifest.json").write_text("{not json")
    assert main(["bundle", "verify", str(b)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(BundleError, match="not a directory"):
        Bundle.load(tmp_path / "nowhere")


def test_backend_selection_policy():
    cpu = Capabilities(ort_providers=["CPUExecutionProvider"], torch=True)
    assert choose("auto", cpu)[0] == "onnxruntime"
    gpu_ort = Capabilities(ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert choose("auto", gpu_ort) == ("onnxruntime", "onnxruntime has CUDAExecutionProvider")
    assert choose("auto", Capabilities(ort_providers=["CPUExecutionProvider"], tensorrt=True))[0] == "tensorrt"
    assert choose("auto", Capabilities(ort_providers=["CPUExecutionProvider"], torch=True,
                                       torch_cuda=True))[0] == "torch"
    assert choose("auto", Capabilities(torch=True))[0] == "torch"
    assert choose("torch", Capabilities())[0] == "torch"
    with pytest.raises(BackendError, match="install onnxruntime"):
        choose("auto", Capabilities())
    with pytest.raises(BackendError, match="unknown"):
        choose("tpu", cpu)


def test_tensorrt_refuses_clearly_without_tensorrt(bundle_dir):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        load_backend(Bundle.load(bundle_dir), "tensorrt", log=lambda m: None)


def test_auto_falls_back_when_tensorrt_cannot_load(bundle_dir):
    # As on a GPU machine whose bundle has no engine for it: TensorRT is chosen, refuses,
    # and the next backend runs, with the reason in the log.
    lines = []
    caps = Capabilities(ort_providers=["CPUExecutionProvider"], tensorrt=True)
    backend = load_backend(Bundle.load(bundle_dir), "auto", caps=caps, warmup=False,
                           log=lines.append)
    assert backend.name == "onnxruntime"
    assert "TensorRT not usable" in lines[-1] and "onnxruntime on the CPU" in lines[-1]
    backend.close()


def test_an_engine_is_recorded_only_if_it_passed_parity(bundle_dir, tmp_path):
    from pathwatch.edge.backends.tensorrt_backend import accept_engine
    from pathwatch.edge.parity import compare

    b = Bundle.load(_copy(bundle_dir, tmp_path))
    ref = b.parity_reference()
    (b.root / "engines").mkdir()
    entry = {"file": "engines/gpu-sm90_trt10.0_fp16.engine", "precision": "fp16",
             "max_batch": 64}
    (b.root / entry["file"]).write_bytes(b"engine")
    rng = np.random.default_rng(0)
    noisy = ref["features"] * (1 + 0.3 * rng.standard_normal(ref["features"].shape))
    bad = compare("tensorrt-fp16", b.feature_names, ref["features"], ref["heatmap"],
                  noisy.astype(np.float32), ref["heatmap"], "fp16")
    assert not bad.passed and not accept_engine(b, entry, bad)
    assert not (b.root / entry["file"]).exists() and Bundle.load(b.root).engines == []
    (b.root / entry["file"]).write_bytes(b"engine")
    good = compare("tensorrt-fp16", b.feature_names, ref["features"], ref["heatmap"],
                   ref["features"], ref["heatmap"], "fp16")
    assert accept_engine(b, entry, good)
    recorded = Bundle.load(b.root).engines
    assert [e["file"] for e in recorded] == [entry["file"]] and recorded[0]["parity"]["passed"]


def test_eval_through_the_bundle_reproduces_the_torch_table(bundle_dir, tiny_run, tmp_path):
    common = ["--fit", "digits", "--test", "digits", "--ood", "photos", "--n-fit", "120",
              "--n-test", "60", "--cache-dir", ""]
    assert main(["eval", "--checkpoint", str(tiny_run), "--variant", "6d+ssim", "--k", "3",
                 "--placement", "quadratic",
                 "--json", str(tmp_path / "torch.json"), *common]) == 0
    assert main(["eval", "--bundle", str(bundle_dir), "--backend", "onnxruntime",
                 "--json", str(tmp_path / "onnx.json"), *common]) == 0
    a = json.loads((tmp_path / "torch.json").read_text())["results"]
    b = json.loads((tmp_path / "onnx.json").read_text())["results"]
    assert [r["variant"] for r in a] == [r["variant"] for r in b]
    for x, y in zip(a, b):
        assert round(x["auroc"], 3) == round(y["auroc"], 3)


def test_edge_runs_a_bundle_without_torch(bundle_dir):
    """The daemon's side of the contract, in a process where torch cannot be imported."""
    code = NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        from pathwatch.edge.bundle import Bundle
        from pathwatch.edge.backends import load_backend
        from pathwatch.cli import main
        b = Bundle.load({str(bundle_dir)!r})
        backend = load_backend(b, "auto", log=print)
        f, h = backend(np.zeros((3, 16, 16, 3), np.uint8))
        assert f.shape == (3, 9) and h.shape == (3, 16, 16)
        assert main(["bundle", "verify", {str(bundle_dir)!r}]) == 0
        assert "torch" not in sys.modules
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "backend onnxruntime" in res.stdout and "OK" in res.stdout


@pytest.mark.gpu
def test_torch_cuda_backend_matches_recorded_outputs(bundle_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from pathwatch.edge.parity import compare

    b = Bundle.load(bundle_dir)
    ref = b.parity_reference()
    for fp16 in (False, True):
        from pathwatch.edge.backends.torch_backend import TorchBackend
        backend = TorchBackend(b, 64, device="cuda", fp16=fp16)
        f, h = backend(ref["images"])
        report = compare("torch-cuda", b.feature_names, ref["features"], ref["heatmap"], f, h,
                         "fp16" if fp16 else "fp32")
        assert report.passed, report.summary()

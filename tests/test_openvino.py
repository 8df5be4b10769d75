"""The OpenVINO backend on real bundles: FP32 parity, the BF16 split (UNet calls in BF16, path
arithmetic and statistics in FP32) and its parity gate."""
import json

import numpy as np
import pytest

from pathwatch.cli import main
from pathwatch.edge.backends import BackendError, load_backend
from pathwatch.edge.bundle import Bundle
from pathwatch.edge.models import SHIPPED
from pathwatch.edge.parity import compare

ov = pytest.importorskip("openvino")
from pathwatch.edge.backends.openvino_backend import (OpenVinoBackend, cpu_has_bf16,  # noqa: E402
                                                      unet_boundaries)

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native BF16")


def test_fp32_passes_the_fp32_parity_gate(tiny_bundle, tmp_path):
    report = tmp_path / "verify.json"
    assert main(["bundle", "verify", str(tiny_bundle), "--backend", "openvino", "--precision",
                 "fp32", "--json", str(report)]) == 0
    (r,) = json.loads(report.read_text())
    assert r["backend"] == "openvino" and r["passed"] and r["score_spearman"] > 0.9999


@pytest.mark.parametrize("where", ["shipped", "tiny"])
def test_every_unet_call_is_found(where, tiny_bundle):
    bundle = Bundle.load(SHIPPED if where == "shipped" else tiny_bundle)
    starts, ends = unet_boundaries(ov.Core().read_model(str(bundle.graph_path)))
    assert len(starts) == len(ends) == len(bundle.manifest.schedule.timesteps) == 3


def _column_error(ref, got):
    return (np.abs(got - ref) / (ref.max(0) - ref.min(0))).max(0)


@needs_bf16
def test_bf16_keeps_the_statistics_in_fp32():
    """The split runs the UNet in BF16 (outputs differ from FP32) while the SSIM terms stay
    close; the whole graph at BF16 (what the split avoids) moves them by most of their range."""
    bundle = Bundle.load(SHIPPED)
    ref = bundle.parity_reference()
    images, want = ref["images"], ref["features"]
    split = OpenVinoBackend(bundle, 64, 1, "bf16", gate=False)
    got, maps = split(images)
    assert split.precision == "bf16" and np.isfinite(got).all() and np.isfinite(maps).all()
    err = _column_error(want, got)
    assert err.max() > 1e-5  # not FP32: BF16 really ran
    ssim = [i for i, n in enumerate(bundle.feature_names) if "ssim" in n]
    assert ssim and err[ssim].max() < 0.05
    whole = ov.Core().compile_model(str(bundle.graph_path), "CPU",
                                    {"INFERENCE_PRECISION_HINT": "bf16"})
    err_whole = _column_error(want, np.array(whole.create_infer_request().infer([images])[0]))
    assert err_whole[ssim].max() > 4 * err[ssim].max()


@needs_bf16
@pytest.mark.parametrize("where", ["shipped", "tiny"])
def test_bf16_runs_only_through_the_parity_gate(where, tiny_bundle):
    """The gate's verdict is compare()'s on the recorded images: a pass loads, a miss is
    refused with the measured numbers and the fix."""
    bundle = Bundle.load(SHIPPED if where == "shipped" else tiny_bundle)
    ref = bundle.parity_reference()
    got, maps = OpenVinoBackend(bundle, 64, 1, "bf16", gate=False)(ref["images"])
    report = compare("openvino bf16", bundle.feature_names, ref["features"], ref["heatmap"],
                     got, maps, "bf16")
    if report.passed:
        assert OpenVinoBackend(bundle, 64, 1, "bf16").parity.passed
    else:
        with pytest.raises(BackendError) as e:
            OpenVinoBackend(bundle, 64, 1, "bf16")
        assert "parity gate" in str(e.value) and "model.precision: fp32" in str(e.value)
        assert all(f in str(e.value) for f in report.failures)


def test_load_backend_logs_what_runs(tiny_bundle):
    lines = []
    backend = load_backend(Bundle.load(tiny_bundle), "openvino", max_batch=16, threads=1,
                           precision="fp32", log=lines.append)
    assert backend.describe()["precision"] == "fp32"
    assert lines and lines[0].startswith("backend openvino on cpu")
    h, w = backend.height, backend.width
    feats, maps = backend(np.zeros((20, h, w, 3), np.uint8))  # two calls of <= 16
    assert feats.shape == (20, backend.dim) and maps.shape == (20, h, w)


def test_bf16_is_refused_on_other_backends(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {precision: bf16, backend: onnxruntime}\n"
                      "cameras: [{name: a, source: demo}]\n")
    assert main(["config", "check", str(config)]) == 2

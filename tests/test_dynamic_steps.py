"""Dynamic steps on real models and frames: the export writes a one-step head, the cascade sends
only tiles near the cheap threshold to the full schedule, an object still gets the full head's
verdict, and a daemon calibrates both heads and alerts."""
from __future__ import annotations

import json
import shutil
import signal

import cv2
import numpy as np
import pytest
from skimage import data

from pathwatch.edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from pathwatch.edge.bundle import CHEAP, Bundle, BundleError
from pathwatch.edge.calibration import fit_calibration
from pathwatch.edge.demo import DemoScene
from pathwatch.edge.dynamic_steps import DynamicSteps
from pathwatch.edge.models import SHIPPED
from pathwatch.edge.tiles import TileGrid
from test_daemon import _log, collect, free_port
from test_faults import _first
from test_gating import launch_on_object_clip


def test_export_writes_a_one_step_head(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    head = bundle.cheap_head()
    assert head is not None and head.timesteps == bundle.timesteps[:1]
    assert head.weights_sha256 == bundle.weights_sha256
    assert head.manifest.raw["parity"]["onnxruntime_cpu"]["passed"]


def test_a_head_of_another_model_is_refused(tiny_bundle, tmp_path):
    shipped = tmp_path / "shipped"
    shutil.copytree(SHIPPED, shipped)
    shutil.rmtree(shipped / CHEAP)
    shutil.copytree(tiny_bundle / CHEAP, shipped / CHEAP)
    with pytest.raises(BundleError, match="not this bundle's one-step head"):
        Bundle.load(shipped).cheap_head()


@pytest.fixture(scope="module")
def calibrated():
    return _calibrated()


def _calibrated(frames: int = 80):
    """The shipped model's two heads, calibrated on the demo's normal frames at 5 fps."""
    full = Bundle.load(SHIPPED)
    cheap = full.cheap_head()
    scene = DemoScene(seed=0, script="normal")
    first = scene.frame(0)[0]
    grid = TileGrid(first.shape[1], first.shape[0], full.image_size[0], 4, 3)
    tiles = np.stack([grid.cut(scene.frame(2 * i)[0]) for i in range(frames)])
    runs = {}
    for name, b in (("full", full), ("cheap", cheap)):
        backend = OnnxRuntimeBackend(b, 64, 1)
        feats = np.stack([backend(t)[0] for t in tiles])
        runs[name] = (backend, fit_calibration("cam", feats, grid, b.identity(), b.label,
                                               density=b.default_density, fps=5.0))
    cal = runs["full"][1].with_cheap(runs["cheap"][1])
    return grid, scene, runs["full"][0], runs["cheap"][0], cal


def test_the_cascade_escalates_an_object_and_spares_the_normal_tiles(calibrated):
    grid, scene, full, cheap, cal = calibrated
    steps = DynamicSteps(cal, margin=0.25)
    idx = np.arange(grid.count)
    escalated_normal = []
    for i in range(100, 130):  # normal frames after the window
        tiles = grid.cut(scene.frame(2 * i)[0])
        c_feats, c_maps = cheap(tiles)
        up = steps.select(idx, c_feats, force=False)
        f_feats, f_maps = full(tiles[up])
        feats, maps, scores = steps.merge(f_feats, f_maps, c_maps)
        if i > 100:  # the first frame escalates every tile: none had a full evaluation
            escalated_normal.append(up.mean())
        assert (scores[~up] < 0.25 * cal.threshold).all()  # spared tiles lie well below
        assert maps.shape == (grid.count, *tiles.shape[1:3])
    assert np.mean(escalated_normal) < 0.5, escalated_normal

    tiles = grid.cut(scene.frame(300)[0])
    h, w = tiles.shape[1:3]
    tiles[5] = cv2.resize(data.coffee(), (w, h), interpolation=cv2.INTER_AREA)  # a parcel
    c_feats, c_maps = cheap(tiles)
    up = steps.select(idx, c_feats, force=False)
    assert up[5], "the object's tile must get the full schedule"
    f_feats, f_maps = full(tiles[up])
    _, _, scores = steps.merge(f_feats, f_maps, c_maps)
    want = cal.tile_scores(full(tiles)[0])[5]
    assert scores[5] == pytest.approx(want, rel=1e-6) and scores[5] > cal.threshold
    assert steps.select(idx, c_feats, force=True).all()  # an open alert: every tile


def test_a_lower_alert_threshold_lowers_the_escalation_level(calibrated):
    """A threshold set in the config (or by hand) below the calibrated one: spared tiles
    still lie below margin x that threshold, so none the full head would alert on is spared."""
    grid, scene, full, cheap, cal = calibrated
    alert_at = cal.threshold / 10
    steps = DynamicSteps(cal, margin=0.25, threshold=alert_at)
    assert steps.level == pytest.approx(DynamicSteps(cal, 0.25).level / 10)
    idx = np.arange(grid.count)
    for i in range(100, 110):
        tiles = grid.cut(scene.frame(2 * i)[0])
        c_feats, c_maps = cheap(tiles)
        up = steps.select(idx, c_feats, force=False)
        _, _, scores = steps.merge(*full(tiles[up]), c_maps)
        assert (scores[~up] < 0.25 * alert_at).all()


def test_a_damaged_one_step_part_only_turns_dynamic_steps_off(calibrated, tmp_path):
    from pathwatch.edge.calibration import Calibration

    cal = calibrated[-1]
    path = tmp_path / "cam.json"
    cal.save(path)
    assert Calibration.load(path).cheap is not None
    data = json.loads(path.read_text())
    del data["cheap"]["tiles"][0]["std"]
    path.write_text(json.dumps(data))
    loaded = Calibration.load(path)
    assert loaded.cheap is None and "one-step part ('cheap') is damaged" in loaded.cheap_error
    assert loaded.threshold == cal.threshold


def test_a_daemon_calibrates_both_heads_and_alerts(tmp_path, tiny_bundle):
    import urllib.request

    port = free_port()
    proc, sub = launch_on_object_clip(
        tmp_path, tiny_bundle, {"dynamic_steps": {"enabled": True, "margin": 0.25},
                                # gating on: the escalated tiles are a subset of a subset
                                "gating": {"enabled": True, "max_age_s": 60.0}}, port)
    try:
        got = collect(sub, lambda g: _first(g, "start") is not None, 150)
        assert _first(got, "start"), _log(proc)
        got += collect(sub, lambda g: any(m.topic == "heartbeat" for m in g), 10)
        beats = [m.header["cameras"]["cam"] for m in got if m.topic == "heartbeat"]
        share = [b["tiles_escalated"] for b in beats]
        assert share and share[-1] is not None and 0 < share[-1] <= 1, share
        assert beats[-1]["tiles_sent"] is not None and beats[-1]["tiles_sent"] < 0.9
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for name in ('pathwatch_tiles_escalated_ratio{camera="cam"}',
                     'pathwatch_tiles_sent_ratio{camera="cam"}', "pathwatch_one_step_seconds_bucket"):
            assert name in text, name
        one_step = [line for line in text.splitlines()
                    if line.startswith("pathwatch_tiles_one_step_total ")]
        assert one_step and float(one_step[0].split()[1]) > 0
        cal = json.loads((tmp_path / "state" / "calibration" / "cam.json").read_text())
        assert cal["cheap"]["bundle"]["graph_sha256"] == \
            Bundle.load(tiny_bundle).cheap_head().manifest.graph.sha256
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert "dynamic steps on" in proc.stderr.read()

"""Change gating on real frames: sensor noise is not change, a small object is, every tile is
re-evaluated within max_age_s, and a daemon with gating on still alerts while sending fewer
tiles."""
from __future__ import annotations

import json
import signal

import cv2
import numpy as np
import pytest
import yaml
from skimage import data

from conftest import daemon_config
from pathwatch.edge.gating import MIN_LEVEL, ChangeGate, noise_level
from pathwatch.edge.tiles import TileGrid
from test_daemon import _log, collect, launch
from pathwatch.edge.subscriber import AlertSubscriber
from test_faults import _first, write_clip_ending_on_an_object


def frames(n=3, sigma=3.0, seed=0):
    base = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (640, 480)).astype(float)
    rng = np.random.default_rng(seed)
    return [np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)
            for _ in range(n)]


@pytest.fixture
def grid():
    return TileGrid(640, 480, 32, 4, 3)


def test_sensor_noise_is_measured_and_is_not_change(grid):
    a, b = (grid.cut(f) for f in frames(2, sigma=6.0))
    noise = noise_level(a, b)
    assert 1.0 < noise < 30.0, noise
    gate = ChangeGate(noise)
    gate.merge(gate.select(a, 0.0), a, np.zeros((12, 6)), np.zeros((12, 1)), 0.0)
    assert not gate.select(b, 0.2).any()


def test_a_small_object_is_change_and_old_tiles_are_evaluated_again(grid):
    f0, f1 = frames(2)
    gate = ChangeGate(noise_level(grid.cut(f0), grid.cut(f1)), max_age_s=2.0)
    t0 = grid.cut(f0)
    gate.merge(gate.select(t0, 0.0), t0, np.zeros((12, 6)), np.zeros((12, 1)), 0.0)
    f1[200:230, 300:330] = 255  # a 30x30 px object, about 1.5% of one 160x160 px tile
    mask = gate.select(grid.cut(f1), 0.4)
    assert mask.sum() >= 1 and mask.sum() <= 2, mask  # its tile (or two, on a border)
    assert gate.select(grid.cut(f0), 2.0).all()  # max_age_s: everything, changed or not
    assert gate.level >= MIN_LEVEL


def test_merge_keeps_the_features_of_tiles_not_sent(grid):
    f0, f1 = frames(2)
    gate = ChangeGate(1.0)
    t0, t1 = grid.cut(f0), grid.cut(f1)
    feats0 = np.arange(12 * 6, dtype=float).reshape(12, 6)
    gate.merge(np.ones(12, bool), t0, feats0, np.zeros((12, 1)), 0.0)
    mask = np.zeros(12, bool)
    mask[5] = True
    feats, _ = gate.merge(mask, t1, np.full((1, 6), -1.0), np.zeros((1, 1)), 0.1)
    assert (feats[5] == -1).all() and (np.delete(feats, 5, 0) == np.delete(feats0, 5, 0)).all()
    assert gate.share_sent() == pytest.approx(13 / 24)


def launch_on_object_clip(tmp_path, bundle, sections: dict, metrics_port: int = 0):
    """A real daemon on a looping clip that ends on an object, with these config sections
    added; its process and a subscriber to its alerts and heartbeats."""
    video = write_clip_ending_on_an_object(tmp_path / "clip.avi", normal=80, anomaly=60)
    config = daemon_config(tmp_path, bundle, str(video), metrics_port=metrics_port, on_end="loop")
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **sections}))
    proc = launch(config)
    sub = AlertSubscriber(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/replay.sock",
                          topics=("alert.", "heartbeat"))
    return proc, sub


def test_a_daemon_with_gating_alerts_on_an_object_and_sends_fewer_tiles(tmp_path, tiny_bundle):
    # max_age_s: age never decides, however slow the CPU
    proc, sub = launch_on_object_clip(tmp_path, tiny_bundle,
                                      {"gating": {"enabled": True, "max_age_s": 60.0}})
    try:
        got = collect(sub, lambda g: _first(g, "start") is not None, 150)
        assert _first(got, "start"), _log(proc)
        got += collect(sub, lambda g: any(m.topic == "heartbeat" for m in g), 10)
        sent = [m.header["cameras"]["cam"]["tiles_sent"] for m in got if m.topic == "heartbeat"]
        assert sent and sent[-1] is not None and sent[-1] < 0.9, sent  # a mostly static scene
        cal = json.loads((tmp_path / "state" / "calibration" / "cam.json").read_text())
        assert cal["noise"]["level"] >= 0 and cal["noise"]["frame_pairs"] >= 20
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    log = proc.stderr.read()
    assert "change gating stays off" not in log

"""Tiles and per-camera calibration on real images (scikit-image photos)."""
import json

import cv2
import numpy as np
import pytest
from skimage import data

from pathwatch.edge.calibration import Calibration, CalibrationError, fit_calibration
from pathwatch.edge.tiles import TileGrid, heatmap_image, overlay_image, tile_weights
from pathwatch.edge.threshold import alert_statistic


def frame() -> np.ndarray:
    return cv2.cvtColor(cv2.resize(data.astronaut(), (320, 240)), cv2.COLOR_RGB2BGR)


def test_tiles_cover_the_roi_in_row_major_rgb_order():
    img = frame()
    grid = TileGrid(320, 240, 32, cols=4, rows=3, exposure="off")
    tiles = grid.cut(img)
    assert tiles.shape == (12, 32, 32, 3) and tiles.dtype == np.uint8
    whole = cv2.cvtColor(cv2.resize(img, (128, 96), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert np.array_equal(tiles[5], whole[32:64, 32:64])  # col 1, row 1
    assert grid.position(5) == (1, 1)
    assert np.array_equal(grid.assemble(tiles[..., 0].astype(np.float32)), whole[..., 0])


def test_roi_and_ignore_masks():
    grid = TileGrid(320, 240, 32, cols=2, rows=2, roi=(0.5, 0.5, 1.0, 1.0),
                    ignore=[(0.0, 0.0, 0.5, 0.6)], exposure="off")
    assert grid.active.tolist() == [False, True, True, True]
    tiles = grid.cut(frame())
    roi = cv2.cvtColor(cv2.resize(frame()[120:240, 160:320], (64, 64), interpolation=cv2.INTER_AREA),
                       cv2.COLOR_BGR2RGB)
    assert np.array_equal(tiles[3], roi[32:, 32:])
    with pytest.raises(ValueError, match="every tile"):
        TileGrid(320, 240, 32, 2, 2, ignore=[(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="frame is"):
        grid.cut(np.zeros((100, 100, 3), np.uint8))


def test_exposure_normalisation_cancels_a_global_gain():
    grid = TileGrid(320, 240, 32, cols=4, rows=3)
    img = frame()
    darker = (img * 0.8).astype(np.uint8)
    a, b = grid.cut(img).astype(float), grid.cut(darker).astype(float)
    assert abs(a.mean() - b.mean()) < 1.0 and abs(a.mean() - 118) < 2
    assert np.abs(a - b).mean() < 2.0  # vs about 25 grey levels without it


def test_heatmap_is_an_image_of_the_grid():
    grid = TileGrid(320, 240, 16, cols=4, rows=3)
    maps = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)
    img = heatmap_image(grid, np.linspace(-1, 5, 12), maps, threshold=3.0)
    assert img.shape == (3 * 16 * 4, 4 * 16 * 4, 3) and img.dtype == np.uint8


def test_heat_is_on_a_log_scale_so_the_worst_tile_stands_out():
    # A strong anomaly (10^5 against a threshold of 10) must not light every tile over it.
    scores = np.array([0.5, 5.0, 12.0, 100.0, 1e5, -np.inf, 3.0])
    w = tile_weights(scores, 10.0)
    assert w[4] == 1.0 and np.all(np.diff(w[[0, 1, 2, 3, 4]]) > 0)
    assert w[0] < w[1] <= 0.2 and 0.2 < w[2] < 0.25 and w[3] < 0.45  # 10x is far from 10^4x
    assert w[5] == 0.0 and np.all((w >= 0) & (w <= 1))
    quiet = tile_weights(np.array([1.0, 2.0, 3.0]), 10.0)
    assert np.all(quiet <= 0.2)  # nothing over the threshold: nothing hot


def test_overlay_blends_the_heat_into_the_roi_and_outlines_the_worst_tile():
    grid = TileGrid(320, 240, 16, cols=4, rows=3, roi=(0.25, 0.0, 1.0, 1.0))
    frame = np.full((240, 320, 3), 128, np.uint8)
    maps = np.ones((12, 16, 16), np.float32)
    scores = np.full(12, 1.0)
    scores[5] = 1e4  # column 1, row 1
    out = overlay_image(grid, frame, scores, maps, threshold=10.0)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :80], frame[:, :80])  # outside the roi: untouched
    x0, y0 = 80 + 60, 80  # the worst tile spans x 140-200, y 80-160
    assert np.abs(out[y0 + 40, x0 + 30].astype(int) - 128).sum() > 100  # hot: coloured
    assert np.abs(out[20, 100].astype(int) - 128).sum() < 30  # a quiet tile: the frame shows
    assert tuple(out[y0 + 40, x0]) == (0, 255, 255)  # the outline


def _features(rng, frames, tiles, shift=0.0):
    base = np.linspace(1, 3, tiles)[None, :, None]
    return base + shift + 0.1 * rng.normal(size=(frames, tiles, 4))


def test_calibration_fits_scores_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    grid = TileGrid(320, 240, 32, cols=3, rows=2, ignore=[(0.0, 0.0, 0.34, 0.5)])
    ident = {"weights_sha256": "a" * 64, "graph_sha256": "b" * 64}
    cal = fit_calibration("cam", _features(rng, 80, 6), grid, ident, "test bundle", fps=5)
    assert cal.active.tolist() == [False, True, True, True, True, True]
    normal = cal.tile_scores(_features(rng, 1, 6)[0])
    assert normal[0] == -np.inf and cal.frame_score(normal)[0] < cal.threshold
    odd = _features(rng, 1, 6)[0]
    odd[4] += 2.0
    score, tile = cal.frame_score(cal.tile_scores(odd))
    assert tile == 4 and score > cal.threshold
    path = tmp_path / "cal.json"
    cal.save(path)
    again = Calibration.load(path)
    assert again.threshold == cal.threshold
    assert json.loads(path.read_text()) == cal.data  # the file is the JSON it was made from
    assert np.allclose(again.tile_scores(odd), cal.tile_scores(odd))
    again.check(ident, grid, path)
    with pytest.raises(CalibrationError, match="another bundle"):
        again.check({**ident, "weights_sha256": "c" * 64}, grid, path)
    with pytest.raises(CalibrationError, match="tiles"):
        again.check(ident, TileGrid(320, 240, 32, cols=4, rows=2), path)


def test_bad_calibration_files_say_what_to_do(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist.*pathwatch calibrate"):
        Calibration.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(CalibrationError, match="not a pathwatch calibration"):
        Calibration.load(tmp_path / "other.json")
    with pytest.raises(CalibrationError, match="at least 20"):
        fit_calibration("cam", np.zeros((5, 2, 3)), TileGrid(64, 64, 32, 2, 1), {}, "x")


def _saved_calibration(tmp_path):
    rng = np.random.default_rng(2)
    grid = TileGrid(320, 240, 32, cols=2, rows=1)
    ident = {"weights_sha256": "a" * 64, "graph_sha256": "b" * 64}
    cal = fit_calibration("door", _features(rng, 40, 2), grid, ident, "default 6d+ssim K=3",
                          false_alarms_per_hour=2, fps=4, source="demo", seconds=10.0)
    path = tmp_path / "cal.json"
    cal.save(path)
    return cal, path


def test_calibration_fields_are_typed_when_fitted_and_when_loaded(tmp_path):
    cal, path = _saved_calibration(tmp_path)
    for c in (cal, Calibration.load(path)):
        assert c.camera == "door" and c.bundle_label == "default 6d+ssim K=3"
        assert c.frames_total == 40 and c.frames_holdout == 40  # every frame scored out of fold
        assert c.false_alarms_per_hour == 2.0 and isinstance(c.false_alarms_per_hour, float)
        assert c.threshold_method.startswith(("Pareto tail", "largest out-of-fold score"))
        assert c.threshold == c.data["threshold"]["value"] and c.facts.density == "gmm-bic"
        assert c.grid == TileGrid(320, 240, 32, cols=2, rows=1).describe()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["frames"].update(total="40"), "frames.total must be an integer"),
    (lambda d: d["frames"].update(holdout=None), "frames.holdout must be an integer"),
    (lambda d: d["threshold"].update(method=3), "threshold.method must be a string"),
    (lambda d: d["threshold"].update(value=True), "threshold.value must be a number"),
    (lambda d: d["threshold"].update(false_alarms_per_hour="0.5"), "false_alarms_per_hour must be"),
    (lambda d: d.update(bundle=["a"]), "bundle.label is missing"),
    (lambda d: d.update(grid=[[1, 2]]), "grid must be an object"),
    (lambda d: d.update(camera=7), "camera must be a string"),
    (lambda d: d["frames"].pop("total"), "missing 'total'"),
    (lambda d: d["threshold"].update(value=-1e9), "below every normal frame's score"),
])
def test_a_calibration_of_the_wrong_shape_is_damaged(tmp_path, edit, message):
    _, path = _saved_calibration(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=f"is damaged .*{message}.*recalibrate"):
        Calibration.load(path)


def test_saving_where_it_cannot_be_written_says_what_to_set(tmp_path):
    cal, _ = _saved_calibration(tmp_path)
    (tmp_path / "taken").write_text("a file where a directory should be")
    target = tmp_path / "taken" / "cam.json"
    with pytest.raises(CalibrationError, match=f"cannot write {target} .*set cameras\\[\\]"
                       "\\.calibration or state_dir to a writable path"):
        cal.save(target)


def test_threshold_is_never_below_what_the_window_would_have_alerted_on():
    rng = np.random.default_rng(3)
    cal = fit_calibration("cam", _features(rng, 60, 3), TileGrid(320, 240, 32, 3, 1),
                          {"weights_sha256": "a", "graph_sha256": "b"}, "x", fps=5)
    # The 3rd largest of every 5 consecutive out-of-fold scores: the alert rule's statistic.
    assert cal.threshold >= alert_statistic(cal.data["scores"]["out_of_fold"], 3, 5).max()
    assert len(cal.data["scores"]["out_of_fold"]) == 60 and cal.data["frames"]["folds"] == 3


def test_a_changed_alert_rule_rethresholds_from_the_stored_scores(tmp_path):
    cal, path = _saved_calibration(tmp_path)
    strict = Calibration.load(path)
    assert strict.retarget(2.0, 3, 5) is None  # the rule it was fitted for: nothing to do
    said = strict.retarget(0.01, 3, 5)
    assert said.startswith(f"threshold {cal.threshold:.2f} -> ") and strict.threshold > cal.threshold
    lax = Calibration.load(path)
    lax.retarget(50.0, 1, 1)
    assert lax.threshold <= cal.threshold
    # A value set by hand is the user's choice: kept whatever the rule.
    edited = json.loads(path.read_text())
    edited["threshold"]["value"] = 42.0
    path.write_text(json.dumps(edited))
    mine = Calibration.load(path)
    assert "set by hand" in mine.retarget(0.01, 3, 5) and mine.threshold == 42.0


def test_a_version_1_file_still_loads_and_says_it_cannot_rethreshold(tmp_path):
    cal, path = _saved_calibration(tmp_path)
    old = json.loads(path.read_text())
    old["version"] = 1
    del old["scores"]["out_of_fold"], old["threshold"]["chosen"]
    path.write_text(json.dumps(old))
    again = Calibration.load(path)
    assert again.threshold == cal.threshold and "recalibrate" in again.retarget(0.01, 3, 5)


def test_frames_declared_normal_are_kept_and_learned():
    rng = np.random.default_rng(3)
    grid = TileGrid(320, 240, 32, cols=3, rows=2)
    ident = {"weights_sha256": "a" * 64, "graph_sha256": "b" * 64}
    normal, odd = _features(rng, 90, 6), _features(rng, 15, 6, shift=3.0)  # a sight not seen
    x = np.concatenate([normal, odd])
    plain = fit_calibration("cam", x, grid, ident, "b", fps=5)
    assert sum(t["frames"] for t in plain.trimmed) >= 15  # unusual, so left out
    declared = np.r_[np.zeros(90, bool), np.ones(15, bool)]
    taught = fit_calibration("cam", x, grid, ident, "b", fps=5, declared_normal=declared)
    assert taught.trimmed == [] and taught.data["frames"]["declared_normal"] == 15
    again = _features(rng, 1, 6, shift=3.0)[0]
    assert plain.frame_score(plain.tile_scores(again))[0] > plain.threshold
    assert taught.frame_score(taught.tile_scores(again))[0] < taught.threshold
    # Spread over the out-of-fold blocks, the declared frames do not lift the threshold to
    # the level they scored at before: the camera still sees what is new to it.
    assert taught.threshold < plain.frame_score(plain.tile_scores(again))[0] / 10
    assert taught.frame_score(taught.tile_scores(_features(rng, 1, 6, shift=-3.0)[0]))[0] > \
        taught.threshold


def test_the_calibration_window_round_trips_and_a_damaged_one_is_one_error(tmp_path):
    from pathwatch.edge.calibration import CalibrationError, CalibrationWindow

    w = CalibrationWindow(np.ones((30, 6, 4), np.float32), np.arange(30) / 5.0,
                          np.r_[np.zeros(20, bool), np.ones(10, bool)])
    w.save(tmp_path / "cam.json")
    assert CalibrationWindow.path_for(tmp_path / "cam.json") == tmp_path / "cam.frames.npz"
    back = CalibrationWindow.load(tmp_path / "cam.json")
    assert np.array_equal(back.features, w.features) and back.declared.sum() == 10
    (tmp_path / "cam.frames.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CalibrationError, match="damaged"):
        CalibrationWindow.load(tmp_path / "cam.json")
    with pytest.raises(CalibrationError, match="kept no frames"):
        CalibrationWindow.load(tmp_path / "other.json")

"""passing: ignore. Things passing through a tile are normal; something new that stays still
can alert. edge.stillness on real tiles, the calibration that is fitted with its flags, and a
real camera (the tiny trained bundle on ONNX Runtime, a video written by OpenCV, played in
scene time) on a checkerboard that first moves through a place calibration never saw it in,
then stays there."""
import cv2
import numpy as np
import pytest
from skimage import data

from pathwatch.edge.calibration import (STILL_LEAST, Calibration, CalibrationError,
                                        CalibrationWindow, fit_calibration)
from pathwatch.edge.camera import CalibrationPlan, Lifecycle
from pathwatch.edge.stillness import StillContent
from pathwatch.edge.tiles import TileGrid
from test_camera import backend, make_camera, run_frames, settle  # noqa: F401 (fixture)

FPS = 10.0
SIZE = (160, 120)
BOARD = 255.0 * (np.indices((40, 40)).sum(0) % 8 < 4)[..., None]  # 4-px checkerboard


def scene(rng, board_at=None):
    """A textured still scene with sensor noise, and a checkerboard with its corner at
    `board_at` (x, y) when given."""
    img = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), SIZE).astype(np.float32)
    img += rng.normal(0, 2.0, img.shape)
    if board_at is not None:
        x, y = board_at
        img[y:y + 40, x:x + 40] = BOARD
    return np.clip(img, 0, 255).astype(np.uint8)


def board_path(i, walk, stay):
    """Where the checkerboard is in frame i: none, then walking right to left through the
    right half (frames in `walk`, 4 px a frame), then still there (frames in `stay`)."""
    if i in walk:
        return 116 - 4 * ((i - walk.start) % 20), 50
    if i in stay:
        return 100, 50
    return None


def test_still_content_tells_a_thing_that_stays_from_one_that_passes():
    rng = np.random.default_rng(0)
    grid = TileGrid(*SIZE, 32, 2, 2, exposure="off")  # as the camera cuts them for stillness
    still = StillContent(still_s=1.0, min_share=0.04, background_s=20.0)
    walk, stay = range(100, 140), range(140, 200)
    flags = [still.update(grid.cut(scene(rng, board_path(i, walk, stay))), i / FPS)
             for i in range(200)]
    flags = np.stack(flags)
    assert not flags[:140].any()  # nothing new, then a thing that never stops
    right = [1, 3]  # the tiles the checkerboard stays in (x 100..140, y 50..90)
    assert not flags[140:148].any()  # not yet still for still_s
    assert flags[152:200][:, right].any(axis=1).all()
    assert not flags[140:200][:, [0, 2]].any()


def test_a_thing_that_stays_becomes_background():
    rng = np.random.default_rng(1)
    grid = TileGrid(*SIZE, 32, 2, 2, exposure="off")  # as the camera cuts them for stillness
    still = StillContent(still_s=1.0, min_share=0.04, background_s=20.0)
    flags = np.stack([still.update(grid.cut(scene(rng, (100, 50) if i >= 100 else None)),
                                   i / FPS) for i in range(400)])
    assert flags[120:150].any(axis=1).all()
    assert not flags[-20:].any()  # 30 s later the median background holds it


def _features(rng, n, tiles, dim=4):
    return rng.normal(size=(n, tiles, dim)).astype(np.float32)


def test_a_calibration_fitted_with_still_flags_scores_as_the_camera_will(tmp_path):
    rng = np.random.default_rng(2)
    grid = TileGrid(320, 240, 32, 3, 1)
    ident = {"weights_sha256": "a" * 64, "graph_sha256": "b" * 64}
    x = _features(rng, 60, 3)
    passing = {"still_s": 4.0, "min_area": 0.0033, "background_s": 120.0}
    still = np.zeros((60, 3), bool)  # nothing stayed in the window
    still[:, 2] = True  # but tile 2's ordinary content counts as still (a background edge)
    gated = fit_calibration("cam", x, grid, ident, "b", fps=5, passing=passing, still=still)
    assert gated.passing == passing
    plain = fit_calibration("cam", x, grid, ident, "b", fps=5)
    assert gated.data["scores"]["frame_max"] <= plain.data["scores"]["frame_max"]
    none_still = fit_calibration("cam", x, grid, ident, "b", fps=5, passing=passing,
                                 still=np.zeros((60, 3), bool))
    assert none_still.threshold == STILL_LEAST and "least" in none_still.threshold_method
    new = x[0].copy()
    new[1] += 12.0  # something new in tile 1
    scores = gated.tile_scores(new)
    assert scores[1] > gated.threshold
    assert gated.frame_score(scores, np.array([False, False, True]))[0] < gated.threshold
    assert gated.frame_score(scores, np.array([False, True, False]))[0] > gated.threshold
    path = tmp_path / "cam.json"
    gated.save(path)
    again = Calibration.load(path)
    again.check(ident, grid, path, passing)
    with pytest.raises(CalibrationError, match="passing ignore .* now has alert; recalibrate"):
        again.check(ident, grid, path, None)
    with pytest.raises(CalibrationError, match="recalibrate"):
        again.check(ident, grid, path, {**passing, "still_s": 2.0})
    CalibrationWindow(x, np.arange(60) / 5.0, np.zeros(60, bool), still=still).save(path)
    assert CalibrationWindow.load(path).still.shape == (60, 3)


def write_board_video(path, walk, stay, frames):
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), int(FPS), SIZE)
    for i in range(frames):
        writer.write(scene(rng, board_path(i, walk, stay)))
    writer.release()
    return path


def watch(tmp_path, tiny_bundle, backend, passing, frames=220):
    """Calibrate on 10 s of the empty scene, then a checkerboard walks through the right half
    for 4 s and stays there to the end (6 s by default); the alert events, with the frame
    each came on."""
    walk, stay = range(120, 160), range(160, frames)
    tmp_path.mkdir()
    video = write_board_video(tmp_path / "board.avi", walk, stay, frames)
    cam, _ = make_camera(tmp_path, tiny_bundle, str(video), plan=CalibrationPlan(frames=100),
                         realtime=False, passing=passing)
    cam.config = cam.config.model_copy(update={"stillness": cam.config.stillness.model_copy(
        update={"still_s": 1.0, "min_area": 0.01, "background_s": 20.0})})
    cam.start()
    try:
        run_frames(cam, backend, 100)
        settle(cam)
        assert cam.lifecycle is Lifecycle.SCORING
        results = run_frames(cam, backend, frames - 100)
    finally:
        cam.stop(2.0, "test")
    return cam, [m.event for r in results for m in r.alerts]


def test_a_passer_by_in_a_new_place_alerts_only_with_passing_alert(tmp_path, tiny_bundle,
                                                                  backend):
    cam, events = watch(tmp_path / "alert", tiny_bundle, backend, "alert")
    starts = [e.frame_index for e in events if e.state == "start"]
    assert starts and 120 <= starts[0] < 160, starts  # the walk itself alerts

    cam, events = watch(tmp_path / "ignore", tiny_bundle, backend, "ignore")
    assert cam.calibration.passing == {"still_s": 1.0, "min_area": 0.01, "background_s": 20.0}
    assert cam.still.min_share == pytest.approx(0.04)  # of each of the 2 x 2 tiles
    starts = [e.frame_index for e in events if e.state == "start"]
    # No alert while it walks; one once it has stood still for still_s (10 frames).
    assert len(starts) == 1 and 170 <= starts[0] < 185, starts
    window = CalibrationWindow.load(cam.calibration_path)
    assert window.still is not None and window.still.shape == window.features.shape[:2]


def test_refits_keep_the_passing_settings_and_the_still_flags(tmp_path):
    """feedback grows the window with an alert's frames (they raised it as still content) and
    refits with the same settings; the flags stay one per frame and tile."""
    from pathwatch.edge.calibration import refit_calibration
    from pathwatch.edge.feedback import _grown

    rng = np.random.default_rng(3)
    grid = TileGrid(320, 240, 32, 3, 1)
    ident = {"weights_sha256": "a" * 64, "graph_sha256": "b" * 64}
    passing = {"still_s": 4.0, "min_area": 0.0033, "background_s": 120.0}
    x = _features(rng, 60, 3)
    still = rng.random((60, 3)) < 0.1
    cal = fit_calibration("cam", x, grid, ident, "b", fps=5, passing=passing, still=still)
    window = CalibrationWindow(x, np.arange(60) / 5.0, np.zeros(60, bool), still=still)
    alert = _features(rng, 10, 3) + 6.0
    grown = _grown(window, alert, 5.0)
    assert grown.still.shape == (70, 3) and grown.still[60:].all()
    refit = refit_calibration(cal, grown, holdout=0.3, false_alarms_per_hour=0.5, trigger=3,
                              window_frames=5)
    assert refit.passing == passing
    assert refit.frame_score(refit.tile_scores(alert[0]), np.ones(3, bool))[0] < \
        cal.frame_score(cal.tile_scores(alert[0]), np.ones(3, bool))[0]


def test_a_thing_that_stays_ends_its_alert_as_background_and_says_so(tmp_path, tiny_bundle,
                                                                     backend):
    cam, events = watch(tmp_path / "stays", tiny_bundle, backend, "ignore", frames=420)
    assert [e.state for e in events if e.state != "update"] == ["start", "end"], \
        [(e.state, e.frame_index, e.reason) for e in events]
    end = [e for e in events if e.state == "end"][0]
    # background_s 20: the median holds it once it has been there for over 10 s.
    assert 260 < end.frame_index < 400, end.frame_index
    assert end.reason.startswith("quiet: what stayed there is background now"), end.reason

"""Per-camera calibration: tile densities fitted on normal frames, and a threshold chosen for a
false-alarm rate the user can reason about (alerts per hour), stored as JSON.

Scores. Each tile position has its own density over the bundle's features; a tile's anomaly
score is its negative log-likelihood, standardised by the mean and spread of the held-out
normal frames' scores at that position (tiles on a busy shelf and on a blank wall then speak
the same units). The frame score is the worst active tile.

Threshold. An alert starts when N of the last M frames are over threshold. If frames were
independent with exceedance probability p, false starts per hour would be about
frames_per_hour * C(M, N) * p^N; solving for the target gives p. With only tens of held-out
frames, the (1 - p) quantile is extrapolated from a normal fitted to the held-out frame scores,
and never set below the largest held-out score, so the frames calibration saw as normal are
all below it. Consecutive frames are correlated, so the real rate is higher than the
independent estimate; the floor at the held-out maximum is the guard against that.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import JSON_KINDS
from .clock import iso_now
from .density import Density, fit_gmm, fit_kde, load_density
from .files import write_json_atomic
from .tiles import TileGrid

FORMAT = "pathwatch-calibration"
TILE_REG_COVAR = 0.05
MIN_CALIBRATION_FRAMES = 20  # below this a per-tile density and its threshold mean little
VERSION = 1


class CalibrationError(ValueError):
    """A calibration file that cannot be used for this camera and bundle; says why and the fix."""


@dataclass
class ThresholdChoice:
    value: float
    per_frame_exceedance: float
    method: str
    holdout_max: float
    holdout_mean: float
    holdout_std: float


def per_frame_exceedance(false_alarms_per_hour: float, fps: float, trigger: int, window: int) -> float:
    frames_per_hour = max(fps, 1e-3) * 3600.0
    p = (false_alarms_per_hour / (frames_per_hour * math.comb(window, trigger))) ** (1.0 / trigger)
    return float(min(max(p, 1e-9), 0.5))


def choose_threshold(holdout_scores: np.ndarray, false_alarms_per_hour: float, fps: float,
                     trigger: int, window: int) -> ThresholdChoice:
    from scipy.stats import norm

    s = np.asarray(holdout_scores, np.float64)
    p = per_frame_exceedance(false_alarms_per_hour, fps, trigger, window)
    mean, std = float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else 1.0
    tail = mean + max(std, 1e-6) * float(norm.isf(p))
    floor = float(s.max()) + 0.25 * max(std, 1e-6)
    value, method = (tail, "normal tail") if tail >= floor else (floor, "held-out maximum")
    return ThresholdChoice(value, p, f"{method}: p={p:.2e} per frame for "
                           f"{false_alarms_per_hour:g}/h at {fps:g} fps, {trigger} of {window}",
                           float(s.max()), mean, std)


def fit_tile_density(kind: str, x: np.ndarray, seed: int = 0) -> Density:
    if kind == "kde":
        return fit_kde(x, bandwidth="scott", standardize=True)
    # Few frames per tile, of features that are strongly correlated (sums of powers of the same
    # path): small mixtures only, and covariances shrunk towards the identity (in standardised
    # units) so a direction the calibration frames happened not to vary in is not a cliff.
    return fit_gmm(x, components=(1, 2, 4), selection="cv" if kind == "gmm-cv" else "bic",
                   seed=seed, reg_covar=TILE_REG_COVAR)


def _typed(data: dict, dotted: str, kind):
    """data["a"]["b"] for "a.b", or a ValueError naming it (KeyError when it is missing)."""
    value = data
    for part in dotted.split("."):
        if not isinstance(value, dict):
            raise ValueError(f"{dotted} is missing (its section is not an object)")
        value = value[part]
    # JSON true/false are not numbers here; an integer is a valid float.
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise ValueError(f"{dotted} must be {JSON_KINDS[kind]}, not {value!r:.40}")
    return float(value) if kind is float else value


@dataclass(frozen=True)
class CalibrationFacts:
    """The scalar fields of a calibration file, type-checked once."""
    camera: str
    bundle_label: str
    bundle_weights_sha256: str
    bundle_graph_sha256: str
    threshold: float
    threshold_method: str
    false_alarms_per_hour: float
    frames_total: int
    frames_holdout: int
    density: str  # the density kind fitted per tile

    @classmethod
    def parse(cls, data: dict) -> "CalibrationFacts":
        facts = cls(_typed(data, "camera", str), _typed(data, "bundle.label", str),
                    _typed(data, "bundle.weights_sha256", str),
                    _typed(data, "bundle.graph_sha256", str),
                    _typed(data, "threshold.value", float), _typed(data, "threshold.method", str),
                    _typed(data, "threshold.false_alarms_per_hour", float),
                    _typed(data, "frames.total", int), _typed(data, "frames.holdout", int),
                    _typed(data, "density", str))
        if not math.isfinite(facts.threshold):
            raise ValueError("threshold.value is not a finite number")
        return facts


class Calibration:
    """What a camera needs to score frames: tile densities, standardisation, threshold.

    `data` is the file's JSON (what `save` writes); read the typed attributes instead."""

    def __init__(self, data: dict, densities: list[Density | None]):
        self.data = data
        self.densities = densities
        self.facts = CalibrationFacts.parse(data)
        self.grid = _typed(data, "grid", dict)  # TileGrid.describe() it was fitted for
        tiles = data["tiles"]
        self.mean = np.array([t["mean"] for t in tiles], np.float64)
        self.std = np.array([t["std"] for t in tiles], np.float64)
        self.active = np.array([t["active"] for t in tiles], bool)

    @property
    def camera(self) -> str:
        return self.facts.camera

    @property
    def threshold(self) -> float:
        return self.facts.threshold

    @property
    def threshold_method(self) -> str:
        return self.facts.threshold_method

    @property
    def false_alarms_per_hour(self) -> float:
        return self.facts.false_alarms_per_hour

    @property
    def frames_total(self) -> int:
        return self.facts.frames_total

    @property
    def frames_holdout(self) -> int:
        return self.facts.frames_holdout

    @property
    def bundle_label(self) -> str:
        return self.facts.bundle_label

    def tile_scores(self, features: np.ndarray) -> np.ndarray:
        """(tiles, D) features of one frame -> standardised anomaly score per tile (inactive
        tiles -inf)."""
        out = np.full(len(self.densities), -np.inf)
        for i, d in enumerate(self.densities):
            if d is not None:
                nll = -float(d.score(features[i:i + 1])[0])
                out[i] = (nll - self.mean[i]) / self.std[i]
        out[np.isnan(out)] = np.inf  # a non-finite likelihood is as anomalous as it gets
        return out

    def frame_score(self, tile_scores: np.ndarray) -> tuple[float, int]:
        i = int(np.argmax(tile_scores))
        return float(tile_scores[i]), i

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        try:
            write_json_atomic(path, self.data)
        except OSError as e:  # a read-only or full disk, a directory in the way
            raise CalibrationError(f"cannot write {path} ({e.strerror or e}); set "
                                   "cameras[].calibration or state_dir to a writable path") from None

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"calibration {path} does not exist; run `pathwatch "
                                   "calibrate --camera NAME` or enable auto_calibrate") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"calibration {path} is not valid JSON ({e}); recalibrate") from None
        except OSError as e:  # a directory, no permission, an I/O error
            raise CalibrationError(f"cannot read calibration {path} ({e.strerror or e}); point "
                                   "cameras[].calibration at a readable JSON file") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise CalibrationError(f"{path} is not a pathwatch calibration (format {FORMAT} "
                                   f"version {VERSION}); recalibrate")
        try:
            densities = [load_density(t["density"]) if t["active"] else None for t in data["tiles"]]
            cal = cls(data, densities)
            if not (np.all(np.isfinite(cal.mean)) and np.all(cal.std > 0)):
                raise ValueError("a tile's mean/std is not finite and positive")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise CalibrationError(f"{path} is damaged ({what}); recalibrate") from None
        return cal

    def check(self, bundle_identity: dict, grid: TileGrid, path: str | Path = "calibration") -> None:
        """Refuse a calibration made for another bundle or another tile layout."""
        f = self.facts
        if f.bundle_weights_sha256 != bundle_identity["weights_sha256"] or \
                f.bundle_graph_sha256 != bundle_identity["graph_sha256"]:
            raise CalibrationError(f"{path} was fitted for another bundle ({f.bundle_label}); "
                                   "recalibrate this camera")
        want = grid.describe()
        have = self.grid
        for key in ("frame_size", "roi", "tiles", "tile_size", "ignore", "exposure"):
            if have.get(key) != want[key]:
                raise CalibrationError(f"{path} was fitted for {key} {have.get(key)}, the camera "
                                       f"now has {want[key]}; recalibrate this camera")
        if len(self.densities) != grid.count or \
                [d is not None for d in self.densities] != [bool(a) for a in grid.active]:
            raise CalibrationError(f"{path} has {len(self.densities)} tiles, the camera's grid "
                                   f"{grid.count} (or other active tiles); recalibrate this camera")


def fit_calibration(camera: str, features: np.ndarray, grid: TileGrid, bundle_identity: dict,
                    bundle_label: str, *, density: str = "gmm-bic", holdout: float = 0.3,
                    false_alarms_per_hour: float = 0.5, fps: float = 5.0, trigger: int = 3,
                    window: int = 5, source: str = "", seconds: float = 0.0,
                    seed: int = 0) -> Calibration:
    """features: (frames, tiles, D) from normal frames in capture order."""
    n = len(features)
    if n < MIN_CALIBRATION_FRAMES:
        raise CalibrationError(f"calibration needs at least {MIN_CALIBRATION_FRAMES} normal "
                               f"frames, got {n}; raise calibration.frames")
    # Hold out interleaved frames (every k-th), not the last ones: drift then affects both.
    n_hold = max(5, int(round(n * holdout)))
    step = n / n_hold
    hold_idx = np.unique((np.arange(n_hold) * step).astype(int))
    fit_idx = np.setdiff1d(np.arange(n), hold_idx)
    tiles, densities, tile_holdout = [], [], []
    for i in range(grid.count):
        col, row = grid.position(i)
        if not grid.active[i]:
            tiles.append({"index": i, "col": col, "row": row, "active": False})
            densities.append(None)
            continue
        d = fit_tile_density(density, features[fit_idx, i], seed)
        nll = -d.score(features[hold_idx, i])
        mean, std = float(nll.mean()), float(max(nll.std(ddof=1), 1e-3))
        tile_holdout.append((nll - mean) / std)
        tiles.append({"index": i, "col": col, "row": row, "active": True, "mean": mean,
                      "std": std, "density": d.to_dict(), "density_label": d.summary()["label"]})
        densities.append(d)
    frame_scores = np.max(np.stack(tile_holdout, axis=1), axis=1)
    choice = choose_threshold(frame_scores, false_alarms_per_hour, fps, trigger, window)
    data = {
        "format": FORMAT, "version": VERSION, "camera": camera,
        "created": iso_now("seconds"),
        "bundle": {**{k: bundle_identity[k] for k in ("weights_sha256", "graph_sha256")},
                   "label": bundle_label},
        "grid": grid.describe(),
        "frames": {"total": n, "fit": int(len(fit_idx)), "holdout": int(len(hold_idx)),
                   "source": source, "seconds": round(seconds, 1)},
        "density": density,
        "tiles": tiles,
        "scores": {"holdout_frame_max": choice.holdout_max, "holdout_frame_mean": choice.holdout_mean,
                   "holdout_frame_std": choice.holdout_std},
        "threshold": {"value": choice.value, "method": choice.method,
                      "false_alarms_per_hour": false_alarms_per_hour, "fps": fps,
                      "trigger_frames": trigger, "window_frames": window,
                      "per_frame_exceedance": choice.per_frame_exceedance,
                      "note": "edit value freely; scores are standardised tile scores"},
    }
    for t in tiles:
        t.setdefault("mean", 0.0)
        t.setdefault("std", 1.0)
    return Calibration(data, densities)

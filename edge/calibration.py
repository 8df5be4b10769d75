"""Per-camera calibration: tile densities fitted on normal frames, and a threshold chosen for a
false-alarm rate the user can reason about (alerts per hour), stored as JSON.

Scores. Each tile position has its own density over the bundle's features; a tile's anomaly
score is its negative log-likelihood, standardised by the median and spread (MAD) of
out-of-fold normal scores at that position (tiles on a busy shelf and on a blank wall then speak the same
units). The frame score is the worst active tile.

Out of fold. The window is cut into contiguous blocks; each block is scored by densities
fitted on the other blocks, so every calibration frame gets a score as a new frame would
(interleaved hold-outs would score near-copies of fitted neighbours). The final densities are
fitted on the whole window.

Contamination. Before any fit, frames whose features are far from the window's median frame
(robust z-scores, beyond the upper quartile plus TRIM_IQR interquartile ranges of that
distance) are trimmed with half a second on each side and the trimmed stretches recorded; a window
with too much to trim is refused. Out-of-fold scores cannot do this job: an event that spans
two blocks is in the training data of each.

Threshold. edge.threshold models the tail of the out-of-fold frame scores (peaks over
threshold, exceedance clusters against the trigger rule); the scores are kept in the file so
a changed false-alarm target or trigger rule re-thresholds without refitting.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import JSON_KINDS
from .clock import iso_now
from .density import Density, fit_gmm, fit_kde, load_density
from .files import write_atomic, write_json_atomic
from .threshold import TailFit, Threshold, choose_threshold, exceedance_clusters
from .tiles import TileGrid

FORMAT = "pathwatch-calibration"
TILE_REG_COVAR = 0.05
MIN_CALIBRATION_FRAMES = 20  # below this a per-tile density and its threshold mean little
VERSION = 2  # 2: out-of-fold scores and the tail fit; version 1 files still load
TRIM_IQR = 10.0  # normal frame scores are heavy-tailed; an event scores far beyond this
TRIM_PAD_S = 0.5  # frames this close to a trimmed one go too (the event's onset and tail)
MAX_TRIMMED = 0.25  # a window with more to trim than this is refused
PASSING_KEYS = ("still_s", "min_area", "background_s")  # a passing: ignore camera's settings
# passing: ignore: a still tile must score at least this far above the typical tile (robust
# standard deviations) to alert, whatever the window held (it may hold no still content).
STILL_LEAST = 5.0


class CalibrationError(ValueError):
    """A calibration file that cannot be used for this camera and bundle; says why and the fix."""


class ContaminatedWindow(CalibrationError):
    """A window with too much to trim: a live camera collects a fresh one."""


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


def _finite(value, what: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{what} must be a finite number{' above 0' if positive else ''}, "
                         f"not {value!r:.40}")
    return float(value)


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number, not {value!r:.40}")
    return value


def check_shape(data: dict) -> None:
    """Every part of a calibration file the camera reads while it runs, checked once at load
    (a file edited by hand or damaged fails here as one error, not mid-stream)."""
    tiles = data["tiles"]
    if not isinstance(tiles, list) or not tiles or not all(isinstance(t, dict) for t in tiles):
        raise ValueError("tiles must be a non-empty list of objects")
    for i, t in enumerate(tiles):
        if not isinstance(t["active"], bool):
            raise ValueError(f"tiles[{i}].active must be true or false")
        _finite(t["mean"], f"tiles[{i}].mean")
        _finite(t["std"], f"tiles[{i}].std", positive=True)
    thr = _typed(data, "threshold", dict)
    for key in ("chosen", "fps"):
        if key in thr:
            _finite(thr[key], f"threshold.{key}", positive=key == "fps")
    for key in ("trigger_frames", "window_frames"):
        if key in thr:
            _whole(thr[key], f"threshold.{key}")
    for key in ("tail", "alert_tail"):  # alert_tail: files written since the alert statistic
        if thr.get(key) is not None:
            _check_tail(thr[key], key)
    scores = data.get("scores", {})
    oof = scores.get("out_of_fold", []) if isinstance(scores, dict) else None
    if not isinstance(oof, list):
        raise ValueError("scores.out_of_fold must be a list of numbers")
    for x in oof:
        _finite(x, "scores.out_of_fold[]")
    noise = data.get("noise")
    if noise is not None:
        if not isinstance(noise, dict):
            raise ValueError("noise must be an object")
        if _finite(noise.get("level"), "noise.level") < 0:
            raise ValueError("noise.level must not be negative")
    adaptation = data.get("adaptation")
    if adaptation is not None:
        if not isinstance(adaptation, dict) or not isinstance(adaptation.get("history", []), list):
            raise ValueError("adaptation must be an object with a history list")
        _whole(adaptation.get("version", 0), "adaptation.version")
    passing = data.get("passing")
    if passing is not None:
        if not isinstance(passing, dict) or set(passing) != set(PASSING_KEYS):
            raise ValueError(f"passing must be an object with {', '.join(PASSING_KEYS)}")
        for key in PASSING_KEYS:
            _finite(passing[key], f"passing.{key}", positive=True)
    frames = _typed(data, "frames", dict)
    _finite(frames.get("seconds", 0), "frames.seconds")
    _whole(frames.get("dropped", 0), "frames.dropped")
    for key in ("trimmed", "feedback"):
        if not isinstance(frames.get(key, []), list):
            raise ValueError(f"frames.{key} must be a list")
    for t in frames.get("trimmed", []):
        if not isinstance(t, dict):
            raise ValueError("frames.trimmed[] must be objects")
        _whole(t["frames"], "frames.trimmed[].frames")
        _finite(t["from_s"], "frames.trimmed[].from_s")
        _finite(t["to_s"], "frames.trimmed[].to_s")


def _check_tail(tail, name: str) -> None:
    fields = {f.name for f in dataclasses.fields(TailFit)}
    if not isinstance(tail, dict) or set(tail) != fields:
        raise ValueError(f"threshold.{name} must be an object with {', '.join(sorted(fields))}")
    for key in fields - {"frames"}:
        _finite(tail[key], f"threshold.{name}.{key}", positive=key in ("sigma", "zeta"))
    _whole(tail["frames"], f"threshold.{name}.frames")


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
        check_shape(data)
        self.data = data
        self.densities = densities
        self.facts = CalibrationFacts.parse(data)
        self.grid = _typed(data, "grid", dict)  # TileGrid.describe() it was fitted for
        tiles = data["tiles"]
        self.mean = np.array([t["mean"] for t in tiles], np.float64)
        self.std = np.array([t["std"] for t in tiles], np.float64)
        self.active = np.array([t["active"] for t in tiles], bool)
        self._read_tail()
        # The one-step head's own calibration (dynamic steps): decides which tiles get the
        # full schedule; nested in the file so the two never come from different windows.
        self.cheap: Calibration | None = None
        self.cheap_error: str | None = None  # why a saved one-step part could not be read

    def _read_tail(self) -> None:
        """The out-of-fold scores and their tail fit, parsed once (None in version 1 files)."""
        self._oof = np.asarray(self.data.get("scores", {}).get("out_of_fold") or [], np.float64)
        if len(self._oof) and self.threshold < self._oof.min():
            raise ValueError(f"threshold.value {self.threshold:g} is below every normal frame's "
                             f"score (lowest {self._oof.min():.3g}): every frame would alert")
        tail = self.data["threshold"].get("tail")
        self._tail = TailFit(**tail) if tail and len(self._oof) else None

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
    def trimmed(self) -> list[dict]:
        """Stretches of the window left out of the normal set as unusual."""
        return list(self.data["frames"].get("trimmed", []))

    def coverage(self) -> str:
        """What the window covered, e.g. '600 frames over 120 s of scene (12 trimmed)'."""
        f = self.data["frames"]
        trimmed = sum(t["frames"] for t in self.trimmed)
        return (f"{f['total']} frames over {f.get('seconds', 0):g} s of scene"
                + (f", {f['dropped']} dropped" if f.get("dropped") else "")
                + (f", {trimmed} trimmed" if trimmed else "")
                + (f", passing {_passing_words(self.passing)}" if self.passing else ""))

    @property
    def bundle_label(self) -> str:
        return self.facts.bundle_label

    def retarget(self, false_alarms_per_hour: float, trigger: int, window: int) -> str | None:
        """Re-threshold for another false-alarm target or trigger rule from the stored
        out-of-fold scores, without refitting; says what changed (None: nothing did). A value
        edited by hand is kept: the user chose it."""
        t = self.data["threshold"]
        rule = {"false_alarms_per_hour": false_alarms_per_hour, "trigger_frames": trigger,
                "window_frames": window}
        if all(t.get(k) == v for k, v in rule.items()):
            return None
        scores = self.data.get("scores", {}).get("out_of_fold")
        if not scores or "chosen" not in t:
            return "the calibration file holds no out-of-fold scores (version 1); recalibrate " \
                   "to re-threshold for the new alert settings"
        if t["value"] != t["chosen"]:
            return f"threshold {t['value']:g} was set by hand; kept for the new alert settings"
        choice = choose_threshold(np.asarray(scores), false_alarms_per_hour, float(t["fps"]),
                                  trigger, window, STILL_LEAST if self.passing else None)
        old = t["value"]
        t.update(choice.to_dict(), chosen=choice.value, **rule)
        self.facts = CalibrationFacts.parse(self.data)
        self._read_tail()
        return f"threshold {old:.2f} -> {choice.value:.2f} ({choice.method})"

    def p_normal(self, score: float) -> float | None:
        """How often a normal frame scores at least this high, from the window's out-of-fold
        scores (their Pareto tail above its level u): a bounded, readable companion to the
        unbounded score. None for a version 1 file, which keeps no scores."""
        if self._tail is None:
            return None
        if score > self._tail.u:
            return self._tail.survival(score)
        return max(float(np.mean(self._oof >= score)), 1.0 / len(self._oof))

    def tile_scores(self, features: np.ndarray, tiles: np.ndarray | None = None) -> np.ndarray:
        """(tiles, D) features of one frame -> standardised anomaly score per tile (inactive
        tiles -inf). With `tiles` (grid indices), `features` are those tiles' rows only and so
        is the result."""
        tiles = np.arange(len(self.densities)) if tiles is None else np.asarray(tiles)
        out = np.full(len(tiles), -np.inf)
        for row, i in enumerate(tiles):
            d = self.densities[i]
            if d is not None:
                nll = -float(d.score(features[row:row + 1])[0])
                out[row] = (nll - self.mean[i]) / self.std[i]
        out[np.isnan(out)] = np.inf  # a non-finite likelihood is as anomalous as it gets
        return out

    @property
    def passing(self) -> dict | None:
        """The still-content settings it was fitted with (`passing: ignore`), or None."""
        return self.data.get("passing")

    def frame_score(self, tile_scores: np.ndarray,
                    still: np.ndarray | None = None) -> tuple[float, int]:
        """The frame's score and its worst tile. With `still` (`passing: ignore`), only tiles
        holding still content may score above an ordinary tile."""
        if still is not None:
            tile_scores = still_gated(tile_scores, still)
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
        if not isinstance(data, dict) or data.get("format") != FORMAT or \
                data.get("version") not in (1, VERSION):
            raise CalibrationError(f"{path} is not a pathwatch calibration (format {FORMAT} "
                                   f"version {VERSION}); recalibrate")
        try:
            cal = cls.from_data(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise CalibrationError(f"{path} is damaged ({what}); recalibrate") from None
        if data.get("cheap") is not None:  # a damaged one-step part only turns dynamic steps off
            try:
                if not isinstance(data["cheap"], dict):
                    raise ValueError("it is not an object")
                cal.cheap = cls.from_data(data["cheap"])
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                what = f"missing {e}" if isinstance(e, KeyError) else str(e)
                cal.cheap_error = f"{path}: its one-step part ('cheap') is damaged ({what})"
        return cal

    @classmethod
    def from_data(cls, data: dict) -> "Calibration":
        """A calibration from its file's JSON (ValueError, KeyError or TypeError if damaged)."""
        densities = [load_density(t["density"]) if t["active"] else None for t in data["tiles"]]
        cal = cls(data, densities)
        if not (np.all(np.isfinite(cal.mean)) and np.all(cal.std > 0)):
            raise ValueError("a tile's mean/std is not finite and positive")
        if len({d.dim for d in densities if d is not None}) > 1:
            raise ValueError("the tiles' densities expect different numbers of features")
        return cal

    def with_cheap(self, cheap: "Calibration | None") -> "Calibration":
        """Attach (or drop) the one-step head's calibration; saved inside this file."""
        self.cheap = cheap
        if cheap is None:
            self.data.pop("cheap", None)
        else:
            self.data["cheap"] = cheap.data
        return self

    def check(self, bundle_identity: dict, grid: TileGrid, path: str | Path = "calibration",
              passing: dict | None = None) -> None:
        """Refuse a calibration made for another bundle, another tile layout, or other
        still-content settings (`passing`: the camera's, None for `passing: alert`)."""
        if self.passing != passing:
            raise CalibrationError(
                f"{path} was fitted with passing {_passing_words(self.passing)}, the camera "
                f"now has {_passing_words(passing)}; recalibrate this camera")
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


def still_gated(tile_scores: np.ndarray, still: np.ndarray) -> np.ndarray:
    """Tiles without still content count at most as a typical tile (0: the median)."""
    return np.where(still, tile_scores, np.minimum(tile_scores, 0.0))


def _passing_words(passing: dict | None) -> str:
    if passing is None:
        return "alert"
    return "ignore (" + ", ".join(f"{k} {v:g}" for k, v in sorted(passing.items())) + ")"


@dataclass
class CalibrationWindow:
    """The frames a calibration was fitted on, kept beside its file (`frames_path`) so it can
    be refitted with more normal frames (`pathwatch feedback`) without the camera. Numbers
    only: a .npz read with allow_pickle=False."""
    features: np.ndarray  # (frames, tiles, D) float32, capture order
    times: np.ndarray  # scene seconds from the window's start
    declared: np.ndarray  # bool: frames a user declared normal
    cheap: np.ndarray | None = None  # the one-step head's features of the same frames
    still: np.ndarray | None = None  # (frames, tiles) bool: still content (passing: ignore)

    @staticmethod
    def path_for(calibration_path: str | Path) -> Path:
        p = Path(calibration_path)
        return p.with_name(p.stem + ".frames.npz")

    def save(self, calibration_path: str | Path) -> None:
        buffer = io.BytesIO()
        extra = {} if self.cheap is None else {"cheap": self.cheap.astype(np.float32)}
        if self.still is not None:
            extra["still"] = np.asarray(self.still, bool)
        np.savez_compressed(buffer, features=self.features.astype(np.float32),
                            times=np.asarray(self.times, np.float64),
                            declared=np.asarray(self.declared, bool), **extra)
        path = self.path_for(calibration_path)
        try:
            write_atomic(path, buffer.getvalue())
        except OSError as e:
            raise CalibrationError(f"cannot write {path} ({e.strerror or e}); set "
                                   "cameras[].calibration or state_dir to a writable path") from None

    @classmethod
    def load(cls, calibration_path: str | Path) -> "CalibrationWindow":
        path = cls.path_for(calibration_path)
        if not path.is_file():
            raise CalibrationError(f"{path} does not exist: the calibration {calibration_path} "
                                   "kept no frames (it predates feedback, or was copied without "
                                   "them); recalibrate the camera, then mark alerts again")
        try:
            with np.load(path, allow_pickle=False) as z:
                window = cls(z["features"], z["times"], z["declared"].astype(bool),
                             z["cheap"] if "cheap" in z.files else None,
                             z["still"].astype(bool) if "still" in z.files else None)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise CalibrationError(f"{path} is damaged ({e}); recalibrate the camera") from None
        n = len(window.features)
        if window.features.ndim != 3 or window.times.shape != (n,) or \
                window.declared.shape != (n,):
            raise CalibrationError(f"{path} does not hold (frames, tiles, features) with a time "
                                   "and a flag per frame; recalibrate the camera")
        if window.cheap is not None and (window.cheap.ndim != 3 or
                                         window.cheap.shape[:2] != window.features.shape[:2]):
            window.cheap = None  # only the one-step head's refresh needs them
        if window.still is not None and window.still.shape != window.features.shape[:2]:
            raise CalibrationError(f"{path} holds still-content flags of another shape; "
                                   "recalibrate the camera")
        return window


def refit_like(d: Density, x: np.ndarray, seed: int = 0) -> Density:
    """The same kind and form as `d` (components, covariance), fitted on other frames: the
    out-of-fold models skip the full model selection, which is the slow part."""
    if d.kind == "kde":
        return fit_kde(x, bandwidth="scott", standardize=True)
    return fit_gmm(x, components=(d.n_components,), covariance_types=(d.covariance_type,),
                   seed=seed, reg_covar=TILE_REG_COVAR)


def fold_blocks(n: int, folds: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, folds + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


@dataclass
class _Fit:
    """Tile densities fitted on a set of frames, and those frames' out-of-fold scores."""
    densities: list[Density | None]
    mean: np.ndarray  # per tile, of the out-of-fold negative log-likelihood (median)
    std: np.ndarray  # (1.4826 MAD: the SD of a normal distribution, robustly)
    frame_scores: np.ndarray  # out of fold, standardised, worst tile


def _fit_tiles(features: np.ndarray, active, density: str, folds: int, seed: int,
               still: np.ndarray | None = None) -> _Fit:
    n, tiles = features.shape[:2]
    densities: list[Density | None] = [None] * tiles
    nll = np.full((n, tiles), np.nan)
    blocks = fold_blocks(n, folds)
    for i in np.flatnonzero(active):
        x = features[:, i]
        densities[i] = d = fit_tile_density(density, x, seed)
        for a, b in blocks:
            rest = np.r_[0:a, b:n]
            nll[a:b, i] = -refit_like(d, x[rest], seed).score(x[a:b])
    on = np.asarray(active, bool)
    # Median and MAD, not mean and SD: an event in the window must not stretch the scale it
    # is measured in (a stretched scale hides it from trimming and lowers its later scores).
    mean, std = np.zeros(tiles), np.ones(tiles)
    mean[on] = np.median(nll[:, on], axis=0)
    std[on] = np.maximum(1.4826 * np.median(np.abs(nll[:, on] - mean[on]), axis=0), 1e-3)
    z = np.nan_to_num((nll[:, on] - mean[on]) / std[on], nan=np.inf)
    if still is not None:  # scored as the camera will score them (passing: ignore)
        z = still_gated(z, still[:, on])
    return _Fit(densities, mean, std, np.max(z, axis=1))


def feature_distance(features: np.ndarray, active) -> np.ndarray:
    """Each frame's distance from the window's typical frame: per tile and feature, robust
    z-scores against the window's median and MAD (which a minority of odd frames does not
    move), root-mean-square over features, worst tile. No density is fitted: an event in the
    window cannot teach the measure that it is normal."""
    x = features[:, np.asarray(active, bool)].astype(np.float64)
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    z = (x - med) / np.maximum(mad, 1e-9 + 1e-6 * np.abs(med))
    return np.sqrt(np.mean(z ** 2, axis=2)).max(axis=1)


def unusual_frames(distance: np.ndarray, pad: int, exempt: np.ndarray | None = None) -> np.ndarray:
    """Frames far out against the rest (beyond the upper quartile plus TRIM_IQR
    interquartile ranges), and `pad` frames either side of each; `exempt` frames (declared
    normal) are neither."""
    q1, q3 = np.percentile(distance, [25, 75])
    far_out = distance > q3 + TRIM_IQR * max(q3 - q1, 1e-9)
    if exempt is not None:
        far_out &= ~exempt
    far = np.flatnonzero(far_out)
    out = np.zeros(len(distance), bool)
    for i in far:
        out[max(0, i - pad):i + pad + 1] = True
    return out


def _stretches(times: np.ndarray, trimmed: np.ndarray, distance: np.ndarray) -> list[dict]:
    """Trimmed frames as stretches of the window: from, to (seconds into it), frames, and the
    largest feature distance (typical frames are near 1)."""
    return [{"from_s": round(float(times[run[0]]), 1), "to_s": round(float(times[run[-1]]), 1),
             "frames": int(len(run)), "peak_distance": round(float(distance[run].max()), 1)}
            for run in exceedance_clusters(trimmed, gap=1)]  # runs of consecutive frames


def _spread(kept: np.ndarray, declared: np.ndarray) -> np.ndarray:
    """The kept frames' order for fitting, with the frames a user declared normal spread
    evenly through it: every out-of-fold block then trains on some of them. Left together in
    one block, they would be scored by densities that never saw their kind and lift the
    threshold to their level, which is the alert the user just called normal."""
    ordinary, marked = kept[~declared[kept]], kept[declared[kept]]
    if not len(marked):
        return kept
    at = np.linspace(0, len(ordinary), len(marked), endpoint=False).round().astype(int)
    return np.insert(ordinary, at, marked)


def fit_calibration(camera: str, features: np.ndarray, grid: TileGrid, bundle_identity: dict,
                    bundle_label: str, *, density: str = "gmm-bic", holdout: float = 0.3,
                    false_alarms_per_hour: float = 0.5, fps: float = 5.0, trigger: int = 3,
                    window: int = 5, source: str = "", seconds: float = 0.0,
                    times: np.ndarray | None = None, dropped: int = 0,
                    declared_normal: np.ndarray | None = None, seed: int = 0,
                    passing: dict | None = None, still: np.ndarray | None = None) -> Calibration:
    """features: (frames, tiles, D) from normal frames in capture order; times: their scene
    seconds from the window's start (default: frame / fps). `holdout` is the share of the
    window each out-of-fold block holds (0.3: three blocks). `declared_normal` marks frames a
    user called normal (`pathwatch feedback`): they are never trimmed. `passing`: the
    still-content settings of a `passing: ignore` camera, with `still` (frames, tiles) its
    flags per frame (missing: every tile still, which errs towards a higher threshold)."""
    n = len(features)
    if n < MIN_CALIBRATION_FRAMES:
        raise CalibrationError(f"calibration needs at least {MIN_CALIBRATION_FRAMES} normal "
                               f"frames, got {n}; collect for longer (calibration.seconds)")
    times = np.arange(n) / max(fps, 1e-3) if times is None else np.asarray(times, np.float64)
    folds = max(2, min(10, round(1.0 / holdout)))
    distance = feature_distance(features, grid.active)
    declared = np.zeros(n, bool) if declared_normal is None else np.asarray(declared_normal, bool)
    pad = max(1, math.ceil(TRIM_PAD_S * fps))  # in time: at 1 fps a frame is already 1 s
    trimmed = unusual_frames(distance, pad, declared) & ~declared
    kept = n - int(trimmed.sum())
    if trimmed.mean() > MAX_TRIMMED or kept < MIN_CALIBRATION_FRAMES:
        where = ", ".join(f"{t['from_s']:g}-{t['to_s']:g} s" for t in
                          _stretches(times, trimmed, distance)[:5])
        raise ContaminatedWindow(
            f"the calibration window is too contaminated: {int(trimmed.sum())} of {n} frames "
            f"score far out against the rest (at {where}); calibrate on a stretch without "
            "unusual events, or a longer one")
    order = _spread(np.flatnonzero(~trimmed), declared)
    if passing is not None and still is None:
        still = np.ones(features.shape[:2], bool)
    fit = _fit_tiles(features[order], grid.active, density, folds, seed,
                     None if passing is None else np.asarray(still, bool)[order])
    # Back in capture order for the threshold: the alert rule counts consecutive frames, and
    # frames a user declared normal (an alert's, together in time) must count together.
    fit = dataclasses.replace(fit, frame_scores=fit.frame_scores[np.argsort(order)])
    choice = choose_threshold(fit.frame_scores, false_alarms_per_hour, fps, trigger, window,
                              None if passing is None else STILL_LEAST)
    return Calibration(_calibration_data(
        camera, grid, bundle_identity, bundle_label, density, fit, choice,
        frames={"total": n, "fit": kept, "holdout": kept, "folds": folds,
                "trimmed": _stretches(times, trimmed, distance),
                "source": source, "seconds": round(seconds, 1), "dropped": int(dropped),
                "declared_normal": int(declared.sum())},
        rule={"false_alarms_per_hour": false_alarms_per_hour, "fps": fps,
              "trigger_frames": trigger, "window_frames": window}, passing=passing),
        fit.densities)


def _calibration_data(camera, grid, bundle_identity, bundle_label, density, fit: _Fit,
                      choice: Threshold, frames: dict, rule: dict,
                      passing: dict | None = None) -> dict:
    tiles = []
    for i in range(grid.count):
        col, row = grid.position(i)
        d = fit.densities[i]
        tiles.append({"index": i, "col": col, "row": row, "active": d is not None,
                      "mean": float(fit.mean[i]), "std": float(fit.std[i]),
                      **({"density": d.to_dict(), "density_label": d.summary()["label"]}
                         if d is not None else {})})
    s = fit.frame_scores
    return {
        "format": FORMAT, "version": VERSION, "camera": camera, "created": iso_now("seconds"),
        "bundle": {**{k: bundle_identity[k] for k in ("weights_sha256", "graph_sha256")},
                   "label": bundle_label},
        "grid": grid.describe(), "frames": frames, "density": density, "tiles": tiles,
        "scores": {"out_of_fold": [round(float(x), 4) for x in s],
                   "frame_max": float(s.max()), "frame_mean": float(s.mean()),
                   "frame_std": float(s.std(ddof=1))},
        "threshold": {**choice.to_dict(), "chosen": choice.value, **rule,
                      "note": "edit value freely (it is kept until the rule above changes); "
                              "scores are standardised tile scores"},
        **({} if passing is None else {"passing": dict(passing)}),
    }


def refit_calibration(cal: Calibration, window: CalibrationWindow, *, holdout: float,
                      false_alarms_per_hour: float, trigger: int, window_frames: int) -> Calibration:
    """`cal`'s camera, grid, bundle and density kind fitted on another normal set (feedback,
    online adaptation); what a refit cannot re-measure (the sensor noise, the list of alerts
    marked normal, the online adaptation's record) carries over. The one-step part is the caller's to attach."""
    f, t, bundle = cal.data["frames"], cal.data["threshold"], cal.data["bundle"]
    refit = fit_calibration(
        cal.camera, window.features, TileGrid.from_description(cal.grid),
        {"weights_sha256": bundle["weights_sha256"], "graph_sha256": bundle["graph_sha256"]},
        bundle["label"], density=cal.data["density"], holdout=holdout,
        false_alarms_per_hour=false_alarms_per_hour, fps=float(t["fps"]), trigger=trigger,
        window=window_frames, source=f.get("source", ""), seconds=float(f.get("seconds", 0.0)),
        times=window.times, dropped=int(f.get("dropped", 0)), declared_normal=window.declared,
        passing=cal.passing, still=window.still)
    if "noise" in cal.data:
        refit.data["noise"] = cal.data["noise"]
    if f.get("feedback"):
        refit.data["frames"]["feedback"] = list(f["feedback"])
    if "adaptation" in cal.data:  # the refresh count goes on
        refit.data["adaptation"] = cal.data["adaptation"]
    return refit

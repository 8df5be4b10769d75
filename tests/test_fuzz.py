"""Property-based fuzzing of everything a user hands in: configs, bundle manifests, calibration
files and command-line arguments. Every input gives a valid object or one error of the
module's own kind, on one line; never another exception (a traceback for the user)."""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathwatch.edge.bundle import Bundle, BundleError, Manifest
from pathwatch.edge.calibration import Calibration, CalibrationError, fit_calibration
from pathwatch.edge.config import Config, ConfigError, parse_config
from pathwatch.edge.sources import SourceError, parse_source
from pathwatch.edge.tiles import TileGrid

# FUZZ_EXAMPLES=2000 for a longer hunt; CI runs the default in seconds.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 150))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SHIPPED = Path(__file__).resolve().parent.parent / "edge" / "models" / "default-bundle"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

# JSON/YAML values of every shape, the odd ones weighted in: NaN, huge numbers, empty strings.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["", "demo", "0", "-1", "rtsp://", "auto", "1e9", "/dev/null"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)


def one_line(error: Exception) -> None:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text


def paths(tree, prefix=()):
    """Every key path in a JSON tree (dict keys and list indices), the root excluded."""
    items = tree.items() if isinstance(tree, dict) else \
        enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def mutated(tree, data, value_strategy):
    """`tree` with one to three places replaced by a drawn value or removed."""
    tree = copy.deepcopy(tree)
    for _ in range(data.draw(st.integers(1, 3))):
        candidates = list(paths(tree))
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates))
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(value_strategy)
    return tree


# ------------------------------------------------------------------------------ configs
@FUZZ
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_one_config_error(text):
    try:
        assert isinstance(parse_config(text, "fuzz.yaml"), Config)
    except ConfigError as e:
        one_line(e)


@FUZZ
@given(st.data())
def test_a_mutated_default_config_is_a_config_or_one_config_error(data):
    tree = yaml.safe_load(DEFAULT_CONFIG.read_text())
    text = yaml.safe_dump(mutated(tree, data, values), allow_unicode=True)
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as e:
        one_line(e)
        return
    assert isinstance(config, Config) and config.cameras
    for cam in config.cameras:  # what the daemon derives from a valid config works too
        assert 1 <= cam.tiles[0] <= 16 and (cam.fps is None or math.isfinite(cam.fps))


@FUZZ
@given(st.one_of(st.text(max_size=60), st.integers(-5, 10**6), st.sampled_from(["~0", "0\x1f", "²"]),
                 st.from_regex(r"(rtsps?|https?)://[^ ]{0,30}", fullmatch=True),
                 st.from_regex(r"demo(:[a-z]{1,6}=[^,]{0,6}(,[a-z]{1,6}=[^,]{0,6})*)?",
                               fullmatch=True)))
def test_any_source_is_a_spec_or_one_source_error(source):
    try:
        spec = parse_source(source)
    except SourceError as e:
        one_line(e)
        return
    assert spec.kind in ("device", "demo", "url", "file", "folder")


# ------------------------------------------------------------------------------ manifests
@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SHIPPED / "manifest.json").read_text())


@FUZZ
@given(data=st.data())
def test_a_mutated_manifest_is_a_manifest_or_one_bundle_error(manifest, data):
    raw = mutated(manifest, data, json_values)
    try:
        assert isinstance(Manifest.parse(raw, SHIPPED), Manifest)
    except BundleError as e:
        one_line(e)


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(SHIPPED, root)
    return root


@settings(FUZZ, max_examples=max(EXAMPLES // 4, 10))
@given(data=st.data())
def test_a_damaged_bundle_on_disk_is_a_bundle_or_one_bundle_error(bundle_copy, manifest, data):
    """The files a bundle holds, damaged as a copy or a disk would: any manifest JSON, and
    truncated or garbage parity and graph files."""
    (bundle_copy / "manifest.json").write_text(json.dumps(mutated(manifest, data, json_values)))
    damaged = data.draw(st.sampled_from(["parity.npz", "pipeline.onnx", None]))
    original = (SHIPPED / damaged).read_bytes() if damaged else b""
    if damaged:
        cut = data.draw(st.integers(0, len(original)))
        (bundle_copy / damaged).write_bytes(original[:cut] + data.draw(st.binary(max_size=64)))
    try:
        assert isinstance(Bundle.load(bundle_copy), Bundle)
    except BundleError as e:
        one_line(e)
    finally:
        if damaged:
            (bundle_copy / damaged).write_bytes(original)


# ------------------------------------------------------------------------------ calibrations
@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> tuple[dict, Path]:
    rng = np.random.default_rng(0)
    grid = TileGrid(320, 240, 32, cols=2, rows=1)
    feats = rng.normal(size=(40, 2, 6)) + np.linspace(0, 1, 6)
    ident = {"weights_sha256": "a" * 64, "graph_sha256": "b" * 64}
    cal = fit_calibration("door", feats, grid, ident, "default 6d+ssim K=3",
                          false_alarms_per_hour=2, fps=4, source="demo", seconds=10.0)
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    cal.save(path)
    return json.loads(path.read_text()), path


@settings(FUZZ, max_examples=EXAMPLES * 2 // 3)
@given(data=st.data())
def test_a_mutated_calibration_loads_and_scores_or_is_one_calibration_error(calibration, data):
    tree, path = calibration
    path.write_text(json.dumps(mutated(tree, data, json_values)))
    try:
        cal = Calibration.load(path)
    except CalibrationError as e:
        one_line(e)
        return
    # What loaded must score: the camera calls exactly these on every frame.
    dim = next((d.dim for d in cal.densities if d is not None), 6)
    scores = cal.tile_scores(np.zeros((len(cal.densities), dim)))
    cal.frame_score(scores)
    cal.p_normal(float(np.nanmax(scores, initial=0.0)))


# ------------------------------------------------------------------------------ command line
COMMANDS = ["run", "calibrate", "feedback", "tail", "view", "keys", "config", "train", "eval",
            "export", "bundle", "bridge"]
OPTIONS = ["--duration", "--frames", "--seconds", "--since", "--count", "--name", "--camera",
           "--connect", "--replay", "--config", "--bundle", "--backend", "--k", "--out",
           "--help-not", "-x"]


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(COMMANDS + OPTIONS + ["generate", "check", "info",
                                                                  "verify", "normal", "mqtt"]),
                          st.text(max_size=12),
                          st.sampled_from(["-5", "nan", "inf", "0", "1e400", "99999",
                                           "tcp://x:99999", "../x", "/abs", ""])),
                max_size=6))
def test_any_arguments_parse_or_are_one_usage_line(argv, capsys):
    """Parsing only (a valid command would run for real): a Namespace, or exit 2 with one line."""
    from pathwatch.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        err = capsys.readouterr().err.strip()
        if e.code == 0:  # --help / -h printed help
            return
        assert e.code == 2 and len(err.splitlines()) == 1, err
        return
    assert callable(args.func)
    for key in ("duration", "seconds"):
        value = getattr(args, key, None)
        assert value is None or (math.isfinite(value) and value > 0)


@settings(FUZZ, max_examples=EXAMPLES * 2 // 5)
@given(st.text(max_size=200))
def test_config_check_on_any_file_exits_0_or_2_with_one_line(tmp_path, capsys, text):
    from pathwatch.cli import main

    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    code = main(["config", "check", str(path)])
    captured = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:  # one line, or a count and then one line per problem
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 or (lines[0].endswith(f"{len(lines) - 1} problems:")), lines

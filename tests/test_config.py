"""The YAML config: shipped files load, and every bad input gives one line with file, line, key.

Over 450 lines because it is a catalogue of bad inputs, one short test each, for one module."""
import json
import shutil
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pathwatch.edge.alerts import AlertPolicy, AlertTracker
from pathwatch.edge.backends import KINDS
from pathwatch.edge.config import (CameraConfig, Config, ConfigError, config_schema, config_summary,
                         load_config, parse_config)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ONE_CAMERA = "cameras:\n  - name: demo\n    source: demo\n"


def with_camera(text: str) -> str:
    """A section snippet followed by the minimal camera list."""
    return textwrap.dedent(text) + ONE_CAMERA


def parse(text: str, **kw) -> Config:
    return parse_config(textwrap.dedent(text), "pathwatch.yaml", **kw)


def error_of(text: str, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, **kw)
    message = str(info.value)
    assert "\n" not in message, "an error must be one line"
    return message


# ------------------------------------------------------------------------------ shipped files
def test_default_config_loads_with_documented_defaults():
    config = load_config(CONFIGS / "default.yaml")
    assert [c.name for c in config.cameras] == ["demo"]
    cam = config.cameras[0]
    assert cam.source == "demo" and cam.tiles == (4, 3) and cam.roi == (0.0, 0.0, 1.0, 1.0)
    assert config.model.bundle == "default" and config.model.backend == "auto"
    assert config.publisher.bind.startswith("tcp://127.0.0.1:")
    assert config.publisher.replay_bind.startswith("tcp://127.0.0.1:")
    assert cam.wants_auto_calibration(config)
    # The file documents the defaults: it must agree with the schema's own defaults.
    assert config.model_dump() == parse(ONE_CAMERA).model_dump()


def test_default_config_comments_every_key():
    lines = (CONFIGS / "default.yaml").read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        # A comment on the key's own line, or on the line just above it.
        assert "#" in line or lines[number - 2].lstrip().startswith("#"), \
            f"default.yaml:{number} has no comment: {line!r}"


def test_default_config_lists_every_key_of_the_schema():
    """It says it lists every key: each section's keys, nested ones included."""
    listed = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    schema = config_schema()

    def keys(node, defs):
        if "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        for option in node.get("anyOf", []):
            if "$ref" in option:
                node = defs[option["$ref"].split("/")[-1]]
        return node.get("properties", {}), node

    def walk(node, have, where):
        props, _ = keys(node, schema.get("$defs", {}))
        for name, sub in props.items():
            if name == "cameras":
                continue  # a list of cameras, each documented by the demo camera's comments
            assert isinstance(have, dict) and name in have, f"default.yaml lacks {where}{name}"
            if keys(sub, schema.get("$defs", {}))[0]:
                walk(sub, have[name], f"{where}{name}.")

    walk(schema, listed, "")


@pytest.mark.parametrize("name", ["usb_camera.yaml", "rtsp_cameras.yaml", "video_file.yaml"])
def test_examples_load(name, monkeypatch, tmp_path):
    monkeypatch.setenv("CAM_PASSWORD", "hunter2")
    path = CONFIGS / "examples" / name
    if name == "video_file.yaml":  # its footage is the user's: make some where it points
        path = tmp_path / name
        shutil.copy(CONFIGS / "examples" / name, path)
        with pytest.raises(ConfigError, match=r"video_file.yaml:4: cameras\[0\].source: .*"
                                              r"is not a device, URL, file or folder that exists"):
            load_config(path, check_sources=True)
        assert load_config(path).cameras  # clients (tail, view) need no footage
        (tmp_path / "footage").mkdir()
        writer = cv2.VideoWriter(str(tmp_path / "footage" / "entrance.mp4"),
                                 cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
        for i in range(5):
            writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
        writer.release()
    if name == "rtsp_cameras.yaml":  # its keys are the user's: make some where it points
        with pytest.raises(ConfigError, match=r"rtsp_cameras.yaml:16: security.server_key: key "
                                              r"file /etc/pathwatch/keys/server.key_secret"):
            load_config(path, check_sources=True)
        from pathwatch.edge.security import generate_keys
        generate_keys(tmp_path / "keys", "server")
        generate_keys(tmp_path / "authorized", "viewer")
        path = tmp_path / name
        path.write_text((CONFIGS / "examples" / name).read_text().replace(
            "/etc/pathwatch/", f"{tmp_path}/"))
    config = load_config(path, check_sources=True)
    assert config.cameras
    if name == "video_file.yaml":  # relative to the file, not the working directory
        cam = config.cameras[0]
        assert cam.on_end == "loop" and Path(cam.source).parent.parent == tmp_path


@pytest.mark.parametrize("line, message", [
    ("    source: demo:seed=abc", "cameras[0].source: demo option seed='abc' is not a valid integer"),
    ("    source: ftp://cam/stream", "cameras[0].source: source scheme ftp:// is not supported"),
    ("    source: demo\n    threshold: .nan", "cameras[0].threshold: "),
    ("    source: demo\n    fps: .inf", "cameras[0].fps: "),
])
def test_sources_and_non_finite_numbers_are_checked_as_run_checks_them(line, message):
    with pytest.raises(ConfigError) as e:
        parse_config(f"cameras:\n  - name: a\n{line}\n", "t.yaml", check_sources=True)
    assert str(e.value).startswith("t.yaml:") and message in str(e.value)
    assert "\n" not in str(e.value)


def _impossible(tmp_path, kind) -> tuple[str, str]:
    """A camera line that can never work, and the words its error must say."""
    if kind == "text file named .mp4":
        (tmp_path / "clip.mp4").write_text("not a video\n")
        return f"    source: {tmp_path / 'clip.mp4'}", "is not a video OpenCV can decode"
    if kind == "empty image folder":
        (tmp_path / "frames").mkdir()
        return f"    source: {tmp_path / 'frames'}", "holds no images"
    if kind == "calibration under a file":
        (tmp_path / "plain").write_text("")
        return (f"    source: demo\n    calibration: {tmp_path / 'plain' / 'cam.json'}",
                "cameras[0].calibration: calibration file")
    return {"no host": ("    source: 'rtsp://'", "names no host"),
            "bad IPv6": ("    source: 'http://[::1:99999/x'", "is not a valid URL"),
            "port out of range": ("    source: 'rtsp://cam.local:99999/s'", "is not a valid URL"),
            }[kind]


@pytest.mark.parametrize("kind", ["no host", "bad IPv6", "port out of range", "text file named .mp4",
                                  "empty image folder", "calibration under a file"])
def test_sources_and_paths_that_can_never_work_are_refused_before_the_model(tmp_path, kind,
                                                                             monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    line, message = _impossible(tmp_path, kind)
    text = f"cameras:\n  - name: a\n{line}\n"
    parse_config(text, "t.yaml")  # the shape is valid: only the checks `run` makes refuse it
    with pytest.raises(ConfigError) as e:
        parse_config(text, "t.yaml", check_sources=True)
    assert str(e.value).startswith("t.yaml:") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_config_check_lists_every_problem_and_an_unset_variable_hides_none(tmp_path, capsys,
                                                                          monkeypatch):
    from pathwatch.cli import main

    monkeypatch.delenv("NO_SUCH_PASSWORD", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        model:
          backend: cuda
          max_batch: -1
        alerts:
          quiet_s: -2
        publisher:
          bind: nowhere
        cameras:
          - name: a
            source: rtsp://admin:${NO_SUCH_PASSWORD}@cam/stream
            tiles: [0, 3]
        """))
    assert main(["config", "check", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].endswith("6 problems:"), lines
    for where in ("cameras[0].source: environment variable NO_SUCH_PASSWORD is not set",
                  "model.backend", "model.max_batch", "alerts.quiet_s", "publisher.bind",
                  "cameras[0].tiles"):
        assert sum(where in line for line in lines[1:]) == 1, (where, lines)
    with pytest.raises(ConfigError) as e:  # what run and the log say: one line, the first three
        load_config(path)
    assert "\n" not in str(e.value) and "and 3 more (pathwatch config check lists them all)" in str(e.value)


def test_keys_and_journal_that_run_would_refuse_are_refused_by_config_check(tmp_path, capsys):
    from pathwatch.cli import main

    (tmp_path / "plain").write_text("")
    base = f"cameras:\n  - name: a\n    source: demo\nstate_dir: {tmp_path / 'state'}\n"
    cases = {
        f"journal:\n  path: {tmp_path / 'plain' / 'j.sqlite'}\n": "journal.path: the journal",
        (f"security:\n  curve: true\n  server_key: {tmp_path / 'none.key_secret'}\n"
         f"  authorized_clients: {tmp_path}\n"): "security.server_key: key file",
    }
    for extra, message in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(base + extra)
        assert main(["config", "check", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_config_check_warns_about_open_metrics_and_keys_that_do_not_exist(tmp_path, capsys):
    from pathwatch.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(f"metrics:\n  host: 0.0.0.0\nsecurity:\n  server_key: {tmp_path}/gone\n"
                    f"state_dir: {tmp_path}\ncameras:\n  - name: a\n    source: demo\n")
    assert main(["config", "check", str(path)]) == 0
    err = capsys.readouterr().err
    assert "metrics.host 0.0.0.0 exposes the metrics endpoint" in err
    assert f"security.server_key {tmp_path}/gone does not exist" in err


def test_example_details(monkeypatch):
    monkeypatch.setenv("CAM_PASSWORD", "hunter2")
    usb = load_config(CONFIGS / "examples" / "usb_camera.yaml")
    assert usb.cameras[0].source == "/dev/video0"

    rtsp = load_config(CONFIGS / "examples" / "rtsp_cameras.yaml")
    assert len(rtsp.cameras) == 2
    assert all("hunter2" in c.source for c in rtsp.cameras)
    assert any(c.roi != (0.0, 0.0, 1.0, 1.0) and c.ignore for c in rtsp.cameras)
    summary = " ".join(f"{k} {v}" for k, v in config_summary(rtsp))
    assert "hunter2" not in summary and "viewer:***@" in summary


# ------------------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize("text, where, suggestion", [
    ("""\
     camera:
       - name: demo
     """, "pathwatch.yaml:1: camera:", "did you mean cameras?"),
    ("""\
     alerts:
       window_frames: 5
       trigger_frame: 3
     cameras:
       - name: demo
         source: demo
     """, "pathwatch.yaml:3: alerts.trigger_frame:", "did you mean trigger_frames?"),
    ("""\
     cameras:
       - name: a
         source: demo
       - name: b
         source: demo
         tile: [2, 2]
     """, "pathwatch.yaml:6: cameras[1].tile:", "did you mean tiles?"),
    ("""\
     model:
       backnd: onnxruntime
     cameras:
       - name: a
         source: demo
     """, "pathwatch.yaml:2: model.backnd:", "did you mean backend?"),
])
def test_unknown_key_names_path_line_and_suggestion(text, where, suggestion):
    message = error_of(text)
    assert message.startswith(where), message
    assert "unknown key" in message and suggestion in message


def test_unknown_key_with_no_close_match_lists_known_keys():
    message = error_of(ONE_CAMERA + "colour: blue\n")
    assert message.startswith("pathwatch.yaml:4: colour: unknown key (known keys:")
    assert "cameras" in message


# ------------------------------------------------------------------------------ wrong values
@pytest.mark.parametrize("text, expected", [
    ("""\
     cameras:
       - name: a
         source: demo
       - name: b
         source: demo
         fps: -2
     """, "pathwatch.yaml:6: cameras[1].fps: must be greater than 0 (got -2)"),
    (with_camera("""\
     model:
       backend: cuda
     """), "pathwatch.yaml:2: model.backend: must be 'auto', 'onnxruntime', "
                       "'tensorrt', 'torch', 'openvino' or 'triton' (got 'cuda')"),
    (with_camera("""\
     model:
       threads: two
     """), "pathwatch.yaml:2: model.threads: must be a valid integer"),
    ("""\
     cameras:
       - name: a
         source: demo
         fps: yes
     """, "pathwatch.yaml:4: cameras[0].fps: expected a number or text, not the boolean true"),
    ("""\
     cameras:
       - name: front door
         source: demo
     """, "pathwatch.yaml:2: cameras[0].name: 'front door' must be 1-32 letters"),
    ("""\
     cameras:
       - name: a
         source: [0, 1]
     """, "pathwatch.yaml:3: cameras[0].source: must be a device index or a source string"),
    ("""\
     cameras:
       - name: a
         source: -1
     """, "pathwatch.yaml:3: cameras[0].source: a device index must be 0 or more"),
    ("""\
     cameras:
       - name: a
         source: demo
         tiles: [4, 17]
     """, "pathwatch.yaml:4: cameras[0].tiles: tiles [4, 17] must be [columns, rows], each 1..16"),
    (with_camera("""\
     publisher:
       bind: 127.0.0.1:5556
     """), "pathwatch.yaml:2: publisher.bind: '127.0.0.1:5556' is not a ZeroMQ endpoint"),
    (with_camera("""\
     alerts:
       trigger_frames: 6
     """), "pathwatch.yaml:1: alerts: trigger_frames (6) must not exceed window_frames (5); "
        "lower trigger_frames or raise window_frames"),
    (with_camera("""\
     alerts:
       quiet_s: -1
     """), "pathwatch.yaml:2: alerts.quiet_s: must be greater than or equal to 0 (got -1)"),
    (with_camera("""\
     alerts:
       trigger_frames: yes
     """), "pathwatch.yaml:2: alerts.trigger_frames: expected a number or text, not the boolean "
        "true"),
    ("cameras: []\n", "pathwatch.yaml:1: cameras: no cameras"),
    ("""\
     model:
       backend: auto
     """, "pathwatch.yaml:1: cameras: required key is missing"),
    ("""\
     cameras:
       - source: demo
     """, "pathwatch.yaml:2: cameras[0].name: required key is missing"),
])
def test_wrong_values_give_one_line_with_key_and_line(text, expected):
    message = error_of(text)
    assert message.startswith(expected), message


def test_several_errors_are_joined_on_one_line():
    message = error_of("""\
        model:
          max_batch: 0
        cameras:
          - name: a
            source: demo
            fps: 0
        """)
    assert "model.max_batch" in message and "cameras[0].fps" in message
    assert message.count("pathwatch.yaml:") == 2


def test_duplicate_camera_names_point_at_the_second():
    message = error_of("""\
        cameras:
          - name: gate
            source: 0
          - name: yard
            source: 1
          - name: gate
            source: 2
        """)
    assert message.startswith("pathwatch.yaml:6: cameras[2].name: camera name 'gate' is already "
                              "used by cameras[0]"), message


def test_duplicate_names_refused_when_built_in_code_too():
    with pytest.raises(ValueError, match="used twice"):
        Config(cameras=[CameraConfig(name="a", source=0), CameraConfig(name="a", source=1)])


def test_duplicate_yaml_key_is_refused():
    message = error_of("""\
        cameras:
          - name: a
            source: demo
            fps: 2
            fps: 3
        """)
    assert message.startswith("pathwatch.yaml:5: cameras[0].fps: duplicate key (first set at "
                              "line 4"), message


# ------------------------------------------------------------------------------ roi and ignore
@pytest.mark.parametrize("roi", ["[0.6, 0.0, 0.4, 1.0]", "[0.0, 0.5, 1.0, 0.5]",
                                 "[-0.1, 0.0, 1.0, 1.0]", "[0.0, 0.0, 1.0, 1.5]"])
def test_roi_must_be_ordered_and_inside_the_frame(roi):
    message = error_of(f"cameras:\n  - name: a\n    source: demo\n    roi: {roi}\n")
    assert message.startswith("pathwatch.yaml:4: cameras[0].roi: roi ")
    assert "0 <= x0 < x1 <= 1" in message


def test_roi_with_too_few_values():
    message = error_of("cameras:\n  - name: a\n    source: demo\n    roi: [0.1, 0.1, 0.9]\n")
    assert message == "pathwatch.yaml:4: cameras[0].roi: has too few values (only 3 given)"


def test_bad_ignore_rectangle_is_pointed_at_by_index():
    message = error_of("""\
        cameras:
          - name: a
            source: demo
            ignore:
              - [0.0, 0.0, 0.2, 0.2]
              - [0.5, 0.5, 0.4, 0.9]
        """)
    assert message.startswith("pathwatch.yaml:6: cameras[0].ignore[1]: ignore rectangle"), message


def test_valid_roi_tiles_and_ignore_are_kept():
    config = parse("""\
        cameras:
          - name: a
            source: demo
            roi: [0.1, 0.2, 0.9, 1.0]
            tiles: [6, 4]
            ignore: [[0.0, 0.0, 0.25, 0.3]]
            threshold: -12.5
        """)
    cam = config.cameras[0]
    assert cam.roi == (0.1, 0.2, 0.9, 1.0) and cam.tiles == (6, 4)
    assert cam.ignore == [(0.0, 0.0, 0.25, 0.3)] and cam.threshold == -12.5


# ------------------------------------------------------------------------------ environment
def test_env_substitution_with_and_without_default(monkeypatch):
    monkeypatch.setenv("PW_TEST_PASSWORD", "s3cr:et")
    monkeypatch.delenv("PW_TEST_HOST", raising=False)
    config = parse("""\
        publisher:
          bind: tcp://${PW_TEST_BIND:-127.0.0.1}:6000
        cameras:
          - name: gate
            source: rtsp://viewer:${PW_TEST_PASSWORD}@${PW_TEST_HOST:-10.0.0.5}:554/s
        """)
    assert config.cameras[0].source == "rtsp://viewer:s3cr:et@10.0.0.5:554/s"
    assert config.publisher.bind == "tcp://127.0.0.1:6000"
    shown = dict(config_summary(config))
    assert "s3cr:et" not in " ".join(shown.values())


def test_env_number_and_device_index(monkeypatch):
    monkeypatch.setenv("PW_TEST_DEVICE", "2")
    monkeypatch.setenv("PW_TEST_THREADS", "3")
    config = parse("""\
        model:
          threads: ${PW_TEST_THREADS}
        cameras:
          - name: a
            source: ${PW_TEST_DEVICE}
        """)
    assert config.model.threads == 3 and config.cameras[0].source == 2


def test_missing_env_variable_names_key_and_variable(monkeypatch):
    monkeypatch.delenv("PW_TEST_UNSET", raising=False)
    message = error_of("""\
        cameras:
          - name: gate
            source: rtsp://viewer:${PW_TEST_UNSET}@host/stream
        """)
    assert message.startswith("pathwatch.yaml:3: cameras[0].source: environment variable "
                              "PW_TEST_UNSET is not set"), message


def test_error_never_echoes_an_environment_value(monkeypatch):
    monkeypatch.setenv("PW_TEST_SECRET", "topsecret-value")
    message = error_of(with_camera("""\
        publisher:
          bind: ${PW_TEST_SECRET}
        """))
    assert message.startswith("pathwatch.yaml:2: publisher.bind:")
    assert "topsecret-value" not in message


# ------------------------------------------------------------------------------ file problems
def test_yaml_syntax_error_gives_file_and_line():
    message = error_of("""\
        cameras:
          - name: a
           source: demo
        """)
    assert message.startswith("pathwatch.yaml:3: YAML syntax error:"), message


def test_empty_and_non_mapping_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty"):
        load_config(empty)
    listing = tmp_path / "list.yaml"
    listing.write_text("- demo\n")
    with pytest.raises(ConfigError, match=r"list\.yaml:1: the top level must be a mapping"):
        load_config(listing)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read it as a UTF-8 text file"):
        load_config(tmp_path)


# ------------------------------------------------------------------------------ paths
def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "pathwatch.yaml").write_text(textwrap.dedent("""\
        model:
          bundle: bundles/v1
        journal:
          path: data/journal.sqlite
        cameras:
          - name: clip
            source: clips/door.mp4
            calibration: cal/clip.json
          - name: usb
            source: /dev/video0
          - name: web
            source: http://user:pw@host/stream.mjpg
          - name: dev
            source: 0
          - name: sim
            source: demo:seed=3,script=normal
        """))
    (folder / "clips").mkdir()
    (folder / "clips" / "door.mp4").write_bytes(b"")  # sources must exist to pass the check
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config("site/pathwatch.yaml")
    site = folder.resolve()
    assert Path(config.model.bundle) == site / "bundles" / "v1"
    assert config.journal_path() == site / "data" / "journal.sqlite"
    clip, usb, web, dev, sim = config.cameras
    assert Path(clip.source) == site / "clips" / "door.mp4"
    assert clip.calibration_path(config) == site / "cal" / "clip.json"
    assert (usb.source, web.source, dev.source) == ("/dev/video0", "http://user:pw@host/stream.mjpg", 0)
    assert sim.source == "demo:seed=3,script=normal"
    rows = dict(config_summary(config))
    assert "pw@" not in " ".join(rows.values())


def test_state_and_cache_directories(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    config = parse(ONE_CAMERA)
    assert config.state_path() == tmp_path / "state"
    assert config.cache_path() == tmp_path / "cache"
    assert config.journal_path() == tmp_path / "state" / "journal.sqlite"
    assert config.cameras[0].calibration_path(config) == tmp_path / "state" / "calibration" / "demo.json"

    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.delenv("CACHE_DIRECTORY")
    assert config.state_path() == Path("~/.local/state/pathwatch").expanduser()
    assert config.cache_path() == Path("~/.cache/pathwatch").expanduser()

    explicit = parse("state_dir: st\ncache_dir: ca\n" + ONE_CAMERA, base_dir=tmp_path)
    assert explicit.state_path() == tmp_path / "st" and explicit.cache_path() == tmp_path / "ca"


def test_auto_calibration_per_camera_overrides_the_global_switch():
    config = parse("""\
        calibration:
          auto: false
        cameras:
          - name: a
            source: demo
          - name: b
            source: demo
            auto_calibrate: true
        """)
    a, b = config.cameras
    assert not a.wants_auto_calibration(config) and b.wants_auto_calibration(config)


# ------------------------------------------------------------------------------ schema
def test_schema_is_a_json_schema_with_the_sections():
    schema = config_schema()
    json.dumps(schema)  # plain JSON, printable by `pathwatch config schema`
    assert schema["type"] == "object" and schema["required"] == ["cameras"]
    for key in ("cameras", "model", "calibration", "alerts", "publisher", "journal", "capture",
                "logging", "state_dir", "cache_dir"):
        assert key in schema["properties"]
    camera = schema["$defs"]["CameraConfig"]
    assert camera["additionalProperties"] is False
    assert {"name", "source", "roi", "tiles", "ignore", "fps"} <= set(camera["properties"])
    assert schema["$defs"]["ModelSection"]["properties"]["backend"]["enum"] == list(KINDS)
    alerts = schema["$defs"]["AlertsSection"]
    assert alerts["additionalProperties"] is False
    for key in AlertPolicy.model_fields:  # documented once, on the policy
        assert alerts["properties"][key]["description"]


def test_config_check_warns_about_an_open_bind_and_a_missing_bundle(tmp_path, capsys):
    from pathwatch.cli import main

    path = tmp_path / "lan.yaml"
    path.write_text(textwrap.dedent(f"""\
        model:
          bundle: {tmp_path / "not-yet"}
        publisher:
          bind: tcp://0.0.0.0:5556
        cameras:
          - name: a
            source: demo
        """))
    assert main(["config", "check", str(path)]) == 0
    err = capsys.readouterr().err
    assert "publisher.bind tcp://0.0.0.0:5556 is reachable from the network without encryption" in err
    assert "replay_bind" not in err  # still on loopback
    assert f"model.bundle {tmp_path / 'not-yet'} is not a bundle directory" in err


# ------------------------------------------------------------------------------ alerts
def test_the_alerts_section_is_the_trackers_policy():
    config = parse(with_camera("""\
        alerts:
          trigger_frames: 1
          window_frames: 2
          quiet_s: 0.5
          cooldown_s: 0
          snapshot: false
        """))
    assert isinstance(config.alerts, AlertPolicy) and not config.alerts.snapshot
    tracker = AlertTracker("demo", config.alerts)
    assert tracker.policy is config.alerts and tracker.window.maxlen == 2
    (start,) = tracker.update(0.0, 5.0, 1.0)  # trigger_frames: 1 starts at the first frame
    (end,) = tracker.update(0.6, 0.0, 1.0)  # quiet_s: 0.5 ends it
    assert (start.state, end.state, end.reason) == ("start", "end", "quiet")
    assert tracker.update(0.7, 5.0, 1.0)[0].state == "start"  # cooldown_s: 0


def test_alerts_defaults_are_the_policys():
    config = parse(ONE_CAMERA)
    policy = AlertPolicy()
    assert {k: getattr(config.alerts, k) for k in AlertPolicy.model_fields} == policy.model_dump()

"""The daemon's configuration: one YAML file, validated strictly.

Unknown keys are errors, and every error is one line naming the file, the line and the key
path, with a hint (`pathwatch.yaml:14: cameras[1].fps: must be greater than 0 (got -2)`).
`${VAR}` and `${VAR:-default}` in string values come from the environment, so passwords stay
out of the file; an error never echoes a substituted value.

Over 450 lines because the typed tree and the code that turns pydantic's errors into lines
of the YAML file belong together: every section's wording and line lookup is checked here.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from .alerts import AlertPolicy
from .backends import KINDS
from .strict import Strict

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
NAME_PATTERN = r"[A-Za-z0-9_-]{1,32}"


class ConfigError(ValueError):
    """One line: where, what, and how to fix it. `problems` holds every problem found (the
    line shows the first three); `config check` lists them all."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


def _joined(problems: list[str]) -> str:
    more = f"; and {len(problems) - 3} more (pathwatch config check lists them all)" \
        if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


class TritonSection(Strict):
    """model.backend: triton: the Triton Inference Server that runs the bundle's graph."""
    url: str | None = Field(None, description="HOST:PORT of the server, no scheme (default "
                            "localhost:8001 for grpc, localhost:8000 for http)")
    model: str = Field("pathwatch", description="model name in the server's repository (as "
                       "`pathwatch export --triton-repository` wrote it)")
    protocol: Literal["grpc", "http"] = "grpc"
    timeout_s: float = Field(5.0, gt=0.0, le=20.0, description="per request; a server that "
                             "does not answer in time counts as gone (frames dropped, retried); "
                             "at most 20 so a hung server never outlasts the systemd watchdog")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        m = re.fullmatch(r"([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})", v or "")
        if v is not None and not (m and 1 <= int(m.group(2)) <= 65535):
            raise ValueError(f"{v!r} must be HOST:PORT without a scheme (e.g. triton.lan:8001)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", v) or v in (".", ".."):
            raise ValueError(f"{v!r} must be a Triton model name (letters, digits, '_', '-', '.')")
        return v


class ModelSection(Strict):
    """Which exported model runs, and on what."""
    bundle: str = Field("default", description="'default' (the bundled model, exported on first "
                        "use) or a bundle directory")
    backend: Literal[KINDS] = "auto"  # type: ignore[valid-type]
    threads: int | None = Field(None, ge=1, description="CPU threads for the backend")
    max_batch: int = Field(64, ge=1, le=4096, description="most tiles per backend call")
    precision: Literal["fp16", "fp32", "bf16"] = Field(
        "fp16", description="GPU precision (TensorRT engine, torch autocast, ORT GPU providers); "
        "bf16: OpenVINO on a CPU with BF16, behind the parity gate")
    rebuild_engines: bool = Field(False, description="TensorRT: build (and check) an engine for "
                                  "this GPU when the bundle has none that matches")
    triton: TritonSection = Field(default_factory=TritonSection, description="the server for "
                                  "backend: triton (never chosen by auto)")

    @model_validator(mode="after")
    def _bf16_is_openvino(self):
        if self.precision == "bf16" and self.backend != "openvino":
            raise ValueError("precision bf16 runs on backend openvino only; set model.backend: "
                             "openvino or model.precision: fp32")
        return self


class CalibrationSection(Strict):
    """How a camera learns what normal looks like and where its threshold goes."""
    auto: bool = Field(True, description="a camera without calibration calibrates itself first")
    seconds: float = Field(120.0, ge=5.0, description="scene seconds of normal frames to "
                           "collect, on the frames' capture clock (a slow CPU collects fewer "
                           "frames of the same stretch, never a longer one)")
    frames: int | None = Field(None, ge=20, description="collect this many processed frames "
                               "instead of `seconds`")
    holdout: float = Field(0.3, gt=0.0, lt=0.9, description="share of the window each "
                           "out-of-fold block holds (0.3: three blocks)")
    false_alarms_per_hour: float = Field(0.5, gt=0.0, description="target false alerts per hour")
    density: Literal["auto", "gmm-bic", "gmm-cv", "kde"] = "auto"


class DynamicStepsSection(Strict):
    """Dynamic steps (edge/dynamic_steps.py): every tile gets the bundle's one-step head; the
    full schedule runs only on tiles whose cheap score comes near that head's threshold."""
    enabled: bool = Field(True, description="cheap pass first, the full schedule where it is "
                          "near the threshold (needs a bundle with a one-step head)")
    margin: float = Field(0.25, ge=0.0, le=1.0, description="escalate a tile when its cheap "
                          "score reaches this share of the cheap head's threshold (lower: "
                          "more tiles get the full schedule)")


class AdaptationSection(Strict):
    """Online adaptation (edge/adaptation.py): the normal model follows slow drift (dusk,
    weather) in bounded steps, each versioned in the calibration file and announced."""
    enabled: bool = Field(False, description="refresh each camera's normal model from recent "
                          "ordinary frames (off by default: docs/calibration.md, Drift)")
    every_s: float = Field(300.0, ge=10.0, description="scene seconds between refreshes")
    sample_every_s: float = Field(2.0, gt=0.0, description="one frame in this many seconds is "
                                  "sampled (every tile in full) as a candidate normal frame")
    max_share: float = Field(0.34, gt=0.0, le=1.0, description="at most this share of the "
                             "normal set is replaced per refresh (the bound on how fast "
                             "normal may move)")
    quiet: float = Field(0.1, gt=0.0, lt=1.0, description="a sample counts as ordinary when at "
                         "least this share of normal frames scored as high (p_normal)")
    guard_s: float = Field(10.0, ge=0.0, description="no sample within this many seconds of "
                           "an open alert joins the normal set")
    adopt_after_s: float | None = Field(1800.0, ge=10.0, description="an alert still open "
                                        "after this long is a lasting change: adopted as "
                                        "normal, and the alert ends saying so (null: never)")


class GatingSection(Strict):
    """Change gating (edge/gating.py): a tile whose pixels changed less than the camera's
    sensor noise (measured by its calibration) reuses its last features."""
    enabled: bool = Field(False, description="send only changed tiles to the backend")
    max_age_s: float = Field(2.0, gt=0.0, le=60.0, description="a tile is evaluated at least "
                             "this often, changed or not")


class StillnessSection(Strict):
    """Still content (edge/stillness.py), for cameras with `passing: ignore`: what counts as a
    new thing that stays, as opposed to traffic passing through."""
    still_s: float = Field(4.0, gt=0.0, le=60.0, description="new pixels must not have moved "
                           "for this long (seconds)")
    min_area: float = Field(0.0033, gt=0.0, le=1.0, description="share of the view (the "
                            "roi) that must be new and still within one tile for the tile to "
                            "count (0.0033: 4% of a tile of the 4 x 3 grid, 16% at 8 x 6)")
    background_s: float = Field(120.0, ge=20.0, description="the background is the per-pixel "
                                "median of this many recent seconds (a thing staying longer "
                                "than about half of it becomes background)")


class AlertsSection(AlertPolicy):
    """The alert state machine's policy (it is what each camera's tracker runs on), plus what
    an alert carries."""
    snapshot: bool = Field(True, description="attach a JPEG of the frame to start/update events")
    heatmap: bool = Field(True, description="attach a PNG heatmap of the tiles to start/update "
                          "events")
    overlay: bool = Field(True, description="attach a JPEG of the frame with the heatmap over "
                          "it and the worst tile outlined to start/update events")


class PublisherSection(Strict):
    """ZeroMQ endpoints for events and for replaying missed ones."""
    bind: str = "tcp://127.0.0.1:5556"
    replay_bind: str = "tcp://127.0.0.1:5557"
    sndhwm: int = Field(100, ge=1)
    score_rate_hz: float = Field(2.0, ge=0.0)
    heartbeat_s: float = Field(1.0, gt=0.0)

    @field_validator("bind", "replay_bind")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v)


def check_endpoint(v: str) -> str:
    """A ZeroMQ endpoint that can work: tcp://HOST:PORT (port 1-65535, or * to bind any),
    ipc:///path or inproc://name; a ValueError naming the problem otherwise."""
    if not re.match(r"^(tcp|ipc|inproc)://.+", v):
        raise ValueError(f"{v!r} is not a ZeroMQ endpoint (use tcp://HOST:PORT or ipc:///path)")
    if v.startswith("tcp://"):
        port = v.rpartition(":")[2]
        if port != "*" and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
            raise ValueError(f"{v!r} has no valid port (tcp://HOST:PORT with PORT 1-65535)")
    return v


class JournalSection(Strict):
    """The SQLite journal of events that the replay endpoint serves."""
    path: str | None = None
    max_age_days: float = Field(30.0, gt=0.0)
    max_events: int = Field(100_000, ge=1)


class CaptureSection(Strict):
    """Defaults for every camera's capture thread (times in seconds)."""
    queue_size: int = Field(2, ge=1)
    open_timeout_s: float = Field(10.0, gt=0.0)
    read_timeout_s: float = Field(5.0, gt=0.0)
    reconnect_after_s: float = Field(5.0, gt=0.0)
    backoff_max_s: float = Field(30.0, gt=0.0)


class SecuritySection(Strict):
    """CURVE encryption and client authentication for the publisher and the replay endpoint."""
    curve: bool = False
    server_key: str | None = Field(None, description="the daemon's secret certificate (.key_secret)")
    authorized_clients: str | None = Field(None, description="directory of client public keys (*.key)")
    server_public_key: str | None = Field(None, description="for clients (tail, view): the "
                                          "daemon's public certificate (.key)")
    client_key: str | None = Field(None, description="for clients: their secret certificate")

    @model_validator(mode="after")
    def _complete(self):
        if self.curve and not (self.server_key and self.authorized_clients):
            raise ValueError("curve: true needs server_key and authorized_clients "
                             "(create them with `pathwatch keys generate`)")
        return self


class MetricsSection(Strict):
    """Prometheus endpoint (text exposition over HTTP)."""
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class LoggingSection(Strict):
    """Log verbosity and format."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


Rect = tuple[float, float, float, float]


def _check_rect(r: Rect, what: str) -> Rect:
    x0, y0, x1, y1 = r
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"{what} {list(r)} must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and "
                         "0 <= y0 < y1 <= 1 (relative coordinates)")
    return r


# Checked per item so that an error points at ignore[i], not at the whole list.
IgnoreRect = Annotated[Rect, AfterValidator(lambda r: _check_rect(r, "ignore rectangle"))]


class CameraConfig(Strict):
    """One camera: where frames come from, which part is watched, and its calibration."""
    name: str = Field(..., description="1-32 letters, digits, '-' or '_'; unique; used in topics",
                      json_schema_extra={"pattern": f"^{NAME_PATTERN}$"})
    source: Union[int, str] = Field(..., description="device index, /dev/videoN, rtsp/http URL, "
                                    "video file, image folder, or demo[:key=value,...]")
    enabled: bool = True
    fps: float | None = Field(5.0, gt=0.0, description="cap on processed frames per second")
    realtime: bool = True
    on_end: Literal["loop", "stop"] = "loop"
    roi: Rect = (0.0, 0.0, 1.0, 1.0)
    tiles: tuple[int, int] = (4, 3)
    exposure: Literal["normalize", "off"] = Field(
        "normalize", description="normalize: scale each frame's roi to a fixed mean brightness, "
        "so auto-exposure and daylight drift do not read as anomalies")
    ignore: list[IgnoreRect] = Field(default_factory=list, description="rectangles relative to "
                                     "the roi; tiles mostly inside them are not scored")
    passing: Literal["alert", "ignore"] = Field(
        "alert", description="ignore: people and vehicles passing through are normal here; "
        "only a tile with something new that stays still (stillness:) can alert")
    calibration: str | None = None
    auto_calibrate: bool | None = None
    threshold: float | None = Field(None, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(NAME_PATTERN, v):
            raise ValueError(f"{v!r} must be 1-32 letters, digits, '-' or '_' (it becomes part "
                             "of ZeroMQ topics and file names)")
        return v

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        if isinstance(v, str) and re.fullmatch(r"[0-9]+", v.strip()):
            return int(v)  # "0" from an environment variable means device 0, not a file named 0
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"a device index must be 0 or more (got {v})")
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("is empty (use a device index, /dev/videoN, a URL, a file or 'demo')")
            if v.startswith("demo:") and not re.fullmatch(r"demo:\w+=[^,=]*(,\w+=[^,=]*)*", v):
                raise ValueError(f"{v!r} must look like demo:key=value,key=value")
        elif not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"must be a device index or a source string, not a {type(v).__name__}")
        return v

    @field_validator("roi")
    @classmethod
    def _roi(cls, r: Rect) -> Rect:
        return _check_rect(r, "roi")

    @field_validator("tiles")
    @classmethod
    def _tiles(cls, t: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= v <= 16 for v in t):
            raise ValueError(f"tiles {list(t)} must be [columns, rows], each 1..16")
        return t

    def calibration_path(self, config: "Config") -> Path:
        if self.calibration:
            return Path(self.calibration)
        return config.state_path() / "calibration" / f"{self.name}.json"

    def wants_auto_calibration(self, config: "Config") -> bool:
        return config.calibration.auto if self.auto_calibrate is None else self.auto_calibrate


class Config(Strict):
    """The whole daemon configuration (one YAML file)."""
    state_dir: str | None = None
    cache_dir: str | None = None
    model: ModelSection = Field(default_factory=ModelSection)
    calibration: CalibrationSection = Field(default_factory=CalibrationSection)
    gating: GatingSection = Field(default_factory=GatingSection)
    stillness: StillnessSection = Field(default_factory=StillnessSection)
    dynamic_steps: DynamicStepsSection = Field(default_factory=DynamicStepsSection)
    adaptation: AdaptationSection = Field(default_factory=AdaptationSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    publisher: PublisherSection = Field(default_factory=PublisherSection)
    journal: JournalSection = Field(default_factory=JournalSection)
    capture: CaptureSection = Field(default_factory=CaptureSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    cameras: list[CameraConfig] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        seen = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"camera name {cam.name!r} is used twice; names must be unique")
            seen.add(cam.name)
        return self

    def state_path(self) -> Path:
        return _directory(self.state_dir, "STATE_DIRECTORY", "~/.local/state/pathwatch")

    def cache_path(self) -> Path:
        return _directory(self.cache_dir, "CACHE_DIRECTORY", "~/.cache/pathwatch")

    def journal_path(self) -> Path:
        return Path(self.journal.path) if self.journal.path else self.state_path() / "journal.sqlite"


def _directory(value: str | None, env: str, fallback: str) -> Path:
    if value:
        return Path(value).expanduser()
    # systemd's StateDirectory=/CacheDirectory= may list several paths separated by ':'.
    from_env = os.environ.get(env, "").split(":")[0]
    return Path(from_env or fallback).expanduser()


# ------------------------------------------------------------------------------ loading
def load_config(path: str | Path, check_sources: bool | list[str] = False) -> Config:
    """Read and validate a config file; relative paths in it resolve against its directory.
    `check_sources`: also check that the enabled cameras' sources (True: all, a list: those
    named) can work, as `run` needs; clients that only want addresses and keys skip it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (check the path; "
                          "configs/default.yaml is a documented starting point)") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        raise ConfigError(f"{path}: cannot read it as a UTF-8 text file "
                          f"({e.__class__.__name__}; pass the YAML file itself)") from None
    return parse_config(text, str(path), path.resolve().parent, check_sources)


def parse_config(text: str, source_name: str = "<string>", base_dir: Path | None = None,
                 check_sources: bool | list[str] = False) -> Config:
    """Validate YAML text. `source_name` prefixes every error; `base_dir` anchors relative paths."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source_name}{line}: YAML syntax error: {problem} "
                          "(check indentation, colons and quotes)") from None
    if data is None:
        raise ConfigError(f"{source_name}: the file is empty (it needs at least a `cameras:` list)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source_name}:1: the top level must be a mapping of sections "
                          f"(cameras:, model:, ...), not a {type(data).__name__}")
    lines = _line_index(node, source_name)
    secrets: list[str] = []
    unset: dict[tuple, str] = {}  # key path -> the problem: ${VAR} not set
    data = _substitute_env(data, (), source_name, lines, secrets, unset)
    _check_camera_names(data, source_name, lines)
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        # A value still holding ${VAR} is reported as unset, not also as a wrong value.
        problems = list(unset.values()) + _describe_errors(e, source_name, lines, skip=unset)
        problems = [_scrub(p, secrets) for p in problems]
        raise ConfigError(_joined(problems), problems) from None
    if unset:
        problems = list(unset.values())
        raise ConfigError(_joined(problems), problems)
    if base_dir is not None:
        _resolve_paths(config, Path(base_dir))
    if check_sources:
        _check_sources(config, source_name, lines, secrets,
                       None if check_sources is True else list(check_sources))
        _check_daemon_files(config, source_name, lines)
    return config


def _check_daemon_files(config: "Config", source_name: str, lines: dict) -> None:
    """The keys and the journal `run` opens after loading the model, checked before it."""
    from .security import SecurityError, load_secret

    sec = config.security
    checks = [(("journal", "path"), lambda: _check_journal_dir(config.journal_path()))]
    if sec.curve:
        checks += [(("security", "server_key"), lambda: load_secret(sec.server_key)),
                   (("security", "authorized_clients"), lambda: _some_keys(sec.authorized_clients))]
    for where, check in checks:
        try:
            check()
        except (SecurityError, ConfigError) as e:
            raise ConfigError(f"{source_name}{_line_for(lines, where)}: {_fmt_path(where)}: "
                              f"{e}") from None


def _some_keys(directory: str) -> None:
    from .security import authorized_keys

    if not authorized_keys(Path(directory).expanduser()):
        raise ConfigError(f"{directory} holds no client public keys (*.key); copy each "
                          "client's .key file there")


def _check_journal_dir(path: Path) -> None:
    if not _writable(path):
        raise ConfigError(f"the journal {path} cannot be written there; set journal.path or "
                          "state_dir to a writable directory")


def _check_sources(config: "Config", source_name: str, lines: dict, secrets: list[str],
                   only: list[str] | None) -> None:
    """The same source checks `run` makes (scheme, demo and folder options, a path that
    exists), so `config check` never passes a file that `run` refuses."""
    from .sources import SourceError, check_recording, parse_source

    for i, cam in enumerate(config.cameras):
        if not cam.enabled or (only is not None and cam.name not in only):
            continue
        for key, check in (("source", lambda: check_recording(parse_source(cam.source))),
                           ("calibration", lambda: _check_writable(cam, config))):
            try:
                check()
            except (SourceError, ConfigError) as e:
                where = ("cameras", i, key)
                raise ConfigError(_scrub(f"{source_name}{_line_for(lines, where)}: "
                                         f"{_fmt_path(where)}: {e}", secrets)) from None


def _check_writable(cam: "CameraConfig", config: "Config") -> None:
    """A calibration the daemon must write (auto-calibration, feedback) fails only after
    minutes of collecting if its directory cannot be written: say so now."""
    path = cam.calibration_path(config)
    if path.is_file() and not cam.wants_auto_calibration(config):
        return  # read only
    if not _writable(path):
        raise ConfigError(f"calibration file {path} cannot be written there; set "
                          "cameras[].calibration or state_dir to a writable place")


def _writable(path: Path) -> bool:
    """Whether `path` can be written or created (its missing directories included)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing == path:
        return path.is_file() and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _line_index(node, source: str) -> dict[tuple, int]:
    """Key path -> 1-based line of that key (or list item) in the YAML text.

    Also refuses a key written twice in one mapping: YAML loaders keep the last one silently,
    which hides edits that were meant to take effect.
    """
    out: dict[tuple, int] = {}

    def walk(n, path):
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                p = path + (k.value,)
                line = k.start_mark.line + 1
                if k.value in seen:
                    raise ConfigError(f"{source}:{line}: {_fmt_path(p)}: duplicate key (first "
                                      f"set at line {seen[k.value]}; keep one of them)")
                seen[k.value] = line
                out[p] = line
                walk(v, p)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                out[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))
    if node is not None:
        out[()] = node.start_mark.line + 1
        walk(node, ())
    return out


def _fmt_path(path) -> str:
    s = ""
    for p in path:
        if not isinstance(p, int) and not re.fullmatch(r"[\w.-]+", str(p)):
            p = repr(p)  # a key with spaces or control characters, quoted on one line
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "(top level)"


def _line_for(lines: dict, path: tuple) -> str:
    """':LINE' of the deepest part of `path` present in the file (a missing key: its parent)."""
    path = tuple(path)
    while path and path not in lines:
        path = path[:-1]
    return f":{lines[path]}" if path in lines else ""


def _substitute_env(value: Any, path: tuple, source: str, lines: dict, secrets: list[str],
                    unset: dict[tuple, str]) -> Any:
    """Replace ${VAR} / ${VAR:-default} in string values; remember what was put in (to scrub)
    and, in `unset`, each variable that is not set (its value is left as written)."""
    if isinstance(value, dict):
        return {k: _substitute_env(v, path + (k,), source, lines, secrets, unset)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, path + (i,), source, lines, secrets, unset)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def repl(m):
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            secrets.append(os.environ[name])
            return os.environ[name]
        if default is not None:
            return default
        unset[path] = (f"{source}{_line_for(lines, path)}: {_fmt_path(path)}: environment "
                       f"variable {name} is not set (export it, or write ${{{name}:-default}})")
        return m.group(0)
    return ENV_PATTERN.sub(repl, value)


def _scrub(message: str, secrets: list[str]) -> str:
    """Errors may quote the offending value; never let that be a value from the environment."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def _check_camera_names(data: dict, source: str, lines: dict) -> None:
    """Duplicate camera names, reported at the second one (pydantic would say only 'cameras')."""
    cameras = data.get("cameras")
    if not isinstance(cameras, list):
        return
    first: dict[str, int] = {}
    for i, cam in enumerate(cameras):
        name = cam.get("name") if isinstance(cam, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            path = ("cameras", i, "name")
            raise ConfigError(f"{source}{_line_for(lines, path)}: {_fmt_path(path)}: camera name "
                              f"{name!r} is already used by cameras[{first[name]}] "
                              "(names must be unique; they appear in topics and file names)")
        first[name] = i


def _known_keys(loc: tuple) -> list[str]:
    """Field names of the model at a location, for 'did you mean'."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        inner = get_args(ann)
        model = inner[0] if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel) else ann
    return list(getattr(model, "model_fields", {}))


# pydantic's union members appear in error locations ('source', 'int'); they are not keys.
_UNION_TAGS = {"int", "str"}


def _describe_errors(e: ValidationError, source: str, lines: dict,
                     skip: dict | None = None) -> list[str]:
    """Every error, each `FILE:LINE: key.path: problem (hint)` (joined with '; ' the message
    stays one line, for logs and systemd's status); none under a path in `skip`."""
    parts, seen = [], set()
    # An unknown key first: a misspelt key also makes the intended one "missing".
    errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        if skip and any(loc[:len(p)] == p for p in skip):
            continue
        text = _describe(err, source, lines)
        where = text.split(": ", 2)[:2]
        if tuple(where) in seen:  # one line per key (unions report each member)
            continue
        seen.add(tuple(where))
        parts.append(text)
    return parts


def _describe(err: dict, source: str, lines: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    where = f"{source}{_line_for(lines, loc)}: {_fmt_path(loc)}"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key ({hint})"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"{source}{_line_for(lines, loc)}: {_fmt_path(loc[:-1])}: has too few values " \
               f"(only {loc[-1]} given)"
    if kind == "too_short" and loc == ("cameras",):
        return f"{where}: no cameras (add at least one: `- name: NAME` and `source: SOURCE`)"
    if kind == "missing":
        return f"{where}: required key is missing (add it; see configs/default.yaml)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = re.sub(r"^Input should be\b", "must be", msg)
    msg = msg[0].lower() + msg[1:]
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or kind == "value_error" else f" (got {got!r})"
    return f"{where}: {msg}{shown}"


def _resolve_paths(config: Config, base: Path) -> None:
    """Relative paths in the file mean relative to the file, not to the working directory."""
    def fix(p: str | None) -> str | None:
        if p is None or p == "default":
            return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else base / q)
    config.model.bundle = fix(config.model.bundle)
    config.journal.path = fix(config.journal.path)
    config.state_dir = fix(config.state_dir)
    config.cache_dir = fix(config.cache_dir)
    sec = config.security
    sec.server_key, sec.authorized_clients = fix(sec.server_key), fix(sec.authorized_clients)
    sec.server_public_key, sec.client_key = fix(sec.server_public_key), fix(sec.client_key)
    for cam in config.cameras:
        cam.calibration = fix(cam.calibration)
        if isinstance(cam.source, str) and not re.match(r"^([a-z]+://|demo(:|$)|/dev/)", cam.source):
            candidate = Path(cam.source).expanduser()
            if not candidate.is_absolute():
                cam.source = str(base / candidate)


def config_schema() -> dict:
    return Config.model_json_schema()


def _mask(source) -> str:
    return re.sub(r"://([^:/@]+):([^@]+)@", r"://\1:***@", str(source))


def config_summary(config: Config) -> list[tuple[str, str]]:
    rows = [("bundle", config.model.bundle), ("backend", config.model.backend),
            ("publisher", config.publisher.bind), ("replay", config.publisher.replay_bind),
            ("journal", str(config.journal_path())), ("state", str(config.state_path()))]
    for cam in config.cameras:
        state = "" if cam.enabled else " (disabled)"
        rows.append((f"camera {cam.name}{state}", f"{_mask(cam.source)}; fps {cam.fps}; tiles "
                     f"{cam.tiles[0]}x{cam.tiles[1]}; roi {list(cam.roi)}; "
                     f"{len(cam.ignore)} ignore masks"))
    return rows

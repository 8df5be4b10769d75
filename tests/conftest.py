"""Shared fixtures: a tiny base model trained once per test session with `pathwatch train`."""
from pathlib import Path

import pytest

from pathwatch.cli import main

TINY_CONFIG = Path(__file__).parent / "data" / "tiny_model.yaml"

# The first lines of a `python -c` script that must run as on a device without torch: any
# import of it fails.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real (small) UNet trained for a few seconds on scikit-learn's digits."""
    out = tmp_path_factory.mktemp("runs") / "digits-tiny"
    code = main(["train", "--data", "digits", "--out", str(out), "--config", str(TINY_CONFIG),
                 "--steps", "60", "--batch-size", "16", "--save-every", "30", "--seed", "0"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    """The tiny model exported as a bundle (K=3, 6d+ssim), as the daemon runs it."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-default"
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(out), "--k", "3",
                 "--parity-n", "32", "--parity-data", "digits"]) == 0
    return out


def daemon_config(tmp: Path, bundle: Path, source: str, metrics_port: int = 0, **camera) -> Path:
    """A config for a test daemon: its own state, ipc sockets, a small calibration."""
    import yaml

    cam = {"name": "cam", "source": source, "fps": None, "tiles": [4, 3], **camera}
    cfg = {"state_dir": str(tmp / "state"), "cache_dir": str(tmp / "cache"),
           "model": {"bundle": str(bundle), "backend": "onnxruntime", "threads": 1},
           "calibration": {"frames": 30, "false_alarms_per_hour": 0.5},
           "alerts": {"trigger_frames": 2, "window_frames": 3, "update_interval_s": 0.5,
                      "quiet_s": 1.0, "cooldown_s": 2.0},
           "publisher": {"bind": f"ipc://{tmp}/pub.sock", "replay_bind": f"ipc://{tmp}/replay.sock",
                         "score_rate_hz": 5},
           "metrics": {"port": metrics_port},
           "cameras": [cam]}
    path = tmp / "pathwatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def default_env(tmp_path, tiny_bundle) -> dict:
    """Environment for a `pathwatch run` subprocess on the demo camera and the tiny bundle."""
    import os

    config = daemon_config(tmp_path, tiny_bundle, "demo", fps=10.0)
    return {**os.environ, "PATHWATCH_TEST_CONFIG": str(config)}

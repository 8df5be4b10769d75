"""Shared fixtures: a tiny base model trained once per test session with `pathwatch train`."""
from pathlib import Path

import pytest

from edge.cli import main

TINY_CONFIG = Path(__file__).parent / "data" / "tiny_model.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real (small) UNet trained for a few seconds on scikit-learn's digits."""
    out = tmp_path_factory.mktemp("runs") / "digits-tiny"
    code = main(["train", "--data", "digits", "--out", str(out), "--config", str(TINY_CONFIG),
                 "--steps", "60", "--batch-size", "16", "--save-every", "30", "--seed", "0"])
    assert code == 0
    return out

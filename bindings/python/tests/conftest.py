import os
from pathlib import Path

import pytest

import diffugpt

REPO = Path(__file__).resolve().parents[3]
FIXTURE = Path(os.environ.get("DIFFUGPT_FIXTURE", REPO / "tests" / "fixtures" / "tiny-diffugpt"))


@pytest.fixture(scope="session")
def fixture_path() -> Path:
    assert (FIXTURE / "model.safetensors").exists(), f"fixture model missing at {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def model(fixture_path):
    m = diffugpt.Model.load(fixture_path)
    yield m
    m.close()

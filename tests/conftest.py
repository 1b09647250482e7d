from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real cell images not available: {path} is absent (needs ../shared/data)")
    return path


@pytest.fixture
def bm7() -> Path:
    return shared_data("bm7")


@pytest.fixture
def pbc8() -> Path:
    return shared_data("pbc8")


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick demo, run once for the session (test_pipeline, test_browser)."""
    out = tmp_path_factory.mktemp("demo")
    r = cli(
        "demo",
        "--config",
        "configs/demo.yaml",
        "--out",
        str(out),
        "--quick",
        "--set",
        "train.threads=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Open the report" in r.stdout
    return out

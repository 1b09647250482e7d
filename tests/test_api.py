"""The public Python API: what ``import siamese_marrow`` offers, and the README's example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import siamese_marrow as sm

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_and_is_listed() -> None:
    assert sorted(sm.__all__) == sorted(sm._EXPORTS)
    for name in sm.__all__:
        assert getattr(sm, name) is not None, name
    assert {"load_run", "AnchorBank", "classify_images", "search_images", "fewshot_eval"} <= set(
        sm.__all__
    )


def test_importing_the_package_loads_no_heavy_library() -> None:
    """``import siamese_marrow`` (and so the CLI's start) does not import torch, timm or faiss."""
    code = (
        "import sys, siamese_marrow; print(sorted({'torch', 'timm', 'faiss'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's 'From Python' section has no python block"
    return textwrap.dedent(match.group(1))


def test_readme_from_python_block_runs_as_written(tmp_path: Path) -> None:
    """The block runs unchanged in a copy of the repository's configs; its outputs are real."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    script = tmp_path / "example.py"
    script.write_text(readme_python_block())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.search(r"\(4, \d+\)$", lines[0]), lines[0]  # 4 predictions over the bank's classes
    assert "'similarity'" in lines[1] and "'label'" in lines[1]
    bank = sm.open_bank(tmp_path / "runs" / "notebook-bank")
    assert len(bank) > 0 and (tmp_path / "runs" / "notebook" / "best.safetensors").is_file()

"""The trl 0.11.4 virtual environment the comparison runs in: created on first use, reused afterwards.

trl 0.11.4 is the last release with the `PPOTrainer.step(queries, responses, scores)` API; it needs
transformers < 4.47, which the app cannot share, so it lives in its own venv and is never a dependency of the app.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# torch is pinned to the app's version (a CPU wheel already on this machine's disk): an unpinned `torch` would
# download gigabytes of CUDA wheels. alt-profanity-check + scikit-learn give trl's round the same reward model.
PACKAGES = [
    "torch==2.13.0",
    "trl==0.11.4",
    "transformers<4.47",
    "peft==0.13.2",
    "numpy<2.3",
    "rich",
    "safetensors",
    "sentencepiece",
    "alt-profanity-check==1.9.1",
    "scikit-learn==1.9.1",
]
MARKER = ".rlhf-studio-bench-complete"


def default_venv() -> Path:
    from rlhf.offline import default_cache_dir

    return default_cache_dir() / "bench" / "trl0114-venv"


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def is_ready(venv: Path) -> bool:
    return (Path(venv) / MARKER).is_file() and venv_python(venv).exists()


def ensure_trl_venv(venv: Path, log: Callable[[str], None] = print) -> Path:
    """Python of a venv holding trl 0.11.4, creating it (about a minute, pip only) if it is not complete."""
    venv = Path(venv)
    if is_ready(venv):
        return venv_python(venv)
    if venv.exists():
        shutil.rmtree(venv)  # a half-built venv from an interrupted run
    log(f"creating the trl 0.11.4 venv in {venv} (pip install {' '.join(PACKAGES)}) ...")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv_python(venv)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    check = "import trl, peft, profanity_check; assert trl.__version__ == '0.11.4', trl.__version__"
    subprocess.run([str(py), "-c", check], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    (venv / MARKER).write_text(" ".join(PACKAGES) + "\n")
    return py

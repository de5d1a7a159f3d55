"""The package as a user installs it: a wheel, not a checkout (issue 14)."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from llmft.config.location import config_dir

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "conf", "llmft"]


def test_the_config_folder_is_the_packages_own_copy_when_it_ships_one(tmp_path):
    (tmp_path / "llmft").mkdir()
    assert config_dir(tmp_path / "llmft") == tmp_path / "conf"  # a checkout: conf/ beside the package
    (tmp_path / "llmft" / "conf").mkdir()
    assert config_dir(tmp_path / "llmft") == tmp_path / "llmft" / "conf"  # a wheel: inside it


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_environment_runs_the_smoke_experiment_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:  # a copy, so that building leaves nothing in the checkout
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("llmft-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies are this environment's (nothing downloaded); a bare path line does not run its .pth files,
    # so an editable llmft there stays out of the new environment
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages() + [sysconfig.get_path("purelib")]))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, timeout=600)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", LLMFT_CACHE_DIR=str(tmp_path / "cache"))
    where = subprocess.run([str(python), "-c", "import llmft; print(llmft.__file__)"], cwd=empty, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(purelib), where  # the wheel's copy, not a checkout
    result = subprocess.run([str(venv / "bin" / "llmft-train"), "experiment=smoke", "trainer.max_steps=1"],
                            cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done in" in result.stdout + result.stderr
    summary = next(empty.glob("outputs/*/*/summary.json"))
    assert '"status": "completed"' in summary.read_text()
    assert list(empty.iterdir()) == [empty / "outputs"]

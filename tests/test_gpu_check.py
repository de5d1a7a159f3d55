"""benchmarks/gpu_check.py without a GPU: its dry mode prints every check, and every run it would start composes."""

import importlib.util
import subprocess
import sys

import pytest

from llmft.config.precheck import check_overrides
from tests.conftest import ROOT

SPEC = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)


def test_the_dry_mode_prints_each_check_and_exits_0():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    names = [check.name for check in gpu_check.checks("rtx4090-24gb", ROOT)]
    assert [line.split(":")[0] for line in lines[-len(names):]] == names
    assert "quantization=nf4,int8" in result.stdout and "--merge" in result.stdout


@pytest.mark.parametrize("memory_gib, name, profile", [(5.8, "NVIDIA GeForce GTX 1660 SUPER", "gtx1660-6gb"),
                                                       (23.6, "NVIDIA GeForce RTX 4090", "rtx4090-24gb"),
                                                       (79.1, "NVIDIA A100-SXM4-80GB", "a100-80gb"),
                                                       (139.8, "NVIDIA H200", "h100-80gb")])
def test_the_profile_follows_the_cards_memory(memory_gib, name, profile):
    assert gpu_check.profile_for(memory_gib, name) == profile


@pytest.mark.parametrize("profile", ["gtx1660-6gb", "rtx4090-24gb", "a100-80gb", "h100-80gb"])
def test_every_training_run_it_would_start_composes(profile, tmp_path):
    for check in gpu_check.checks(profile, tmp_path):
        if check.argv[1:3] != ["-m", "llmft.train"]:
            continue
        overrides = [o.split(",")[0] if "=" in o else o for o in check.argv[3:] if o != "-m"]
        check_overrides([o for o in overrides if not o.startswith("hydra.")])

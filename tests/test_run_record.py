"""Every run records what it ran on and draws its loss curve; llmft-doctor prints the same and checks the install."""

import json
import subprocess
import sys

import pytest
import torch

from llmft.environment import ROOT, describe_environment
from llmft.loss_curve import validation_points
from llmft.pipeline import run
from tests.conftest import TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=4",
                                                                              "trainer.eval_every=2"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", *overrides])
    out = tmp_path_factory.mktemp("record-run")
    return run(cfg, out), out


def test_summary_records_versions_commit_cpu_and_gpu(tiny_run):
    summary, out = tiny_run
    env = json.loads((out / "summary.json").read_text())["environment"]
    assert env["packages"]["torch"] == torch.__version__ and env["python"] == sys.version.split()[0]
    assert {"transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "llmft"} <= \
        set(env["packages"])
    assert env["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (env["gpu"] is None) == (not torch.cuda.is_available())
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert env["llmft_commit"].split("+")[0] == head.stdout.strip()


def test_every_run_folder_has_a_loss_curve_with_validation_points(tiny_run):
    summary, out = tiny_run
    png = out / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [step for step, _ in validation_points(rows, summary)]
    assert steps == [0, 2, 4]  # the base model, trainer.eval_every=2, the fine-tuned model


def test_llmft_doctor_prints_the_environment_and_checks_the_install(cache_dir):
    result = subprocess.run([sys.executable, "-m", "llmft.doctor", f"paths.cache_dir={cache_dir}"],
                            capture_output=True, text=True, timeout=300)
    assert '"packages"' in result.stdout and "ok      bitsandbytes: NF4 round trip" in result.stdout
    assert "ok      gguf" in result.stdout
    assert ("ok      offline weights" in result.stdout) == (result.returncode == 0), result.stdout + result.stderr
    missing = subprocess.run([sys.executable, "-m", "llmft.doctor", "model=qwen2.5-0.5b"], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 1 and "FAILED  offline weights: model Qwen/Qwen2.5-0.5B-Instruct" in missing.stdout


def test_a_loss_curve_skips_non_finite_values_and_a_run_without_steps(tmp_path):
    from llmft.loss_curve import draw_loss_curve

    assert draw_loss_curve(tmp_path, {}) is None
    lines = [{"step": 1, "loss": 2.0, "learning_rate": 0.0}, {"step": 2, "loss": "nan", "learning_rate": 1e-3},
             {"step": 3, "loss": 1.5, "learning_rate": "inf"}, {"step": 2, "eval_loss": "nan"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert draw_loss_curve(tmp_path, {"status": "failed"}).is_file()

"""Bad command lines fail in seconds, with one paragraph that names the key and what is allowed, no traceback."""

import subprocess
import sys
import time

import pytest

CASES = [
    ("lora.r=abc", "lora.r=abc has the wrong type: lora.r takes an integer"),
    ("lora.rr=8", "lora.rr is not a key of lora (did you mean lora.r?)"),
    ("model.revison=v1", "model.revison is not a key of model (did you mean model.revision?)"),
    ("model.revision=v1", "write +model.revision=..."),
    ("quantization=nf5", "quantization=nf5 is not an option of the quantization group (did you mean quantization=nf4?). "
                         "The options are: fp4, int8, nf4, nf4-sharded, none"),
    ("lora.r=0", "lora.r=0 is out of range: it must be >= 1"),
    ("data.max_seq_length=-5", "data.max_seq_length=-5 is out of range: it must be >= 16"),
    ("hardware=tpu", "hardware=tpu is not an option of the hardware group"),
    ("hardware.precision=fp8", "hardware.precision=fp8 is not allowed: choose one of auto, bf16, fp16, fp32"),
    ("trainer.learning_rate=fast", "trainer.learning_rate=fast has the wrong type"),
    ("hardware.release_memory=${oc.env:HOME}",  # the type is checked only when the interpolation resolves
     "hardware.release_memory=${oc.env:HOME} has the wrong type: hardware.release_memory takes true or false"),
]


def llmft_train(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmft.train", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("override,message", CASES, ids=[c[0] for c in CASES])
def test_bad_override_fails_fast_with_one_paragraph(override, message):
    start = time.perf_counter()
    result = llmft_train(override)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_a_bad_value_inside_a_sweep_is_caught_before_any_job_runs():
    result = llmft_train("-m", "lora.r=8,0", "model=tiny")
    assert result.returncode == 2 and "lora.r=0 is out of range" in result.stderr

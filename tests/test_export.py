"""llmft-export and llmft-eval on finished tiny runs: what loads, what the check measured, what is refused."""

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llmft.errors import LlmftError
from llmft.export import ExportError, export_run
from llmft.pipeline import run
from llmft.reevaluate import reevaluate
from tests.conftest import TINY

NO_PEFT = "import sys; sys.modules['peft'] = None\n"  # an interpreter where `import peft` fails


def finished_run(make_cfg, folder, overrides=TINY):
    """A completed tiny run, as llmft-train leaves it (with .hydra/config.yaml and overrides.yaml)."""
    from omegaconf import OmegaConf

    cfg = make_cfg(overrides)
    run(cfg, folder, overrides=overrides)
    (folder / ".hydra").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from llmft.config.location import CONFIG_DIR

    def make_cfg(overrides):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[f"paths.cache_dir={cache_dir}", *overrides])

    # fp32: under bf16, the run's own evaluation goes through the autocast that accelerate.prepare put on the
    # model's forward, and llmft-eval (a fresh fp32 model) would differ from it by ~1e-4
    return finished_run(make_cfg, tmp_path_factory.mktemp("tiny-run"), [*TINY, "hardware.precision=fp32"])


def test_export_writes_an_adapter_with_card_and_a_merged_model_that_loads_without_peft(tiny_run):
    out = export_run(str(tiny_run), merge=True)
    report = json.loads((out / "export_report.json").read_text())
    assert report["max_abs_logit_difference"] <= report["tolerance"] == 1e-3 and report["probe_tokens"] > 0
    card = (out / "adapter" / "README.md").read_text()
    assert "base_model: tiny-llama" in card and "r=16" in card and "| perplexity |" in card
    script = NO_PEFT + (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                        f"m = AutoModelForCausalLM.from_pretrained({str(out / 'merged')!r})\n"
                        f"t = AutoTokenizer.from_pretrained({str(out / 'merged')!r})\n"
                        "print(type(m).__name__, m.num_parameters())")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.startswith("LlamaForCausalLM"), loaded.stderr[-1500:]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    with_adapter = PeftModel.from_pretrained(base, out / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, merged(ids).logits, atol=1e-4)


def test_a_second_export_is_refused_unless_forced(tiny_run):
    first = export_run(str(tiny_run), out=str(tiny_run / "again"))
    stamp = (first / "adapter" / "README.md").stat().st_mtime_ns
    with pytest.raises(ExportError, match="already exists"):
        export_run(str(tiny_run), out=str(first))
    assert (first / "adapter" / "README.md").stat().st_mtime_ns == stamp
    export_run(str(tiny_run), out=str(first), force=True)


def test_a_qlora_run_merges_into_the_full_precision_base(make_cfg, tmp_path):
    overrides = [o for o in TINY if not o.startswith("eval.")] + ["quantization=nf4", "eval=perplexity"]
    folder = finished_run(make_cfg, tmp_path / "qlora", overrides)
    out = export_run(str(folder), merge=True)
    report = json.loads((out / "export_report.json").read_text())
    assert report["max_abs_logit_difference"] <= report["tolerance"]
    assert report["quantization_gap_max_abs"] > 0  # the 4-bit model the adapter was trained on differs
    assert "quantization" in (out / "adapter" / "README.md").read_text().lower()
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged  # full-precision weights, not 4-bit


@pytest.mark.parametrize("break_it,message", [
    (lambda f: (f / ".hydra" / "config.yaml").unlink(), "is not an llmft run folder"),
    (lambda f: (f / "summary.json").write_text('{"status": "failed", "error": "NonFiniteLossError: nan"}'),
     "did not complete (status failed: NonFiniteLossError: nan)"),
    (lambda f: (f / "adapter" / "adapter_config.json").unlink(), "adapter is missing"),
])
def test_broken_run_folders_are_refused_and_nothing_is_written(tiny_run, tmp_path, break_it, message):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns("export", "again"))
    break_it(folder)
    result = subprocess.run([sys.executable, "-m", "llmft.export.cli", str(folder), "--merge"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (folder / "export").exists()


def test_llmft_eval_writes_a_new_report_beside_the_old_one(tiny_run):
    before = (tiny_run / "eval_report.json").read_text()
    first = reevaluate(str(tiny_run))
    second = reevaluate(str(tiny_run), ["eval=perplexity"])
    assert first != second and first.parent == tiny_run and (tiny_run / "eval_report.json").read_text() == before
    again = json.loads(first.read_text())
    assert again["perplexity"] == pytest.approx(json.loads(before)["perplexity"], rel=1e-5)
    assert json.loads(second.read_text())["prompt_results"] == [] and "eval=perplexity" in second.read_text()
    with pytest.raises(LlmftError, match="is not an option of the eval group"):
        reevaluate(str(tiny_run), ["eval=nope"])

"""``export_run``: the adapter with a model card and, with ``merge``, a merged model that checks itself.

Everything is written to a temporary folder first and moved into place only when every check passed, so a
failed export leaves nothing behind and an earlier export is replaced only when asked to.
"""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from llmft.errors import LlmftError
from llmft.export.card import model_card
from llmft.data.templates import use_chat_template
from llmft.evaluation.generation import generate
from llmft.export.gguf_export import ANSWER_TOKENS, export_gguf
from llmft.export.gguf_export import TOLERANCE as GGUF_TOLERANCE
from llmft.export.gguf_writer import check_supported
from llmft.export.loading import load_quietly
from llmft.export.parity import sample_conversation
from llmft.export.probes import Probes, held_aside, max_logit_difference, probe_batch, validation_records
from llmft.hardware import run_device
from llmft.runs import FinishedRun, open_run

log = logging.getLogger(__name__)
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.5, "float16": 0.1}  # max |logit| difference; 16-bit rounds weights


class ExportError(LlmftError):
    """An export that cannot be written or that failed its own check."""


def export_run(folder: str, out: Optional[str] = None, merge: bool = False, force: bool = False,
               dtype: str = "float32", tolerance: Optional[float] = None, gguf: Optional[str] = None,
               gguf_tolerance: Optional[float] = None, trust_remote_code: bool = False, device: str = "cpu") -> Path:
    """Export the run in ``folder`` to ``out`` (default ``RUN/export``); returns ``out``.

    Args:
        folder: a completed run folder.
        out: the export folder; it must not exist unless ``force``.
        merge: also write ``merged/``: the adapter merged into the base loaded in ``dtype`` (never 4-bit).
        force: replace an existing export.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the merged weights.
        tolerance: the largest max-abs logit difference accepted between the merged model and base + adapter.
        gguf: also write ``gguf/model.gguf`` of this type (``f32``, ``f16``, ``bf16``, ``q8_0``), with a
            Modelfile, checked by transformers' GGUF reader (:mod:`llmft.export.gguf_export`).
        gguf_tolerance: the largest logit difference, relative to the logit range, accepted for the GGUF.
        trust_remote_code: accept a run whose saved config sets ``model.trust_remote_code`` (its model's own code).
        device: where the base is re-loaded, merged and checked: ``cpu`` (the default: any machine can, and a
            float32 copy of the base never competes with a GPU's memory) or ``cuda``.

    Raises:
        ExportError: the export exists, ``device`` is ``cuda`` on a machine without one, or the merged model's
            logits differ beyond ``tolerance``.
        GGUFError: the model cannot be written as GGUF, or the file failed its check.
        ParityError: the inference prompt or the stop tokens differ from training's.
    """
    _check_device(device)  # before anything is read: a raw CUDA error later would say nothing
    run = open_run(folder, ["model.trust_remote_code=true"] if trust_remote_code else ())
    target = Path(out).expanduser() if out else run.folder / "export"
    if target.exists() and not force:
        raise ExportError(f"{target} already exists (an earlier export). Pass --force to replace it, or --out DIR "
                          "to write somewhere else; nothing was written.")
    if dtype not in TOLERANCE:
        raise ExportError(f"--dtype {dtype} is not supported: choose one of {', '.join(TOLERANCE)}.")
    if gguf is not None and gguf not in GGUF_TOLERANCE:
        raise ExportError(f"--gguf {gguf} is not a type llmft writes: choose one of {', '.join(GGUF_TOLERANCE)}.")
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
        report = _write(run, staging, merge, dtype, tolerance, gguf, gguf_tolerance, device)
        (staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write(run: FinishedRun, staging: Path, merge: bool, dtype: str, tolerance: float, gguf: Optional[str],
           gguf_tolerance: Optional[float], device: str) -> dict:
    eval_report = run.folder / "eval_report.json"
    report_data = json.loads(eval_report.read_text()) if eval_report.is_file() else None
    shutil.copytree(run.adapter, staging / "adapter")
    (staging / "adapter" / "README.md").write_text(model_card(run.cfg, run.summary, report_data, dtype))
    report = {"run": str(run.folder), "base_model": run.cfg.model.name_or_path, "adapter": "adapter",
              "quantization": None if run.cfg.quantization is None else dict(run.cfg.quantization)}
    if merge or gguf:
        report.update(_full_model(run, staging, merge, dtype, tolerance, gguf, gguf_tolerance, device))
    return report


def _full_model(run: FinishedRun, staging: Path, merge: bool, dtype: str, tolerance: float, gguf: Optional[str],
                gguf_tolerance: Optional[float], device: str) -> dict:
    """Merge the adapter into the float32 base on ``device``; write and check ``merged/`` and/or ``gguf/``."""
    model, loaded = load_quietly(run, quantized=False, dtype="float32", adapter=staging / "adapter", device=device)
    tokenizer = loaded.tokenizer
    if gguf:
        check_supported(model.config)  # before the slow part
    use_chat_template(tokenizer, run.cfg.data.fallback_template)
    records = validation_records(run)
    batch = probe_batch(records, tokenizer)
    probes = Probes(batch=batch, reference=_logits(model, batch))
    if gguf:
        probes.prompts, probes.system_prompt, probes.sampling = held_aside(run)
        probes.adapter_answers = generate(model, tokenizer, probes.prompts, max_new_tokens=ANSWER_TOKENS)
        probes.conversation = sample_conversation(probes.system_prompt, records)
    merged = model.merge_and_unload()
    figures = {}
    if gguf:
        figures.update(export_gguf(merged, tokenizer, staging / "gguf", gguf, probes, run.cfg.model.name_or_path,
                                   gguf_tolerance))
    if merge:  # after the GGUF: saving in 16-bit casts the model in place
        figures.update(_merge(run, merged, tokenizer, staging, probes, dtype, tolerance, device))
    return figures


def _merge(run: FinishedRun, merged, tokenizer, staging: Path, probes: Probes, dtype: str, tolerance: float,
           device: str) -> dict:
    from transformers import AutoModelForCausalLM

    batch, reference = probes.batch, probes.reference
    merged.to(getattr(torch, dtype)).save_pretrained(staging / "merged")
    tokenizer.save_pretrained(staging / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(staging / "merged", dtype=torch.float32,
                                                    trust_remote_code=bool(run.cfg.model.get("trust_remote_code")))
    reloaded.to(run_device(device))  # compared on the device the reference logits came from
    difference = max_logit_difference(reference, _logits(reloaded, batch), batch["attention_mask"])
    figures = {"merged": "merged", "merged_dtype": dtype, "probe_tokens": int(batch["attention_mask"].sum()),
               "max_abs_logit_difference": difference, "tolerance": tolerance}
    log.info("Merged model vs base + adapter: max |logit difference| %.3g (tolerance %.3g)", difference, tolerance)
    if run.cfg.quantization is not None:
        quantized, _ = load_quietly(run, quantized=True, adapter=staging / "adapter", device=device)
        figures["quantization_gap_max_abs"] = max_logit_difference(_logits(quantized, batch), reference,
                                                                   batch["attention_mask"])
    if not difference <= tolerance:
        raise ExportError(f"the merged model's logits differ from base + adapter by up to {difference:.3g}, above "
                          f"the tolerance {tolerance:.3g}; nothing was written. Export in float32 (--dtype float32) "
                          "or, if you accept the difference, raise --tolerance.")
    return figures


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ExportError(f"--device {device} is not one llmft exports on: choose cpu (the default) or cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda needs a CUDA GPU, and this machine has none (or torch was installed without "
                          "CUDA). Leave --device out to merge and check on the CPU, which any machine can do.")


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()

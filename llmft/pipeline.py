"""``run(cfg, output_dir)``: build everything in a fixed order, evaluate the base, train, evaluate, save."""

import functools
import logging
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from accelerate.utils import set_seed
from hydra.utils import instantiate
from omegaconf import DictConfig

from llmft.adapters import apply_lora
from llmft.config.resolvers import precision_to_dtype
from llmft.config.validate import validate
from llmft.data import Splits, load_splits, pad_collate, tokenize_records
from llmft.data.templates import use_chat_template
from llmft.environment import describe_environment
from llmft.errors import DeviceUnavailableError
from llmft.evaluation import EvalData, Perplexity, build_eval_report, run_evaluators, samples_markdown
from llmft.loss_curve import draw_loss_curve
from llmft.outcome import log_answers, log_outcome
from llmft.planning.preflight import (emulate_budget, fit_budget, longest_sequence, memory_summary, plan_run,
                                     records_cut)
from llmft.recording import RunRecorder, peak_memory_mb, peak_reserved_mb, reset_peak_memory

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Fine-tune and evaluate the model that ``cfg`` describes; write the run folder.

    Args:
        cfg: the composed configuration (``conf/train.yaml``).
        output_dir: the run folder (Hydra's output dir, or a temporary folder in tests).
        overrides: the command-line overrides, recorded in ``summary.json``.

    Returns:
        The contents of ``summary.json``: status, losses, perplexities, parameters, throughput, memory, duration.
    """
    validate(cfg)
    tracker = build(cfg.get("logger"), run_config=cfg, output_dir=str(output_dir), overrides=list(overrides))
    recorder = RunRecorder(Path(output_dir), trackers=[tracker] if tracker else [])
    log.info("Run folder: %s", recorder.output_dir.resolve())
    summary: Dict[str, Any] = {"status": "running", "overrides": list(overrides)}
    start, plan = time.perf_counter(), None
    reset_peak_memory()
    try:
        plan = plan_run(cfg)  # before any weight is loaded
        _check_device(cfg.hardware)
        plan, fitted = fit_budget(cfg, plan)  # refuses a run that does not fit, or (auto_fit) changes cfg
        summary.update(fitted, **emulate_budget(cfg))
        summary.update(_train_and_evaluate(cfg, recorder))
        summary["status"] = "completed"
    except DeviceUnavailableError as exc:
        summary.update(status="skipped", error=str(exc))
        raise
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        peak, reserved = peak_memory_mb(), peak_reserved_mb()
        summary.update(duration_s=round(time.perf_counter() - start, 1), peak_memory_mb=round(peak, 1),
                       **({"peak_reserved_mb": round(reserved, 1)} if reserved else {}),
                       **memory_summary(plan, summary, peak), output_dir=str(Path(output_dir).resolve()),
                       environment=describe_environment())
        recorder.write_json("summary.json", summary)
        draw_loss_curve(recorder.output_dir, summary)
        recorder.close()
        log_outcome(summary)
    return summary


def _train_and_evaluate(cfg: DictConfig, recorder: RunRecorder) -> Dict[str, Any]:
    hardware = cfg.hardware
    set_seed(cfg.seed)
    splits = read_splits(cfg, recorder.output_dir)
    quantization = build(cfg.quantization)
    loaded = build(cfg.model, quantization_config=quantization, dtype=precision_to_dtype(hardware.precision)
                   if hardware.device == "cuda" else "float32", device=hardware.device, cache_dir=cfg.paths.cache_dir)
    tokenizer = loaded.tokenizer
    (train_set, train_dropped), (val_set, _) = tokenize_split(cfg, tokenizer, splits.train, "train"), \
        tokenize_split(cfg, tokenizer, splits.val, "val")
    set_seed(cfg.seed)  # the adapters' initial weights do not depend on what loading did (a first-run conversion)
    model = apply_lora(loaded.model, build(cfg.lora), hardware.gradient_checkpointing)
    if quantization is None:
        model.to(hardware.device)
    evaluators = {name: build(node) for name, node in (cfg.eval or {}).items()}
    eval_data = EvalData(records=splits.val, tokenized=val_set)
    with model.disable_adapter():
        base = run_evaluators(evaluators, model, tokenizer, eval_data, "base")
    loop = build(cfg.trainer)
    result = loop.fit(model, train_set, functools.partial(pad_collate, pad_token_id=tokenizer.pad_token_id),
                      hardware=hardware, optimizer=build(hardware.optimizer), recorder=recorder, seed=cfg.seed,
                      validate=lambda m: Perplexity(hardware.micro_batch_size)(m, tokenizer, eval_data))
    tuned = run_evaluators(evaluators, model, tokenizer, eval_data, "fine-tuned")
    report = build_eval_report(base, tuned)
    recorder.write_json("eval_report.json", report)
    (recorder.output_dir / "samples.md").write_text(samples_markdown(report, f"{loaded.name}: base vs fine-tuned"),
                                                    encoding="utf-8")
    log_answers(report, loaded.random_weights)
    model.save_pretrained(recorder.output_dir / "adapter")
    tokenizer.save_pretrained(recorder.output_dir / "adapter")
    trainable, total = model.get_nb_trainable_parameters()
    return {"model": loaded.name, "final_train_loss": result.final_loss, "train_steps": result.steps,
            "train_records": len(train_set), "dropped_records": train_dropped,
            "truncated_records": records_cut(train_set, cfg.data.max_seq_length), "rejected_records": splits.rejected,
            "duplicate_records": splits.duplicates, "eval_loss": report.get("eval_loss"),
            "perplexity": report.get("perplexity"), "base_perplexity": report["base"].get("perplexity"),
            "answer_means": report.get("answer_means"),
            "trainable_params": trainable, "total_params": total, "tokens_per_s": round(result.tokens_per_s, 1),
            "train_duration_s": round(result.duration_s, 1), "longest_sequence": longest_sequence(train_set, val_set)}


def read_splits(cfg: DictConfig, report_dir=None) -> Splits:
    """The training and validation records that ``cfg.data`` and ``cfg.data_format`` describe.

    With ``report_dir`` (the run folder), rejected records go to its ``rejects.jsonl`` and the counts to its
    ``data_report.json``.
    """
    return load_splits(build(cfg.data_format), cfg.data.path, cfg.data.val_path, cfg.data.val_ratio, cfg.seed,
                       cfg.data.max_samples, strict=cfg.data.strict, report_dir=report_dir)


def tokenize_split(cfg: DictConfig, tokenizer, records, split: str):
    """Tokenize one split as training does (cached under ``paths.cache_dir``); returns the dataset and the number
    of records dropped. A tokenizer without a chat template gets ``data.fallback_template``."""
    use_chat_template(tokenizer, cfg.data.fallback_template)
    return tokenize_records(records, tokenizer, max_seq_length=cfg.data.max_seq_length,
                            train_on_prompt=cfg.data.train_on_prompt, split=split, cache_dir=cfg.paths.cache_dir)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that logs what it builds; None stays None (e.g. ``quantization=none``).

    ``kwargs`` are objects built earlier (a quantization config, a cache folder); they are passed to the target
    directly, not through Hydra, which would turn them into configs.
    """
    if node is None:
        return None
    log.info("Building %s", node._target_)
    if not kwargs:
        return instantiate(node, _convert_="all")
    return instantiate(node, _partial_=True, _convert_="all")(**kwargs)


def _check_device(hardware: DictConfig) -> None:
    if hardware.device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"hardware={hardware.name} needs CUDA, and this machine has no CUDA GPU (or torch "
                                     "was installed without CUDA). Use hardware=cpu here, or run on a machine with "
                                     "that GPU; llmft-plan shows what it would need there.")

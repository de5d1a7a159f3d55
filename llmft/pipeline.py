"""``run(cfg, output_dir)``: build everything in a fixed order, evaluate the base, train, evaluate, save."""

import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig
from safetensors import SafetensorError

from llmft.builders import (build, build_evaluators, build_model, evaluate, evaluate_both, evaluation_data,
                            read_splits, tokenize_split, unpaired, with_new_adapter)
from llmft.checkpoint import CheckpointStore
from llmft.config.validate import validate
from llmft.data.batching import epoch_batches
from llmft.distributed import (each_process, hold_trainable, is_main_rank, loads_on_main_only, main_process_first,
                               reinit_shards, shards_model, trainable_state, weights_held_mb)
from llmft.environment import describe_environment
from llmft.errors import ConfigError, DeviceUnavailableError
from llmft.evaluation import Perplexity, build_eval_report, preference_figures, samples_markdown
from llmft.files import WriteError, atomic_write, read_json, write_json, write_manifest
from llmft.hardware import autocast, release_freed_memory, resolve_precision, use_device
from llmft.interrupt import Interrupted
from llmft.loop import Hardware
from llmft.loss_curve import draw_loss_curve
from llmft.outcome import log_answers, log_outcome
from llmft.planning.preflight import (emulate_budget, fit_budget, longest_sequence, memory_summary, plan_run,
                                      records_cut)
from llmft.recording import RunRecorder, peak_memory_mb, peak_reserved_mb, reset_peak_memory
from llmft.run_folder import RunFolder, check_resumable

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir, overrides: Sequence[str] = (), resume: bool = False,
        resume_command: Optional[str] = None) -> Dict[str, Any]:
    """Fine-tune and evaluate the model that ``cfg`` describes; write the run folder.

    Args:
        cfg: the composed configuration (``conf/train.yaml``).
        output_dir: the run folder (Hydra's output dir, or a temporary folder in tests).
        overrides: the command-line overrides, recorded in ``summary.json``.
        resume: continue the run that ``output_dir`` holds from its newest valid checkpoint (a completed run is
            left as it is; a folder without a checkpoint starts from the beginning).
        resume_command: the command that continues this run, printed if a signal stops it.

    Returns:
        The contents of ``summary.json``: status, losses, perplexities, parameters, throughput, memory, duration.
    """
    folder = RunFolder(output_dir)
    try:
        validate(cfg)
    except ConfigError as exc:
        if not resume:
            folder.record_refusal(f"{type(exc).__name__}: {exc}", overrides)
        raise
    if resume and _completed(folder.path):
        log.info("%s already completed: nothing to resume.", folder.path)
        return read_json(folder.path / "summary.json", "run summary")
    folder.claim(resume)
    try:
        return _run_in(folder, cfg, overrides, resume, resume_command or f"llmft-train resume={folder.path.resolve()}")
    finally:
        folder.release()


def _run_in(folder: RunFolder, cfg: DictConfig, overrides: Sequence[str], resume: bool,
            resume_command: str) -> Dict[str, Any]:
    tracker = build(cfg.get("logger"), run_config=cfg, output_dir=str(folder.path), overrides=list(overrides)) \
        if is_main_rank() else None  # one W&B run, however many processes
    recorder = RunRecorder(folder.path, trackers=[tracker] if tracker else [])
    log.info("Run folder: %s", recorder.output_dir.resolve())
    summary: Dict[str, Any] = {"status": "running", "overrides": list(overrides)}
    start, plan = time.perf_counter(), None
    reset_peak_memory()
    try:
        plan = plan_run(cfg)  # before any weight is loaded
        _check_device(cfg.hardware)
        plan, fitted = fit_budget(cfg, plan)  # refuses a run that does not fit, or (auto_fit) changes cfg
        saved = folder.saved_config() if resume else None
        if saved is not None:
            check_resumable(saved, cfg)
        folder.save_config(cfg)
        summary.update(fitted, **emulate_budget(cfg))
        summary.update(_train_and_evaluate(cfg, recorder, resume, resume_command))
        peaks = each_process(round(peak_memory_mb(cfg.hardware.device), 1))
        if len(peaks) > 1:  # the run's peak is its largest process's: what each device must hold
            summary["peak_memory_mb_per_process"] = peaks
        summary["status"] = "completed"
    except DeviceUnavailableError as exc:
        summary.update(status="skipped", error=str(exc))
        raise
    except Interrupted as exc:
        summary.update(status="interrupted", interrupted_at_step=exc.step, error=str(exc),
                       resume_command=resume_command)
        raise
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="stopped by Ctrl-C (no checkpoint was written at that point)",
                       resume_command=resume_command)
        raise
    except BaseException as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        peak = max(summary.get("peak_memory_mb_per_process") or [peak_memory_mb(cfg.hardware.device)])
        reserved = peak_reserved_mb(cfg.hardware.device)
        measured = {} if summary.get("status") == "skipped" else {"peak_memory_mb": round(peak, 1)}  # not a sweep's
        summary.update(duration_s=round(time.perf_counter() - start, 1), **measured,
                       **({"peak_reserved_mb": round(reserved, 1)} if reserved else {}),
                       **memory_summary(plan, summary, peak), output_dir=str(folder.path.resolve()),
                       environment=describe_environment())
        recorder.write_json("summary.json", summary)
        draw_loss_curve(recorder.output_dir, summary)
        recorder.close()
        log_outcome(summary)
    return summary


def _completed(path: Path) -> bool:
    try:
        return read_json(path / "summary.json").get("status") == "completed"
    except Exception:  # absent or damaged: not completed
        return False


def _train_and_evaluate(cfg: DictConfig, recorder: RunRecorder, resume: bool, resume_command: str) -> Dict[str, Any]:
    hardware = cfg.hardware
    objective = build(cfg.objective)
    objective.collate(0, cfg.data.packing)  # refuses what the objective cannot batch, before weights are loaded
    set_seed(cfg.seed)
    spread = build(cfg.get("distributed"))
    on_main_only = loads_on_main_only(spread, cfg.quantization is not None)
    use_device(hardware.device)  # this rank's GPU, current before any weight loads
    release_freed_memory(hardware.get("release_memory", False), hardware.device)
    with main_process_first(hardware.device):  # the others then read the model and data it cached
        splits = read_splits(cfg, recorder.output_dir, objective)
        loaded = build_model(cfg, hardware.device, empty=on_main_only and not is_main_rank())
        tokenizer = loaded.tokenizer
        train_set, train_dropped = tokenize_split(cfg, tokenizer, splits.train, "train", objective)
        eval_data = evaluation_data(cfg, tokenizer, splits.val)
    set_seed(cfg.seed)  # the adapters' initial weights do not depend on what loading did (a first-run conversion)
    model = with_new_adapter(cfg, loaded, hardware.device, place=not on_main_only)
    if on_main_only and not is_main_rank():
        hold_trainable(model)
    held = each_process(round(weights_held_mb(model), 1))  # before sharding; under FSDP the main process's alone
    evaluators = build_evaluators(cfg)
    base_eval = BaseEvaluation(cfg, recorder.output_dir / "base_eval.json", resume, unpaired(evaluators, model),
                               tokenizer, eval_data)
    if not shards_model(spread):  # under FSDP: in the loop, on the shards (every process takes part)
        base_eval(model)
    loop, lengths = build(cfg.trainer), objective.lengths(train_set)
    validate_fn = functools.partial(_validation, cfg, Perplexity(hardware.micro_batch_size), tokenizer=tokenizer,
                                    data=eval_data)
    result = loop.fit(model, train_set, objective.collate(tokenizer.pad_token_id, cfg.data.packing),
                      batch_plan=functools.partial(
                          epoch_batches, lengths, hardware.micro_batch_size,
                          cfg.seed, group_by_length=cfg.data.group_by_length, packing=cfg.data.packing,
                          max_tokens=hardware.micro_batch_size * cfg.data.max_seq_length),
                      hardware=Hardware(hardware.device, resolve_precision(hardware.precision, hardware.device),
                                        hardware.micro_batch_size, hardware.gradient_accumulation_steps,
                                        spread),
                      optimizer=build(hardware.optimizer), recorder=recorder, objective=objective,
                      validate=validate_fn if len(eval_data.tokenized) else None,
                      checkpoints=CheckpointStore(recorder.output_dir / "checkpoints", cfg.trainer.keep_checkpoints),
                      resume=resume, resume_command=resume_command,
                      prepared=base_eval if shards_model(spread) else None)
    started = time.perf_counter()
    base, tuned = evaluate_both(cfg, evaluators, model, tokenizer, eval_data, base_eval.results)
    eval_s = time.perf_counter() - started
    report = build_eval_report(base, tuned)
    recorder.write_json("eval_report.json", report)
    _save_outputs(recorder.output_dir, model, tokenizer, samples_markdown(report, f"{loaded.name}: base vs fine-tuned"))
    log_answers(report, loaded.random_weights)
    trainable, total = model.get_nb_trainable_parameters()
    return {"model": loaded.name, "final_train_loss": result.final_loss,
            "mean_train_loss_last_epoch": result.mean_loss_last_epoch, "train_steps": result.steps,
            "resumed_from_step": result.resumed_from_step, "skipped_steps": result.skipped_steps,
            "train_records": len(train_set), "dropped_records": train_dropped,
            "truncated_records": records_cut(train_set, cfg.data.max_seq_length), "rejected_records": splits.rejected,
            "duplicate_records": splits.duplicates, "eval_loss": report.get("eval_loss"),
            "perplexity": report.get("perplexity"), "base_perplexity": report["base"].get("perplexity"),
            "answer_means": report.get("answer_means"), "preference": preference_figures(report) or None,
            "trainable_params": trainable, "total_params": total, "tokens_per_s": round(result.tokens_per_s, 1),
            "train_duration_s": round(result.duration_s, 1), "base_eval_duration_s": round(base_eval.seconds, 1),
            "eval_duration_s": round(eval_s, 1),
            "longest_sequence": max(max(lengths), longest_sequence(eval_data.tokenized)),
            **({"weights_loaded_mb_per_process": held} if len(held) > 1 else {})}


class BaseEvaluation:
    """The base model's evaluation (adapter disabled): computed once and kept in ``path``, so that a resumed run
    reuses it. Called with the model before training, or under FSDP by the loop with the sharded model, on every
    process; the main process's kept figures decide for all (the others' run folders are scratch folders)."""

    def __init__(self, cfg: DictConfig, path: Path, resume: bool, evaluators, tokenizer, eval_data):
        self.cfg, self.path, self.resume, self.evaluators = cfg, path, resume, evaluators
        self.tokenizer, self.eval_data = tokenizer, eval_data
        self.results: Dict[str, dict] = {}
        self.seconds = 0.0

    def __call__(self, model) -> None:
        started = time.perf_counter()
        kept = read_json(self.path, "base evaluation") if self.resume and self.path.is_file() else None
        kept = each_process(kept)[0]
        if kept is not None:
            log.info("Base model figures from %s (computed before the interruption)", self.path)
            self.results = kept
        else:
            self.results = evaluate(self.cfg, self.evaluators, model, self.tokenizer, self.eval_data, base=True)
            write_json(self.path, self.results)
            reinit_shards(model)  # under FSDP: that was the first forward, with the adapter disabled
        self.seconds = time.perf_counter() - started


def _save_outputs(folder: Path, model, tokenizer, samples: str) -> None:
    """samples.md and the adapter, each written whole (temporary name, then renamed), with the adapter's manifest.

    Every process calls this: under FSDP the adapter's shards are gathered from all of them.
    """
    weights = trainable_state(model)
    atomic_write(folder / "samples.md", samples)
    staging = folder / ".adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging, state_dict=weights)
        tokenizer.save_pretrained(staging)
    except (OSError, RuntimeError, SafetensorError) as exc:  # a full disk reaches us as any of these
        shutil.rmtree(staging, ignore_errors=True)
        raise WriteError(f"could not write the adapter to {folder / 'adapter'} ({exc}). The disk may be full, or "
                         "the folder not writable: free space or choose another folder (hydra.run.dir=...); "
                         "nothing half-written was left under that name.") from None
    write_manifest(staging, [p.name for p in staging.iterdir() if p.is_file()])
    shutil.rmtree(folder / "adapter", ignore_errors=True)
    staging.rename(folder / "adapter")


def _validation(cfg: DictConfig, perplexity: Perplexity, model, tokenizer, data) -> dict:
    """The validation loss during training, at the precision evaluation uses."""
    with autocast(cfg.hardware.precision, cfg.hardware.device):
        return perplexity(model, tokenizer, data)


def _check_device(hardware: DictConfig) -> None:
    if hardware.device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"hardware={hardware.name} needs CUDA, and this machine has no CUDA GPU (or torch "
                                     "was installed without CUDA). Use hardware=cpu here, or run on a machine with "
                                     "that GPU; llmft-plan shows what it would need there.")

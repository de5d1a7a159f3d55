"""The training loop: a small loop of our own on ``accelerate``, with a state that checkpoints and resumes exactly.

Gradient accumulation weighted by tokens (each micro-batch's summed loss is divided by the token count of the
whole accumulation window, so long and short batches count alike), mixed precision, the attention kernel for each
batch's length (``llmft.hardware.attention_kernel``), a warmup + cosine (or other) schedule, gradient clipping, and
one line of metrics per logged step. ``accelerate launch -m llmft.train`` runs the same loop on several processes.

The data order of each epoch is a pure function of (seed, epoch) (``batch_plan``), and the loop's position in it
is part of its state, so a run resumed from a checkpoint sees the same batches, the same dropout masks and the same
optimizer state as one that was never stopped: its final adapter is the same, tensor for tensor.
"""

import contextlib
import functools
import logging
import math
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, List, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler

from llmft.checkpoint import CheckpointStore, load_latest, save_checkpoint, set_rng_state
from llmft.distributed import BatchPlan, Sharded, agreed_signal, clip_gradients, make_accelerator, to_device
from llmft.errors import NonFiniteLossError
from llmft.hardware import attention_kernel
from llmft.interrupt import Interrupted, StopFlag
from llmft.objectives import SFT
from llmft.recording import RunRecorder, peak_memory_mb

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What training reports to the pipeline."""

    steps: int
    final_loss: float
    mean_loss_last_epoch: float
    tokens_per_s: float
    duration_s: float
    resumed_from_step: int = 0
    skipped_steps: int = 0


@dataclass
class LoopState:
    """Where the loop is: everything besides weights, optimizer and RNG that a checkpoint must hold."""

    step: int = 0            # optimizer steps done
    epoch: int = 0           # the epoch the next micro-batch comes from
    batch: int = 0           # micro-batches of that epoch (this process's share) already trained on
    tokens: int = 0          # tokens trained on, all processes
    skipped: int = 0         # optimizer steps fp16's loss scaler skipped (inf/NaN gradients); the schedule waited
    elapsed_s: float = 0.0   # training time before this process started
    losses: List[List[float]] = field(default_factory=list)  # [epoch, loss] per optimizer step
    rows: List[dict] = field(default_factory=list)           # the metrics.jsonl lines so far


@dataclass
class Hardware:
    """The plain values of a hardware profile that the loop uses."""

    device: str = "cpu"
    precision: str = "fp32"
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    distributed: Any = None  # accelerate's plugin for several processes (conf/distributed), or None


class TrainingLoop:
    """Fine-tune the trainable parameters of a model on a tokenized dataset.

    Every argument comes from ``conf/trainer/*.yaml`` (the one home of their defaults).

    Args:
        learning_rate: peak learning rate.
        weight_decay: AdamW weight decay.
        num_epochs: passes over the data, when ``max_steps`` is None.
        max_steps: optimizer steps to run.
        warmup_ratio: share of the steps spent warming up (no step trains at learning rate 0).
        lr_scheduler: a ``transformers.get_scheduler`` name (``cosine``, ``linear``, ``constant`` ...).
        max_grad_norm: clip the gradient norm to this; None disables clipping.
        log_every: optimizer steps between lines of ``metrics.jsonl``.
        eval_every: optimizer steps between validation losses (also written to ``metrics.jsonl``); None: never.
        save_every: optimizer steps between checkpoints; None: only when stopped by a signal.
        save_each_epoch: also write a checkpoint at the end of each epoch.
        keep_checkpoints: how many checkpoints to keep.
    """

    def __init__(self, learning_rate: float, weight_decay: float, num_epochs: float, max_steps: Optional[int],
                 warmup_ratio: float, lr_scheduler: str, max_grad_norm: Optional[float], log_every: int,
                 eval_every: Optional[int], save_every: Optional[int], save_each_epoch: bool, keep_checkpoints: int):
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.num_epochs = num_epochs
        self.max_steps = max_steps
        self.warmup_ratio = warmup_ratio
        self.lr_scheduler = lr_scheduler
        self.max_grad_norm = max_grad_norm
        self.log_every = log_every
        self.eval_every = eval_every
        self.save_every = save_every
        self.save_each_epoch = save_each_epoch
        self.keep_checkpoints = keep_checkpoints
        self.state = LoopState()
        self.device, self.precision = "cpu", "fp32"

    def state_dict(self) -> dict:
        """The loop's state (``LoopState``) as plain values."""
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state that ``state_dict`` returned."""
        self.state = LoopState(**{k: v for k, v in state.items() if k in LoopState.__dataclass_fields__})

    def fit(self, model: torch.nn.Module, dataset, collate: Callable, *, batch_plan: BatchPlan, hardware: Hardware,
            optimizer: Callable, recorder: RunRecorder, validate: Optional[Callable] = None,
            objective=None, checkpoints: Optional[CheckpointStore] = None, resume: bool = False,
            resume_command: str = "", prepared: Optional[Callable] = None) -> TrainResult:
        """Train ``model`` in place; continue from the newest valid checkpoint when ``resume``.

        Args:
            model: a model whose trainable parameters (the adapters) require grad.
            dataset: examples with ``input_ids`` and ``labels``.
            collate: turns a list of examples into a batch of tensors.
            batch_plan: ``epoch -> micro-batches`` (lists of dataset indices), the same for the same epoch.
            hardware: device, precision, micro-batch size and accumulation.
            optimizer: a partial optimizer; called with the parameters, ``lr`` and ``weight_decay``.
            recorder: writes ``metrics.jsonl``.
            validate: ``model -> {"eval_loss", "perplexity", ...}``, called every ``eval_every`` steps.
            objective: how a batch becomes a loss (``units``, ``loss_and_figures``; ``llmft.objectives``);
                default SFT.
            checkpoints: where checkpoints go; None writes none (and a signal then stops without one).
            resume: continue from ``checkpoints.latest()``.
            resume_command: the command that resumes this run, printed when a signal stops it.
            prepared: called with the model once accelerate has prepared (under FSDP: sharded) it, before training.

        Returns:
            Steps run, losses, throughput and duration.

        Raises:
            NonFiniteLossError: the loss became NaN or infinite.
            Interrupted: SIGINT or SIGTERM stopped training after a checkpoint.
        """
        objective = objective or SFT()
        AcceleratorState._reset_state()  # a sweep's jobs share this process; each sets its own precision
        GradientState._reset_state()
        self.device, self.precision = hardware.device, hardware.precision
        accelerator = make_accelerator(hardware.precision, hardware.device, hardware.distributed)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = optimizer(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        model, opt = accelerator.prepare(model, opt)
        params = [p for p in model.parameters() if p.requires_grad]  # FSDP has replaced them by their shards
        if prepared is not None:
            prepared(model)
        epoch_batches = Sharded(batch_plan, accelerator.process_index, accelerator.num_processes)
        accum = hardware.gradient_accumulation_steps
        steps_per_epoch = math.ceil(len(epoch_batches(0)) / accum)
        total = self.max_steps or max(1, math.ceil(self.num_epochs * steps_per_epoch))
        # one step longer, stepped once now: step k trains at the schedule's value k, never at warmup's 0
        sched = get_scheduler(self.lr_scheduler, opt, num_warmup_steps=round(self.warmup_ratio * total),
                              num_training_steps=total + 1)
        with warnings.catch_warnings():  # stepping before the optimizer is the point here
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step", category=UserWarning)
            sched.step()
        self.state = LoopState()
        rng = self._resume(checkpoints, accelerator, opt, sched, recorder, model) if resume else None
        log.info("Training: %d optimizer steps (%d per epoch), micro-batch %d x %d accumulation, %s%s", total,
                 steps_per_epoch, hardware.micro_batch_size, accum, hardware.precision,
                 f", resuming after step {self.state.step}" if self.state.step else "")
        first = self.state.step
        model.train()
        if rng is not None:
            set_rng_state(rng)  # last, so that nothing built above draws from the restored generators
        start, loss = time.perf_counter() - self.state.elapsed_s, float("nan")
        bar = tqdm(total=total, initial=first, desc="train", unit="step", disable=not sys.stderr.isatty(),
                   dynamic_ncols=True)
        with logging_redirect_tqdm(), StopFlag() as stop:
            for step in range(first + 1, total + 1):
                epoch = self.state.epoch
                window = self._next_window(epoch_batches, accum, dataset, collate)
                lr = sched.get_last_lr()[0]
                loss, n_tokens, grad_norm, figures = self._step(model, window, accelerator, params, opt, sched, objective)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(step, loss)
                self.state.step, self.state.tokens = step, self.state.tokens + n_tokens
                self.state.losses.append([epoch, loss])
                self.state.elapsed_s = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self.state.tokens / self.state.elapsed_s:.0f}")
                if step % self.log_every == 0 or step == total:
                    self._log(recorder, step, step / steps_per_epoch, loss, lr, grad_norm, total, figures)
                if validate is not None and self.eval_every and step % self.eval_every == 0:
                    self._validate(recorder, validate, model, step, step / steps_per_epoch)
                epoch_ended = self.state.epoch != epoch
                signum = agreed_signal(accelerator, stop.signum)
                if checkpoints is not None and step < total and (
                        signum is not None or (self.save_every and step % self.save_every == 0)
                        or (self.save_each_epoch and epoch_ended)):
                    save_checkpoint(checkpoints, accelerator, model, opt, sched, step, self.state_dict())
                if signum is not None and step < total:
                    log.warning("%s received: stopped after optimizer step %d%s.", signal.Signals(signum).name,
                                step, ", checkpoint written" if checkpoints is not None else "")
                    raise Interrupted(signum, step, resume_command)
        bar.close()
        duration = time.perf_counter() - start
        accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # evaluation sets its own precision
        last = self.state.losses[-1][0] if self.state.losses else 0
        tail = [l for e, l in self.state.losses if e == last]
        return TrainResult(steps=total, final_loss=loss, mean_loss_last_epoch=sum(tail) / max(len(tail), 1),
                           tokens_per_s=self.state.tokens / max(duration, 1e-9), duration_s=duration,
                           resumed_from_step=first, skipped_steps=self.state.skipped)

    def _next_window(self, epoch_batches: "Sharded", accum: int, dataset, collate) -> List[dict]:
        """The next ``accum`` micro-batches of the current epoch (fewer at its end); advances the position."""
        batches = epoch_batches(self.state.epoch)
        chosen = batches[self.state.batch: self.state.batch + accum]
        self.state.batch += len(chosen)
        if self.state.batch >= len(batches):
            self.state.epoch, self.state.batch = self.state.epoch + 1, 0
        return [collate([dataset[i] for i in indices]) for indices in chosen]

    def _step(self, model, window: List[dict], accelerator: Accelerator, params, opt, sched, objective):
        """One optimizer step over a window of micro-batches; returns (mean loss, tokens, grad norm, the
        objective's figures averaged over the window's units like the loss)."""
        # counted on the host before the copy, and the loss summed on the device: one sync per step, not per batch
        units = sum(objective.units(b) for b in window)  # the loss is a mean over all processes' units
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                     for b in window)
        window = [to_device(batch, accelerator.device) for batch in window]
        units = int(accelerator.gather(torch.tensor([units], device=accelerator.device)).sum())
        loss_sum, sums = torch.zeros((), device=accelerator.device), {}
        for i, batch in enumerate(window):
            sync = accelerator.no_sync(model) if i < len(window) - 1 else contextlib.nullcontext()
            kernel = functools.partial(attention_kernel, self.precision, self.device, batch["input_ids"].shape[-1])
            with sync, accelerator.autocast(), kernel():
                loss, figures = objective.loss_and_figures(model, batch)
                loss = loss / max(units, 1)
            sums.update({key: sums.get(key, 0.0) + value for key, value in figures.items()})
            with kernel():  # gradient checkpointing recomputes the forward here: with the same kernel
                accelerator.backward(loss * accelerator.num_processes)  # DDP averages: x processes
            loss_sum += loss.detach().float()
        # each process holds its share of the window's loss and tokens: the step's figures are their sums
        keys = sorted(sums)
        figures = torch.stack([loss_sum, torch.tensor(float(tokens), device=accelerator.device),
                               *(torch.as_tensor(sums[k], dtype=torch.float32, device=accelerator.device).reshape(())
                                 for k in keys)])
        loss_sum, tokens, *summed = accelerator.reduce(figures, reduction="sum").tolist()
        grad_norm = clip_gradients(accelerator, params, self.max_grad_norm)
        opt.step()
        if accelerator.optimizer_step_was_skipped:  # fp16: the scaler found inf/NaN gradients and lowered its scale
            self.state.skipped += 1
        else:
            sched.step()  # the schedule counts the steps that updated the weights
        opt.zero_grad(set_to_none=True)
        return loss_sum, int(tokens), grad_norm, {k: v / max(units, 1) for k, v in zip(keys, summed)}

    def _resume(self, checkpoints: Optional[CheckpointStore], accelerator: Accelerator, opt, sched,
                recorder: RunRecorder, model):
        """Load the newest valid checkpoint (if any) and rewind ``metrics.jsonl`` to it; returns its RNG state."""
        start = time.perf_counter()
        loaded = load_latest(checkpoints, accelerator, model, opt, sched) if checkpoints is not None else None
        if loaded is None:
            log.info("No checkpoint to resume from: training from the start.")
            recorder.restart_metrics([])
            return None
        path, state, rng = loaded
        self.load_state_dict(state)
        recorder.restart_metrics(self.state.rows)
        log.info("Resumed from %s (step %d, epoch %d, micro-batch %d of the epoch; %.2f s)", path, self.state.step,
                 self.state.epoch, self.state.batch, time.perf_counter() - start)
        return rng

    def _log(self, recorder, step, epoch, loss, lr, grad_norm, total, figures) -> None:
        tokens_per_s = self.state.tokens / max(self.state.elapsed_s, 1e-9)
        row = {"step": step, "epoch": round(epoch, 4), "loss": loss, "learning_rate": lr, "grad_norm": grad_norm,
               "tokens_per_s": round(tokens_per_s, 1), "peak_memory_mb": round(peak_memory_mb(self.device), 1),
               "skipped_steps": self.state.skipped, **figures}
        self.state.rows.append(row)
        recorder.log_step(row)
        log.info("step %d/%d  epoch %.2f  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s%s", step, total,
                 epoch, loss, lr, grad_norm, tokens_per_s, "".join(f"  {k} {v:.4f}" for k, v in figures.items()))

    def _validate(self, recorder, validate: Callable, model, step: int, epoch: float) -> None:
        figures = validate(model)
        row = {"step": step, "epoch": round(epoch, 4), **{k: figures[k] for k in ("eval_loss", "perplexity")}}
        self.state.rows.append(row)
        recorder.log_step(row)
        log.info("step %d  validation loss %.4f  perplexity %.2f", step, figures["eval_loss"], figures["perplexity"])
        model.train()

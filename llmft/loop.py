"""The training loop: a small loop of our own on ``accelerate``.

Gradient accumulation weighted by tokens (each micro-batch's summed loss is divided by the token count of the
whole accumulation window, so long and short batches count alike), mixed precision, a warmup + cosine (or other)
schedule, gradient clipping, and one line of metrics per logged step. ``accelerate launch -m llmft.train``
runs the same loop on several processes.
"""

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_scheduler

from llmft.errors import NonFiniteLossError
from llmft.recording import RunRecorder, peak_memory_mb

log = logging.getLogger(__name__)
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


@dataclass
class TrainResult:
    """What training reports to the pipeline."""

    steps: int
    final_loss: float
    tokens_per_s: float
    duration_s: float


class TrainingLoop:
    """Fine-tune the trainable parameters of a model on a tokenized dataset.

    Args:
        learning_rate: peak learning rate.
        weight_decay: AdamW weight decay.
        num_epochs: passes over the data, when ``max_steps`` is None.
        max_steps: optimizer steps to run.
        warmup_ratio: share of the steps spent warming up.
        lr_scheduler: a ``transformers.get_scheduler`` name (``cosine``, ``linear``, ``constant`` ...).
        max_grad_norm: clip the gradient norm to this; None disables clipping.
        log_every: optimizer steps between lines of ``metrics.jsonl``.
        eval_every: optimizer steps between validation losses (also written to ``metrics.jsonl``); None: never.
    """

    def __init__(self, learning_rate: float = 2e-4, weight_decay: float = 0.0, num_epochs: float = 1.0,
                 max_steps: Optional[int] = None, warmup_ratio: float = 0.1, lr_scheduler: str = "cosine",
                 max_grad_norm: Optional[float] = 1.0, log_every: int = 1, eval_every: Optional[int] = None):
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.num_epochs = num_epochs
        self.max_steps = max_steps
        self.warmup_ratio = warmup_ratio
        self.lr_scheduler = lr_scheduler
        self.max_grad_norm = max_grad_norm
        self.log_every = log_every
        self.eval_every = eval_every

    def fit(self, model: torch.nn.Module, dataset, collate: Callable, *, hardware, optimizer: Callable,
            recorder: RunRecorder, seed: int, validate: Optional[Callable] = None) -> TrainResult:
        """Train ``model`` in place.

        Args:
            model: a model whose trainable parameters (the adapters) require grad.
            dataset: examples with ``input_ids`` and ``labels``.
            collate: turns a list of examples into a padded batch.
            hardware: the hardware profile (device, precision, micro-batch, accumulation).
            optimizer: a partial optimizer; called with the parameters, ``lr`` and ``weight_decay``.
            recorder: writes ``metrics.jsonl``.
            seed: seed of the data order.
            validate: ``model -> {"eval_loss", "perplexity", ...}``, called every ``eval_every`` steps.

        Returns:
            Steps run, last logged loss, throughput and duration.

        Raises:
            NonFiniteLossError: the loss became NaN or infinite.
        """
        accum = hardware.gradient_accumulation_steps
        accelerator = Accelerator(mixed_precision=MIXED_PRECISION[hardware.precision], cpu=hardware.device == "cpu")
        loader = DataLoader(dataset, batch_size=hardware.micro_batch_size, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(seed))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = optimizer(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        model, opt, loader = accelerator.prepare(model, opt, loader)
        # counted on the prepared loader (each process's share), and the schedule is not handed to accelerate,
        # so that it steps exactly once per optimizer step with one process or several
        steps_per_epoch = math.ceil(len(loader) / accum)
        total = self.max_steps or max(1, math.ceil(self.num_epochs * steps_per_epoch))
        sched = get_scheduler(self.lr_scheduler, opt, num_warmup_steps=round(self.warmup_ratio * total),
                              num_training_steps=total)
        model.train()
        log.info("Training: %d optimizer steps (%d per epoch), micro-batch %d x %d accumulation, %s", total,
                 steps_per_epoch, hardware.micro_batch_size, accum, hardware.precision)
        start, tokens, loss = time.perf_counter(), 0, float("nan")
        windows = _windows(loader, accum)
        bar = tqdm(total=total, desc="train", unit="step", disable=not sys.stderr.isatty(), dynamic_ncols=True)
        with logging_redirect_tqdm():
            for step in range(1, total + 1):
                window = next(windows)
                lr = sched.get_last_lr()[0]  # the rate this step uses
                loss, n_tokens, grad_norm = self._step(model, window, accelerator, params, opt, sched)
                tokens += n_tokens
                if not math.isfinite(loss):
                    raise NonFiniteLossError(step, loss)
                elapsed = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / elapsed:.0f}")
                if step % self.log_every == 0 or step == total:
                    self._log(recorder, step, step / steps_per_epoch, loss, lr, grad_norm,
                              tokens / elapsed, total)
                if validate is not None and self.eval_every and step % self.eval_every == 0:
                    self._validate(recorder, validate, model, step, step / steps_per_epoch)
        bar.close()
        duration = time.perf_counter() - start
        return TrainResult(steps=total, final_loss=loss, tokens_per_s=tokens / duration, duration_s=duration)

    def _step(self, model, window: List[dict], accelerator: Accelerator, params, opt, sched):
        """One optimizer step over a window of micro-batches; returns (mean loss, tokens, grad norm)."""
        targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in window)
        targets = int(accelerator.gather(torch.tensor([targets], device=accelerator.device)).sum())
        loss_sum, tokens = 0.0, 0
        for i, batch in enumerate(window):
            sync = accelerator.no_sync(model) if i < len(window) - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                out = model(**batch, num_items_in_batch=targets)
            # DDP averages gradients over processes; the loss is already divided by the global token count.
            accelerator.backward(out.loss * accelerator.num_processes)
            loss_sum += float(out.loss.detach())
            tokens += int(batch["attention_mask"].sum())
        # each process holds its share of the window's loss and tokens: the step's figures are their sums
        loss_sum, tokens = accelerator.reduce(torch.tensor([loss_sum, float(tokens)], device=accelerator.device),
                                              reduction="sum").tolist()
        grad_norm = _clip(accelerator, params, self.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss_sum, int(tokens), grad_norm

    @staticmethod
    def _log(recorder, step, epoch, loss, lr, grad_norm, tokens_per_s, total) -> None:
        row = {"step": step, "epoch": round(epoch, 4), "loss": loss, "learning_rate": lr, "grad_norm": grad_norm,
               "tokens_per_s": round(tokens_per_s, 1), "peak_memory_mb": round(peak_memory_mb(), 1)}
        recorder.log_step(row)
        log.info("step %d/%d  epoch %.2f  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s", step, total,
                epoch, loss, lr, grad_norm, tokens_per_s)


    @staticmethod
    def _validate(recorder, validate: Callable, model, step: int, epoch: float) -> None:
        figures = validate(model)
        recorder.log_step({"step": step, "epoch": round(epoch, 4), "eval_loss": figures["eval_loss"],
                           "perplexity": figures["perplexity"]})
        log.info("step %d  validation loss %.4f  perplexity %.2f", step, figures["eval_loss"], figures["perplexity"])
        model.train()


def _windows(loader: DataLoader, accum: int) -> Iterator[List[dict]]:
    """Endless groups of ``accum`` micro-batches, epoch after epoch (the last group of an epoch may be short)."""
    while True:
        window = []
        for batch in loader:
            window.append(batch)
            if len(window) == accum:
                yield window
                window = []
        if window:
            yield window


def _clip(accelerator: Accelerator, params, max_norm: Optional[float]) -> float:
    if max_norm is not None:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0

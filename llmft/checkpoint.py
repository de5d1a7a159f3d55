"""Checkpoints that continue a run bit for bit, written so that a kill at any instant leaves a usable one.

A checkpoint is a folder ``checkpoints/step-N`` holding the trainable (adapter) weights, the optimizer and
scheduler state, every random-number state (Python, NumPy, torch on the CPU and on each CUDA device) and the
loop's own state (step, epoch, position in the epoch's batches, counters, the metrics lines so far). It is built
in a temporary folder, its ``manifest.json`` records each file's size and SHA-256, and only then is it renamed
into place; ``latest`` checks the manifest before trusting a checkpoint and falls back to the previous one.
"""

import io
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from llmft.distributed import (every_process, load_optimizer_state, load_trainable, optimizer_state, own_share,
                               trainable_state)
from llmft.files import explain_write_error, read_json, verify_manifest, write_json, write_manifest

log = logging.getLogger(__name__)
FILES = ("adapter.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")


def rng_state() -> dict:
    """Every random-number generator's state: Python, NumPy, torch (CPU and each CUDA device)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """The ``checkpoints`` folder of a run: save, prune, and find the newest checkpoint that verifies.

    Args:
        folder: ``RUN/checkpoints``.
        keep: how many checkpoints to keep (the oldest go first); at least 1.
    """

    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def save(self, step: int, weights: Dict[str, torch.Tensor], optimizer: dict, scheduler: dict, rng,
             loop_state: dict) -> Path:
        """Write checkpoint ``step-{step}`` (atomically: a temporary folder renamed into place) and prune.

        Args:
            step: the optimizer steps done.
            weights: the trainable parameters, whole (``llmft.distributed.trainable_state``).
            optimizer: the optimizer's state, whole (``llmft.distributed.optimizer_state``).
            scheduler: the learning-rate scheduler's state.
            rng: ``rng_state()``, or with several processes the list of each one's.
            loop_state: the loop's own state.

        Raises:
            WriteError: the disk is full or the folder is not writable; no partial checkpoint is left.
        """
        start = time.perf_counter()
        final = self.folder / f"step-{step:07d}"
        tmp = self.folder / f".tmp-step-{step:07d}-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            # serialised in memory, then written by plain file writes: a full disk is then an OSError that names
            # its cause, not a library's half-written archive
            (tmp / "adapter.safetensors").write_bytes(safetensors_bytes(weights))
            for name, obj in (("optimizer.pt", optimizer), ("scheduler.pt", scheduler), ("rng.pt", rng)):
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                (tmp / name).write_bytes(buffer.getvalue())
            write_json(tmp / "trainer_state.json", loop_state)
            write_manifest(tmp, FILES)
            _fsync_dir(tmp)
            if final.exists():  # a step saved again after a resume from an earlier one: the new one wins
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.folder)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise explain_write_error(final, exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        log.info("Checkpoint %s (%.2f s)", final, time.perf_counter() - start)
        return final

    def all(self) -> List[Path]:
        """Checkpoint folders, oldest first (temporary folders of a save that never finished are ignored)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("step-*") if p.is_dir())

    def latest(self) -> Optional[Path]:
        """The newest checkpoint whose files match its manifest; a damaged one is named and skipped."""
        for path in reversed(self.all()):
            problem = verify_manifest(path)
            if problem is None:
                return path
            log.warning("Skipping checkpoint %s: %s; trying the one before it.", path.name, problem)
        return None

    def read(self, path: Path) -> dict:
        """A checkpoint's contents: ``weights``, ``optimizer``, ``scheduler``, ``rng`` and the loop's ``state``.

        The main process reads it and hands it to the others (``llmft.loop``), which need not see the run folder.
        """
        return {"weights": load_file(str(path / "adapter.safetensors")),
                "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
                "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
                "rng": torch.load(path / "rng.pt", weights_only=True),
                "state": read_json(path / "trainer_state.json", "checkpoint state")}

    def _prune(self) -> None:
        for old in self.all()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.folder.glob(".tmp-step-*"):  # left by a process killed while saving
            if not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)


def restore(saved: dict, path, model, optimizer, scheduler) -> None:
    """Load what ``CheckpointStore.read`` returned into ``model``/``optimizer``/``scheduler``.

    The random-number states are not restored here: the loop restores them last, right before its next step.
    Under FSDP every process calls this and keeps its shard of the weights and of the optimizer state.
    """
    try:
        load_trainable(model, saved["weights"])
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} has {exc}") from None
    load_optimizer_state(model, optimizer, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])


def load_latest(checkpoints: CheckpointStore, accelerator: Accelerator, model, optimizer,
                scheduler) -> Optional[Tuple[str, dict, dict]]:
    """Load the newest valid checkpoint into ``model``/``optimizer``/``scheduler``; returns its path, the loop's
    state and this process's RNG state, or None when there is none.

    The main process finds and reads it, and hands it to the others: their run folders are scratch ones.
    """
    found = None
    if accelerator.is_main_process:
        path = checkpoints.latest()
        found = (str(path), checkpoints.read(path)) if path is not None else None
    if accelerator.num_processes > 1:
        found = broadcast_object_list([found])[0]
    if found is None:
        return None
    path, saved = found
    rng = own_share(accelerator, saved["rng"], f"checkpoint {path}")  # first: refuse another process count
    restore(saved, path, accelerator.unwrap_model(model), optimizer, scheduler)
    return path, saved["state"], rng


def save_checkpoint(checkpoints: CheckpointStore, accelerator: Accelerator, model, optimizer, scheduler, step: int,
                    loop_state: dict) -> None:
    """Write checkpoint ``step`` from every process: FSDP gathers the shards, and each process's random state goes
    into the one checkpoint, which the main process writes."""
    model = accelerator.unwrap_model(model)
    weights, optim = trainable_state(model), optimizer_state(model, optimizer)
    rng = every_process(accelerator, rng_state())
    if accelerator.is_main_process:
        checkpoints.save(step, weights, optim, scheduler.state_dict(), rng, loop_state)
    accelerator.wait_for_everyone()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


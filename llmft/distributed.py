"""How several processes share a run: accelerate's plugin objects (``conf/distributed``) and what sharding needs.

``distributed=ddp`` builds accelerate's ``DistributedDataParallelKwargs`` and ``distributed=fsdp`` its
``FullyShardedDataParallelPlugin`` (FSDP2); ``accelerator_options`` hands either to the ``Accelerator`` the loop
creates. Under FSDP each process holds a shard of every parameter (a ``DTensor``), so whatever is written whole -
the adapter, a checkpoint - is gathered first, on every process at once (``full_tensor`` is a collective).
"""

import contextlib
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, KwargsHandler
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from llmft.errors import ConfigError, PeerError

log = logging.getLogger(__name__)
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}  # accelerate's names
BatchPlan = Callable[[int], List[List[int]]]  # epoch -> the micro-batches (dataset indices) of that epoch


def accelerator_options(plugin: Any) -> Dict[str, Any]:
    """The ``Accelerator`` keyword arguments that carry ``plugin`` (None: none)."""
    if plugin is None:
        return {}
    if isinstance(plugin, FullyShardedDataParallelPlugin):
        return {"fsdp_plugin": plugin}
    if isinstance(plugin, KwargsHandler):
        return {"kwargs_handlers": [plugin]}
    raise TypeError(f"distributed: {type(plugin).__name__} is neither an FSDP plugin nor accelerate kwargs")


def shard_on_cpu(accelerator: Accelerator, plugin: Any) -> None:
    """Give accelerate's FSDP path the processes it leaves data-parallel: CPU processes over gloo.

    Accelerate keeps FSDP for accelerator devices (its CPU processes are always ``MULTI_CPU``, plain DDP), yet
    torch's ``fully_shard`` runs on CPU tensors over gloo: this switches such a state to FSDP with ``plugin``, so
    that ``prepare``, gradient clipping and ``no_sync`` take accelerate's FSDP2 code, as on GPUs. Offloading
    (``fsdp-offload``) keeps its shards in unpinned memory there: pinning needs an accelerator, and the shards are
    in host memory anyway. One process has nothing to shard, and says so.
    """
    if not isinstance(plugin, FullyShardedDataParallelPlugin):
        return
    if accelerator.num_processes == 1:
        log.info("distributed: FSDP with one process has nothing to shard; training unsharded.")
        return
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, plugin
        if isinstance(plugin.cpu_offload, CPUOffloadPolicy) and plugin.cpu_offload.pin_memory:
            plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)  # pinned memory needs an accelerator
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
    offload = ", shards offloaded to host memory" if isinstance(plugin.cpu_offload, CPUOffloadPolicy) else ""
    log.info("distributed: FSDP%d over %d processes (%s)%s", plugin.fsdp_version, accelerator.num_processes,
             accelerator.device.type, offload)


@contextlib.contextmanager
def fsdp_environment() -> Iterator[None]:
    """Undo the ``ACCELERATE_USE_FSDP`` that an ``Accelerator`` given an FSDP plugin sets for the whole process,
    so that the next job of a sweep (Hydra runs them in one process) is not sharded unless it asks to be."""
    before = os.environ.get("ACCELERATE_USE_FSDP")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ACCELERATE_USE_FSDP", None)
        else:
            os.environ["ACCELERATE_USE_FSDP"] = before


def is_main_rank() -> bool:
    """Whether this is the main process of the run (rank 0 of what a launcher or ``llmft.cluster`` set up)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def main_process_first(device: str) -> Iterator[None]:
    """With several processes, the others wait until the main one has run the block, and then the other processes
    of each machine wait for its first one: what these write to the caches (a converted model, tokenized data) is
    complete when the others read it, whether or not the machines share a file system.

    A failure in the block on any process is raised on every process once each has run it: the one that failed
    raises its own error, the others a ``PeerError`` that quotes it. No process is left waiting in a collective
    for one that has stopped (rank 0 unable to load the model stops every rank with that message).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield
        return
    state = PartialState(cpu=device == "cpu")  # the process group; the loop's Accelerator reuses it
    first, local_first = state.is_main_process, state.is_main_process or state.is_local_main_process
    for _ in range((not first) + (not local_first)):
        state.wait_for_everyone()
    error = None
    try:
        yield
    except Exception as exc:  # raised below, on every process
        error = exc
    for _ in range(first + local_first):
        state.wait_for_everyone()
    failures = each_process(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(failures) if message is not None]
    if failed:
        rank, message = failed[0]
        raise PeerError(f"process {rank} of {len(failures)} failed before training, and this one stops with it: "
                        f"{message}")


def shards_model(plugin: Any) -> bool:
    """Whether the loop shards the model: ``plugin`` is FSDP's and there are several processes."""
    return isinstance(plugin, FullyShardedDataParallelPlugin) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def loads_on_main_only(plugin: Any, quantized: bool) -> bool:
    """Whether only the main process loads the weights: FSDP over several processes with accelerate's
    ``cpu_ram_efficient_loading`` (``conf/distributed/fsdp.yaml``). The main process holds the whole weights on the
    CPU, the others the model on the meta device; accelerate's ``prepare`` shards the meta model on every process
    and broadcasts the main process's weights, shard by shard. Not for a ``quantized`` model: accelerate leaves
    bitsandbytes' 4-bit weights out of that path, so every process loads the whole quantized model."""
    return shards_model(plugin) and bool(plugin.cpu_ram_efficient_loading) and not quantized


def reinit_shards(model: torch.nn.Module) -> None:
    """Let FSDP see the adapters as trainable again after a first forward with the adapter disabled.

    FSDP2 sets each group's gradient dtypes at the model's first forward, from the parameters that require grad
    then; peft's ``disable_adapter`` turns that off for the adapters, so a base evaluation as the first forward
    leaves their bf16 gradients uncast to fp32 ("attempting to assign a gradient with dtype BFloat16 to a tensor
    with grad_dtype Float"). ``unshard`` initialises a module's groups again (a gather: every process calls this).
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()
            module.reshard()


def weights_held_mb(model: torch.nn.Module) -> float:
    """MiB of the model's parameters that this process holds (those not on the meta device)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta) / 2**20


def hold_trainable(model: torch.nn.Module) -> None:
    """Give the trainable parameters (the adapters) of a model built on the meta device storage on the CPU.

    Their values come from the main process with the others when the model is sharded; but accelerate matches the
    optimizer's parameters to their shards by storage address, which meta tensors lack (all are 0).
    """
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.requires_grad and param.is_meta:
                setattr(module, name, torch.nn.Parameter(torch.zeros_like(param, device="cpu")))


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter or gradient as one whole CPU tensor; a shard (``DTensor``) is gathered from every process."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").contiguous()


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters that train (the adapters), by name, whole, as contiguous CPU tensors.

    Under FSDP every process must call this (the shards are gathered); every process gets the whole tensors.
    """
    return {name: full_tensor(p) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: Dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (``trainable_state``) into the model's parameters; a shard takes its own part.

    Raises:
        ValueError: ``weights`` names a parameter the model lacks.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(weights) - set(params))
    if missing:
        raise ValueError(f"weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            param = params[name]
            if isinstance(param, DTensor):
                value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
            param.copy_(value)


def _sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer's state, whole: under FSDP gathered from every process (all call this; the main one gets it)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    if not _sharded(model):
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Load what ``optimizer_state`` returned; under FSDP each process keeps its shard of it."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def agreed_signal(accelerator: Accelerator, signum: Optional[int]) -> Optional[int]:
    """The stopping signal any process received (None: none), so that every process stops after the same step: one
    that went on alone would wait forever in the next step's collectives."""
    if accelerator.num_processes == 1:
        return signum
    received = accelerator.gather(torch.tensor([signum or 0], device=accelerator.device))
    return int(received.max()) or None


def every_process(accelerator: Accelerator, value: Any) -> Any:
    """``value`` of this process; with several, the list of every process's, in rank order."""
    return value if accelerator.num_processes == 1 else each_process(value)


def each_process(value: Any) -> List[Any]:
    """``value`` of every process of the run, in rank order (a collective: every process calls it); ``[value]``
    without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def own_share(accelerator: Accelerator, saved: Any, what: str) -> Any:
    """This process's entry of what ``every_process`` returned when the checkpoint was written.

    Raises:
        ConfigError: the checkpoint was written by a different number of processes.
    """
    count = len(saved) if isinstance(saved, list) else 1
    if count != accelerator.num_processes:
        raise ConfigError(
            f"this {what} was written by {count} process(es) and this run has {accelerator.num_processes}: each "
            "process's position in the data and random state belong to its rank, so a run resumes only with the "
            f"process count it was started with. Launch it again with --num_processes {count} (times the machines).")
    return saved[accelerator.process_index] if isinstance(saved, list) else saved


def make_accelerator(precision: str, device: str, plugin: Any) -> Accelerator:
    """accelerate for this run's precision (``bf16``/``fp16``/``fp32``), device and way of spreading the work (fp16
    on a GPU brings its loss scaler; ``plugin`` the DDP or FSDP plugin, or None); FSDP on CPU processes too
    (``shard_on_cpu``)."""
    with fsdp_environment():
        accelerator = Accelerator(mixed_precision=MIXED_PRECISION[precision], cpu=device == "cpu",
                                  **accelerator_options(plugin))
    shard_on_cpu(accelerator, plugin)
    return accelerator


class Sharded:
    """One process's share of each epoch's micro-batches (every process gets the same number), cached per epoch."""

    def __init__(self, plan: BatchPlan, rank: int, world: int):
        self.plan, self.rank, self.world = plan, rank, world
        self._epoch, self._batches = None, []

    def __call__(self, epoch: int) -> Sequence[List[int]]:
        if epoch != self._epoch:
            batches = list(self.plan(epoch))
            batches += batches[: (-len(batches)) % self.world]  # repeat a few so that processes stay in step
            self._epoch, self._batches = epoch, batches[self.rank:: self.world]
        return self._batches


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch on ``device``; to a GPU through pinned host memory, so that the copy does not wait on the host."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def clip_gradients(accelerator: Accelerator, params, max_norm: Optional[float]) -> float:
    """Clip the gradients' norm to ``max_norm`` (None: no clipping); returns the norm before clipping."""
    if max_norm is not None:
        return float(full_tensor(accelerator.clip_grad_norm_(params, max_norm)))
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    return float(full_tensor(torch.nn.utils.get_total_norm(grads))) if grads else 0.0

"""What the planner reads from a composed run configuration, as plain figures (no torch, no weights)."""

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from llmft.errors import ConfigError
from llmft.hardware import resolve_precision
from llmft.planning.arch import Arch, Linear, find_arch
from llmft.quantization import needs_bitsandbytes, scheme

# known by import path, as the planner imports no torch (tests/test_targets_by_identity.py resolves them)
PERPLEXITY_TARGETS = ("llmft.evaluation.Perplexity", "llmft.evaluation.perplexity.Perplexity")
PREFERENCE_TARGETS = ("llmft.evaluation.PreferenceAccuracy", "llmft.evaluation.preference.PreferenceAccuracy")

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GIB = 2**30
# The objectives that read preference pairs (each pair: two rows of one batch, llmft.data.pairs.pair_collate) and
# whether each runs a reference pass (tests/test_preference.py checks this against the classes)
PAIRWISE = {"llmft.objectives.DPO": True, "llmft.objectives.ORPO": False}
FSDP_TARGET = "accelerate.utils.FullyShardedDataParallelPlugin"   # conf/distributed/fsdp.yaml


@dataclass(frozen=True)
class LoraSpec:
    """The ``peft.LoraConfig`` keys that change memory."""

    r: int
    target_modules: Union[str, Tuple[str, ...]]
    lora_dropout: float
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: Tuple[str, ...] = ()

    def targets(self, arch: Arch) -> Tuple[Linear, ...]:
        """The linear layers of a decoder layer that peft wraps, matched as peft matches names.

        ``all-linear`` is every linear layer but the output head; a list matches a module whose name equals an
        entry or ends with ``.entry``; a string is a regular expression matched against the full module name.
        """
        linears = arch.linears()
        if self.target_modules == "all-linear":
            return tuple(linears)
        if isinstance(self.target_modules, str):
            return tuple(lin for lin in linears if re.fullmatch(self.target_modules, f"model.layers.0.{lin.name}"))
        full = {lin.name: f"model.layers.0.{lin.name}" for lin in linears}
        return tuple(lin for lin in linears
                     if any(full[lin.name] == t or full[lin.name].endswith("." + t) for t in self.target_modules))


@dataclass(frozen=True)
class Setup:
    """One run, as memory sees it: the model's figures and the settings that size each term."""

    arch: Arch
    lora: LoraSpec
    device: str = "cpu"
    precision: str = "fp32"
    quantization: Optional[str] = None      # None, "nf4", "fp4" or "int8"
    double_quant: bool = False
    quant_storage_float: bool = False        # 4-bit weights stored in a float dtype (nf4-sharded): FSDP shards them
    processes: int = 1                       # processes training together, one device each (llmft.planning.sharding)
    distributed: str = "none"                # "none", "ddp", "fsdp" or "fsdp-offload" (spread)
    reshard_after_forward: bool = True       # FSDP frees each layer's gathered weights after its forward
    main_loads: bool = False                 # FSDP's cpu_ram_efficient_loading: only the main process loads weights
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    seq_len: int = 512
    gradient_checkpointing: bool = False
    fused_lora: bool = False                 # hardware.fused_lora (llmft.fused_lora)
    attn_implementation: str = "sdpa"
    loss_chunk_tokens: int = 0               # objective.chunk_tokens: the chunked loss (llmft.loss); 0: full logits
    rows_per_example: int = 1                # 2 for a preference objective: a pair's chosen and rejected rows
    reference_pass: bool = False             # DPO: a no-grad forward with the adapter disabled before each step
    optimizer: str = "torch.optim.AdamW"
    optimizer_kwargs: Tuple[Tuple[str, Any], ...] = ()
    bitsandbytes: bool = True                # the process imports bitsandbytes (llmft.quantization.needs_bitsandbytes)
    eval_batch_size: int = 0                 # the perplexity evaluator's batch; 0: none
    eval_batch_key: str = ""                 # its config key (eval.perplexity.batch_size)
    eval_during_training: bool = False       # trainer.eval_every: validation at the micro-batch size
    budget_gb: float = 16.0
    profile: str = "cpu"

    @property
    def autocast(self) -> bool:
        """accelerate runs the forward under autocast for bf16 and fp16, on the CPU as on a GPU."""
        return self.precision != "fp32"

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of what autocast computes in (4 without autocast)."""
        return BYTES[self.precision]

    @property
    def weight_bytes(self) -> int:
        """Bytes per parameter of the weights that are not quantized.

        The pipeline loads them in the precision autocast computes in (``llmft.hardware.weights_dtype``: fp32 for
        fp16 on a CPU); ``peft.prepare_model_for_kbit_training`` upcasts every fp16/bf16 parameter of a quantized
        model (embeddings, output head, norms, biases) to fp32.
        """
        if self.quantization or (self.precision == "fp16" and self.device != "cuda"):
            return 4
        return BYTES[self.precision]

    @property
    def fused(self) -> bool:
        """Whether training runs the LoRA targets through ``llmft.fused_lora``: on, with no DoRA, no trained bias
        and an unquantized base (otherwise peft's own forward)."""
        return (self.fused_lora and not self.lora.use_dora
                and self.lora.bias == "none" and not self.quantization)

    @property
    def fused_blocks(self) -> bool:
        """Whether training runs the RMSNorms and SwiGLU MLPs through ``llmft.fused_blocks``: with
        ``hardware.fused_lora``, on an unquantized Llama-family model (``llmft.fused_lora.fuse_lora``)."""
        return self.fused_lora and not self.quantization and self.arch.family == "llama"

    @property
    def head_by_hand(self) -> bool:
        """Whether training's loss computes the output head's gradient by hand (``llmft.loss``'s
        ``_linear_head_by_hand``): the chunked loss of a one-row objective (SFT; DPO and ORPO recompute their chunks
        through autograd), a frozen head (not trained as a LoRA target or a saved module), no FSDP. Every family
        the planner knows uses its logits as they are (no soft-capping or scaling)."""
        targets = self.lora.target_modules
        named = (*self.lora.modules_to_save, *(() if isinstance(targets, str) else targets))
        trained = any(t.split(".")[-1] in ("lm_head", "embed_tokens") for t in named) or (
            isinstance(targets, str) and targets != "all-linear" and re.fullmatch(targets, "lm_head") is not None)
        return (bool(self.loss_chunk_tokens) and self.rows_per_example == 1 and not trained
                and not self.distributed.startswith("fsdp"))

    @property
    def eval_batch(self) -> int:
        """The largest batch of a no-grad validation pass (0: none)."""
        return max(self.eval_batch_size, self.rows if self.eval_during_training else 0)

    @property
    def rows(self) -> int:
        """Sequences of one micro-batch: ``micro_batch_size``, twice that for pairs (both replies in one batch)."""
        return self.micro_batch_size * self.rows_per_example

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch: sequences are padded to the longest, at most ``data.max_seq_length``."""
        return self.rows * self.seq_len


def setup_from_cfg(cfg: DictConfig) -> Setup:
    """Read a composed ``conf/train.yaml`` configuration into a ``Setup``.

    Raises:
        ConfigError: the model's architecture figures cannot be found offline, or are of an unknown architecture.
    """
    data = {key: _plain(cfg, key) for key in ("paths", "model", "quantization", "lora", "data", "hardware", "trainer",
                                               "eval", "objective")}
    hw, lora, model = data["hardware"], data["lora"], data["model"]
    quant, double = scheme(data.get("quantization"))
    targets = lora["target_modules"]
    optimizer = dict(hw["optimizer"])
    storage = str((data.get("quantization") or {}).get("bnb_4bit_quant_storage") or "uint8")
    return Setup(
        arch=find_arch(model, (data["paths"] or {}).get("cache_dir")),
        lora=LoraSpec(r=int(lora["r"]), target_modules=targets if isinstance(targets, str) else tuple(targets),
                      lora_dropout=float(lora.get("lora_dropout", 0.0)), use_dora=bool(lora.get("use_dora")),
                      bias=str(lora.get("bias", "none")), modules_to_save=tuple(lora.get("modules_to_save") or ())),
        device=hw["device"], precision=resolve_precision(hw["precision"], hw["device"]), quantization=quant,
        double_quant=double, quant_storage_float="float" in storage,
        **spread(_plain(cfg, "distributed"), process_count(hw)),
        micro_batch_size=int(hw["micro_batch_size"]),
        gradient_accumulation_steps=int(hw["gradient_accumulation_steps"]),
        seq_len=int(data["data"]["max_seq_length"]), gradient_checkpointing=bool(hw["gradient_checkpointing"]),
        fused_lora=bool(hw.get("fused_lora", False)),
        attn_implementation=str(model.get("attn_implementation", "sdpa")),
        loss_chunk_tokens=int((data.get("objective") or {}).get("chunk_tokens") or 0), **_objective(data),
        optimizer=str(optimizer.pop("_target_")), bitsandbytes=needs_bitsandbytes(cfg),
        optimizer_kwargs=tuple(sorted((k, v) for k, v in optimizer.items() if not k.startswith("_"))),
        budget_gb=float(hw["memory_budget_gb"]), profile=str(hw["name"]), **_eval_settings(data))


def process_count(hardware: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> int:
    """How many processes train together: the launcher's ``WORLD_SIZE`` under a launcher, else
    ``hardware.num_processes`` (what ``llmft-plan`` plans for), else 1.

    Raises:
        ConfigError: both are set and differ.
    """
    configured, launched = hardware.get("num_processes"), environ.get("WORLD_SIZE")
    if configured is not None and launched is not None and int(launched) != int(configured):
        raise ConfigError(
            f"hardware.num_processes={configured}, but the launcher started {launched} processes (WORLD_SIZE). "
            "Under a launcher the process count is the launcher's: drop hardware.num_processes, or launch "
            f"{configured} processes (accelerate launch --num_processes {configured}).")
    return int(launched or configured or 1)


def spread(node: Optional[Mapping[str, Any]], processes: int) -> Dict[str, Any]:
    """The ``Setup`` fields of a ``distributed`` config node (a plain dict; None for ``distributed=none``).

    ``distributed`` is ``none`` on one process (FSDP and DDP have nothing to divide there), ``ddp`` for several
    processes without a plugin (accelerate's default is data parallel), ``fsdp`` or ``fsdp-offload``.
    """
    target = str((node or {}).get("_target_", ""))
    if processes == 1:
        mode = "none"
    elif target == FSDP_TARGET:
        mode = "fsdp-offload" if node.get("cpu_offload") else "fsdp"
    else:
        mode = "ddp"
    return {"processes": processes, "distributed": mode,
            "reshard_after_forward": bool((node or {}).get("reshard_after_forward", True)),
            "main_loads": mode.startswith("fsdp") and bool(node.get("cpu_ram_efficient_loading"))}


def _plain(cfg: DictConfig, key: str) -> Any:
    """A node of ``cfg`` as plain, resolved Python values (only the nodes the plan reads are resolved)."""
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _objective(data: Mapping[str, Any]) -> Dict[str, Any]:
    """Rows per example and the reference pass of the configured objective (``PAIRWISE``)."""
    target = str((data.get("objective") or {}).get("_target_", ""))
    if target not in PAIRWISE:
        return {}
    return {"rows_per_example": 2, "reference_pass": PAIRWISE[target]}


def _eval_settings(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The largest no-grad evaluation batch in rows and its config key, and whether the loop validates during
    training. The perplexity evaluator's batch is its rows; the preference evaluator's batch is pairs, two rows
    each, and it runs only on pairs (planned when the objective reads pairs)."""
    pairs = bool(_objective(data))
    found = []
    for name, node in (data.get("eval") or {}).items():
        if not isinstance(node, dict):
            continue
        if node.get("_target_") in PERPLEXITY_TARGETS:
            found.append((int(node.get("batch_size", 8)), name))
        elif pairs and node.get("_target_") in PREFERENCE_TARGETS:
            found.append((2 * int(node.get("batch_size", 8)), name))
    batch, name = max(found) if found else (0, "")
    return {"eval_batch_size": batch, "eval_batch_key": f"eval.{name}.batch_size" if name else "",
            "eval_during_training": bool((data.get("trainer") or {}).get("eval_every"))}

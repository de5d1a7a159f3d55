"""The typed schema of a run's configuration, registered in Hydra's ConfigStore.

The primary config (``conf/train.yaml``) lists ``train_schema`` first in its defaults, so every option file merges
into these dataclasses: a misspelt key or a value of the wrong type fails at composition, in seconds. The
``metadata`` of a field carries its allowed range or choices and a short help text; ``llmft.config.validate``
checks those after composition and names the key in its message.

Groups whose options differ in shape (``model``, ``quantization``, ``data_format``, ``eval``, ``distributed``) stay untyped here;
their keys are checked against the signature of the ``_target_`` they name.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def rule(default: Any, help: str, **limits: Any) -> Any:
    """A dataclass field with a help text and limits (``ge``, ``gt``, ``le``, ``lt``, ``choices``)."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class PathsConf:
    cache_dir: str = rule(MISSING, "folder for converted model weights (safetensors copies of GGUF files)")


@dataclass
class LoraConf:
    _target_: str = "peft.LoraConfig"
    task_type: str = "CAUSAL_LM"
    r: int = rule(16, "the LoRA rank; usually 8 to 64", ge=1)
    lora_alpha: int = rule(32, "the LoRA scaling numerator; usually 2 * r", ge=1)
    lora_dropout: float = rule(0.05, "dropout on the LoRA input", ge=0.0, lt=1.0)
    target_modules: Any = rule(MISSING, "module names to adapt (a list), or 'all-linear'")
    bias: str = rule("none", "which biases to train", choices=["none", "all", "lora_only"])
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: Optional[List[str]] = None


@dataclass
class DataConf:
    path: str = rule(MISSING, "a data file in any data_format (.jsonl, .json, .csv, .tsv, .txt), or a folder: "
                     "train.* and val.* files, or data files to pool and split")
    val_path: Optional[str] = rule(None, "validation file; null: val.* beside train.*, or a split of path")
    val_ratio: float = rule(0.1, "share of path held out for validation when there is no validation file (0: none; "
                            "then validation figures are skipped)", ge=0.0, lt=1.0)
    max_seq_length: int = rule(512, "tokens per training sequence; longer records are truncated", ge=16)
    train_on_prompt: bool = rule(False, "also compute the loss on system and user tokens")
    max_samples: Optional[int] = rule(None, "use only the first N training records (null: all)", ge=1)
    strict: bool = rule(False, "stop at the first bad record (default: skip it, count it, list it in rejects.jsonl)")
    group_by_length: bool = rule(True, "put records of similar length in the same micro-batch (less padding)")
    packing: bool = rule(False, "pack records into one row per micro-batch (micro_batch_size x max_seq_length "
                         "tokens), attention kept within each record: no padding at all")
    fallback_template: str = rule("chatml", "chat template for a tokenizer that has none (e.g. phi-2)",
                                  choices=["chatml", "alpaca", "chatml_tools"])
    chat_template: Optional[str] = rule(None, "a template used in place of the tokenizer's own (chatml_tools: ChatML "
                                        "with tool calls, for Qwen2-style templates that drop them); null: its own",
                                        choices=[None, "chatml", "alpaca", "chatml_tools"])
    sources: Optional[List[Any]] = rule(None, "a mixture read instead of path: [{path, data_format, format_args, "
                                        "weight, max_records}, ...] (llmft.data.mixture)")
    system_into_user: bool = rule(False, "fold a system message into the first user turn (templates that refuse "
                                  "a system turn, such as Gemma's)")


@dataclass
class HardwareConf:
    name: str = MISSING
    device: str = rule("cpu", "where to train", choices=["cpu", "cuda"])
    precision: str = rule("bf16", "mixed precision of the forward and backward pass; auto: bf16 on a CPU with "
                          "AVX512-BF16 or AMX, fp32 on other CPUs, bf16 or else fp16 on CUDA",
                          choices=["auto", "bf16", "fp16", "fp32"])
    micro_batch_size: int = rule(8, "sequences per forward pass", ge=1)
    gradient_accumulation_steps: int = rule(1, "micro-batches per optimizer step", ge=1)
    gradient_checkpointing: bool = rule(False, "recompute activations in the backward pass to save memory")
    fused_lora: bool = rule(True, "compute each plain LoRA layer and its frozen base as one function "
                            "(llmft/fused_lora.py), and RMSNorm and SwiGLU as llmft/fused_blocks.py does; false: "
                            "peft's and transformers' own forward")
    release_memory: bool = rule(False, "CPU: hand freed blocks of 4 MiB and more back to the system at once "
                                "(less resident memory, slower steps; llmft.hardware.release_freed_memory)")
    memory_budget_gb: float = rule(MISSING, "memory the run may use, in GB of 2^30 bytes (a 6 GB card: 6)", gt=0.0)
    optimizer: Any = rule(MISSING, "a partial optimizer _target_; the trainer adds lr and weight_decay")
    preflight: bool = rule(True, "plan memory before loading and stop a run whose plan exceeds the budget "
                           "(false: print the plan and go on)")
    auto_fit: bool = rule(False, "when the plan exceeds the budget, apply the first change that fits (micro-batch, "
                          "checkpointing, NF4, sequence length) and record it in summary.json")
    emulate: bool = rule(False, "on a larger GPU, cap this process's share of GPU memory at the budget")
    num_processes: Optional[int] = rule(None, "processes training together, one device each, for llmft-plan's "
                                        "per-device plan (null: the launcher's WORLD_SIZE, or 1)", ge=1)


@dataclass
class TrainerConf:
    _target_: str = "llmft.loop.TrainingLoop"
    learning_rate: float = rule(2e-3, "peak learning rate", gt=0.0, le=1.0)
    weight_decay: float = rule(0.0, "AdamW weight decay", ge=0.0)
    num_epochs: float = rule(2.0, "passes over the training data (ignored when max_steps is set)", gt=0.0)
    max_steps: Optional[int] = rule(None, "optimizer steps to run (null: from num_epochs)", ge=1)
    warmup_ratio: float = rule(0.1, "share of the steps spent warming up the learning rate", ge=0.0, lt=1.0)
    lr_scheduler: str = rule("cosine", "learning-rate schedule",
                             choices=["cosine", "linear", "constant", "constant_with_warmup"])
    max_grad_norm: Optional[float] = rule(1.0, "gradient clipping norm (null: no clipping)", gt=0.0)
    log_every: int = rule(1, "optimizer steps between lines of metrics.jsonl", ge=1)
    eval_every: Optional[int] = rule(None, "optimizer steps between validation losses in metrics.jsonl (null: none)",
                                     ge=1)
    save_every: Optional[int] = rule(MISSING, "optimizer steps between checkpoints (null: only when a signal stops the "
                                     "run)", ge=1)
    save_each_epoch: bool = rule(False, "also write a checkpoint at the end of each epoch")
    keep_checkpoints: int = rule(2, "how many checkpoints to keep (the oldest go first)", ge=1)


@dataclass
class TrainConf:
    seed: int = rule(42, "seed for weights of new modules, data order and dropout", ge=0)
    paths: PathsConf = field(default_factory=PathsConf)
    model: Any = MISSING
    quantization: Optional[Any] = None
    lora: LoraConf = field(default_factory=LoraConf)
    data_format: Any = MISSING
    data: DataConf = field(default_factory=DataConf)
    objective: Any = MISSING
    hardware: HardwareConf = field(default_factory=HardwareConf)
    distributed: Optional[Any] = None
    trainer: TrainerConf = field(default_factory=TrainerConf)
    eval: Optional[Any] = None
    logger: Optional[Any] = None
    resume: Optional[str] = rule(None, "a run folder to continue from its newest checkpoint (or a sweep folder, "
                                 "with -m: its unfinished jobs)")


def register() -> None:
    """Store the schema as ``train_schema`` so that ``conf/train.yaml`` can list it first in its defaults."""
    ConfigStore.instance().store(name="train_schema", node=TrainConf)


register()

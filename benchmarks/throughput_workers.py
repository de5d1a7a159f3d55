"""The systems that ``benchmarks/throughput.py`` compares, each run in a fresh process of its own.

Every worker trains the same records (W1: the first N alpaca demo records through the chat template, tokenized by
llmft, so every system sees the same tokens and the same loss-bearing positions), one epoch, and writes
``{"seconds": training seconds, "steps": optimizer steps}`` to the result file.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def workload_overrides(data_dir: Path, max_length: int, micro_batch: int) -> List[str]:
    """The W1 workload as llmft overrides (also used to compose the config the other systems load through)."""
    return ["model=smollm2-135m", "lora=all-linear", f"lora.r={LORA['r']}", f"lora.lora_alpha={LORA['lora_alpha']}",
            "lora.lora_dropout=0.0", f"data.path={data_dir / 'train.json'}", f"data.val_path={data_dir / 'val.json'}",
            "data_format=alpaca", f"data.max_seq_length={max_length}", f"hardware.micro_batch_size={micro_batch}",
            "hardware.gradient_accumulation_steps=1", "trainer.num_epochs=1", "eval=none"]


def load_workload(data_dir: Path, max_length: int, micro_batch: int):
    """The model (loaded as llmft loads it, fp32 on the CPU), its tokenizer and the tokenized training records."""
    from llmft.config.precheck import check_overrides
    from llmft.builders import build, read_splits, tokenize_split

    cfg = check_overrides(workload_overrides(data_dir, max_length, micro_batch))
    loaded = build(cfg.model, quantization_config=None, dtype="float32", device="cpu", cache_dir=cfg.paths.cache_dir)
    dataset, _ = tokenize_split(cfg, loaded.tokenizer, read_splits(cfg).train, "train")
    return loaded.model, loaded.tokenizer, dataset.select_columns(["input_ids", "labels"])


def hf_trainer(data_dir: Path, max_length: int, micro_batch: int, bf16: bool) -> Dict[str, float]:
    """transformers ``Trainer`` + peft, padding each micro-batch to its longest record."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer, dataset = load_workload(data_dir, max_length, micro_batch)
    model = get_peft_model(model, LoraConfig(**LORA))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=micro_batch, num_train_epochs=1,
                                 learning_rate=1e-3, bf16=bf16, use_cpu=True, report_to=[],
                                 save_strategy="no", logging_strategy="no", seed=42, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=dataset,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
        result = trainer.train()
    return {"seconds": result.metrics["train_runtime"], "steps": result.global_step}


def trl_packing(data_dir: Path, max_length: int, micro_batch: int, bf16: bool) -> Dict[str, float]:
    """TRL ``SFTTrainer`` with packing (best-fit decreasing into rows of ``max_length``, padding-free batches)."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, dataset = load_workload(data_dir, max_length, micro_batch)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, per_device_train_batch_size=micro_batch, num_train_epochs=1,
                         learning_rate=1e-3, bf16=bf16, use_cpu=True, report_to=[],
                         save_strategy="no", logging_strategy="no", seed=42, packing=True, max_length=max_length)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(**LORA))
        result = trainer.train()
    return {"seconds": result.metrics["train_runtime"], "steps": result.global_step}


def llmft_train(data_dir: Path, max_length: int, micro_batch: int, extra: List[str]) -> Dict[str, float]:
    """``llmft-train`` in a subprocess of this worker; the figures come from the run's ``summary.json``."""
    with tempfile.TemporaryDirectory() as out:
        cmd = ["llmft-train", *workload_overrides(data_dir, max_length, micro_batch), *extra,
               f"hydra.run.dir={out}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((Path(out) / "summary.json").read_text(encoding="utf-8"))
    return {"seconds": summary["train_duration_s"], "steps": summary["train_steps"]}


def matmul_peak(seconds: float = 3.0, n: int = 2048) -> Dict[str, float]:
    """The best matrix-multiply rate (FLOP/s) of ``n x n`` products in bf16 and in fp32, over ``seconds`` each."""
    import torch

    peaks = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        peaks[name] = 2 * n ** 3 / best
    return peaks


def main(argv: List[str]) -> None:
    """``python throughput_workers.py SYSTEM RESULT DATA_DIR MAX_LENGTH MICRO_BATCH [llmft overrides...]``."""
    system, result, data_dir, max_length, micro_batch, *extra = argv
    data_dir, max_length, micro_batch = Path(data_dir), int(max_length), int(micro_batch)
    runs = {
        "peak": lambda: matmul_peak(),
        "hf-fp32": lambda: hf_trainer(data_dir, max_length, micro_batch, bf16=False),
        "hf-bf16": lambda: hf_trainer(data_dir, max_length, micro_batch, bf16=True),
        "trl-packing": lambda: trl_packing(data_dir, max_length, micro_batch, bf16=True),
        "llmft": lambda: llmft_train(data_dir, max_length, micro_batch, extra),
    }
    Path(result).write_text(json.dumps(runs[system]()), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])

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


def shared_overrides(max_length: int, micro_batch: int) -> List[str]:
    """The model, LoRA and batch every workload shares, as llmft overrides (SFT in W1 and the DPO workload)."""
    return ["model=smollm2-135m", "lora=all-linear", f"lora.r={LORA['r']}", f"lora.lora_alpha={LORA['lora_alpha']}",
            "lora.lora_dropout=0.0", f"data.max_seq_length={max_length}", f"hardware.micro_batch_size={micro_batch}",
            "hardware.gradient_accumulation_steps=1", "eval=none"]


def workload_overrides(data_dir: Path, max_length: int, micro_batch: int) -> List[str]:
    """The W1 workload as llmft overrides (also used to compose the config the other systems load through)."""
    return [*shared_overrides(max_length, micro_batch), f"data.path={data_dir / 'train.json'}",
            f"data.val_path={data_dir / 'val.json'}", "data_format=alpaca", "trainer.num_epochs=1"]


def dpo_overrides(data_dir: Path, max_length: int, micro_batch: int, steps: int, beta: float) -> List[str]:
    """The DPO workload (``throughput_dpo.py``) as llmft overrides: the pairs of ``pairs.json``, ``steps``
    optimizer steps, ``hardware.precision=bf16`` (on the cpu profile: bf16 frozen weights under autocast), no
    checkpoints."""
    return [*shared_overrides(max_length, micro_batch), f"data.path={data_dir / 'pairs.json'}",
            f"data.val_path={data_dir / 'val.json'}", "objective=dpo", f"objective.beta={beta}",
            f"trainer.max_steps={steps}", "hardware.precision=bf16", "trainer.save_every=null"]


def load_workload(data_dir: Path, max_length: int, micro_batch: int):
    """The model (loaded as llmft loads it, fp32 on the CPU), its tokenizer and the tokenized training records."""
    model, tokenizer, dataset, _ = load_model_and_data(workload_overrides(data_dir, max_length, micro_batch))
    return model, tokenizer, dataset.select_columns(["input_ids", "labels"])


def load_model_and_data(overrides: List[str]):
    """The model of ``overrides`` (fp32 on the CPU), its tokenizer, the training split tokenized as the configured
    objective trains on it, and the split's records."""
    from llmft.config.precheck import check_overrides
    from llmft.builders import build, read_splits, tokenize_split

    cfg = check_overrides(overrides)
    loaded = build(cfg.model, quantization_config=None, dtype="float32", device="cpu", cache_dir=cfg.paths.cache_dir)
    records = read_splits(cfg).train
    dataset, _ = tokenize_split(cfg, loaded.tokenizer, records, "train", build(cfg.objective))
    return loaded.model, loaded.tokenizer, dataset, records


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
    return run_llmft([*workload_overrides(data_dir, max_length, micro_batch), *extra])


def run_llmft(overrides: List[str]) -> Dict[str, float]:
    """``llmft-train OVERRIDES`` in a subprocess; its training seconds and optimizer steps (``summary.json``)."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["llmft-train", *overrides, f"hydra.run.dir={out}"], check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((Path(out) / "summary.json").read_text(encoding="utf-8"))
    return {"seconds": summary["train_duration_s"], "steps": summary["train_steps"]}


def trl_dpo(data_dir: Path, max_length: int, micro_batch: int, steps: int, beta: float) -> Dict[str, float]:
    """TRL ``DPOTrainer`` (sigmoid loss, the reference = the peft model with its adapter disabled, as TRL does
    with a ``peft_config`` and no ``ref_model``) on llmft's tokens of the same pairs.

    TRL tokenizes its dataset when the trainer is built; its ``train_dataset`` is then replaced by llmft's
    tokenization of the pairs in TRL's processed shape (``prompt_ids``, ``chosen_ids``, ``rejected_ids``), so
    both systems train the same tokens (TRL scores every token after the prompt, llmft the labelled ones).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from llmft.data.pairs import pair_of

    model, tokenizer, pairs, records = load_model_and_data(dpo_overrides(data_dir, max_length, micro_batch, steps,
                                                                         beta))
    conversational = Dataset.from_list([{"prompt": p.prompt, "chosen": [p.chosen], "rejected": [p.rejected]}
                                        for p in map(pair_of, records)])
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=micro_batch, max_steps=steps, learning_rate=1e-3,
                         lr_scheduler_type="cosine", warmup_steps=0.1, beta=beta, max_length=max_length, bf16=True,
                         use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", seed=42,
                         gradient_checkpointing=False)  # TRL's default is on; llmft's (and the workload's) off
        trainer = DPOTrainer(model=model, args=args, train_dataset=conversational, processing_class=tokenizer,
                             peft_config=LoraConfig(**LORA))
        trainer.train_dataset = Dataset.from_list([trl_pair(p) for p in pairs])
        result = trainer.train()
    return {"seconds": result.metrics["train_runtime"], "steps": result.global_step}


def trl_pair(pair: dict) -> Dict[str, List[int]]:
    """One pair of llmft's tokenization (``llmft.data.pairs.COLUMNS``) in TRL's processed shape: the shared prompt
    tokens (those before the first labelled one) and each side's tokens after them."""
    out = {}
    for side in ("chosen", "rejected"):
        ids, labels = pair[f"{side}_input_ids"], pair[f"{side}_labels"]
        start = next(i for i, t in enumerate(labels) if t != -100)
        out["prompt_ids"], out[f"{side}_ids"] = ids[:start], ids[start:]
    return out


def matmul_peak(seconds: float = 3.0, n: int = 2048) -> Dict[str, float]:
    """The best matrix-multiply rate (FLOP/s) of ``n x n`` products in bf16 and in fp32, over ``seconds`` each; fp32
    only where oneDNN is capped below bf16 (``--isa avx2``: one emulated bf16 product takes over a minute)."""
    import torch

    from llmft.hardware import onednn_capped

    peaks = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))[onednn_capped():]:
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
        # throughput_dpo.py: extra = [steps, beta]
        "trl-dpo": lambda: trl_dpo(data_dir, max_length, micro_batch, int(extra[0]), float(extra[1])),
        "llmft-dpo": lambda: run_llmft(dpo_overrides(data_dir, max_length, micro_batch, int(extra[0]),
                                                     float(extra[1]))),
    }
    Path(result).write_text(json.dumps(runs[system]()), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])

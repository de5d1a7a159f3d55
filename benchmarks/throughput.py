"""Training throughput of the same workload in transformers Trainer + peft, TRL SFTTrainer and llmft, side by side.

    python benchmarks/throughput.py                       # W1: 128 records, every system (a long run on a CPU)
    python benchmarks/throughput.py --records 16 --systems hf-bf16,llmft-default
    python benchmarks/throughput.py --llmft-levers        # also llmft with each lever off, one at a time
    python benchmarks/throughput.py --isa avx2            # as an AVX2-only CPU would run it (see below)

Workload W1 (issue 10): SmolLM2-135M-Instruct (the offline weights, loaded as llmft loads them), LoRA r=16 on all
linear layers, dropout 0, the first ``--records`` records of ``../shared/realdata/alpaca/alpaca_en_demo.json``
through the chat template (tokenized once by llmft, so every system trains the same tokens), max length 512,
micro-batch 8, one epoch. Each system runs in a fresh process (``throughput_workers.py``); the machine's
matrix-multiply peak is measured first, in a process of its own.

Columns: trained tokens/s (non-pad tokens of the epoch / training seconds), loss-bearing tokens/s (labelled tokens
/ training seconds), peak resident memory of the system's processes (``ru_maxrss``, i.e. VmHWM, of the largest),
and MFU: useful FLOPs / training seconds / the bf16 matrix-multiply peak. Useful FLOPs = 4 x decoder linear
parameters x trained tokens + 4 x hidden x vocabulary x loss-bearing tokens (forward and input-gradient of the
frozen weights; LoRA's own FLOPs and attention are left out, so MFU is a lower bound); the peak is the faster
of the bf16 and fp32 ones.

``--isa avx2`` caps every process's kernels at AVX2, as on a CPU without AVX-512 or native bf16: oneDNN (torch's
bf16 and its own fp32 kernels, ``ONEDNN_MAX_CPU_ISA``), ATen's vectorized kernels (``ATEN_CPU_CAPABILITY``) and
MKL's fp32 matrix multiplications (``MKL_ENABLE_INSTRUCTIONS``). Caches and memory bandwidth stay this machine's.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "realdata" / "alpaca" / "alpaca_en_demo.json"
# system -> (worker, llmft overrides); the levers are the overrides issue 10 adds to llmft
SYSTEMS = {
    "hf-fp32": ("hf-fp32", []), "hf-bf16": ("hf-bf16", []), "trl-packing": ("trl-packing", []),
    "llmft-default": ("llmft", []),
    "llmft-packed": ("llmft", ["data.packing=true"]),
    "llmft-lean": ("llmft", ["hardware.gradient_checkpointing=true"]),
    # not a default: what auto gives on this CPU; under --isa avx2, what choosing bf16 there would cost
    "llmft-bf16": ("llmft", ["hardware.precision=bf16"]),
    "llmft-lean-release": ("llmft", ["hardware.gradient_checkpointing=true", "hardware.release_memory=true"]),
}
# llmft with one lever off at a time (precision, length grouping, chunked loss, fused LoRA), to see what each gives
LEVERS = {
    "llmft-fp32": ("llmft", ["hardware.precision=fp32"]),
    "llmft-ungrouped": ("llmft", ["data.group_by_length=false"]),
    "llmft-one-chunk": ("llmft", ["objective.chunk_tokens=1000000"]),
    "llmft-unfused": ("llmft", ["hardware.fused_lora=false"]),
}
ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
DEFAULT_SYSTEMS = ["hf-fp32", "hf-bf16", "trl-packing", "llmft-default", "llmft-packed", "llmft-lean"]


def run_worker(worker: str, extra: List[str], data_dir: Path, args, log_dir: Path) -> Dict[str, float]:
    """Run one worker in a fresh process; return its result and the peak resident memory of it or its children."""
    result = log_dir / f"{worker}-{len(os.listdir(log_dir))}.json"
    cmd = [sys.executable, str(HERE / "throughput_workers.py"), worker, str(result), str(data_dir),
           str(args.max_length), str(args.micro_batch), *extra]
    with open(result.with_suffix(".log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = result.with_suffix(".log").read_text(encoding="utf-8").strip().splitlines()[-15:]
        raise RuntimeError(f"{worker} {' '.join(extra)} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return {**json.loads(result.read_text(encoding="utf-8")), "peak_rss_gb": usage.ru_maxrss * 1024 / 2 ** 30}


def workload(data_dir: Path, args) -> Dict[str, int]:
    """Write the records the systems train on; count their tokens, labelled tokens and the model's FLOPs/token."""
    from llmft.quiet import quiet_libraries

    quiet_libraries()  # before transformers and peft load: no kernel notices or tokenizing bars in the table's output
    sys.path.insert(0, str(HERE))
    from throughput_workers import workload_overrides

    from transformers import AutoTokenizer

    from llmft.config.precheck import check_overrides
    from llmft.models.hub import find_source
    from llmft.builders import read_splits, tokenize_split
    from llmft.planning.setup import setup_from_cfg

    records = json.loads(DATA.read_text(encoding="utf-8"))
    (data_dir / "train.json").write_text(json.dumps(records[:args.records]), encoding="utf-8")
    # a validation file is required; records after the trained ones (evaluation is off in every system)
    (data_dir / "val.json").write_text(json.dumps(records[args.records:args.records + 2]), encoding="utf-8")
    cfg = check_overrides(workload_overrides(data_dir, args.max_length, args.micro_batch))
    source = find_source(cfg.model.name_or_path, cfg.model.get("revision"), cfg.model.get("gguf"), cfg.paths.cache_dir)
    if source is None:
        sys.exit("The SmolLM2-135M-Instruct weights are not here yet: run `python -m llmft.models smollm2-135m` once.")
    dataset, _ = tokenize_split(cfg, AutoTokenizer.from_pretrained(source), read_splits(cfg).train, "train")
    arch = setup_from_cfg(cfg).arch
    return {"records": len(dataset), "tokens": sum(len(x) for x in dataset["input_ids"]),
            "loss_tokens": sum(sum(t != -100 for t in x[1:]) for x in dataset["labels"]),
            "linear_params": arch.linear_params(), "head_params": arch.hidden_size * arch.vocab_size}


def table(rows: Dict[str, Dict[str, float]], work: Dict[str, int], peaks: Dict[str, float]) -> str:
    flops = 4 * work["linear_params"] * work["tokens"] + 4 * work["head_params"] * work["loss_tokens"]
    base = rows.get("hf-fp32")
    best = max(peaks, key=peaks.get)
    lines = [f"| system | steps | seconds | trained tok/s | loss tok/s | x HF fp32 | peak RSS GB | MFU ({best} peak) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        speed = work["tokens"] / r["seconds"]
        ratio = f"{speed / (work['tokens'] / base['seconds']):.2f}" if base else "-"
        lines.append(f"| {name} | {r['steps']} | {r['seconds']:.1f} | {speed:.0f} | {work['loss_tokens'] / r['seconds']:.0f}"
                     f" | {ratio} | {r['peak_rss_gb']:.2f} | {100 * flops / r['seconds'] / peaks[best]:.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=128, help="the first N records (W1: 128)")
    parser.add_argument("--systems", help=f"comma-separated, from {', '.join([*SYSTEMS, *LEVERS])} (default: "
                        f"{', '.join(DEFAULT_SYSTEMS)}, and the lever ablations with --llmft-levers)")
    parser.add_argument("--llmft-levers", action="store_true",
                        help="also run llmft with one lever off at a time: fp32, no length grouping, one chunk, unfused LoRA")
    parser.add_argument("--isa", choices=list(ISA_CAPS), help="cap every process's CPU kernels at this instruction set")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    args = parser.parse_args(argv)
    known = {**SYSTEMS, **LEVERS}
    names = [s for s in args.systems.split(",") if s] if args.systems else \
        DEFAULT_SYSTEMS + (list(LEVERS) if args.llmft_levers else [])
    unknown = [s for s in names if s not in known]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(known)}"
                     )
    if shutil.which("llmft-train") is None and any(known[s][0] == "llmft" for s in names):
        parser.error("llmft-train is not on PATH: activate the environment llmft is installed in")
    if "trl-packing" in names and importlib.util.find_spec("trl") is None:
        parser.error("trl-packing needs TRL: pip install -e '.[bench]' (or leave it out of --systems)")
    os.environ.update(ISA_CAPS.get(args.isa, {}))  # inherited by every worker
    with tempfile.TemporaryDirectory(prefix="llmft-bench-") as tmp:
        data_dir, log_dir = Path(tmp) / "data", Path(tmp) / "logs"
        data_dir.mkdir(), log_dir.mkdir()
        work = workload(data_dir, args)
        print(f"Workload: {work['records']} records, {work['tokens']} tokens, {work['loss_tokens']} loss-bearing; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
              + (f"; kernels capped at {args.isa}" if args.isa else ""), flush=True)
        peaks = {k: v for k, v in run_worker("peak", [], data_dir, args, log_dir).items() if k in ("bf16", "fp32")}
        print("Matrix-multiply peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()), flush=True)
        rows = {}
        for name in names:
            worker, extra = known[name]
            rows[name] = run_worker(worker, extra, data_dir, args, log_dir)
            print(f"{name}: {rows[name]['seconds']:.1f} s, {rows[name]['peak_rss_gb']:.2f} GB", flush=True)
        print(table(rows, work, peaks))


if __name__ == "__main__":
    main()

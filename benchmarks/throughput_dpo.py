"""DPO training throughput of llmft beside TRL's ``DPOTrainer``, on the same pairs, model and settings, in one run.

    python benchmarks/throughput_dpo.py                    # 32 pairs, micro-batch 4, 8 steps, max length 512
    python benchmarks/throughput_dpo.py --pairs 64 --micro-batch 8 --beta 0.1

Workload: SmolLM2-135M-Instruct (the offline weights, loaded as llmft loads them), LoRA r=16 on all linear layers
(as ``throughput.py``), the first ``--pairs`` pairs of ``../shared/realdata/preference/dpo_en_demo.json``
tokenized once by llmft (both systems train the same tokens: each side at most ``--max-length``), sigmoid DPO
loss with ``--beta``, learning rate 1e-3 with warmup + cosine, ``--micro-batch`` pairs a step for one epoch
(``pairs / micro-batch`` steps, so both systems train every pair once), bf16 autocast on fp32 weights, the
reference = the same model with its adapter disabled in both. Each system runs in a fresh process
(``throughput_workers.py``: ``trl-dpo``, ``llmft-dpo``) through ``throughput.run_worker``.

Columns: pairs/s (trained pairs / training seconds, as each system times its training loop), peak resident
memory of the system's processes (``ru_maxrss`` of the largest), llmft's ratio to TRL for both, and the seconds
the benchmark was stopped while a system ran (``PauseClock``; a row with more than a few is not a speed figure).
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import run_worker  # noqa: E402  (a sibling script, not a package)

PAIRS = HERE.parent.parent / "shared" / "realdata" / "preference" / "dpo_en_demo.json"
SYSTEMS = ("trl-dpo", "llmft-dpo")


def write_pairs(data_dir: Path, pairs: int) -> None:
    """The first ``pairs`` records to train on, and the two after them as the validation file llmft requires
    (evaluation is off in both systems)."""
    records = json.loads(PAIRS.read_text(encoding="utf-8"))
    (data_dir / "pairs.json").write_text(json.dumps(records[:pairs]), encoding="utf-8")
    (data_dir / "val.json").write_text(json.dumps(records[pairs:pairs + 2]), encoding="utf-8")


class PauseClock:
    """Seconds this process was stopped (SIGSTOP, e.g. by another job's quiet window) while it ran: a thread that
    ticks every 0.2 s sums the gaps over 1 s. Workers are stopped with it, so a system's wall-clock figure is only
    valid when this stays near 0."""

    def __init__(self):
        self.paused = 0.0
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self):
        last = time.monotonic()
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            self.paused += max(0.0, now - last - 1.0)
            last = now


def table(rows: Dict[str, Dict[str, float]], micro_batch: int) -> str:
    lines = ["| system | steps | pairs | seconds | pairs/s | peak RSS GB | stopped s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        trained = r["steps"] * micro_batch
        lines.append(f"| {name} | {r['steps']} | {trained} | {r['seconds']:.1f} | {trained / r['seconds']:.3f} "
                     f"| {r['peak_rss_gb']:.2f} | {r['stopped_s']:.0f} |")
    trl, ours = rows["trl-dpo"], rows["llmft-dpo"]
    speed = (ours["steps"] / ours["seconds"]) / (trl["steps"] / trl["seconds"])
    lines.append(f"\nllmft / TRL: {speed:.2f}x the pairs/s, {ours['peak_rss_gb'] / trl['peak_rss_gb']:.2f}x the "
                 "peak memory")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32, help="the first N pairs (a multiple of --micro-batch)")
    parser.add_argument("--micro-batch", type=int, default=4, help="pairs a step (each pair is two rows)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens of each side at most")
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.pairs <= 0 or args.micro_batch <= 0 or args.pairs % args.micro_batch:
        parser.error(f"--pairs {args.pairs} must be a positive multiple of --micro-batch {args.micro_batch}, so that "
                     "both systems train every pair once in the same number of full steps")
    if shutil.which("llmft-train") is None:
        parser.error("llmft-train is not on PATH: activate the environment llmft is installed in")
    if importlib.util.find_spec("trl") is None:
        parser.error("the TRL row needs TRL: pip install -e '.[bench]'")
    steps = args.pairs // args.micro_batch
    with tempfile.TemporaryDirectory(prefix="llmft-bench-dpo-") as tmp:
        data_dir, log_dir = Path(tmp) / "data", Path(tmp) / "logs"
        data_dir.mkdir(), log_dir.mkdir()
        write_pairs(data_dir, args.pairs)
        print(f"Workload: {args.pairs} pairs, {steps} steps of {args.micro_batch}, max length {args.max_length}, "
              f"beta {args.beta}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
        rows, clock = {}, PauseClock()
        for name in SYSTEMS:
            before = clock.paused
            rows[name] = run_worker(name, [str(steps), str(args.beta)], data_dir, args, log_dir)
            rows[name]["stopped_s"] = clock.paused - before
            print(f"{name}: {rows[name]['seconds']:.1f} s, {rows[name]['peak_rss_gb']:.2f} GB, stopped "
                  f"{rows[name]['stopped_s']:.0f} s", flush=True)
        print(table(rows, args.micro_batch))
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""What checkpoints and resuming cost on a real run, measured side by side in one invocation.

    python benchmarks/durability.py                 # the default llmft-train (SmolLM2-135M, bundled data)
    python benchmarks/durability.py model=tiny      # any overrides, e.g. a quick check

Three runs of the same command, each a fresh process:
  (a) no checkpoint (trainer.save_every=null),
  (b) a checkpoint after every optimizer step (trainer.save_every=1: the most a user can ask for),
  (c) as (b), stopped with SIGTERM half-way through training, then `llmft-train resume=RUN`.
It prints the wall time of each, the checkpointing overhead (b / a - 1) and the resume overhead
((c stopped + c resumed) / b - 1: what the interruption cost in total, start-up and reloading included).
``--repeat N`` runs the three N times, interleaved (a b c a b c ...), and compares the fastest of each, so that a
change of load during the benchmark does not show up as an overhead. Because a shared machine's speed moves more
than these overheads, it also prints what the runs' own logs time directly: the seconds spent writing
checkpoints in (b) (each "Checkpoint ... (s)" line) and reading one back in the resumed run ("Resumed from ... s"),
and the resumed process's start-up (its wall time less the run's own `duration_s`).
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median


def train(args, folder: Path, stop_after: int = 0) -> float:
    """Run llmft-train in a fresh process; with ``stop_after``, send SIGTERM after that many logged steps."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llmft.train", *args, f"hydra.run.dir={folder}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if stop_after:
        metrics = folder / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().count("\n") >= stop_after):
            if proc.poll() is not None:
                raise SystemExit(f"the run ended before step {stop_after}: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    if proc.returncode not in (0, 143):
        raise SystemExit(f"llmft-train failed ({proc.returncode}): {err[-2000:]}")
    return time.perf_counter() - start


def logged_seconds(folder: Path, pattern: str) -> float:
    """The sum of the ``(N s)`` figures of the lines of ``folder/train.log`` that match ``pattern``."""
    return sum(float(m) for m in re.findall(pattern + r"[^\n]*?([0-9.]+) s\)", (folder / "train.log").read_text()))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):  # the rest are llmft-train overrides, which take no --help
        print(__doc__)
        return
    repeat = 1
    if args[:1] == ["--repeat"]:
        repeat, args = int(args[1]), args[2:]
    overrides = args
    plain, saved, interrupted, writes, reads, startups = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            root = Path(tmp) / str(i)
            plain.append(train([*overrides, "trainer.save_every=null"], root / "a"))
            steps = json.loads((root / "a" / "summary.json").read_text())["train_steps"]
            saved.append(train([*overrides, "trainer.save_every=1"], root / "b"))
            stopped = train([*overrides, "trainer.save_every=1"], root / "c", stop_after=max(1, steps // 2))
            resumed = train([f"resume={root / 'c'}"], root / "c")
            interrupted.append((stopped + resumed, stopped, resumed))
            summary = json.loads((root / "c" / "summary.json").read_text())
            assert summary["status"] == "completed", summary
            writes.append(logged_seconds(root / "b", r"Checkpoint "))
            reads.append(logged_seconds(root / "c", r"Resumed from "))
            startups.append(resumed - summary["duration_s"])
            print(f"round {i + 1}: (a) {plain[-1]:.1f} s  (b) {saved[-1]:.1f} s  (c) {stopped:.1f} + {resumed:.1f} s",
                  flush=True)
    a, b, (c, stopped, resumed) = min(plain), min(saved), min(interrupted)
    print(f"overrides: {' '.join(overrides) or '(the default run)'}; {steps} optimizer steps; fastest of {repeat}; "
          f"load average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs")
    print(f"(a) no checkpoints            {a:8.1f} s")
    print(f"(b) a checkpoint every step    {b:8.1f} s   overhead {100 * (b / a - 1):+.1f}%")
    print(f"(c) stopped at step {summary['resumed_from_step']:<3d} + resumed {stopped:6.1f} + {resumed:.1f} s   "
          f"overhead {100 * (c / b - 1):+.1f}% of (b)")
    print(f"from the logs (median of {repeat}): {steps} checkpoint writes {median(writes):.2f} s in all "
          f"({100 * median(writes) / b:.1f}% of (b)); reading the checkpoint back {median(reads):.2f} s; "
          f"the resumed process's start-up before its run began {median(startups):.1f} s")


if __name__ == "__main__":
    main()

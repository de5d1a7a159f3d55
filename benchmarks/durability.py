"""What checkpoints and resuming cost on a real run, measured side by side in one invocation.

    python benchmarks/durability.py                 # the default llmft-train (SmolLM2-135M, bundled data)
    python benchmarks/durability.py model=tiny      # any overrides, e.g. a quick check

Three runs of the same command, each a fresh process:
  (a) no checkpoint (trainer.save_every=null),
  (b) a checkpoint after every optimizer step (trainer.save_every=1: the most a user can ask for),
  (c) as (b), stopped with SIGTERM half-way through training, then `llmft-train resume=RUN`.
It prints the wall time of each, the checkpointing overhead (b / a - 1) and the resume overhead
((c stopped + c resumed) / b - 1: what the interruption cost in total, start-up and reloading included).
"""

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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


def main() -> None:
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = train([*overrides, "trainer.save_every=null"], root / "a")
        steps = json.loads((root / "a" / "summary.json").read_text())["train_steps"]
        saved = train([*overrides, "trainer.save_every=1"], root / "b")
        stopped = train([*overrides, "trainer.save_every=1"], root / "c", stop_after=max(1, steps // 2))
        resumed = train([f"resume={root / 'c'}"], root / "c")
        summary = json.loads((root / "c" / "summary.json").read_text())
        assert summary["status"] == "completed", summary
    print(f"overrides: {' '.join(overrides) or '(the default run)'}; {steps} optimizer steps")
    print(f"(a) no checkpoints            {plain:8.1f} s")
    print(f"(b) a checkpoint every step    {saved:8.1f} s   overhead {100 * (saved / plain - 1):+.1f}%")
    print(f"(c) stopped at step {summary['resumed_from_step']:<3d} + resumed {stopped:6.1f} + {resumed:.1f} s   "
          f"overhead {100 * ((stopped + resumed) / saved - 1):+.1f}% of (b)")


if __name__ == "__main__":
    main()

"""The default `llmft-train` of this checkout against an earlier commit's, side by side in one invocation.

    python benchmarks/default_run.py                        # against 2a4f72f, the last commit before the speed work
    python benchmarks/default_run.py --baseline HEAD~5 --repeat 2 trainer.num_epochs=1

Each run is a fresh process in the same virtual environment; the baseline's code is a temporary `git worktree`
put first on PYTHONPATH. With ``--repeat N`` the two alternate (old, new, old, new, ...) and the fastest of each is
compared, so that a change of load during the benchmark does not show up as a speed-up. It prints the wall time of
each run (start-up, evaluation before and after, and training), the training time and the figures the run reports
(validation perplexity and the answers' mean chrF, base -> fine-tuned), so that a faster run is also seen to be no
worse.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(code: Path, folder: Path, overrides) -> dict:
    """``python -m llmft.train`` with ``code`` first on the path; its wall time and what its summary.json says."""
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "llmft.train", *overrides, f"hydra.run.dir={folder}"],
                            cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"llmft-train ({code}) failed with exit {result.returncode}:\n{result.stderr[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return {"wall": wall, "summary": summary}


def figures(summary: dict) -> str:
    """What a run reports, as far as its commit's summary.json has it."""
    nan = float("nan")
    text = f"val perplexity {summary.get('base_perplexity', nan):.2f} -> {summary.get('perplexity', nan):.2f}"
    means = summary.get("answer_means") or {}
    if means:
        text += f", mean chrF {means['base']['chrf']:.2f} -> {means['finetuned']['chrf']:.2f}"
    parts = [(label, summary.get(key)) for label, key in (("training", "train_duration_s"),
                                                         ("evaluation before", "base_eval_duration_s"),
                                                         ("after", "eval_duration_s"))]
    return text + "".join(f", {label} {seconds:.1f} s" for label, seconds in parts if seconds is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="2a4f72f", help="the commit to compare with (default: 2a4f72f)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="llmft-train overrides given to both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmft-default-run-") as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.baseline], check=True,
                       capture_output=True)
        try:
            runs = {"baseline": [], "this checkout": []}
            for i in range(args.repeat):
                for name, code in (("baseline", old), ("this checkout", ROOT)):
                    run = one_run(code, Path(tmp) / f"{name.replace(' ', '-')}-{i}", args.overrides)
                    runs[name].append(run)
                    print(f"round {i + 1} {name}: {run['wall']:.1f} s; {figures(run['summary'])}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    best = {name: min(r["wall"] for r in rs) for name, rs in runs.items()}
    print(f"overrides: {' '.join(args.overrides) or '(the default run)'}; fastest of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs")
    print(f"baseline {args.baseline}: {best['baseline']:.1f} s; this checkout: {best['this checkout']:.1f} s "
          f"({best['this checkout'] / best['baseline']:.2f} of the baseline's time)")


if __name__ == "__main__":
    main()

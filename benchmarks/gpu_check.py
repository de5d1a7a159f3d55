"""What llmft does on a real GPU, in under 10 minutes: each check a subprocess, one line each (PASS/FAIL, seconds,
key figure). Run it whenever a CUDA machine is at hand, and put its output in the README's "GPUs" section.

    python benchmarks/gpu_check.py              # on a machine with CUDA: every check
    python benchmarks/gpu_check.py --dry-run    # print what it would run (the default without CUDA)

Checks: the default run on hardware=cpu and on the card's profile (chosen from the card's memory); QLoRA
quantization=nf4,int8 on the tiny model and on SmolLM2 (SmolLM2 also without quantization: three settings whose
planned peak is compared with torch.cuda.max_memory_allocated); a 2-profile sweep (cpu and the card's); llmft-eval
and llmft-export --merge of the tiny nf4 run.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

TRAIN = [sys.executable, "-m", "llmft.train"]
TINY = ["experiment=smoke", "trainer.max_steps=6"]
SMOL = ["model=smollm2-135m", "data.max_samples=64", "trainer.max_steps=10", "eval=perplexity"]


@dataclass
class Check:
    """One subprocess and how to read its key figure from the run folders it leaves."""

    name: str
    argv: List[str]
    folders: List[Path] = field(default_factory=list)
    figure: Optional[Callable[[List[dict]], str]] = None
    timeout_s: int = 240


def profile_for(total_gib: float, name: str) -> str:
    """The hardware profile of a card, from its memory (and its name, for the two 80 GB ones)."""
    if total_gib < 12:
        return "gtx1660-6gb"
    if total_gib < 40:
        return "rtx4090-24gb"
    return "h100-80gb" if any(n in name for n in ("H100", "H200", "GH200")) else "a100-80gb"


def summaries(folders: List[Path]) -> List[dict]:
    out = []
    for folder in folders:
        path = folder / "summary.json"
        out.append(json.loads(path.read_text()) if path.is_file() else {"status": "no summary.json"})
    return out


def run_figure(rows: List[dict]) -> str:
    return "; ".join(f"{r.get('status')} ppl {r.get('base_perplexity', 0) or 0:.2f}->{r.get('perplexity', 0) or 0:.2f}"
                     f" peak {r.get('peak_memory_mb', 0):.0f} MB skipped {r.get('skipped_steps', '-')}" for r in rows)


def plan_figure(rows: List[dict]) -> str:
    """Planned vs measured peak (torch.cuda.max_memory_allocated for a GPU run), per job."""
    return "; ".join(f"{r.get('overrides', ['?'])[-1] if r.get('overrides') else '?'}: plan "
                     f"{r.get('predicted_peak_mb', '-')} MB vs {r.get('peak_memory_mb', '-')} MB "
                     f"({r.get('memory_error_pct', '-')}%)" for r in rows)


def checks(profile: str, out: Path) -> List[Check]:
    """Every check, in order; the tiny nf4 run of the third is what llmft-eval and llmft-export read."""
    def run(tag, *overrides):
        return Check(tag, [*TRAIN, *overrides, f"hydra.run.dir={out / tag}"], [out / tag], run_figure)

    def sweep(tag, n, *overrides, figure=run_figure, timeout_s=300):
        return Check(tag, [*TRAIN, "-m", *overrides, f"hydra.sweep.dir={out / tag}"],
                     [out / tag / str(i) for i in range(n)], figure, timeout_s)

    qlora = out / "tiny-quant" / "0"
    return [
        run("default-cpu", "hardware=cpu"),
        run(f"default-{profile}", f"hardware={profile}"),
        sweep("tiny-quant", 2, *TINY, f"hardware={profile}", "quantization=nf4,int8"),
        sweep("smollm2-quant", 3, *SMOL, f"hardware={profile}", "quantization=none,nf4,int8", figure=plan_figure),
        sweep("two-profiles", 2, *TINY, f"hardware=cpu,{profile}"),
        Check("llmft-eval", [sys.executable, "-m", "llmft.reevaluate", str(qlora), "eval=perplexity"], timeout_s=120),
        Check("llmft-export --merge", [sys.executable, "-m", "llmft.export.cli", str(qlora), "--merge", "--force"],
              timeout_s=120),
    ]


def run_check(check: Check, time_left: float) -> str:
    """Run one check; its line: PASS/FAIL/SKIP, seconds, name, key figure (or the error's last line)."""
    if time_left < 30:
        return f"SKIP    0.0s  {check.name}: the 10-minute budget is spent"
    start = time.perf_counter()
    try:
        result = subprocess.run(check.argv, capture_output=True, text=True, timeout=min(check.timeout_s, time_left))
        ok, tail = result.returncode == 0, (result.stdout + result.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        ok, tail = False, [f"timed out after {min(check.timeout_s, time_left):.0f} s"]
    seconds = time.perf_counter() - start
    rows = summaries(check.folders)
    ok = ok and all(r.get("status") == "completed" for r in rows)
    figure = check.figure(rows) if check.figure and rows else (tail[0][:200] if tail else "")
    return f"{'PASS' if ok else 'FAIL'}  {seconds:5.1f}s  {check.name}: {figure}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands only (the default without CUDA)")
    parser.add_argument("--out", help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--budget-s", type=float, default=570, help="stop starting checks after this many seconds")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    out = Path(args.out or (Path(tempfile.gettempdir()) / "llmft-gpu-check" if dry else
                            tempfile.mkdtemp(prefix="llmft-gpu-check-")))
    if cuda:
        props = torch.cuda.get_device_properties(0)
        profile = profile_for(props.total_memory / 2**30, props.name)
        print(f"{props.name}, {props.total_memory / 2**30:.1f} GiB, torch {torch.__version__} CUDA "
              f"{torch.version.cuda}: profile {profile}; runs under {out}")
    else:
        profile = "rtx4090-24gb"
        print("No CUDA GPU here: what a GPU machine would run (profile chosen there from the card's memory; "
              f"{profile} shown):")
    todo = checks(profile, out)
    if dry:
        for check in todo:
            print(f"{check.name}: python {' '.join(check.argv[1:])}")
        return 0
    deadline = time.perf_counter() + args.budget_s
    passed = True
    for check in todo:  # each line as soon as it is known: a machine taken back mid-way still leaves them
        line = run_check(check, deadline - time.perf_counter())
        print(line, flush=True)
        passed = passed and line.startswith("PASS")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""How long ``llmft-plan`` takes for every model option, beside what a planner that loads the libraries costs.

    python benchmarks/plan_speed.py
    python benchmarks/plan_speed.py --repeat 5

Each figure is the wall time of a fresh process (the way a user runs it), the median of ``--repeat`` runs:

- ``llmft-plan model=X``: compose and check the overrides, read the architecture figures, plan, print.
- ``meta-device model``: what a planner built on the libraries pays before any arithmetic: import torch and
  transformers and build the model on the meta device from the same figures (no weights) to count its
  parameters (``accelerate estimate-memory`` does this, and needs the hub besides).

The issue's target: ``llmft-plan`` under 5 s for every model in ``conf/model``. The machine's load average is
printed: on a shared machine the figures move with it.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
META = ("import sys, torch\nfrom transformers import AutoConfig, AutoModelForCausalLM\n"
        "from hydra import compose, initialize_config_dir\n"
        "with initialize_config_dir(config_dir=sys.argv[1], version_base='1.3'):\n"
        "    node = compose(config_name='train', overrides=['model=' + sys.argv[2]]).model\n"
        "arch = dict(node.arch)\n"
        "config = AutoConfig.for_model(arch.pop('model_type', 'llama'), **arch, **({'vocab_size': 259} "
        "if sys.argv[2] == 'tiny' else {}))\n"
        "with torch.device('meta'):\n"
        "    print(AutoModelForCausalLM.from_config(config).num_parameters())\n")


def wall(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    plan = [sys.executable, "-m", "llmft.plan"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {args.repeat} runs\n")
    print(f"{'model':<16} {'llmft-plan':>11} {'meta-device model':>18}")
    for option in sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")):
        ours = statistics.median(wall(plan + [f"model={option}"]) for _ in range(args.repeat))
        meta = statistics.median(wall([sys.executable, "-c", META, str(CONFIG_DIR), option])
                                 for _ in range(args.repeat))
        print(f"{option:<16} {ours:>10.2f}s {meta:>17.2f}s")


if __name__ == "__main__":
    main()

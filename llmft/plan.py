"""``llmft-plan``: the predicted peak memory of the run ``llmft-train`` would start, without loading a weight.

It takes the same overrides (``llmft-plan model=tinyllama-1.1b quantization=nf4 hardware=gtx1660-6gb``), prints
the plan term by term against the hardware profile's budget, and, when it does not fit, the changes that would
make it fit. With sweep overrides (``lora.r=8,16 hardware=cpu,gtx1660-6gb``) it prints one line per point.
Exit status: 0 when every planned run fits, 1 when one does not, 2 for a bad command line.
"""

import itertools
import sys
from typing import List, Optional, Sequence

from llmft.config.precheck import check_overrides, fail, sweep_choices
from llmft.errors import ConfigError
from llmft.planning import plan_memory, setup_from_cfg
from llmft.planning.fit import suggest
from llmft.planning.report import format_plan, size

PROGRAM = "llmft-plan"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script: plan the run (or each point of a sweep) that the overrides describe."""
    args = [a for a in (sys.argv[1:] if argv is None else argv)
            if a not in ("-m", "--multirun") and not a.lstrip("+~").startswith("hydra")]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.replace("``", "").strip())
        return
    try:
        points = grid(args)
        plans = [(point, _plan(point)) for point in points]
    except ConfigError as exc:
        fail(str(exc), program=PROGRAM)
    if len(plans) == 1:
        plan = plans[0][1]
        print(format_plan(plan, [] if plan.fits else suggest(plan.setup)))
    else:
        for point, plan in plans:
            print(f"{size(plan.total_bytes):>10}  {plan.verdict:<40}  {' '.join(point)}")
    sys.exit(0 if all(plan.fits for _, plan in plans) else 1)


def _plan(overrides: List[str]):
    return plan_memory(setup_from_cfg(check_overrides(overrides)))


def grid(overrides: Sequence[str]) -> List[List[str]]:
    """Every point of the sweep the overrides describe (one point when none sweeps).

    Raises:
        ConfigError: an override cannot be parsed, or sweeps over a range rather than a list of values.
    """
    choices = sweep_choices(overrides)
    for text, values in zip(overrides, choices):
        if values is None:
            key = text.split("=", 1)[0]
            raise ConfigError(f"{text} is a search space, not a list of values: give {key} a few values "
                              f"({key}=a,b,c) to plan each.")
    return [list(point) for point in itertools.product(*choices)]


if __name__ == "__main__":
    main()

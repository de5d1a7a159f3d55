"""What the data command lines share: Hydra overrides composed as ``llmft-train`` composes them, and clean errors."""

import logging
import os
import sys
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from omegaconf import DictConfig

from llmft.config.precheck import check_overrides, fail
from llmft.errors import LlmftError


def split_overrides(args: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Separate ``key=value`` overrides (as ``llmft-train`` takes them) from the other arguments."""
    overrides = [a for a in args if "=" in a and not a.startswith("-") and not Path(a).exists()]
    return overrides, [a for a in args if a not in overrides]


def compose(prog: str, overrides: Sequence[str]) -> DictConfig:
    """The run configuration ``llmft-train`` would compose from ``overrides``; a mistake exits with its message."""
    from llmft.config.validate import check_target
    from llmft.errors import ConfigError

    try:
        cfg = check_overrides(list(overrides))
        check_target("data_format", cfg.data_format)  # its keys are the converter's arguments
    except ConfigError as exc:
        fail(str(exc), program=prog)
    return cfg


def main_guard(prog: str, body: Callable[[], int]) -> None:
    """Run a command line's body: an ``LlmftError`` becomes one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    try:
        code = body()
    except LlmftError as exc:
        fail(str(exc), code=1, program=prog)
    except KeyboardInterrupt:
        fail("interrupted.", code=130, program=prog)
    except BrokenPipeError:  # the reader went away (llmft-synth | head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)

"""A run's base model and adapter, loaded without the noise of libraries on the way (export and chat)."""

import logging
import warnings

from llmft.runs import FinishedRun, load_with_adapter


def load_quietly(run: FinishedRun, **kwargs):
    """``load_with_adapter`` without the noise of libraries on the way, which asks nothing of a user:
    bitsandbytes' optional CPU kernel package, and peft calling a name transformers 5 deprecated."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return load_with_adapter(run, **kwargs)

"""Library messages that say nothing to a user of llmft, dropped where they come from: by the logger that emits
them and the start of the message, never by level or globally. ``hydra.verbose=true`` keeps every one of them.

Each entry says why it is noise; a message that could mean a wrong result (bitsandbytes' autograd warning for
4-bit weights on the CPU, for one) is kept.
"""

import importlib
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from functools import partial
from typing import Tuple

# (logger, message start): why it is noise.
NOISE: Tuple[Tuple[str, str], ...] = (
    # bitsandbytes, on importing, on a CPU with AVX512-BF16: an optional faster 4-bit CPU kernel from the `kernels`
    # package is missing; the built-in kernel runs instead. Printed on every run, with or without quantization.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    # rouge_score (through absl logging), each time a ROUGE scorer is built: once per scored answer.
    ("absl", "Using default tokenizer."),
    # Hydra, when a _target_ does not import: llmft's own error (llmft.config.validate.check_target) says the same
    # in one paragraph; Hydra's copy came first, in three lines.
    ("hydra.utils", "Error getting object at"),
)

# (module, its name for tqdm): plain tqdm bars that transformers' disable_progress_bar() leaves on. Why noise: a
# bar redrawn per tensor, hundreds of lines in a log file, for a step that takes seconds and says nothing else.
BARS: Tuple[Tuple[str, str], ...] = (
    # transformers reading a GGUF file ("Converting and de-quantizing GGUF tensors..."): the SmolLM2 fallback's
    # first load, and llmft-export --gguf's check.
    ("transformers.modeling_gguf_pytorch_utils", "tqdm"),
)


class DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_libraries(verbose: bool = False) -> None:
    """Install the filters of ``NOISE`` (once per process), and keep progress bars off a stderr that is not a
    terminal (a log file, CI). Call it before torch, transformers or bitsandbytes is imported.

    Args:
        verbose: ``hydra.verbose``: change nothing, show everything.
    """
    if verbose:
        return
    for name, prefix in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(DropMessage(prefix))
    if not sys.stderr.isatty():
        late = "tqdm" in sys.modules  # TQDM_DISABLE is read when tqdm is imported
        os.environ.setdefault("TQDM_DISABLE", "1")  # plain tqdm bars of modules imported later: read at tqdm's import
        import transformers

        transformers.utils.logging.disable_progress_bar()
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        else:  # read when datasets is imported, as disable_progress_bars() would set it: not imported for nothing
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        for module, name in BARS:  # already imported, where TQDM_DISABLE came too late: off at the source
            if late or module in sys.modules:  # not imported for nothing: the GGUF reader costs seconds (llmft-chat)
                owner = importlib.import_module(module)
                bar = getattr(owner, name)
                if not isinstance(bar, partial):
                    setattr(owner, name, partial(bar, disable=True))


@contextmanager
def peft_on_transformers5():
    """peft (building or loading an adapter) still reads ``is_gradient_checkpointing``, which transformers 5
    deprecated: a FutureWarning about a name llmft does not call, with nothing for a user to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield

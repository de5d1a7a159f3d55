"""Stop cleanly on Ctrl-C or SIGTERM: finish the optimizer step, checkpoint, and say how to resume.

The first SIGINT or SIGTERM only raises a flag that the training loop reads after each optimizer step; a second
SIGINT stops at once (``KeyboardInterrupt``), as users expect of a second Ctrl-C.
"""

import signal
import threading
from typing import Optional

from llmft.errors import LlmftError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(LlmftError):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, resume_command: str):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after optimizer step {step}, checkpoint "
                         f"written. Continue with: {resume_command}")


class StopFlag:
    """A context manager that turns the first SIGINT/SIGTERM into a flag (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        # nothing but a flag here: logging from a signal handler can re-enter a stream the interrupted code was
        # writing ("reentrant call"); the loop says what happens once the step is done
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum

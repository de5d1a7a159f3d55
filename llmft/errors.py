"""The errors llmft expects and explains.

An ``LlmftError`` is a problem the user can act on (a bad value, a missing file, a broken record). The entry
points print its message as one paragraph with no traceback; anything else keeps its traceback.
"""


class LlmftError(Exception):
    """A failure the user can fix; its message says what to do."""


class ConfigError(LlmftError):
    """A composed configuration that names an unknown key, option, or an out-of-range value."""


class DataError(LlmftError):
    """Input data that cannot be read or does not fit the conversation schema."""


class ModelLoadError(LlmftError):
    """Model weights or a tokenizer that cannot be found or loaded."""


class PeerError(LlmftError):
    """Another process of a run on several processes failed; this one stops with it (its message quotes that one)."""


class NonFiniteLossError(LlmftError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        self.step = step
        super().__init__(
            f"the training loss became {loss} at optimizer step {step}. Lower the learning rate "
            "(trainer.learning_rate), keep gradient clipping on (trainer.max_grad_norm), or use bf16/fp32 instead "
            "of fp16 (hardware.precision)."
        )


class DeviceUnavailableError(ConfigError):
    """The hardware profile needs a device this machine lacks (a CUDA profile on a CPU-only machine)."""


class MemoryBudgetError(LlmftError):
    """The memory plan of a run exceeds its hardware profile's budget (``llmft-plan`` shows the plan)."""

"""OmegaConf resolvers used by the YAML files in ``conf/``.

``${dtype:bf16}`` maps a precision name to a torch dtype name (``bfloat16``), so that the quantization config
takes its compute dtype from the hardware profile (``${dtype:auto,cpu}`` asks this machine); ``${precision:auto,cpu}``
is the precision ``auto`` stands for on this machine. ``${sample_data:kubernetes}`` is the folder of a dataset bundled
with the package, wherever the package is installed. ``${run_id:}`` tells apart the folders of runs
started in the same second.
"""

import secrets
from pathlib import Path

from omegaconf import OmegaConf

from llmft.hardware import PRECISION_DTYPES, resolve_precision

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"


def precision_to_dtype(precision: str, device: str = "cpu") -> str:
    """Return the torch dtype name for a precision name (``bf16`` -> ``bfloat16``); ``auto`` is resolved for this
    machine and ``device`` first (``llmft.hardware.resolve_precision``)."""
    return PRECISION_DTYPES.get(resolve_precision(str(precision), str(device)), str(precision))


def sample_data(name: str) -> str:
    """Return the absolute path of a dataset bundled in ``llmft/sample_data``."""
    return str(SAMPLE_DATA / name)


def run_id() -> str:
    """Six random hex digits: two runs started in the same second get two folders."""
    return secrets.token_hex(3)


OmegaConf.register_new_resolver("run_id", run_id, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dtype", precision_to_dtype, replace=True)
OmegaConf.register_new_resolver("precision", resolve_precision, replace=True)
OmegaConf.register_new_resolver("sample_data", sample_data, replace=True)

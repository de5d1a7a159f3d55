"""``llmft-doctor [OVERRIDE ...]``: what this machine runs llmft on, and whether the install works.

It prints what every run records in ``summary.json`` (``environment``), then checks bitsandbytes (a 4-bit
quantize round trip on this machine's device), the ``gguf`` package, and the default model's offline weights.
Overrides are llmft-train's (``paths.cache_dir=DIR``, ``model=OPTION``). Exit status 1 when a check fails.
"""

import importlib.util
import json
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from llmft.config.precheck import check_overrides, fail
from llmft.environment import describe_environment
from llmft.errors import LlmftError
from llmft.quiet import quiet_libraries


def check_bitsandbytes() -> str:
    """A 4-bit (NF4) quantize and dequantize round trip with bitsandbytes on CUDA if present, else the CPU."""
    import bitsandbytes.functional as F
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(64, 64, device=device)
    packed, state = F.quantize_4bit(x, quant_type="nf4")
    error = (F.dequantize_4bit(packed, state) - x).abs().mean().item()
    if not error < 0.2:
        raise RuntimeError(f"the NF4 round trip on {device} is off by {error:.3f} on average (expected < 0.2)")
    return f"NF4 round trip on {device}: mean error {error:.3f}"


def check_gguf() -> str:
    """The ``gguf`` package that transformers needs to read the offline GGUF weights."""
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("the gguf package is not installed: pip install gguf")
    from importlib import metadata

    return f"gguf {metadata.version('gguf')}"


def check_weights(model, cache_dir: Optional[str]) -> str:
    """Where the model option's weights would load from offline (no download, no conversion)."""
    from hydra.utils import get_method

    from llmft.model_cache import conversion_of, fallback_for
    from llmft.models import load_pretrained
    from llmft.models.gguf import locate_gguf
    from llmft.models.hub import check_available, find_source

    if get_method(model._target_) is not load_pretrained:
        return f"{model._target_} builds its model in-process: no weights to find"
    name = str(model.get("name_or_path"))
    source = find_source(name, model.get("revision"), model.get("gguf"), cache_dir)
    if source is not None:
        kind = "converted copy" if conversion_of(name, cache_dir, model.get("gguf")) else "source"
        return f"{name}: {kind} {source}"
    check_available(name, model.get("revision"), model.get("gguf"), cache_dir)  # raises when nothing has it
    gguf = fallback_for(name, model.get("gguf"))
    path = locate_gguf(gguf["package"], gguf["file"])
    return f"{name}: GGUF file {path}; the first run converts it (~30 s), or now: python -m llmft.models"


def run_checks(checks: Sequence[Tuple[str, Callable[[], str]]]) -> List[str]:
    """Run each check, print ``ok`` or ``FAILED`` with its answer; return the names of those that failed."""
    failed = []
    for name, check in checks:
        try:
            print(f"  ok      {name}: {check()}")
        except (LlmftError, RuntimeError, ImportError, OSError) as exc:
            print(f"  FAILED  {name}: {exc}")
            failed.append(name)
    return failed


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script."""
    quiet_libraries()
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    try:
        cfg = check_overrides(args)
    except LlmftError as exc:
        fail(str(exc), program="llmft-doctor")
    print("Environment (each run records it in summary.json as environment):")
    print(json.dumps(describe_environment(), indent=2))
    print("Checks:")
    failed = run_checks([("bitsandbytes", check_bitsandbytes), ("gguf", check_gguf),
                         ("offline weights", lambda: check_weights(cfg.model, cfg.paths.cache_dir))])
    if failed:
        fail(f"{len(failed)} check(s) failed: {', '.join(failed)}. Each line above says what to do.", code=1,
             program="llmft-doctor")


if __name__ == "__main__":
    main()

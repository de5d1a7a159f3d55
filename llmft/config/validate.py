"""Checks on a composed configuration that run before any weight or record is loaded.

Hydra and the typed schema already reject unknown keys and values of the wrong type. Here: the ranges and
choices declared in ``llmft.config.schema``, that every callable named is on the allow-list
(``llmft.config.targets``), and that each ``_target_``'s keys bind to its signature. Every failure is a
``ConfigError`` whose message names the key and what is allowed.
"""

import dataclasses
import difflib
import inspect
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from llmft.config.schema import TrainConf
from llmft.config.targets import ALLOWED_TARGETS, check_callables, iter_targets
from llmft.errors import ConfigError
from llmft.planning.setup import process_count

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def validate(cfg: DictConfig, bind_targets: bool = True) -> None:
    """Raise ``ConfigError`` if ``cfg`` breaks a declared range or names a target it should not.

    Args:
        cfg: the composed run configuration (``conf/train.yaml`` and its groups).
        bind_targets: also import each of llmft's own ``_target_`` and bind its keys to its signature (seconds:
            it imports torch, transformers and peft); without it only the allow-list is checked for those. The
            callables a user allowed (``LLMFT_ALLOW_TARGETS``) are imported and bound either way, so that one that
            does not import stops ``llmft-train``'s first-second check, before a run folder exists.

    Raises:
        ConfigError: with a message that names the key, the value and what is allowed.
    """
    _check_limits(cfg, TrainConf, "")
    process_count(cfg.hardware)  # hardware.num_processes against the launcher's count
    check_callables(cfg)
    for path, node in iter_targets(cfg):
        if bind_targets or str(node._target_) not in ALLOWED_TARGETS:  # the user's own: they may not import
            check_target(path, node)


def _check_limits(node: DictConfig, schema: type, prefix: str) -> None:
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if OmegaConf.is_missing(node, f.name):
            raise ConfigError(f"{key} has no value. Set it on the command line ({key}=...) or in a config file. "
                              f"{f.metadata.get('help', '')}".strip())
        value = node[f.name]
        if dataclasses.is_dataclass(f.type):
            _check_limits(value, f.type, key + ".")
        elif f.metadata and value is not None:
            _check_value(key, value, f.metadata)


def _check_value(key: str, value: Any, meta: dict) -> None:
    bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
              ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)]
    broken = [f"{sign} {meta[name]}" for name, sign, ok in bounds if name in meta and not ok(value, meta[name])]
    allowed = " and ".join(f"{sign} {meta[name]}" for name, sign, _ in bounds if name in meta)
    if broken:
        raise ConfigError(f"{key}={value} is out of range: it must be {allowed} ({meta.get('help', '')}). "
                          f"Override it on the command line, e.g. {key}=<value>.")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}={value} is not allowed: choose one of {', '.join(map(str, meta['choices']))} "
                          f"({meta.get('help', '')}).")


def check_target(path: str, node: DictConfig) -> None:
    """Check that ``node._target_`` imports and accepts ``node``'s keys as keyword arguments."""
    target = node._target_
    where = path or "the config"
    try:
        obj = get_object(target)
    except Exception as exc:  # ImportError, AttributeError, Hydra's InstantiationException
        cause = exc.__cause__ or exc  # Hydra wraps the import's own error in three lines of its own
        raise ConfigError(f"{where}._target_={target} cannot be imported ({type(cause).__name__}: {cause}). Check "
                          "the spelling, or install the package that provides it.") from None
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # a builtin without a signature: nothing to check
    keys = [str(k) for k in node if k not in HYDRA_KEYS]
    try:
        signature.bind_partial(**{k: None for k in keys})
    except TypeError:
        params = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
        unknown = [k for k in keys if k not in signature.parameters]
        hint = difflib.get_close_matches(unknown[0], params, n=1) if unknown else []
        raise ConfigError(f"{where}.{unknown[0] if unknown else '?'} is not an argument of {target}"
                          f"{f' (did you mean {where}.{hint[0]}?)' if hint else ''}. Its arguments: "
                          f"{', '.join(params)}.") from None

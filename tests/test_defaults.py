"""Defaults have one home, the YAML files of ``conf/``: the schema's dataclasses and the signatures of llmft's own
callables state none that differ from it (issue 14)."""

import dataclasses
import inspect
from typing import Any, Dict, Iterator, Tuple

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from llmft.config import schema  # registers train_schema too



def schema_defaults(node=schema.TrainConf, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted key, default) of every schema field that states a default (not the untyped group nodes)."""
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type):
            yield from schema_defaults(f.type, key + ".")
        elif f.default is not dataclasses.MISSING and f.default != "???" and Any not in getattr(f.type, "__args__", (f.type,)):
            yield key, f.default


def targets(node: Any, prefix: str = "") -> Iterator[Tuple[str, DictConfig]]:
    """(dotted key, node) of every node with an ``llmft.`` ``_target_``."""
    if isinstance(node, DictConfig):
        if str(node.get("_target_", "")).startswith("llmft."):
            yield prefix, node
        for key in node:
            yield from targets(node[key], f"{prefix}{key}.")


def test_the_schema_states_no_default_that_differs_from_the_yaml(make_cfg):
    cfg = make_cfg()
    differ = {key: (default, OmegaConf.select(cfg, key)) for key, default in schema_defaults()
              if key != "_target_" and not key.endswith("._target_") and OmegaConf.select(cfg, key) != default}
    assert differ == {}, f"schema default -> YAML value: {differ}; state the default in conf/ only"


def test_llmft_signatures_state_no_default_that_differs_from_the_default_yaml(make_cfg):
    """For each llmft callable of the default run, a default in its signature is the one its YAML states."""
    cfg = make_cfg()
    differ: Dict[str, Any] = {}
    for where, node in targets(cfg):
        target = get_method(node._target_)
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
        values = OmegaConf.to_container(node, resolve=True)
        for name, parameter in signature.parameters.items():
            if name in values and parameter.default not in (inspect.Parameter.empty, None) \
                    and values[name] != parameter.default:  # None: an optional input not given, not a rival value
                differ[f"{where}{name}"] = (parameter.default, values[name])
    assert differ == {}, f"signature default -> YAML value: {differ}; leave the default to conf/"


def test_the_checks_above_see_a_default_that_differs():
    @dataclasses.dataclass
    class Node:
        rate: float = 2e-4

    assert list(schema_defaults(Node)) == [("rate", 2e-4)]

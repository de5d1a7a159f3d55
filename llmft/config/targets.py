"""Which callables a configuration may name: an explicit allow-list, each callable named in full.

A ``_target_`` is code execution: Hydra imports and calls it. A prefix check (``torch.``) would let
``torch.load`` through, so every name is listed. Besides ``_target_`` (in llmft's nodes and in Hydra's own
launcher, sweeper, sampler and callbacks), two other keys name callables that get called: ``class`` and ``()`` in
Hydra's logging configs (``logging.config.dictConfig``), and the Optuna sweeper's ``custom_search_space``.

A user allows a callable of their own with the environment variable ``LLMFT_ALLOW_TARGETS`` (full names, comma
separated). Nothing a config file or a run folder says can extend the list.
"""

import os
from pathlib import Path
from typing import FrozenSet, Iterator, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from llmft.errors import ConfigError

ENV_ALLOW = "LLMFT_ALLOW_TARGETS"

# The callables the shipped configs under conf/ name (tests/test_security.py keeps this list and conf/ in step).
LLMFT_TARGETS = frozenset({
    "llmft.models.load_pretrained", "llmft.models.build_tiny",
    "llmft.data.formats.auto", "llmft.data.formats.alpaca", "llmft.data.formats.sharegpt",
    "llmft.data.formats.messages", "llmft.data.formats.csv", "llmft.data.formats.text",
    "llmft.data.preference.chosen", "llmft.data.preference.preference", "llmft.objectives.DPO", "llmft.objectives.ORPO",
    "llmft.evaluation.PreferenceAccuracy",
    "llmft.loop.TrainingLoop", "llmft.objectives.SFT", "llmft.tracking.WandbLogger", "llmft.sweeps.callback.SweepSummary",
    "llmft.evaluation.Perplexity", "llmft.evaluation.PromptAnswers", "llmft.evaluation.ReferenceMetrics",
    "peft.LoraConfig", "transformers.BitsAndBytesConfig",
    "torch.optim.AdamW", "bitsandbytes.optim.PagedAdamW8bit",
    "accelerate.utils.FullyShardedDataParallelPlugin", "accelerate.utils.DistributedDataParallelKwargs",
})
# The launchers, sweepers and samplers of the installed Hydra plugins (every option of hydra/launcher,
# hydra/sweeper and hydra/sweeper/sampler), and the handlers of Hydra's logging options.
HYDRA_TARGETS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "optuna.samplers.TPESampler", "optuna.samplers.CmaEsSampler", "optuna.samplers.GridSampler",
    "optuna.samplers.MOTPESampler", "optuna.samplers.NSGAIISampler", "optuna.samplers.RandomSampler",
})
LOGGING_CALLABLES = frozenset({"logging.StreamHandler", "logging.FileHandler"})
ALLOWED_TARGETS = LLMFT_TARGETS | HYDRA_TARGETS


def user_allowed() -> FrozenSet[str]:
    """The callables the user allowed in ``LLMFT_ALLOW_TARGETS`` (full names, comma separated)."""
    return frozenset(t.strip() for t in os.environ.get(ENV_ALLOW, "").split(",") if t.strip())


def iter_targets(node, path: str = "") -> Iterator[Tuple[str, DictConfig]]:
    """Yield ``(dotted path, node)`` for every node of ``node`` that has a ``_target_``, including the nodes an
    interpolation creates when resolved (``${oc.create:{_target_: ...}}``)."""
    if isinstance(node, DictConfig) and not node._is_none():
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from iter_targets(_child(node, key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig) and not node._is_none():
        for i in range(len(node)):
            yield from iter_targets(_child(node, i), f"{path}[{i}]")


def _child(node, key):
    """``node``'s child at ``key``; an interpolation resolved, so that a node it creates is walked too."""
    if not OmegaConf.is_interpolation(node, key):
        return node._get_node(key)
    try:
        return node[key]
    except Exception:  # cannot resolve outside Hydra's runtime (${hydra:...}): a string, not a node
        return None


def named_callables(cfg: DictConfig) -> Iterator[Tuple[str, str]]:
    """Yield ``(key, callable name)`` for every key of ``cfg`` whose value is a callable that gets called."""
    for path, node in iter_targets(cfg):
        yield f"{path}._target_" if path else "_target_", _text(node, "_target_")
    for name in ("job_logging", "hydra_logging"):
        yield from _logging_callables(OmegaConf.select(cfg, f"hydra.{name}"), f"hydra.{name}")
    search_space = OmegaConf.select(cfg, "hydra.sweeper.custom_search_space", default=None)
    if search_space is not None:
        yield "hydra.sweeper.custom_search_space", str(search_space)


def _logging_callables(node, path: str) -> Iterator[Tuple[str, str]]:
    """``class`` and ``()`` keys anywhere in a ``logging.config.dictConfig`` node."""
    if isinstance(node, DictConfig) and not node._is_none():
        for key in node:
            if key in ("class", "()"):
                yield f"{path}.{key}", _text(node, key)
            else:
                yield from _logging_callables(node._get_node(key), f"{path}.{key}")


def _text(node: DictConfig, key: str) -> str:
    """The value of ``node[key]`` resolved if it can be (an interpolation), else as written."""
    try:
        return str(node[key])
    except Exception:  # an interpolation that cannot resolve here (${hydra:...}): judge the text itself
        return str(node._get_node(key)._value())


def check_callables(cfg: DictConfig, source: Optional[str] = None) -> None:
    """Raise ``ConfigError`` if ``cfg`` names a callable that is neither allowed here nor by the user.

    Args:
        cfg: a composed configuration, with or without its ``hydra`` node.
        source: where ``cfg`` was read from (a run folder's saved config), for the message; None: composed from
            the command line and the config folder.

    Raises:
        ConfigError: one paragraph naming the key, the callable and how to allow it.
    """
    allowed = _allowed()
    for key, name in named_callables(cfg):
        if name not in allowed:
            raise ConfigError(_refusal(key, name, source))


CALLABLE_KEYS = ("_target_", "class", "()", "custom_search_space")


def check_override_callables(overrides: Sequence[str]) -> None:
    """Check, as written, each callable an override sets (``+eval.x._target_=torch.load``, or a dict value such as
    ``+hydra.callbacks.x={_target_: ...}``), every value of a sweep included: this holds even for a ``hydra.*``
    override that cannot be composed outside Hydra.

    Raises:
        ConfigError: an override names a callable that is not allowed.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return  # composing them fails with the parser's message, and Hydra would refuse them too
    allowed = _allowed()
    for override, text in zip(parsed, overrides):
        key = override.get_key_element().lstrip("+~")
        try:
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # interval() or tag(): a search space, judged as written
            values = [text.partition("=")[2]]
        for path, name in (pair for value in values for pair in _callables_in(key, value)):
            if name not in allowed:
                raise ConfigError(_refusal(path, name, None))


def _callables_in(key: str, value) -> Iterator[Tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _callables_in(f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _callables_in(f"{key}[{i}]", v)
    elif key.rsplit(".", 1)[-1] in CALLABLE_KEYS:
        yield key, str(value)


def _allowed() -> FrozenSet[str]:
    return ALLOWED_TARGETS | LOGGING_CALLABLES | user_allowed()


def _refusal(key: str, name: str, source: Optional[str]) -> str:
    where = f" in {source}" if source else ""
    danger = (" A run folder is data, yet this key would run code when the run is opened: one someone hands you "
              "can carry a payload this way." if source else "")
    return (f"{key}={name}{where} is not allowed: llmft calls only the callables it lists by full name "
            f"(llmft.config.targets.ALLOWED_TARGETS), so that a config cannot run arbitrary code.{danger} If you "
            f"wrote {name} yourself and trust it, allow it for this command with the environment variable "
            f"{ENV_ALLOW}={name} (full names, comma separated); no config file or run folder can allow it.")


def check_saved_config(cfg: DictConfig, folder, overrides: Sequence[str] = (), source=None) -> None:
    """Check a run folder's saved config before anything in it is instantiated (llmft-eval, -export, resume).

    The same allow-list as on the command line, extended only by ``LLMFT_ALLOW_TARGETS`` in the user's own
    environment. ``model.trust_remote_code: true`` is refused unless ``overrides`` (typed by the user now) set it.

    Args:
        cfg: the saved ``.hydra/config.yaml``, as loaded.
        folder: the run folder, for the message.
        overrides: the overrides the user gave to the command that opens the run.
        source: the file ``cfg`` was read from (default: the folder's ``.hydra/config.yaml``).

    Raises:
        ConfigError: one paragraph naming the file, the key and what to do.
    """
    source = str(source or Path(folder) / ".hydra" / "config.yaml")
    check_callables(cfg, source)
    remote = OmegaConf.select(cfg, "model.trust_remote_code", default=False)
    if remote and "model.trust_remote_code=true" not in [o.lstrip("+").lower() for o in overrides]:
        raise ConfigError(f"{source} sets model.trust_remote_code=true: loading this run would run the Python code "
                          f"shipped with its model ({OmegaConf.select(cfg, 'model.name_or_path')}). A run folder "
                          "cannot turn that on; if you trust that code, pass model.trust_remote_code=true yourself "
                          "(llmft-eval RUN model.trust_remote_code=true, llmft-export RUN --trust-remote-code).")

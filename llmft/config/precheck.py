"""Fail fast and clearly on a bad command line, before Hydra runs anything.

The overrides are composed with Hydra's compose API (each value of a sweep in turn) and the composed config is
validated, Hydra's own node included: Hydra calls its launcher, sweeper and callbacks before llmft runs, so their
callables are checked here (``llmft.config.targets``), as are secrets on the command line
(``llmft.config.secrets``). Hydra's and OmegaConf's exceptions are translated into one paragraph that names the
key, the value and what is allowed; anything not foreseen here is left for Hydra to report.
"""

import ast
import dataclasses
import difflib
import sys
from pathlib import Path
from typing import List, NoReturn, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from llmft.config import schema  # noqa: F401  (registers train_schema)
from llmft.config.location import CONFIG_DIR, PACKAGE_DIR
from llmft.config.secrets import check_secret_overrides
from llmft.config.targets import check_callables, check_override_callables
from llmft.config.validate import validate
from llmft.errors import ConfigError

FLAGS_WITHOUT_RUN = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                     "--version", "--resolve", "-p", "--package"}


def fail(message: str, code: int = 2, program: str = "llmft-train") -> NoReturn:
    """Print ``message`` as one paragraph on stderr and exit with ``code``."""
    sys.stderr.write(f"{program}: error: {message}\n")
    sys.exit(code)


def precheck(argv: Sequence[str]) -> None:
    """Compose and validate the run(s) that ``argv`` asks for; exit with a clear message if one is invalid."""
    try:
        check_secret_overrides([a for a in argv if not a.startswith("-")])
        if any(a.split("=")[0] in FLAGS_WITHOUT_RUN for a in argv):
            return
        config_dir, config_name, overrides, hydra_overrides = _split_argv(argv)
        if config_dir is None:
            return
        for variant in _variants(overrides):
            check_overrides(variant, config_dir, config_name, hydra_overrides)
    except ConfigError as exc:
        fail(str(exc))


def check_overrides(overrides: List[str], config_dir: Path = CONFIG_DIR, config_name: str = "train",
                    hydra_overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``overrides``, validate the result and return it (resolved, without Hydra's node).

    Args:
        overrides: the run's overrides (one value each: no sweep).
        config_dir: the primary config folder.
        config_name: the primary config.
        hydra_overrides: ``hydra.*`` and ``hydra/...`` overrides: only the callables they name are checked.

    Raises:
        ConfigError: a one-paragraph explanation of what is wrong and what is allowed.
    """
    everything = [*overrides, *hydra_overrides]
    check_secret_overrides(everything)
    check_override_callables(everything)
    try:
        cfg = _compose_checked(overrides, hydra_overrides, config_dir, config_name)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc, overrides, config_dir)) from None
    except ConfigCompositionException as exc:
        raise ConfigError(_composition_error(exc, overrides, config_dir, config_name)) from None
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse an override: {exc}") from None
    try:
        OmegaConf.resolve(cfg)
    except ValidationError as exc:  # an interpolation whose value does not fit its key's type
        if not getattr(exc, "full_key", None):
            raise
        raise ConfigError(_wrong_type(exc, overrides)) from None
    validate(cfg, bind_targets=False)
    from llmft.data.precheck import check_data_paths  # reads the data module only for a config that composed

    check_data_paths(cfg)
    return cfg


def _compose(overrides: List[str], config_dir: Path, config_name: str, with_hydra: bool = False):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)


def _compose_checked(overrides: List[str], hydra_overrides: Sequence[str], config_dir: Path, config_name: str):
    """Compose with Hydra's node, check the callables Hydra itself calls, and return the config without it."""
    try:
        cfg = _compose([*overrides, *hydra_overrides], config_dir, config_name, with_hydra=True)
    except (ConfigCompositionException, OverrideParseException):
        if not hydra_overrides:
            raise
        # a hydra override that compose cannot apply (Hydra itself judges it); its callables were checked as text
        cfg = _compose(overrides, config_dir, config_name, with_hydra=True)
    check_callables(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _split_argv(argv: Sequence[str]):
    """Return (config dir, config name, overrides, hydra overrides); config dir None when the arguments are not a
    plain run (Hydra refuses flags it does not know).

    Raises:
        ConfigError: ``--experimental-rerun``, which unpickles a file (code execution).
    """
    config_dir, config_name, overrides, hydra_overrides = CONFIG_DIR, "train", [], []
    args = iter(argv)
    for arg in args:
        flag, _, value = arg.partition("=")
        if arg in ("-m", "--multirun", "-r", "--run"):
            continue
        if flag in ("-cd", "--config-dir", "-cp", "--config-path"):
            # Hydra reads a relative --config-path from the folder of llmft/train.py
            base = Path.cwd() if flag in ("-cd", "--config-dir") else PACKAGE_DIR
            config_dir = (base / (value or next(args, ""))).resolve()
        elif flag in ("-cn", "--config-name"):
            config_name = value or next(args, "train")
        elif flag == "--experimental-rerun":
            raise ConfigError("--experimental-rerun is refused: it unpickles the file it is given, and a pickle runs "
                              "any code it holds. Run again with the run's overrides instead (RUN/.hydra/"
                              "overrides.yaml).")
        elif arg.startswith("-"):
            return None, config_name, [], []
        elif arg.lstrip("+~").startswith("hydra"):
            hydra_overrides.append(arg)
        else:
            overrides.append(arg)
    return config_dir, config_name, overrides, hydra_overrides


def sweep_choices(overrides: Sequence[str]) -> List[Optional[List[str]]]:
    """For each override, the single overrides it stands for (``lora.r=4,8`` -> ``lora.r=4``, ``lora.r=8``), or
    None for a sweeper's search space (``interval()``, ``tag()``), which is not a list of values.

    Raises:
        ConfigError: the command line cannot be parsed.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse the command line: {exc}") from None
    choices: List[Optional[List[str]]] = []
    for override, text in zip(parsed, overrides):
        if not override.is_sweep_override():
            choices.append([text])
            continue
        key = text.split("=", 1)[0]
        try:
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        except Exception:  # interval() or tag(): a search space
            choices.append(None)
    return choices


def _variants(overrides: List[str]) -> List[List[str]]:
    """One override list per value of each sweep (not the full grid): every value gets composed once."""
    choices = [c or [] for c in sweep_choices(overrides)]
    firsts = [c[0] if c else None for c in choices]
    variants = [firsts] + [firsts[:i] + [value] + firsts[i + 1:]
                           for i, values in enumerate(choices) for value in values[1:]]
    return [[o for o in v if o] for v in variants]


def _options(config_dir: Path, group: str) -> List[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _missing_option(exc: MissingConfigException, overrides: List[str], config_dir: Path) -> str:
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    group, _, option = missing.rpartition("/")
    options = _options(config_dir, group) if group else []
    if not options:
        return f"{str(exc).splitlines()[0]}"
    hint = difflib.get_close_matches(option, options, n=1)
    suggestion = f" (did you mean {group}={hint[0]}?)" if hint else ""
    return (f"{group}={option} is not an option of the {group} group{suggestion}. "
            f"The options are: {', '.join(options)} (files in conf/{group}/). To add one, write "
            f"conf/{group}/{option}.yaml.")


def _composition_error(exc: ConfigCompositionException, overrides: List[str], config_dir: Path,
                       config_name: str) -> str:
    cause = exc.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        return _unknown_key(cause.full_key, overrides, config_dir, config_name)
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        return _wrong_type(cause, overrides)
    lines = [line for part in (exc, cause) if part is not None for line in str(part).splitlines()[:1]]
    return " ".join(lines) or f"the configuration could not be composed ({type(cause or exc).__name__})."


def _wrong_type(cause: ValidationError, overrides: List[str]) -> str:
    value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == cause.full_key), None)
    return (f"{cause.full_key}={value} has the wrong type: {cause.full_key} takes {_expected_type(cause.full_key)}. "
            f"{_help(cause.full_key)}").strip()


def _unknown_key(full_key: str, overrides: List[str], config_dir: Path, config_name: str) -> str:
    parent, _, key = full_key.rpartition(".")
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != full_key]
    try:
        cfg = _compose(keep, config_dir, config_name)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # the remaining overrides are broken too: list no keys rather than fail here
        node = None
    known = [str(k) for k in node.keys()] if node is not None and OmegaConf.is_dict(node) else []
    target = node.get("_target_") if node is not None and OmegaConf.is_dict(node) else None
    known = [k for k in known if not k.startswith("_")]
    typed = _schema_field(parent) is not None and dataclasses.is_dataclass(_schema_field(parent).type)
    accepted = [] if typed else _arguments(target)  # a typed node takes only its schema's keys
    if key in accepted:
        return (f"{full_key} is an argument of {target} that this {parent} option does not set, so Hydra needs it "
                f"added rather than overridden: write +{full_key}=... (or ++{full_key}=... to add or override).")
    hint = difflib.get_close_matches(key, known + accepted, n=1)
    where = parent or "the top level"
    suggestion = f" (did you mean {parent + '.' if parent else ''}{hint[0]}?)" if hint else ""
    extra = [a for a in accepted if a not in known]
    also = f"; {target} also takes: {', '.join(extra)} (add those with +{parent}.KEY=...)" if extra else ""
    return (f"{full_key} is not a key of {where}{suggestion}. "
            f"The keys of {where} are: {', '.join(known)}{also}.")


def _arguments(target) -> List[str]:
    """The keyword arguments of an ``llmft.`` target, read from its source without importing it (importing
    would pull in torch and transformers, seconds this error path must not spend); [] for other targets."""
    if not target or not str(target).startswith("llmft."):
        return []
    module, _, name = str(target).rpartition(".")
    for _ in range(3):  # follow re-exports such as llmft.models -> llmft.models.loading
        base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not source.is_file():
            return []
        tree = ast.parse(source.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                func = node if isinstance(node, ast.FunctionDef) else next(
                    (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                args = func.args.args + func.args.kwonlyargs if func else []
                return [a.arg for a in args if a.arg != "self"]
        origin = next((n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
                       and any(alias.name == name for alias in n.names)), None)
        if origin is None:
            return []
        module = origin
    return []


def _schema_field(full_key: str):
    node = schema.TrainConf
    found = None
    for part in full_key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        found = fields.get(part)
        if found is None:
            return None
        node = found.type
    return found


def _expected_type(full_key: str) -> str:
    f = _schema_field(full_key)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if f is None:
        return "another type"
    t = f.type
    args = getattr(t, "__args__", None)
    base = next((a for a in args if a is not type(None)), t) if args else t
    text = names.get(base, str(base))
    return text + (" or null" if args and type(None) in args else "")


def _help(full_key: str) -> str:
    f = _schema_field(full_key)
    if f is None or not f.metadata:
        return ""
    limits = ", ".join(f"{k} {v}" for k, v in f.metadata.items() if k in ("ge", "gt", "le", "lt"))
    choices = f.metadata.get("choices")
    extra = f"; allowed: {', '.join(choices)}" if choices else (f"; limits: {limits}" if limits else "")
    return f"({f.metadata.get('help', '')}{extra}.)"

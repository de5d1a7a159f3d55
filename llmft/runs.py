"""A finished run folder, opened again: its saved config (plus any new overrides), summary and adapter."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from llmft.config.location import CONFIG_DIR
from llmft.config.precheck import check_overrides
from llmft.config.targets import check_saved_config
from llmft.errors import LlmftError
from llmft.files import MANIFEST, read_json, verify_manifest
from llmft.run_folder import CONFIG


class RunFolderError(LlmftError):
    """A folder that is not a completed llmft run with an adapter."""


@dataclass
class FinishedRun:
    """A completed run: its folder, configuration and summary."""

    folder: Path
    cfg: DictConfig
    summary: dict

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"


def open_run(folder: str, overrides: Sequence[str] = ()) -> FinishedRun:
    """Open a completed run folder; ``overrides`` replace the saved config's nodes they touch.

    The run's effective ``config.yaml`` (``.hydra/config.yaml`` for runs older than it) is the default. An override such as ``eval=metrics`` or
    ``eval.prompts.file=x.json`` is composed (with the run's own overrides, less those of a group chosen anew)
    and its top-level node replaces the saved one, so everything else stays as the run had it.

    Raises:
        RunFolderError: not a run folder, a run that did not complete, or an adapter missing or failing its
            checksums.
        ConfigError: the saved config names a callable that is not allowed, or turns on trust_remote_code.
    """
    path = Path(folder).expanduser()
    if not (path / ".hydra" / "config.yaml").is_file():
        if (path / "adapter" / "adapter_config.json").is_file() and (path.parent / ".hydra" / "config.yaml").is_file():
            raise RunFolderError(f"{folder} is an export of the run {path.parent} that holds only the adapter, not "
                                 f"a run folder: pass the run folder itself ({path.parent}). An export with a "
                                 f"merged model (llmft-export {path.parent} --merge --force) can be chatted with "
                                 "directly.")
        raise RunFolderError(f"{folder} is not an llmft run folder (it has no .hydra/config.yaml). Pass a folder "
                             "that llmft-train wrote, such as outputs/DATE/TIME-ID or multirun/DATE/TIME-ID/N.")
    summary = read_json(path / "summary.json", "run summary") if (path / "summary.json").is_file() else {}
    if summary.get("status") != "completed":
        reason = summary.get("error", "no summary.json: it stopped before the end")
        raise RunFolderError(f"{folder} is a run that did not complete (status {summary.get('status', 'unknown')}: "
                             f"{reason}). Fix the cause and train again; only a completed run has an adapter to use.")
    if not (path / "adapter" / "adapter_config.json").is_file():
        raise RunFolderError(f"{folder}/adapter has no adapter_config.json: the adapter is missing or incomplete. "
                             "Train the run again.")
    problem = verify_manifest(path / "adapter") if (path / "adapter" / MANIFEST).is_file() else None
    if problem:
        raise RunFolderError(f"{problem}: this run's adapter is not what training wrote. Use an intact copy of the "
                             "run folder, or train it again.")
    # the configuration the run really used (after hardware.auto_fit), else (older runs) Hydra's composed one
    source = path / CONFIG if (path / CONFIG).is_file() else path / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(source)
    check_saved_config(cfg, path, overrides, source=source)  # a run folder is data: nothing in it may choose code to run
    if overrides:
        saved = OmegaConf.load(path / ".hydra" / "overrides.yaml") if (path / ".hydra" / "overrides.yaml").is_file() \
            else []
        # a new group choice (eval=full) replaces the run's choice of that group and its keys (eval.prompts.*)
        groups = {k for k in (o.lstrip("+~").split("=", 1)[0] for o in overrides) if (CONFIG_DIR / k).is_dir()}
        saved = [o for o in saved if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] not in groups]
        fresh = check_overrides([*saved, *overrides])
        for key in {o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] for o in overrides}:
            cfg[key] = fresh.get(key)
    return FinishedRun(folder=path, cfg=cfg, summary=summary)


def load_with_adapter(run: FinishedRun, quantized: bool = True, dtype: Optional[str] = None, adapter: Path = None,
                      device: Optional[str] = None):
    """Load the run's base model (with its quantization, unless ``quantized`` is False) and its adapter.

    ``adapter`` is another copy of the adapter to load (an export); by default the run's own.

    Args:
        run: the finished run.
        quantized: load the base with the run's quantization.
        dtype: the unquantized weights' dtype; default the run's own (16-bit on a GPU, as it trained).
        adapter: another copy of the adapter to load (an export); by default the run's own.
        device: ``cpu`` or ``cuda``; default the run's device where this machine has it, else the CPU.

    Returns:
        ``(peft_model, loaded)``: the ``PeftModel`` and the ``LoadedModel`` of the base (name, tokenizer, source).
    """
    from llmft.builders import build_model, with_saved_adapter
    from llmft.hardware import load_device

    device = device or load_device(run.cfg.hardware.device)
    loaded = build_model(run.cfg, device, quantized=quantized, dtype=dtype)
    fused = run.cfg.hardware.get("fused_lora", False)  # run folders from before the option: peft's forward
    return with_saved_adapter(loaded, adapter or run.adapter, device, fused), loaded

"""Experiment tracking: Weights & Biases, as the ``logger`` group's ``wandb`` option.

A tracker receives what the run folder receives: each ``metrics.jsonl`` line, each JSON report, and a close.
W&B runs online when credentials exist (``WANDB_API_KEY`` or a ``wandb login``), otherwise offline: the files
stay in the run folder, syncable later with ``wandb sync``. It never prompts and never blocks a run.
"""

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from llmft.config.secrets import holds_secret, is_secret_key, redact, secret_values

log = logging.getLogger(__name__)
_said_offline = False


def flat_config(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config as ``{"lora.r": 16, ...}``, with secret-looking keys and secret values redacted."""
    secrets = secret_values()
    flat: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            key = prefix[:-1]
            hidden = is_secret_key(key) or (isinstance(node, str) and holds_secret(node, secrets))
            flat[key] = "<redacted>" if hidden else node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def has_credentials() -> bool:
    """True when W&B could log online without asking: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def shown_overrides(overrides: Sequence[str]) -> list:
    """The overrides fit to show in W&B: secret ones dropped (llmft-train refuses them; ``run`` called from
    Python does not), secret values redacted."""
    return [redact(o) for o in overrides if not is_secret_key(o.split("=", 1)[0])]


def run_name(overrides: Sequence[str], output_dir: Path) -> str:
    """A readable name from the overrides (``lora.r=8 data.max_seq_length=256``), else the run folder's name."""
    shown = [o for o in shown_overrides(overrides) if not o.startswith(("paths.", "hydra.", "logger"))]
    return " ".join(shown)[:128] or output_dir.name


def sweep_group(output_dir: Path) -> Optional[str]:
    """The sweep a run belongs to (``multirun/DATE/TIME``), for W&B's group; None outside a multirun."""
    sweep = output_dir.resolve().parent
    return f"sweep-{sweep.parent.name}-{sweep.name}" if (sweep / "multirun.yaml").is_file() else None


class WandbLogger:
    """Log a run to Weights & Biases: config, per-step metrics, evaluation figures, answers table, summary.

    Args:
        project: the W&B project.
        entity: the W&B team or user (None: your default).
        group: the run group (None: the sweep, so one multirun is one group).
        job_type: W&B's job type.
        tags: extra tags (the overrides are added).
        mode: ``online``, ``offline`` or ``disabled``; None: online with credentials, else offline.
        run_config: the run's composed config (given by the pipeline).
        output_dir: the run folder; W&B's files go to its ``wandb/``.
        overrides: the command-line overrides, for the run's name and tags.
    """

    def __init__(self, project: str = "llmft", entity: Optional[str] = None, group: Optional[str] = None,
                 job_type: str = "train", tags: Sequence[str] = (), mode: Optional[str] = None, *,
                 run_config: DictConfig = None, output_dir: str = ".", overrides: Sequence[str] = ()):
        import wandb

        global _said_offline
        out = Path(output_dir)
        mode = mode or os.environ.get("WANDB_MODE") or ("online" if has_credentials() else "offline")
        if mode == "offline" and not _said_offline:
            log.info("W&B: no credentials, logging offline to %s/wandb; upload later with `wandb sync %s/wandb/"
                     "offline-run-*`", out, out)
            _said_offline = True
        self.wandb = wandb
        shown = [o[:64] for o in shown_overrides(overrides)]
        self.run = wandb.init(project=project, entity=entity, group=group or sweep_group(out), job_type=job_type,
                              name=run_name(overrides, out), tags=[*tags, *shown][:20],
                              config=flat_config(run_config) if run_config is not None else {}, dir=str(out),
                              mode=mode, reinit="create_new", settings=wandb.Settings(console="off", silent=True))

    def log_step(self, row: Dict[str, Any]) -> None:
        """One ``metrics.jsonl`` line: training figures as ``train/*``, validation as ``eval/*``."""
        prefix = "eval/" if "eval_loss" in row else "train/"
        self.run.log({f"{prefix}{k}": v for k, v in row.items() if k not in ("step",)}, step=row["step"])

    def record(self, name: str, payload: Dict[str, Any]) -> None:
        """A JSON report: the eval figures and the before/after answers (as a Table), or the run's summary."""
        if name == "eval_report.json":
            figures = {f"eval/{k}": v for k, v in payload.items() if isinstance(v, (int, float))}
            figures.update({f"eval/base_{k}": v for k, v in payload.get("base", {}).items()})
            metrics = payload.get("metrics", {})  # reference metrics, preference accuracy and margin
            figures.update({f"eval/{k}": v for k, v in metrics.get("finetuned", {}).items()})
            figures.update({f"eval/base_{k}": v for k, v in metrics.get("base", {}).items()})
            self.run.summary.update(figures)
            rows = [[r["prompt"], r["base"], r["finetuned"], r.get("reference") or ""]
                    for r in payload.get("prompt_results", [])]
            if rows:
                self.run.log({"eval/answers": self.wandb.Table(columns=["prompt", "base", "fine-tuned", "reference"],
                                                               data=rows)})
        elif name == "summary.json":
            self.run.summary.update({f"summary/{k}": v for k, v in payload.items()
                                     if isinstance(v, (int, float, str)) and k != "output_dir"})

    def close(self) -> None:
        """Finish the W&B run (uploads, or closes the offline files)."""
        self.run.finish()

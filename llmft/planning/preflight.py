"""``llmft-train``'s memory preflight: plan before any weight loads, refuse or fit, cap an emulated GPU, and compare
the plan with the peak the run measured."""

import logging
from dataclasses import replace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from llmft.config.location import CONFIG_DIR
from llmft.errors import ConfigError, MemoryBudgetError
from llmft.planning.fit import Suggestion, suggest
from llmft.planning.plan import CUDA_CONTEXT_BYTES, MemoryPlan, plan_memory
from llmft.planning.report import format_plan, size
from llmft.hardware import run_device
from llmft.planning.setup import GIB, Setup, setup_from_cfg
from llmft.quantization import scheme

log = logging.getLogger(__name__)
MIB = 2**20


def plan_run(cfg: DictConfig) -> Optional[MemoryPlan]:
    """Plan the run's memory and log the plan (with suggestions when it does not fit).

    Returns:
        The plan, or None (after a warning) when the model's architecture cannot be planned offline.

    Raises:
        ModelLoadError: the model is not on this machine and cannot be fetched: said first, before a plan made
            from figures that may not be its own (an overridden ``model.name_or_path``) or a budget it exceeds.
    """
    check_model_available(cfg)
    try:
        plan = plan_memory(card_budget(setup_from_cfg(cfg)))
    except ConfigError as exc:
        log.warning("No memory plan for this run: %s", exc)
        return None
    log.info("Memory plan for the worst case, every sequence padded to data.max_seq_length=%d (batches pad only to "
             "their longest record, so the measured peak is usually lower; the end of the run shows both; "
             "llmft-plan prints the same):\n%s", plan.setup.seq_len,
             format_plan(plan, [] if plan.fits else suggest(plan.setup)))
    return plan


def card_budget(setup: Setup) -> Setup:
    """The setup with the budget of the card this run is on, when that is below the profile's nominal size.

    A "6 GB" GTX 1660 reports about 5.8 GiB to torch, a "24 GB" RTX 4090 about 23.6 GiB and an "80 GB" A100
    about 79.1 GiB: the nominal budget would let a run plan into memory the card does not have. A larger card keeps
    the profile's budget (the profile is what the run is sized for; ``hardware.emulate`` caps it there).
    """
    if setup.device != "cuda":
        return setup
    import torch

    if not torch.cuda.is_available():
        return setup
    total_gb = torch.cuda.get_device_properties(run_device("cuda")).total_memory / GIB
    if total_gb >= setup.budget_gb:
        return setup
    log.info("hardware=%s: this GPU has %.2f GiB in all, below the profile's %g GiB; planning against %.2f GiB.",
             setup.profile, total_gb, setup.budget_gb, total_gb)
    return replace(setup, budget_gb=round(total_gb, 2))


def fit_budget(cfg: DictConfig, plan: Optional[MemoryPlan]) -> Tuple[Optional[MemoryPlan], Dict[str, Any]]:
    """Let a run that fits go on; apply the first suggestion (``hardware.auto_fit``) or refuse one that does not.

    Returns:
        The plan the run goes on with, and the fields for ``summary.json`` (``auto_fit`` when it changed the run:
        each key with its old and new value, and the plan's total before and after).

    Raises:
        MemoryBudgetError: the plan exceeds the budget, and auto-fit is off or nothing fits.
    """
    if plan is None or plan.fits:
        return plan, {}
    if not cfg.hardware.preflight:
        log.warning("The plan exceeds the budget; hardware.preflight=false, so the run goes on.")
        return plan, {}
    suggestions = suggest(plan.setup)
    if not cfg.hardware.auto_fit or not suggestions:
        raise MemoryBudgetError(_refusal(cfg, plan, suggestions))
    first = suggestions[0]
    changed = {key: {"from": OmegaConf.select(cfg, key) if key != "quantization" else scheme(cfg.get("quantization"))[0],
                     "to": value} for key, value in first.changes.items()}
    apply_changes(cfg, first.changes)
    log.info("hardware.auto_fit: %s (%s; plan %s -> %s)", " ".join(first.overrides), first.why,
             size(plan.total_bytes), size(first.plan.total_bytes))
    return first.plan, {"auto_fit": {"changed": changed, "planned_mb_before": round(plan.total_bytes / MIB, 1),
                                     "planned_mb_after": round(first.plan.total_bytes / MIB, 1)}}


def check_model_available(cfg: DictConfig) -> None:
    """Raise ``ModelLoadError`` if ``cfg.model`` names pretrained weights that are neither on this machine nor
    reachable (nor convertible from the option's own GGUF fallback)."""
    from hydra.utils import get_method

    from llmft.models import load_pretrained
    from llmft.models.hub import check_available

    model = cfg.model
    if get_method(model._target_) is load_pretrained:
        check_available(str(model.name_or_path), model.get("revision"), model.get("gguf"), cfg.paths.cache_dir)


def apply_changes(cfg: DictConfig, changes: Mapping[str, Any]) -> None:
    """Set each dotted key of ``changes`` in ``cfg``; ``quantization`` names an option of its group."""
    for key, value in changes.items():
        if key == "quantization":
            cfg.quantization = OmegaConf.load(CONFIG_DIR / "quantization" / f"{value}.yaml")
        else:
            OmegaConf.update(cfg, key, value, merge=False)


def emulate_budget(cfg: DictConfig) -> Dict[str, Any]:
    """With ``hardware.emulate``, cap this process's CUDA memory at the profile's budget.

    The caching allocator of this process's GPU (``llmft.hardware.run_device``) is limited to the budget less
    the CUDA context (which it does not manage), so a run that needs more than the profile's card fails on a
    larger card as it would on that card.

    Returns:
        ``{"emulated_memory_fraction": ...}`` for ``summary.json``, or nothing when not emulating.
    """
    if not cfg.hardware.emulate:
        return {}
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("hardware.emulate=true caps a GPU's memory, and this machine has no CUDA GPU.")
    device = torch.device(run_device("cuda"))
    total = torch.cuda.get_device_properties(device).total_memory
    budget = cfg.hardware.memory_budget_gb * GIB - CUDA_CONTEXT_BYTES
    if budget >= total:
        log.warning("hardware.emulate: the budget (%s GiB) is not below this GPU's %s; nothing to cap.",
                    cfg.hardware.memory_budget_gb, size(total))
        return {}
    torch.cuda.set_per_process_memory_fraction(budget / total, device)  # this rank's GPU; reset after the job
    log.info("hardware.emulate: torch may allocate %s of this GPU's %s (%s GiB budget less the CUDA context)",
             size(budget), size(total), cfg.hardware.memory_budget_gb)
    return {"emulated_memory_fraction": round(budget / total, 4)}


def memory_summary(plan: Optional[MemoryPlan], summary: Mapping[str, Any], peak_mb: float) -> Dict[str, Any]:
    """The plan and, for a completed run, its prediction next to the measured peak and the error in percent.

    The prediction is re-planned at the longest tokenized record (batches pad to it, not to
    ``data.max_seq_length``); the error is ``100 x (predicted - measured) / measured``: positive when the plan
    over-estimates.
    """
    if plan is None:
        return {}
    out: Dict[str, Any] = {"memory_plan": plan.to_dict()}
    if summary.get("status") == "completed" and summary.get("longest_sequence") and peak_mb > 0:
        at = plan_memory(replace(plan.setup, seq_len=min(summary["longest_sequence"], plan.setup.seq_len)))
        out["predicted_peak_mb"] = round(at.predicted_peak_bytes / MIB, 1)
        out["memory_error_pct"] = round(100 * (at.predicted_peak_bytes / MIB - peak_mb) / peak_mb, 1)
    return out


def longest_sequence(*datasets: Any) -> int:
    """The longest ``input_ids`` of tokenized ``datasets.Dataset`` splits (read from Arrow, without decoding)."""
    import pyarrow.compute as pc

    return max(int(pc.max(pc.list_value_length(ds.data.column("input_ids"))).as_py() or 0) for ds in datasets)


def records_cut(dataset: Any, max_seq_length: int) -> Optional[int]:
    """How many records of a tokenized split ``data.max_seq_length`` cut: those with an example of that length
    (a conversation cut there, a text cut into windows; a record exactly that long counts too). None for a split
    of another shape (preference pairs)."""
    import pyarrow.compute as pc

    if not {"input_ids", "record"} <= set(dataset.column_names):
        return None
    lengths = pc.list_value_length(dataset.data.column("input_ids"))
    at_limit = pc.filter(dataset.data.column("record"), pc.greater_equal(lengths, max_seq_length))
    return len(pc.unique(at_limit))


def _refusal(cfg: DictConfig, plan: MemoryPlan, suggestions: Sequence[Suggestion]) -> str:
    budget = f"hardware={cfg.hardware.name}'s budget of {cfg.hardware.memory_budget_gb:g} GiB"
    head = (f"the memory plan of this run is {size(plan.total_bytes)}, over {budget} (the plan is printed above; "
            "llmft-plan with the same overrides prints it again).")
    if not suggestions:
        return head + " No micro-batch, checkpointing, NF4 or sequence length fits it: use a larger profile."
    options = "; ".join(f"{' '.join(s.overrides)} ({size(s.plan.total_bytes)})" for s in suggestions)
    return (f"{head} Any one of these fits: {options}. Add one to the command line, or set hardware.auto_fit=true "
            "to apply the first; hardware.preflight=false runs it anyway.")

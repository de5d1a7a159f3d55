"""``llmft-export RUN --gguf TYPE``: the merged model as ``gguf/model.gguf``, read back and checked.

The check before hand-over: transformers' own GGUF loader (an independent reader of the file) loads the model
and the tokenizer back; its logits on the probe prompts are compared with base + adapter's, relative to their
range; its tokenizer must encode the probe prompts and the chat template's rendering to the same ids; the
end-of-turn token must be a stop token in the file; and the greedy answers of the adapter, the merged model and
the GGUF to the held-aside prompts are reported side by side. Any failure raises and the caller writes nothing.
"""

import logging
from pathlib import Path
from typing import List, Optional

import gguf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.evaluation.generation import generate, stop_token_ids
from llmft.export.gguf_vocab import llama_cpp_encoder, vocab_writer
from llmft.export.gguf_writer import GGUFError, apply_rope_factors, write_gguf
from llmft.export.modelfile import chat_template_pieces, gguf_card, modelfile
from llmft.export.parity import check_parity
from llmft.export.probes import Probes

log = logging.getLogger(__name__)
# max |logit difference| / logit range on the probes; 16-bit and 8-bit files round every weight
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2}
ANSWER_TOKENS = 64  # greedy answers compared side by side


def export_gguf(merged, tokenizer, folder: Path, qtype: str, probes: Probes, base: str,
                tolerance: Optional[float] = None) -> dict:
    """Write ``folder/model.gguf`` (+ Modelfile, README.md) from the float32 ``merged`` model and check it.

    Args:
        merged: the adapter merged into the base, float32.
        tokenizer: the run's tokenizer, with the chat template training used.
        folder: where to write (a staging folder).
        qtype: ``f32``, ``f16``, ``bf16`` or ``q8_0``.
        probes: base + adapter's logits and answers, a training conversation, the system prompt.
        base: the base model's name, for the file's metadata and card.
        tolerance: max logit difference relative to the logit range (default per type).

    Returns:
        The figures for ``export_report.json``.

    Raises:
        GGUFError: an unsupported model, or a file that failed the check.
        ParityError: the inference prompt or stop tokens differ from training's.
    """
    tolerance = TOLERANCE[qtype] if tolerance is None else tolerance
    stops = stop_token_ids(merged, tokenizer)
    parity = check_parity(tokenizer, probes.conversation, stops)
    folder.mkdir(parents=True)
    path = folder / "model.gguf"
    write_gguf(merged, path, qtype, base, vocab_writer(
        tokenizer, merged.config.vocab_size, parity["end_of_turn_id"]))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=torch.float32).eval()
    rope_freqs = apply_rope_factors(model, path)  # Llama 3 RoPE scaling, which transformers' reader leaves out
    reader = AutoTokenizer.from_pretrained(folder, gguf_file=path.name)
    report = {"gguf": "gguf/model.gguf", "gguf_type": qtype, "gguf_bytes": path.stat().st_size,
              "gguf_tolerance": tolerance, "parity": parity, "gguf_rope_freqs": rope_freqs,
              **_logit_figures(model, probes.batch, probes.reference)}
    _check_tokenizer(tokenizer, reader, probes.batch, probes.conversation)
    stop_ids = _check_stops(path, parity["end_of_turn_id"])
    report["gguf_stop_tokens"] = tokenizer.convert_ids_to_tokens(stop_ids)
    if not report["gguf_relative_logit_difference"] <= tolerance:
        raise GGUFError(f"the GGUF's logits, read back by transformers, differ from base + adapter's by "
                        f"{report['gguf_relative_logit_difference']:.3g} of the logit range, above the tolerance "
                        f"{tolerance:.3g} for {qtype}; nothing was written. Export f32 or f16, or pass "
                        "--gguf-tolerance if you accept the difference.")
    prompts = probes.prompts
    merged_answers = generate(merged, tokenizer, prompts, max_new_tokens=ANSWER_TOKENS)
    model.generation_config.eos_token_id = stop_ids  # llama.cpp stops at every end-of-generation token of the file
    gguf_answers = generate(model, reader, prompts, max_new_tokens=ANSWER_TOKENS)
    report["gguf_answers"] = [{"prompt": p[-1]["content"], "adapter": a, "merged": m, "gguf": g,
                               **_parting(merged, tokenizer, p, m, g, parity["end_of_turn_id"])}
                              for p, a, m, g in zip(prompts, probes.adapter_answers, merged_answers, gguf_answers)]
    report["gguf_greedy_matches"] = sum(m == g for m, g in zip(merged_answers, gguf_answers))
    template = chat_template_pieces(tokenizer, probes.prompts[0] if probes.prompts else probes.conversation[:-1])
    (folder / "Modelfile").write_text(modelfile(report["gguf_stop_tokens"], probes.system_prompt, template,
                                                probes.sampling))
    (folder / "README.md").write_text(gguf_card(base, qtype, template, report))
    log.info("GGUF %s: %.1f MB, max |logit difference| %.3g of the range (tolerance %.3g), %d of %d greedy answers "
             "as the merged model's", qtype, report["gguf_bytes"] / 1e6, report["gguf_relative_logit_difference"],
             tolerance, report["gguf_greedy_matches"], len(prompts))
    return report


@torch.no_grad()
def _logit_figures(model, probes: dict, reference: torch.Tensor) -> dict:
    logits = model(**probes).logits.float()
    mask = probes["attention_mask"].bool()
    difference = float((logits - reference).abs().amax(dim=-1)[mask].max())
    spread = float(reference[mask].max() - reference[mask].min())
    return {"gguf_max_abs_logit_difference": difference, "gguf_logit_range": spread,
            "gguf_relative_logit_difference": difference / spread}


def _check_tokenizer(tokenizer, reader, probes: dict, conversation: List[dict]) -> None:
    """The GGUF's tokenizer must encode the probe prompts and a rendered conversation to the run's ids: read back
    by transformers, and by llama.cpp's rule where that is not transformers' (``llama_cpp_encoder``)."""
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    texts = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(probes["input_ids"], probes["attention_mask"])]
    llama_cpp = llama_cpp_encoder(tokenizer)
    for text in [rendered, *texts]:
        ours, theirs = (t(text, add_special_tokens=False)["input_ids"] for t in (tokenizer, reader))
        if ours != theirs:
            at = _first_difference(ours, theirs)
            raise GGUFError(f"the GGUF's tokenizer, read back by transformers, encodes {text[:80]!r} differently "
                            f"from the run's from token {at}: run {ours[at:at + 8]}, GGUF {theirs[at:at + 8]}; "
                            "nothing was written.")
        theirs = llama_cpp(text) if llama_cpp else ours
        if theirs != ours:
            at = _first_difference(ours, theirs)
            raise GGUFError(f"llama.cpp would encode {text[:80]!r} differently from the run's tokenizer from token "
                            f"{at}: run {ours[at:at + 8]}, llama.cpp {theirs[at:at + 8]}. It starts the text after "
                            "each special token with the word-boundary mark, which this tokenizer puts before the "
                            "first word only (Metaspace, prepend_scheme first), and GGUF cannot say so. Nothing was "
                            "written; export the merged model instead (llmft-export RUN --merge).")


def _first_difference(a: List[int], b: List[int]) -> Optional[int]:
    """The first position where two token sequences differ (the shorter one's length when one extends the other);
    None when they are equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@torch.no_grad()
def _parting(merged, tokenizer, conversation: List[dict], a: str, b: str, end_of_turn: int) -> dict:
    """Where two answers part: the tokens they share, and the merged model's margin there - its logit for the
    token it chose minus its logit for the one the GGUF chose (a near tie is one the GGUF's rounding may tip)."""
    ids_a, ids_b = (tokenizer(t, add_special_tokens=False)["input_ids"] + [end_of_turn] for t in (a, b))
    at = _first_difference(ids_a, ids_b)  # the end-of-turn token ends both, so neither merely extends the other
    if at is None:
        return {"same_leading_tokens": len(ids_a) - 1, "margin_where_parted": None}
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + ids_a[:at]
    logits = merged(torch.tensor([ids], device=merged.device)).logits[0, -1].float()
    return {"same_leading_tokens": at, "margin_where_parted": float(logits[ids_a[at]] - logits[ids_b[at]])}


def _check_stops(path: Path, end_of_turn: int) -> List[int]:
    """The stop tokens the file declares (EOS, end of turn); the trained end-of-turn token must be one."""
    fields = gguf.GGUFReader(path).fields
    ids = [int(fields[k].contents()) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
           if k in fields]
    if end_of_turn not in ids:
        raise GGUFError(f"the GGUF's stop tokens {ids} lack the end-of-turn token {end_of_turn} the model was "
                        "trained to emit, so llama.cpp would not stop after an answer; nothing was written.")
    return sorted(set(ids))

"""How a GGUF type's rounding alone moves a run's greedy answers: the merged model and its base, side by side.

    python benchmarks/gguf_rounding.py outputs/DATE/TIME-ID            # q8_0, f16 and bf16, 64 answer tokens

For the run's merged model (base + adapter, float32) and for the base alone: the greedy answers to the run's
held-aside prompts (the ones ``llmft-export --gguf`` compares), then every weight matrix rounded in memory as the
GGUF type stores it (``gguf.quants``: what the file holds and transformers' reader gives back), and the answers
followed token by token under the rounded weights. An answer is kept when no token of it changes (then greedy
generation gives the same text); otherwise the table says after how many tokens it parts. The smallest margin
between the two most likely tokens along each answer says how close to a tie the model itself is.
"""

import argparse
from typing import Dict, List, Tuple

import gguf
import numpy as np
import torch

ROUNDINGS = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}


def rounded(weight: torch.Tensor, qtype) -> torch.Tensor:
    """``weight`` as a GGUF of ``qtype`` stores it, read back as float32."""
    data = np.ascontiguousarray(weight.detach().float().numpy())
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).reshape(data.shape))


def greedy_rows(model, tokenizer, prompts, tokens: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The prompts with the model's greedy answers (left-padded), the mask of prompt and answer tokens, and the
    padded prompt length; an answer ends at its first end-of-turn token."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    tokenizer.padding_side = "left"
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    from llmft.evaluation.generation import stop_token_ids

    stops = list(stop_token_ids(model, tokenizer))
    with torch.no_grad():
        rows = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=tokenizer.pad_token_id)
    start = inputs["input_ids"].shape[1]
    answer = torch.ones_like(rows[:, start:], dtype=torch.bool)
    for row, ids in zip(answer, rows[:, start:]):
        ends = torch.isin(ids, torch.tensor(stops)).nonzero()
        if len(ends):
            row[int(ends[0, 0]) + 1:] = False
    return rows, torch.cat([inputs["attention_mask"].bool(), answer], 1), start


def followed(model, rows, mask, start) -> torch.Tensor:
    """The model's logits for each answer token, the answer given (teacher forcing)."""
    with torch.no_grad():
        return model(input_ids=rows, attention_mask=mask.long()).logits[:, start - 1:-1].float()


def compare(model, tokenizer, prompts, tokens: int) -> Dict[str, dict]:
    rows, mask, start = greedy_rows(model, tokenizer, prompts, tokens)
    answer, chosen = mask[:, start:], rows[:, start:]
    reference = followed(model, rows, mask, start)
    assert bool(((reference.argmax(-1) == chosen) | ~answer).all()), "teacher forcing disagrees with generation"
    top = reference.topk(2, dim=-1).values
    margins = [float((top[i, :, 0] - top[i, :, 1])[answer[i]].min()) for i in range(len(prompts))]
    matrices = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    original = {name: p.detach().clone() for name, p in matrices.items()}
    results = {"float32": {"kept": len(prompts), "parted": [], "max_diff": 0.0, "margins": margins}}
    for name, qtype in ROUNDINGS.items():
        for key, p in matrices.items():
            p.data.copy_(rounded(original[key], qtype))
        logits = followed(model, rows, mask, start)
        flips = (logits.argmax(-1) != chosen) & answer
        parted = [int(f.nonzero()[0, 0]) for f in flips if f.any()]
        results[name] = {"kept": len(prompts) - len(parted), "parted": parted,
                         "max_diff": float((logits - reference).abs().amax(-1)[answer].max())}
    for key, p in matrices.items():
        p.data.copy_(original[key])
    return results


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("--tokens", type=int, default=64, help="answer tokens (llmft-export compares 64)")
    args = parser.parse_args(argv)
    from llmft.data.templates import use_chat_template
    from llmft.export.loading import load_quietly
    from llmft.export.probes import held_aside
    from llmft.runs import open_run

    from llmft.errors import LlmftError

    try:
        run = open_run(args.run)
    except LlmftError as exc:
        parser.error(str(exc))
    prompts = held_aside(run)[0]
    rows = []
    for which in ("merged", "base"):
        model, loaded = load_quietly(run, quantized=False, dtype="float32", adapter=run.adapter, device="cpu")
        use_chat_template(loaded.tokenizer, run.cfg.data.fallback_template)
        model = (model.merge_and_unload() if which == "merged" else model.unload()).eval()
        results = compare(model, loaded.tokenizer, prompts, args.tokens)
        margins = ", ".join(f"{m:.4f}" for m in results["float32"]["margins"])
        print(f"{which}: smallest top-two margin along each float32 answer: {margins}", flush=True)
        rows += [(which, name, r) for name, r in results.items() if name != "float32"]
    print(f"\n| model | rounding | answers kept of {len(prompts)} | parted after (tokens) | max abs logit difference |")
    print("|---|---|---:|---|---:|")
    for which, name, r in rows:
        print(f"| {which} | {name} | {r['kept']} | {', '.join(map(str, r['parted'])) or '-'} | {r['max_diff']:.3f} |")


if __name__ == "__main__":
    main()

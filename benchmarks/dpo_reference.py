"""How much the DPO reference pass (adapter disabled, no_grad, in the same step) costs against a cached reference.

A cached reference (log-probs computed once per pair and stored) would save the reference forward pass of every
step after the first epoch, and cost one extra pass over the data before training. This times a DPO step (reference
forward + policy forward + backward) and the same step without the reference forward, on the same batches.

    python benchmarks/dpo_reference.py model=smollm2-135m            (any llmft-train overrides)
"""

import sys
import time

import torch

from llmft.adapters import apply_lora
from llmft.config.precheck import check_overrides
from llmft.data.pairs import pair_collate
from llmft.objectives.preference import reference_model
from llmft.builders import build, read_splits, tokenize_split
from llmft.quiet import quiet_libraries


def main(overrides):
    if overrides[:1] in (["-h"], ["--help"]):  # the rest are llmft-train overrides, which take no --help
        print(__doc__)
        return
    quiet_libraries()  # no weight-loading or tokenizing bars in a piped output
    cfg = check_overrides(["objective=dpo", "data.path=../shared/realdata/preference/dpo_en_demo.json",
                           "data.max_seq_length=256", *overrides])
    loaded = build(cfg.model, cache_dir=cfg.paths.cache_dir)
    model = apply_lora(loaded.model, build(cfg.lora), cfg.hardware.gradient_checkpointing)
    objective = build(cfg.objective)
    pairs, _ = tokenize_split(cfg, loaded.tokenizer, read_splits(cfg).train[:24], "train", objective)
    batches = [pair_collate([pairs[i] for i in range(s, s + 4)], loaded.tokenizer.pad_token_id) for s in (0, 4, 8, 12, 16, 20)]
    model.train()

    def step(batch, reference):
        if reference:
            with torch.no_grad(), reference_model(model):
                objective.logps(model, batch)
        chosen, rejected = objective.logps(model, batch)
        (chosen - rejected).sum().backward()
        model.zero_grad()

    step(batches[0], True)  # warm-up
    times = {True: 0.0, False: 0.0}
    for batch in batches:
        for reference in (True, False):
            start = time.perf_counter()
            step(batch, reference)
            times[reference] += time.perf_counter() - start
    with_ref, without = times[True] / len(batches), times[False] / len(batches)
    print(f"{loaded.name}: DPO step (4 pairs, max 256 tokens) with the in-step reference {with_ref:.2f} s, "
          f"without {without:.2f} s: the reference pass is {100 * (with_ref - without) / with_ref:.0f}% of the step")


if __name__ == "__main__":
    main(sys.argv[1:])

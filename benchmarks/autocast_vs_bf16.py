"""bf16 on a CPU: autocast over fp32 weights, or the model and adapters converted to bf16 - which trains faster?

    python benchmarks/autocast_vs_bf16.py                 # SmolLM2-135M, LoRA r=16 all-linear, 2 x 256 tokens
    python benchmarks/autocast_vs_bf16.py --batch 8 --repeat 3

One forward and backward of the chunked loss (llmft.loss) per step; the two variants alternate, so that a load
that changes meanwhile touches both alike. Prints the best and mean seconds per step of each.
"""

import argparse
import time

from llmft.quiet import peft_on_transformers5, quiet_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()  # before peft loads bitsandbytes: no kernel notice or weight-loading bars in the figures
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmft.config.precheck import check_overrides
    from llmft.loss import lm_loss_sum
    from llmft.models.hub import find_source

    model_cfg = check_overrides(["model=smollm2-135m"])
    source = find_source(model_cfg.model.name_or_path, None, model_cfg.model.gguf, model_cfg.paths.cache_dir)
    if source is None:
        raise SystemExit("run `python -m llmft.models smollm2-135m` once first")
    torch.manual_seed(0)
    ids = torch.randint(10, 40000, (args.batch, args.length))
    labels = ids.clone()
    labels[:, : args.length // 3] = -100  # a prompt, then the answer
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    variants = {"autocast bf16, fp32 weights": (torch.float32, True), "bf16 weights, no autocast": (torch.bfloat16, False)}
    with peft_on_transformers5():  # peft's calls of transformers' deprecated names: not the user's concern
        models = {k: get_peft_model(AutoModelForCausalLM.from_pretrained(source, dtype=d), lora)
                  for k, (d, _) in variants.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variants[name][1]):
            loss, n = lm_loss_sum(models[name], batch)
        (loss / n).backward()
        return time.perf_counter() - start

    for name in variants:
        step(name)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name in variants:
            times[name].append(step(name))
    for name, t in times.items():
        print(f"{name}: {min(t):.2f} s/step best, {sum(t) / len(t):.2f} mean ({args.batch} x {args.length} tokens)")


if __name__ == "__main__":
    main()

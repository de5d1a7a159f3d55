"""An exported GGUF in llama.cpp itself (through llama-cpp-python), against the run's merged model in transformers.

    pip install llama-cpp-python       # builds llama.cpp from source: cmake and a C++ compiler, long on 2 cores
    llmft-export RUN --gguf q8_0       # or f16, f32...: writes RUN/export/gguf/model.gguf and export_report.json
    python benchmarks/llama_cpp_check.py RUN/export

For each held-aside prompt of the export's check (``export_report.json``): the prompt llmft builds with the run's
chat template must tokenize in llama.cpp to the run tokenizer's ids; llama.cpp's logits over the prompt are
compared with the merged float32 model's; its greedy answer (``temperature 0``, stopping at the file's
end-of-generation tokens, at most 64 tokens as the export compares) is compared token by token with the merged
model's greedy answer in transformers; and the chat template stored in the GGUF, rendered by llama-cpp-python's
Jinja formatter (what its ``create_chat_completion`` uses), is compared with the run's rendering of the prompt.
Not part of the test suite: llama-cpp-python is not a dependency.

llama.cpp repacks quantized weights for its fastest CPU kernels (its "extra buffer types": AMX, AVX-512 layouts).
On this project's machine (AVX512-BF16 + AMX) llama-cpp-python 0.3.36's decode crashed (SIGSEGV) with repacking
on, for every quantized file, the SmolLM2 Q4_1 GGUF that llama.cpp's own tools wrote included, so the check runs
without it (``use_extra_bufts = false``, llama.cpp's ``--no-repack``); ``--repack`` turns it back on.
"""

import argparse
import json
import os
from pathlib import Path
from typing import List

import numpy as np
import torch


def parting(a: List[int], b: List[int]) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if at is None and len(a) == len(b):
        return "same"
    return f"parts after {at if at is not None else min(len(a), len(b))} tokens"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="an export folder with gguf/model.gguf and export_report.json")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repack", action="store_true", help="let llama.cpp repack quantized weights (see above)")
    args = parser.parse_args(argv)
    try:
        import llama_cpp.llama_cpp as bindings
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError:
        parser.error("llama-cpp-python is not installed: pip install llama-cpp-python (builds llama.cpp)")
    if not args.repack:
        defaults = bindings.llama_model_default_params

        def no_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = no_repack  # Llama() reads its model parameters from here
    from llmft.data.templates import use_chat_template
    from llmft.export.loading import load_quietly
    from llmft.export.probes import held_aside
    from llmft.runs import open_run

    folder = Path(args.export)
    if not (folder / "export_report.json").is_file() or not (folder / "gguf" / "model.gguf").is_file():
        parser.error(f"{folder} is not an export with a GGUF: run llmft-export RUN --gguf f16 (or q8_0...) first")
    report = json.loads((folder / "export_report.json").read_text(encoding="utf-8"))
    run = open_run(report["run"])
    model, loaded = load_quietly(run, quantized=False, dtype="float32", adapter=folder / "adapter", device="cpu")
    tokenizer = loaded.tokenizer
    use_chat_template(tokenizer, run.cfg.data.fallback_template)
    merged = model.merge_and_unload().eval()
    prompts = held_aside(run)[0]
    stops = set(tokenizer.convert_tokens_to_ids(report["gguf_stop_tokens"]))
    llm = Llama(model_path=str(folder / "gguf" / "model.gguf"), n_ctx=1024, logits_all=True, verbose=False,
                n_threads=args.threads)
    kept, worst = 0, 0.0
    print(f"{report['gguf_type']} GGUF of {report['run']} in llama.cpp (llama-cpp-python)")
    for conversation, entry in zip(prompts, report["gguf_answers"]):
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(theirs)
        scores = np.array(llm.scores[:len(theirs)])
        with torch.no_grad():
            reference = merged(torch.tensor([ours])).logits[0].float().numpy()
        difference = float(np.abs(scores - reference).max()) if ours == theirs else float("nan")
        spread = float(reference.max() - reference.min())
        worst = max(worst, difference / spread)
        answer: List[int] = []
        for token in llm.generate(theirs, temp=0.0, reset=True):
            if token in stops or len(answer) == 64:
                break
            answer.append(token)
        with torch.no_grad():
            out = merged.generate(torch.tensor([ours]), max_new_tokens=64, do_sample=False, eos_token_id=sorted(stops),
                                  pad_token_id=tokenizer.pad_token_id)[0, len(ours):].tolist()
        expected = out[:next((i for i, t in enumerate(out) if t in stops), len(out))]
        own = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="")
        rendered = own(messages=conversation).prompt
        same = answer == expected
        kept += same
        print(f"- {entry['prompt'][:60]!r}: prompt ids {'equal' if ours == theirs else 'DIFFER'} "
              f"({len(ours)} tokens); max |logit difference| {difference:.3f} on a range of {spread:.1f}; "
              f"greedy answer vs merged model: {parting(answer, expected)}; the file's own chat template renders "
              f"{'the same prompt' if rendered == text else 'a DIFFERENT prompt'}")
    print(f"llama.cpp's greedy answers equal the merged model's for {kept} of {len(prompts)} prompts "
          f"(transformers reading the same file: {report['gguf_greedy_matches']}); largest logit difference "
          f"{worst:.4f} of the range")


if __name__ == "__main__":
    main()

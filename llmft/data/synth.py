"""``llmft-synth``: deterministic synthetic instruction data in any input format, to try the pipeline.

Small tasks with checkable answers (sums, word reversal, letter counts, lists of multiples that span several
lines, and calculator tool calls in the conversational formats), with an occasional system prompt and follow-up
turn. The same count and seed give the same bytes.
"""

import argparse
import csv as csv_module
import random
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO

import orjson

from llmft.errors import DataError

FORMATS = ("alpaca", "sharegpt", "messages", "csv", "text")
WORDS = ("river", "cloud", "pod", "node", "lamp", "orbit", "maple", "signal", "copper", "harbor", "violet", "quartz",
         "engine", "meadow", "pixel", "kernel", "falcon", "ember", "canyon", "lattice")
SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "pi", "nox", "ga", "ber", "li", "zu", "quen", "ma",
             "ro", "shi", "tal", "wen", "ob", "fi", "dra", "ek")
SYSTEM = "You are a precise assistant. Answer briefly."


def examples(count: int, seed: int) -> Iterator[Dict]:
    """``count`` examples: ``{"task", "system", "turns": [(user, assistant)], "tool": (call, result) or None}``."""
    rng, seen = random.Random(seed), set()
    tasks: List[Callable[[random.Random], Dict]] = [_add, _reverse, _letters, _multiples, _tool]
    for i in range(count):
        example = tasks[i % len(tasks)](rng)
        for _ in range(1000):  # no duplicates: each task has millions of variants
            if (example["turns"][0][0], example["input"]) not in seen:
                break
            example = tasks[i % len(tasks)](rng)
        else:
            raise DataError(f"llmft-synth cannot make {count:,} distinct records; ask for fewer.")
        seen.add((example["turns"][0][0], example["input"]))
        example["system"] = SYSTEM if rng.random() < 0.2 else None
        if example["tool"] is None and rng.random() < 0.25:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            example["turns"].append((f"And {a} + {b}?", f"{a} + {b} = {a + b}."))
        yield example


def _add(rng: random.Random) -> Dict:
    a, b = rng.randint(2, 9999), rng.randint(2, 9999)
    return {"task": "add", "turns": [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}.")], "input": "", "tool": None}


def _reverse(rng: random.Random) -> Dict:
    words = rng.sample(WORDS, rng.randint(3, 6))
    return {"task": "reverse", "turns": [("Reverse the order of these words.", " ".join(reversed(words)))],
            "input": " ".join(words), "tool": None}


def _letters(rng: random.Random) -> Dict:
    word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 5)))
    return {"task": "letters", "turns": [(f"How many letters are in the word \"{word}\"?",
                                          f"\"{word}\" has {len(word)} letters.")], "input": "", "tool": None}


def _multiples(rng: random.Random) -> Dict:
    k, n, start = rng.randint(2, 999), rng.randint(3, 8), rng.randint(1, 999)
    lines = "\n".join(f"{i + 1}. {(start + i) * k}" for i in range(n))
    return {"task": "multiples", "turns": [(f"List {n} multiples of {k} from {start * k} on, one per line.", lines)],
            "input": "", "tool": None}


MULTIPLY = {"name": "multiply", "description": "Multiply two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}


def _tool(rng: random.Random) -> Dict:
    a, b = rng.randint(11, 9999), rng.randint(11, 9999)
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": a, "b": b}}}
    return {"task": "tool", "turns": [(f"Use the calculator to multiply {a} by {b}.", f"{a} x {b} = {a * b}.")],
            "input": "", "tool": (call, orjson.dumps({"result": a * b}).decode())}


def _messages(example: Dict) -> List[Dict[str, str]]:
    (first_user, first_reply), *rest = example["turns"]
    user = f"{first_user}\n\n{example['input']}" if example["input"] else first_user
    out = [{"role": "system", "content": example["system"]}] if example["system"] else []
    out.append({"role": "user", "content": user})
    if example["tool"]:
        out += [{"role": "assistant", "content": "", "tool_calls": [example["tool"][0]]},
                {"role": "tool", "content": example["tool"][1]}]
    out.append({"role": "assistant", "content": first_reply})
    for question, answer in rest:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return out


SHAREGPT_NAMES = {"user": "human", "assistant": "gpt", "system": "system"}


def render(example: Dict, fmt: str, index: int) -> Dict:
    """One example as a record of ``fmt`` (a dict; for ``text``, ``{"text": paragraph}``)."""
    question, answer = example["turns"][0]
    if fmt in ("alpaca", "csv"):
        key = "output" if fmt == "alpaca" else "response"
        return {"instruction": question, "input": example["input"], key: answer}
    if fmt == "text":
        return {"text": f"Question: {question} {example['input']}".rstrip() + f"\nAnswer: {answer}"}
    messages = _messages(example)
    tools = {"tools": [MULTIPLY]} if example["tool"] else {}
    if fmt == "messages":
        return {"id": f"synth-{index:06d}", "messages": messages, **tools,
                "meta": {"source": "llmft-synth", "tags": [example["task"]]}}
    turns = []
    for m in messages:  # a tool exchange is function_call ({"name", "arguments"}), then observation
        if m.get("tool_calls"):
            turns.append({"from": "function_call", "value": orjson.dumps(m["tool_calls"][0]["function"]).decode()})
        else:
            turns.append({"from": "observation" if m["role"] == "tool" else SHAREGPT_NAMES[m["role"]],
                          "value": m["content"]})
    return {"id": f"synth-{index:06d}", "conversations": turns,
            **({"tools": orjson.dumps(tools["tools"]).decode()} if tools else {})}


def write(out: TextIO, fmt: str, count: int, seed: int, array: bool = False, json_lines: bool = False) -> None:
    """Write ``count`` records of ``fmt``: CSV for ``csv``; paragraphs for ``text`` (unless ``array`` or
    ``json_lines``: ``{"text"}`` records); else a JSON array (``array``) or JSON Lines."""
    records = (render(e, fmt, i) for i, e in enumerate(examples(count, seed)))
    if fmt == "csv":
        writer = csv_module.DictWriter(out, fieldnames=["instruction", "input", "response"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    elif fmt == "text" and not array and not json_lines:
        out.writelines(f"{r['text']}\n\n" for r in records)
    elif array:
        out.write("[\n" + ",\n".join(orjson.dumps(r).decode() for r in records) + "\n]\n")
    else:
        out.writelines(orjson.dumps(r).decode() + "\n" for r in records)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``llmft-synth``."""
    from llmft.data.cli import main_guard

    parser = argparse.ArgumentParser(prog="llmft-synth", description="Write deterministic synthetic instruction "
                                     "data in one of llmft's input formats.")
    parser.add_argument("--format", choices=FORMATS, default="alpaca")
    parser.add_argument("--count", type=int, default=100, help="number of records (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output file (.json: a JSON array, .jsonl: JSON Lines; csv writes CSV, text "
                        "paragraphs unless .json/.jsonl); default: stdout")
    opts = parser.parse_args(argv)
    if opts.count < 1:
        parser.error("--count must be at least 1")

    def body() -> int:
        if opts.out is None:
            write(sys.stdout, opts.format, opts.count, opts.seed)
            return 0
        with open(opts.out, "w", encoding="utf-8", newline="") as out:
            write(out, opts.format, opts.count, opts.seed, array=opts.out.endswith(".json"),
                  json_lines=opts.out.endswith(".jsonl"))
        print(f"wrote {opts.count:,} {opts.format} records to {opts.out}", file=sys.stderr)
        return 0

    main_guard("llmft-synth", body)


if __name__ == "__main__":
    main()

"""``llmft-check FILE``: is a JSONL file of conversation records valid, and how does it tokenize?

It checks every line against the schema (``llmft.data.records``) and that ids are unique, then, with the
tokenizer of the selected ``model`` option (only the tokenizer: no weights are loaded), prints the token lengths
(min, median, p95, max), how many records ``data.max_seq_length`` would truncate, and how many would keep no
trainable token (training drops those). Exit code 0: valid; 1: invalid records or an unreadable file; 2: a bad
command line.
"""

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from llmft.data.records import validate_record
from llmft.data.sources import SHAPES, read_jsonl
from llmft.errors import DataError

SHOWN = 20  # invalid records listed one by one; the rest are counted


@dataclass
class Validity:
    """The outcome of checking one file against the schema."""

    records: List[dict] = field(default_factory=list)
    invalid: List[Tuple[int, str]] = field(default_factory=list)


def check_schema(path: Path) -> Validity:
    """Validate each line of ``path``; the valid records are kept for the token statistics.

    Raises:
        DataError: the file is not JSON Lines (empty, a JSON array, a CSV ...).
    """
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if SHAPES.get(path.suffix.lower()) not in (None, "jsonl") or head.startswith(b"["):
        raise DataError(f"{path} is not JSON Lines: llmft-check reads one conversation record per line, as "
                        f"llmft-prepare writes them. Convert the file first: llmft-prepare {path} --out DIR, then "
                        "llmft-check DIR/train.jsonl.")
    out, first_line = Validity(), {}
    for line, _, value, problem in read_jsonl(path):
        reason = problem.reason if problem else validate_record(value)
        if reason is None and value["id"] in first_line:
            reason = f"duplicate id {value['id']!r} (first on line {first_line[value['id']]})"
        if reason is None:
            first_line[value["id"]] = line
            out.records.append(value)
        else:
            out.invalid.append((line, reason))
    return out


def token_stats(records: Sequence[dict], tokenizer, max_seq_length: int, train_on_prompt: bool) -> Dict[str, int]:
    """Token lengths (untruncated) and what ``max_seq_length`` would do to the records."""
    from llmft.data.tokenize import IGNORE_INDEX, is_plain_text, tokenize_record

    lengths, truncated, untrainable = [], 0, 0
    for record in records:
        examples = tokenize_record(tokenizer, record["messages"], sys.maxsize, train_on_prompt)
        length = sum(len(e["input_ids"]) for e in examples)
        lengths.append(length)
        truncated += length > max_seq_length
        if not is_plain_text(record["messages"]):
            kept = examples[0]["labels"][1:max_seq_length]
            untrainable += all(t == IGNORE_INDEX for t in kept)
    lengths.sort()
    pick = lambda q: lengths[max(0, math.ceil(q * len(lengths)) - 1)]  # noqa: E731  (nearest rank)
    return {"records": len(lengths), "min": lengths[0], "median": pick(0.5), "p95": pick(0.95), "max": lengths[-1],
            "truncated": truncated, "no_trainable_tokens": untrainable}


def report_schema(path: Path, validity: Validity) -> List[str]:
    """The lines ``llmft-check`` prints about the schema."""
    lines = [f"{path}:{line}: {reason}" for line, reason in validity.invalid[:SHOWN]]
    if len(validity.invalid) > SHOWN:
        lines.append(f"... and {len(validity.invalid) - SHOWN:,} more invalid records")
    total = len(validity.records) + len(validity.invalid)
    verdict = "all valid" if not validity.invalid else f"{len(validity.invalid):,} INVALID"
    return lines + [f"{path}: {total:,} records, {verdict} (schema: id, messages of role/content, meta; unique ids)"]


def report_tokens(stats: Dict[str, int], max_seq_length: int) -> List[str]:
    """The lines ``llmft-check`` prints about token lengths."""
    share = lambda n: f"{n:,} ({100 * n / stats['records']:.1f}%)"  # noqa: E731
    return [f"tokens per record: min {stats['min']:,}, median {stats['median']:,}, p95 {stats['p95']:,}, "
            f"max {stats['max']:,}",
            f"longer than data.max_seq_length={max_seq_length}: {share(stats['truncated'])} would be truncated "
            "(plain texts: cut into windows)",
            f"no trainable token left within {max_seq_length}: {share(stats['no_trainable_tokens'])} (training "
            "drops them)"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``llmft-check``."""
    from llmft.data.cli import compose, main_guard, split_overrides

    overrides, args = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="llmft-check", description="Validate JSONL conversation records and show how the selected model's "
        "tokenizer sees them. Extra KEY=VALUE arguments are llmft-train overrides (model=..., "
        "data.max_seq_length=...).")
    parser.add_argument("files", nargs="+", help="JSONL files of conversation records")
    parser.add_argument("--schema-only", action="store_true", help="skip the tokenizer")
    opts = parser.parse_args(args)

    def body() -> int:
        cfg = compose("llmft-check", overrides)
        checked = {}
        for name in opts.files:
            if not Path(name).is_file():
                raise DataError(f"{name} is not a file. Pass JSONL files of conversation records.")
            checked[name] = check_schema(Path(name))
            print("\n".join(report_schema(Path(name), checked[name])))
        valid = [r for v in checked.values() for r in v.records]
        if not opts.schema_only and valid:
            from llmft.data.templates import use_chat_template
            from llmft.data.tokenizer import load_tokenizer

            tokenizer, source = load_tokenizer(cfg.model, cfg.paths.cache_dir)
            template = use_chat_template(tokenizer, cfg.data.fallback_template)
            print(f"tokenizer: {source} ({len(tokenizer):,} tokens; chat template: "
                  f"{'its own' if template == 'own' else template + ' (data.fallback_template)'})")
            stats = token_stats(valid, tokenizer, cfg.data.max_seq_length, cfg.data.train_on_prompt)
            print("\n".join(report_tokens(stats, cfg.data.max_seq_length)))
        return 1 if any(v.invalid for v in checked.values()) else 0

    main_guard("llmft-check", body)


if __name__ == "__main__":
    main()

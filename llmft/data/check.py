"""``llmft-check FILE``: is a JSONL file of conversation records valid, and how does it tokenize?

It checks every line against the schema (``llmft.data.records``) and that ids are unique (a raw data file in
another format is first converted as ``llmft-prepare`` converts it, and its rejects are listed), then, with the
tokenizer of the selected ``model`` option (only the tokenizer: no weights are loaded), prints the token lengths
(min, median, p95, max), how many records ``data.max_seq_length`` would truncate, and how many would keep no
trainable token (training drops those), and which records the chat template refuses or drops turns of. Exit
code 0: valid; 1: invalid or refused records, or an unreadable file; 2: a bad command line.
"""

import argparse
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import orjson

from llmft.data.convert import Collector
from llmft.data.records import fold_system, validate_record
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
        DataError: the file is empty.
    """
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


def is_records_file(path: Path) -> bool:
    """Whether ``path`` holds conversation records as JSON Lines (else it is raw data to convert first)."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if SHAPES.get(path.suffix.lower()) not in (None, "jsonl") or head.startswith(b"["):
        return False
    first = next((value for _, _, value, problem in read_jsonl(path) if problem is None), None)
    return not isinstance(first, dict) or "messages" in first and "id" in first


def convert_raw(path: Path, data_format: Callable) -> Tuple[Validity, str]:
    """The records ``path`` converts to, as ``llmft-prepare`` and training convert it, and a line saying so."""
    rejects = io.BytesIO()
    collector = Collector(rejects)
    out = Validity(records=list(collector.read(path, data_format, str(path))))
    out.invalid = [(r["line"], r["reason"]) for r in map(orjson.loads, rejects.getvalue().splitlines())]
    (counts,) = collector.report()["files"]
    line = (f"{path}: raw {counts['format']} data{' (detected)' if counts['detected'] else ''}, not conversation "
            f"records: checked as llmft-prepare and llmft-train convert it (read {counts['read']:,}, written "
            f"{counts['written']:,}, rejected {counts['rejected']:,}, duplicates {counts['duplicates']:,}). "
            f"llmft-prepare {path} --out DIR writes the records.")
    return out, line


def token_stats(records: Sequence[dict], tokenizer, max_seq_length: int, train_on_prompt: bool) -> Dict[str, Any]:
    """Token lengths (untruncated), what ``max_seq_length`` would do to the records, and the records the chat
    template refuses or cannot render faithfully (training stops at the first of them)."""
    from jinja2 import TemplateError

    from llmft.data.tokenize import IGNORE_INDEX, RenderError, is_plain_text, template_refusal, tokenize_record

    lengths, truncated, untrainable, refused = [], 0, 0, []
    for record in records:
        try:
            examples = tokenize_record(tokenizer, record["messages"], sys.maxsize, train_on_prompt,
                                       record.get("tools"))
        except (TemplateError, RenderError) as exc:
            refused.append(template_refusal(tokenizer, record["id"], None, exc))
            continue
        length = sum(len(e["input_ids"]) for e in examples)
        lengths.append(length)
        truncated += length > max_seq_length
        if not is_plain_text(record["messages"]):
            kept = examples[0]["labels"][1:max_seq_length]
            untrainable += all(t == IGNORE_INDEX for t in kept)
    lengths.sort()
    pick = lambda q: lengths[max(0, math.ceil(q * len(lengths)) - 1)] if lengths else 0  # noqa: E731  (nearest rank)
    return {"records": len(lengths), "min": pick(0), "median": pick(0.5), "p95": pick(0.95), "max": pick(1),
            "truncated": truncated, "no_trainable_tokens": untrainable, "refused": refused}


def report_schema(path: Path, validity: Validity) -> List[str]:
    """The lines ``llmft-check`` prints about the schema."""
    lines = [f"{path}:{line}: {reason}" for line, reason in validity.invalid[:SHOWN]]
    if len(validity.invalid) > SHOWN:
        lines.append(f"... and {len(validity.invalid) - SHOWN:,} more invalid records")
    total = len(validity.records) + len(validity.invalid)
    verdict = "all valid" if not validity.invalid else f"{len(validity.invalid):,} INVALID"
    return lines + [f"{path}: {total:,} records, {verdict} (schema: id, messages of role/content, meta; unique ids)"]


def report_tokens(stats: Dict[str, Any], max_seq_length: int) -> List[str]:
    """The lines ``llmft-check`` prints about token lengths."""
    share = lambda n: f"{n:,} ({100 * n / max(1, stats['records']):.1f}%)"  # noqa: E731
    lines = [f"tokens per record: min {stats['min']:,}, median {stats['median']:,}, p95 {stats['p95']:,}, "
             f"max {stats['max']:,}",
             f"longer than data.max_seq_length={max_seq_length}: {share(stats['truncated'])} would be truncated "
             "(plain texts: cut into windows)",
             f"no trainable token left within {max_seq_length}: {share(stats['no_trainable_tokens'])} (training "
             "drops them)"]
    refused = stats["refused"]
    if refused:
        lines.append(f"REFUSED by the chat template: {len(refused):,} records (training would stop at the first); "
                     f"the first: {refused[0]}")
    return lines


def check_tokens(cfg, records: Sequence[dict]) -> List[str]:
    """Print how the selected model's tokenizer (and template) sees ``records``; return the refusals."""
    from llmft.data.templates import use_chat_template
    from llmft.models.tokenizer import load_tokenizer

    tokenizer, source = load_tokenizer(cfg.model, cfg.paths.cache_dir)
    template = use_chat_template(tokenizer, cfg.data.fallback_template, cfg.data.chat_template)
    named = {"own": "its own", cfg.data.chat_template: f"{template} (data.chat_template)"}
    print(f"tokenizer: {source} ({len(tokenizer):,} tokens; chat template: "
          f"{named.get(template, template + ' (data.fallback_template)')})")
    stats = token_stats(records, tokenizer, cfg.data.max_seq_length, cfg.data.train_on_prompt)
    print("\n".join(report_tokens(stats, cfg.data.max_seq_length)))
    return stats["refused"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``llmft-check``."""
    from llmft.data.cli import compose, main_guard, split_overrides

    overrides, args = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="llmft-check", description="Validate JSONL conversation records and show how the selected model's "
        "tokenizer sees them. Extra KEY=VALUE arguments are llmft-train overrides (model=..., "
        "data.max_seq_length=...).")
    parser.add_argument("files", nargs="+", help="JSONL files of conversation records, or raw data files (converted "
                        "first, as llmft-prepare converts them)")
    parser.add_argument("--schema-only", action="store_true", help="skip the tokenizer")
    opts = parser.parse_args(args)

    def body() -> int:
        from hydra.utils import instantiate

        cfg = compose("llmft-check", overrides)
        checked = {}
        for name in opts.files:
            path = Path(name)
            if not path.is_file():
                raise DataError(f"{name} is not a file. Pass data files (conversation records, or raw data).")
            if is_records_file(path):
                checked[name] = check_schema(path)
                print("\n".join(report_schema(path, checked[name])))
            else:
                checked[name], line = convert_raw(path, instantiate(cfg.data_format, _convert_="all"))
                print("\n".join([*report_schema(path, checked[name])[:-1], line]))
        valid = [r for v in checked.values() for r in v.records]
        if cfg.data.system_into_user:
            valid = [{**r, "messages": fold_system(r["messages"])} for r in valid]
        refused = False
        if not opts.schema_only and valid:
            refused = bool(check_tokens(cfg, valid))
        return 1 if refused or any(v.invalid for v in checked.values()) else 0

    main_guard("llmft-check", body)


if __name__ == "__main__":
    main()

"""``llmft-prepare``: input files in any format -> ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and a report.

Records stream through: each is converted, validated, and written to a spool file the moment it is read, so memory
holds only the digests of the conversations seen (for de-duplication). Once the count is known, a seeded
permutation assigns exact split sizes and one sequential pass over the spool writes the split files, each in
input order. Same inputs, format, seed and ratios: byte-identical outputs.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import orjson

from llmft.data.convert import Collector
from llmft.data.datasets_io import hub_id, is_saved_dataset
from llmft.data.formats import auto
from llmft.data.reading import assign_splits, data_files, display_name, locate, split_sizes
from llmft.errors import DataError

SPLITS = ("train", "val", "test")
UNSPLIT = b'"split":""}}\n'  # how every spooled line ends (meta.split is the last key; see make_record)


def prepare(inputs: Sequence[str], out_dir: str, data_format: Callable = auto, seed: int = 42,
            ratios: Sequence[float] = (0.8, 0.1, 0.1), strict: bool = False) -> Dict[str, Any]:
    """Convert, de-duplicate and split ``inputs`` into ``out_dir``; write and return the report.

    Args:
        inputs: files, or folders whose data files (.jsonl, .json, .csv, .tsv, .txt, .parquet) are all read.
        out_dir: where ``train.jsonl``, ``val.jsonl``, ``test.jsonl``, ``rejects.jsonl`` and
            ``prepare_report.json`` go.
        data_format: a converter of ``llmft.data.formats``; ``auto`` detects each file's format.
        seed: seed of the split.
        ratios: shares of train, val and test.
        strict: stop at the first bad record instead of skipping it.

    Returns:
        The report: per file and in total, records read, written, rejected (by reason) and duplicates; the
        split sizes. Read = written + rejected + duplicates.

    Raises:
        DataError: an input cannot be read, or a bad record in strict mode, or too few records to split.
    """
    ratios = check_ratios(ratios)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(inputs, out)
    spool = out / ".spool.jsonl"
    try:
        with open(out / "rejects.jsonl", "wb") as rejects, open(spool, "wb") as kept:
            collector = Collector(rejects, strict, pairs=None)  # preference files become pair records
            write, dumps, newline = kept.write, orjson.dumps, orjson.OPT_APPEND_NEWLINE
            for file, source in files:
                for record in collector.read(file, data_format, source):
                    write(dumps(record, option=newline))
        written = collector.totals()["written"]
        sizes = write_splits(spool, out, written, ratios, seed) if written else dict.fromkeys(SPLITS, 0)
    finally:
        spool.unlink(missing_ok=True)
    report = {"inputs": list(inputs), "out_dir": str(out), "seed": seed, "ratios": dict(zip(SPLITS, ratios)),
              **collector.report(), "splits": sizes}
    (out / "prepare_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    if not written:
        raise DataError(f"no usable record is left to split.{collector.rejections()} The counts are in "
                        f"{out / 'prepare_report.json'}.")
    return report


def check_ratios(ratios: Sequence[float]) -> List[float]:
    """The train/val/test ratios as floats, if they are three non-negative shares summing to 1 with train > 0."""
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise DataError(f"the split ratios {' '.join(map(str, ratios))} are not three shares of train, val and "
                        "test that sum to 1 with train above 0. Pass e.g. --ratios 0.8 0.1 0.1 (or 0.9 0.1 0).")
    return ratios


def expand_inputs(inputs: Sequence[str], out: Path) -> List[tuple]:
    """``(file, name in the report)`` for each input file, folders expanded; llmft's own outputs left out."""
    files = []
    for name in inputs:
        path = Path(name).expanduser()
        if hub_id(path) or is_saved_dataset(path):
            files.append((path, name))
            continue
        if not path.exists():
            raise DataError(f"{name} does not exist. Pass data files (.jsonl, .json, .csv, .tsv, .txt, .parquet) or "
                            "folders, save_to_disk folders or hub datasets (hf://org/name).")
        if path.is_dir():
            train, val, _ = locate(str(path)) if data_files(path) else ([], [], None)  # as llmft-train reads it
            found = [f for f in train + val if out.resolve() not in f.resolve().parents]
            if not found:
                raise DataError(f"{name} is a folder with no data files (.jsonl, .json, .csv, .tsv, .txt, "
                                ".parquet).")
            files += [(f, display_name(f, path.parent)) for f in found]
        else:
            files.append((path, name))
    return files


def write_splits(spool: Path, out: Path, n: int, ratios: Sequence[float], seed: int) -> Dict[str, int]:
    """Assign each spooled record a split by a seeded permutation and write the split files in one pass."""
    sizes, assign = split_sizes(n, ratios), assign_splits(n, ratios, seed)
    endings = [f'"split":"{s}"}}}}\n'.encode() for s in SPLITS]
    targets = [open(out / f"{s}.jsonl", "wb") if size or s != "test" else None for s, size in zip(SPLITS, sizes)]
    try:
        writes, cut = [t.write if t is not None else None for t in targets], -len(UNSPLIT)
        with open(spool, "rb") as lines:
            for line, split in zip(lines, assign):
                writes[split](line[:cut] + endings[split])
    finally:
        for target in targets:
            if target is not None:
                target.close()
    if not sizes[2]:
        (out / "test.jsonl").unlink(missing_ok=True)  # a test split from an earlier run would mislead
    return dict(zip(SPLITS, sizes))


def format_report(report: Dict[str, Any]) -> str:
    """The report as the table ``llmft-prepare`` prints."""
    head = ["file", "format", "read", "converted", "rejected", "duplicates", "written"]
    rows = [[f["file"], f["format"] + (" (detected)" if f["detected"] else ""), *(f"{f[k]:,}" for k in head[2:])]
            for f in report["files"]]
    rows.append(["total", "", *(f"{report['total'][k]:,}" for k in head[2:])])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [head, *rows]]
    reasons = report["rejected_by_reason"]
    lines.append("rejected by reason: " + ("; ".join(f"{n:,} {r}" for r, n in reasons.items()) or "none"))
    ratios = "/".join(f"{r:g}" for r in report["ratios"].values())
    lines.append(f"splits (seed {report['seed']}, ratios {ratios}): " +
                 ", ".join(f"{s} {n:,}" for s, n in report["splits"].items()))
    out = Path(report["out_dir"])
    written = [str(out / f"{s}.jsonl") for s, n in report["splits"].items() if n or s != "test"]
    rejected = report["total"]["rejected"]
    lines.append(f"wrote {', '.join(written)}, {out / 'rejects.jsonl'} ({rejected:,} record{'s' * (rejected != 1)}), "
                 f"{out / 'prepare_report.json'}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``llmft-prepare``."""
    from llmft.data.cli import compose, main_guard, split_overrides

    overrides, args = split_overrides(argv if argv is not None else sys.argv[1:])
    parser = argparse.ArgumentParser(
        prog="llmft-prepare", description="Convert data files (any data_format) into train/val/test.jsonl of the "
        "conversation schema, with a report. Extra KEY=VALUE arguments are llmft-train overrides, e.g. "
        "data_format=csv data_format.response=answer.")
    parser.add_argument("inputs", nargs="+", help="data files or folders")
    parser.add_argument("--out", default="prepared", help="output folder (default: prepared)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the split (default: the config's, 42)")
    parser.add_argument("--ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
                        help="shares of the splits, summing to 1 (default: 0.8 0.1 0.1)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record (data.strict=true)")
    opts = parser.parse_args(args)

    def body() -> int:
        from hydra.utils import instantiate

        cfg = compose("llmft-prepare", overrides)
        report = prepare(opts.inputs, opts.out, instantiate(cfg.data_format, _convert_="all"),
                         cfg.seed if opts.seed is None else opts.seed, opts.ratios, opts.strict or cfg.data.strict)
        print(format_report(report))
        return 0

    main_guard("llmft-prepare", body)


if __name__ == "__main__":
    main()

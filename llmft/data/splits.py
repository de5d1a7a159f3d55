"""Train and validation records from ``data.path``: a file or folder in any input format, converted on the fly.

``data.path`` is a file, or a folder holding ``train.*`` (and ``val.*``) files such as ``llmft-prepare`` writes,
or a folder of data files that are pooled and split by seed. Bad records are skipped, counted and listed in the
run folder's ``rejects.jsonl`` (``data.strict=true``: the run stops at the first one instead); exact duplicates
are dropped; ``data_report.json`` holds the counts, as ``llmft-prepare`` reports them.
"""

import json
import logging
import itertools
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy

from llmft.data.convert import Collector
from llmft.data.datasets_io import hub_id, is_saved_dataset
from llmft.data.records import fold_system
from llmft.data.sources import SHAPES
from llmft.errors import DataError

log = logging.getLogger(__name__)
NO_VALIDATION = "none (data.val_ratio=0, or too few records to hold any out): validation figures are skipped"
OUTPUTS = {"rejects.jsonl", "prepare_report.json", "data_report.json"}  # what llmft writes beside data


@dataclass
class Splits:
    """The records of each split, in the conversation schema, and the report of how they were read."""

    train: List[dict]
    val: List[dict]
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return self.report.get("total", {}).get("rejected", 0)

    @property
    def duplicates(self) -> int:
        return self.report.get("total", {}).get("duplicates", 0)


def load_splits(data_format: Callable, path: str, val_path: Optional[str] = None, val_ratio: float = 0.1,
                seed: int = 42, max_samples: Optional[int] = None, *, strict: bool = False,
                report_dir: Optional[Path] = None, system_into_user: bool = False,
                sources: Optional[Sequence[Mapping[str, Any]]] = None, pairs: Optional[bool] = False) -> Splits:
    """Read, convert and split the training and validation records.

    Args:
        data_format: the converter of ``conf/data_format`` (``auto`` detects each file's format).
        path: a data file, or a folder (``train.*`` and ``val.*`` files, or data files to pool and split).
        val_path: a validation file; overrides a folder's ``val.*``.
        val_ratio: share held out for validation when there is no validation file (0: none); a split as
            ``llmft-prepare`` makes it, so a one-record file keeps its record for training.
        seed: seed of that split.
        max_samples: keep only the first N training records.
        strict: stop at the first record that cannot be used, instead of skipping it.
        report_dir: where ``rejects.jsonl`` and ``data_report.json`` go (the run folder); None: nowhere.
        system_into_user: fold a system message into the first user turn.
        sources: a mixture, read instead of ``path`` (see ``llmft.data.mixture``): each source with its own
            format, and a weight or a record cap.
        pairs: read preference pairs (True: a preference objective; conversations are refused), conversations
            (False: ``auto`` refuses preference files), or either (None).

    Returns:
        The splits, with the report.

    Raises:
        DataError: a path does not exist, a file cannot be read, a record is bad in strict mode, or no training
            record is left.
    """
    mixed = None
    with ExitStack() as stack:
        rejects = stack.enter_context(open(Path(report_dir) / "rejects.jsonl", "wb")) if report_dir else None
        collector = Collector(rejects, strict, pairs)
        if sources:
            from llmft.data.mixture import read_mixture

            train, val, mixed = read_mixture(sources, collector, val_ratio, seed)
        else:
            train, val = read_path(path, val_path, data_format, collector, val_ratio, seed)
    if system_into_user:
        for record in itertools.chain(train, val):
            record["messages"] = fold_system(record["messages"])
    unused = max(0, len(train) - max_samples) if max_samples else 0
    train = train[:max_samples] if max_samples else train
    for split, records in (("train", train), ("val", val)):
        for record in records:
            record["meta"]["split"] = split
    report = {**collector.report(), "splits": {"train": len(train), "val": len(val)}, "unused_max_samples": unused,
              **({"sources": mixed} if mixed else {})}
    if not val:
        report["validation"] = NO_VALIDATION
    if report_dir:
        (Path(report_dir) / "data_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                                          encoding="utf-8")
    _log_report(report, report_dir)
    return Splits(train=train, val=val, report=report)


def read_path(path: str, val_path: Optional[str], data_format: Callable, collector: Collector, val_ratio: float,
              seed: int) -> Tuple[List[dict], List[dict]]:
    """The training and validation records of one ``data.path`` (and ``data.val_path``)."""
    train_files, val_files, root = locate(path, val_path)
    train = read_records(train_files, data_format, collector, root)
    val = read_records(val_files, data_format, collector, root) if val_files else None
    if not train:
        raise DataError(f"{path} gives no usable training record.{collector.rejections()}")
    if val is None:
        train, val = split_records(train, val_ratio, seed)
    return train, val


def split_records(records: List[dict], val_ratio: float, seed: int) -> Tuple[List[dict], List[dict]]:
    """The records llmft-prepare --ratios 1-r r 0 --seed S puts in train and val, each in input order."""
    assign = assign_splits(len(records), (1 - val_ratio, val_ratio, 0), seed)
    return [r for r, s in zip(records, assign) if s == 0], [r for r, s in zip(records, assign) if s == 1]


def split_sizes(n: int, ratios: Sequence[float]) -> List[int]:
    """Exact split sizes: each held-out split gets round(n * ratio), and at least 1 if its ratio is not 0 while
    training keeps at least 1; training gets the rest."""
    held: List[int] = []
    for ratio in ratios[1:]:
        size = round(n * ratio)
        held.append(size if size or not ratio or n - sum(held) <= 1 else 1)
    return [n - sum(held), *held]


def assign_splits(n: int, ratios: Sequence[float], seed: int) -> bytes:
    """The split (0 train, 1 val, 2 test) of each of ``n`` records, by a seeded permutation: the same in
    ``llmft-prepare`` and in training for the same seed and ratios."""
    sizes = split_sizes(n, ratios)
    order = numpy.random.RandomState(seed).permutation(n)  # RandomState: the same permutation in every numpy
    assign = numpy.zeros(n, dtype=numpy.uint8)
    assign[order[sizes[0]:sizes[0] + sizes[1]]], assign[order[sizes[0] + sizes[1]:]] = 1, 2
    return assign.tobytes()


def read_records(files: Sequence[Path], data_format: Callable, collector: Collector,
                 root: Optional[Path]) -> List[dict]:
    """The records of ``files`` that ``collector`` keeps (new and valid), in file order."""
    records = []
    for file in files:
        records.extend(collector.read(file, data_format, display_name(file, root)))
    return records


def locate(path: str, val_path: Optional[str] = None) -> Tuple[List[Path], List[Path], Optional[Path]]:
    """The training files, the validation files, and the folder that names are shown relative to (None: a file).

    A folder's ``train.*`` (or shards ``train-00000-of-00002.parquet`` ..., at any depth, as hub datasets lay them
    out) and ``val.*``/``validation.*`` files are its splits; with no train file, all its data files are pooled.
    A ``hf://org/name`` id and a ``save_to_disk`` folder are one source each.
    """
    source = Path(path).expanduser()
    if hub_id(source) or is_saved_dataset(source):
        return [source], [] if val_path is None else [_val_file(val_path)], None
    if not source.exists():
        raise DataError(f"data.path={path} does not exist. Point data.path at a JSONL file or another data file "
                        "(.json, .csv, .tsv, .txt, .parquet), a folder of them, a save_to_disk folder, or a hub "
                        "dataset (hf://org/name).")
    train, val, root = [source], [], None
    if source.is_dir():
        files, root = data_files(source), source
        train = [f for f in files if split_of(f) == "train"] or files
        val = [f for f in files if split_of(f) in ("val", "validation")] if train != files else []
        if not files:
            raise DataError(f"data.path={path} is a folder with no data files (.jsonl, .json, .csv, .tsv, .txt, "
                            ".parquet). Point data.path at a data file, or put files in it.")
    if val_path is not None:
        val = [_val_file(val_path)]
    return train, val, root


def _val_file(val_path: str) -> Path:
    path = Path(val_path).expanduser()
    if not (path.is_file() or hub_id(path) or is_saved_dataset(path)):
        raise DataError(f"data.val_path={val_path} is not a file.")
    return path


def split_of(file: Path) -> str:
    """The split a file's name gives: ``train.jsonl`` and ``train-00000-of-00002.parquet`` are train."""
    stem = file.stem
    for split in ("train", "validation", "val", "test"):
        if stem == split or stem.startswith((f"{split}-", f"{split}_")) and stem[len(split) + 1:][:1].isdigit():
            return split
    return ""


def data_files(folder: Path) -> List[Path]:
    """The data files under ``folder`` (by suffix), sorted; hidden ones, llmft's own reports and the output
    folders of ``llmft-prepare`` below it (they hold a ``prepare_report.json``) are left out."""
    prepared = {p.parent for p in folder.rglob("prepare_report.json")} - {folder}  # a prepared folder itself: read
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SHAPES
                  and p.name not in OUTPUTS and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and not prepared.intersection(p.parents))


def display_name(file: Path, root: Optional[Path]) -> str:
    """``file`` relative to ``root`` when it is inside it, else as given."""
    try:
        return str(file.relative_to(root)) if root is not None else str(file)
    except ValueError:
        return str(file)


def _log_report(report: Dict[str, Any], report_dir: Optional[Path]) -> None:
    for f in report["files"]:
        log.info("Data %s (%s%s): read %d, written %d, rejected %d, duplicates %d", f["file"], f["format"],
                 ", detected" if f["detected"] else "", f["read"], f["written"], f["rejected"], f["duplicates"])
    total, splits = report["total"], report["splits"]
    if total["rejected"] and report_dir:
        log.warning("%d records were rejected (%s); each one is in %s", total["rejected"],
                    ", ".join(f"{n} {r}" for r, n in list(report["rejected_by_reason"].items())[:3]),
                    Path(report_dir) / "rejects.jsonl")
    if "validation" in report:
        log.warning("Validation: %s", report["validation"])
    unused = report["unused_max_samples"]
    log.info("Data: %d train and %d validation records%s", splits["train"], splits["val"],
             f" ({unused} more left out by data.max_samples)" if unused else "")

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from llmft.data.convert import Collector
from llmft.data.mixture import read_mixture
from llmft.data.reading import read_path
from llmft.data.records import fold_system

log = logging.getLogger(__name__)
NO_VALIDATION = "none (data.val_ratio=0, or too few records to hold any out): validation figures are skipped"


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

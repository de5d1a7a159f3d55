"""One ``data.path`` (and ``data.val_path``): which files it names, their records, and the seeded split into train
and validation that ``llmft-prepare`` makes too. ``llmft.data.splits`` reads a run's data through it, one path or
each source of a mixture (``llmft.data.mixture``)."""

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy

from llmft.data.convert import Collector
from llmft.data.datasets_io import hub_id, is_saved_dataset
from llmft.data.sources import SHAPES
from llmft.errors import DataError

OUTPUTS = {"rejects.jsonl", "prepare_report.json", "data_report.json"}  # what llmft writes beside data


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

"""Train and validation records from ``data.path``: a folder of split files, or one file split by seed."""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from llmft.errors import DataError

Reader = Callable[[str], Iterator[dict]]


@dataclass
class Splits:
    """The records of each split, in the conversation schema."""

    train: List[dict]
    val: List[dict]


def load_splits(reader: Reader, path: str, val_path: Optional[str] = None, val_ratio: float = 0.1,
                seed: int = 42, max_samples: Optional[int] = None) -> Splits:
    """Read the training and validation records.

    Args:
        reader: the ``data_format``'s reader, ``path -> records``.
        path: a file, or a folder holding ``train.jsonl`` and ``val.jsonl``.
        val_path: a validation file; overrides the folder's ``val.jsonl``.
        val_ratio: share held out for validation when there is no validation file.
        seed: seed of that split.
        max_samples: keep only the first N training records.

    Returns:
        The splits.

    Raises:
        DataError: a path does not exist, or a split comes out empty.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"data.path={path} does not exist. Point data.path at a JSONL file or at a folder with "
                        "train.jsonl and val.jsonl.")
    train_file = source / "train.jsonl" if source.is_dir() else source
    if source.is_dir() and not train_file.is_file():
        raise DataError(f"data.path={path} is a folder without train.jsonl. Point data.path at a JSONL file, or "
                        "at a folder with train.jsonl (and val.jsonl).")
    if val_path is None and source.is_dir() and (source / "val.jsonl").is_file():
        val_path = str(source / "val.jsonl")
    if val_path is not None and not Path(val_path).expanduser().is_file():
        raise DataError(f"data.val_path={val_path} is not a file.")
    train = list(reader(str(train_file)))
    if val_path is not None:
        val = list(reader(str(Path(val_path).expanduser())))
    else:
        random.Random(seed).shuffle(train)
        cut = max(1, round(len(train) * val_ratio))
        train, val = train[cut:], train[:cut]
    train = train[:max_samples] if max_samples else train
    if not train or not val:
        raise DataError(f"{train_file} gives {len(train)} training and {len(val)} validation records; both need at "
                        "least one. Add records, or lower data.val_ratio.")
    return Splits(train=train, val=val)

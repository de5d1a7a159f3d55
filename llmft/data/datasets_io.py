"""Records that are not text files: parquet files (streamed a batch at a time), Hugging Face hub datasets
(``hf://org/name``, through ``datasets.load_dataset``, honouring the HF cache and offline mode) and folders written
by ``Dataset.save_to_disk``. Each yields ``Raw`` records (``llmft.data.raw``) whose "line" is the row number, from 1.
"""

import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple

from llmft.data.raw import Raw, make_raw
from llmft.errors import DataError

BATCH = 4096
HUB = "hf:/"  # Path("hf://org/name") keeps one slash


def hub_id(path: Path) -> Optional[Tuple[str, Optional[str], str]]:
    """``(name, subset, split)`` of ``hf://org/name[/subset][:split]``, or None for a local path."""
    text = str(path)
    if not text.startswith(HUB):
        return None
    text = text[len(HUB):].lstrip("/")
    text, _, split = text.partition(":")
    parts = text.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, split or "train"


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def rows(table_rows: Iterable[dict]) -> Iterator[Raw]:
    """``table_rows`` as ``Raw`` records (built in C: a parquet file can hold millions of rows)."""
    return map(make_raw, zip(itertools.count(1), itertools.count(), table_rows, itertools.repeat(None)))


def read_parquet(path: Path) -> Iterator[Raw]:
    """The rows of a parquet file, a batch at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) or OSError on a file that is not parquet
        raise DataError(f"{path} cannot be read as parquet ({exc}). Check that it is a complete parquet file.") \
            from None
    return rows(itertools.chain.from_iterable(batch.to_pylist() for batch in parquet.iter_batches(batch_size=BATCH)))


def read_saved(path: Path) -> Iterator[Raw]:
    """The rows of a ``save_to_disk`` folder: a dataset, or the ``train`` split of a dataset dictionary."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path} is a saved dataset dictionary without a train split (it has "
                            f"{', '.join(loaded)}). Point data.path at {path}/<split>.")
        loaded = loaded["train"]
    return rows(loaded)


def read_hub(path: Path) -> Iterator[Raw]:
    """The rows of a hub dataset's split, from the HF cache (or the hub when online)."""
    import datasets

    name, subset, split = hub_id(path)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or \
        os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        loaded = datasets.load_dataset(name, subset, split=split)
    except (ConnectionError, FileNotFoundError) as exc:
        where = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub cannot be reached"
        raise DataError(
            f"data.path=hf://{name}{'/' + subset if subset else ''}:{split}: the dataset is not in the Hugging Face "
            f"cache ({datasets.config.HF_DATASETS_CACHE}) and {where} ({str(exc).splitlines()[0]}). On a machine "
            f"with network: python -c \"import datasets; datasets.load_dataset('{name}'"
            f"{', ' + repr(subset) if subset else ''}).save_to_disk('DIR')\", copy DIR here and pass "
            "data.path=DIR.") from None
    except ValueError as exc:  # an unknown split or subset
        raise DataError(f"data.path=hf://{name}: {str(exc).splitlines()[0]}") from None
    return rows(loaded)

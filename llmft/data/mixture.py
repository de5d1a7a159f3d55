"""Several sources in one run (``data.sources``), each with its own format, and a weight or a record cap.

A source is ``{path, data_format, format_args, weight, max_records}``: ``path`` as ``data.path`` takes it (a file,
a folder, ``hf://org/name``, a ``save_to_disk`` folder); ``data_format`` an option of ``conf/data_format`` (default
``auto``) with ``format_args`` overriding its keys (``{output: answer}``). Each source is split into train and
validation on its own (``data.val_ratio``, as a single path is), then the training records are cut down:
``max_records`` keeps at most that many (a seeded sample, in input order); ``weight`` makes each weighted source's
share of the training mixture proportional to its weight, using as many records as that allows without
repeating any. Per source, ``data_report.json`` lists what was written, available and used.

    llmft-train 'data.sources=[{path: alpaca.json, weight: 2}, {path: chats.jsonl, data_format: sharegpt,
                 max_records: 500}]'
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy
from omegaconf import OmegaConf

from llmft.data.convert import Collector
from llmft.data.reading import read_path
from llmft.errors import DataError

KEYS = ("path", "data_format", "format_args", "weight", "max_records")


def read_mixture(sources: Sequence[Mapping[str, Any]], collector: Collector, val_ratio: float,
                 seed: int) -> Tuple[List[dict], List[dict], List[Dict[str, Any]]]:
    """The training and validation records of a mixture, and the per-source report.

    Raises:
        DataError: a source is malformed, names an unknown format, or gives no training record.
    """
    parts, report = [], []
    for number, source in enumerate(sources):
        source = _checked(number, source)
        start = len(collector.files)
        train, val = read_path(str(source["path"]), None, converter(source), collector, val_ratio, seed)
        parts.append((train, val))
        report.append({"path": str(source["path"]), "data_format": source.get("data_format") or "auto",
                       "files": [f.file for f in collector.files[start:]],
                       "written": sum(f.written for f in collector.files[start:]), "train_available": len(train),
                       "val": len(val), "weight": source.get("weight"), "max_records": source.get("max_records")})
    used = _used_counts([len(t) for t, _ in parts], [s.get("max_records") for s in sources],
                        [s.get("weight") for s in sources])
    train: List[dict] = []
    for number, ((records, _), count) in enumerate(zip(parts, used)):
        keep = numpy.sort(numpy.random.RandomState(seed + number).permutation(len(records))[:count])
        train += [records[i] for i in keep]
        report[number]["train_used"] = count
    return train, [r for _, val in parts for r in val], report


def _checked(number: int, source: Any) -> Dict[str, Any]:
    source = OmegaConf.to_container(source, resolve=True) if OmegaConf.is_config(source) else source
    if isinstance(source, str):
        source = {"path": source}
    if not isinstance(source, dict) or not source.get("path"):
        raise DataError(f"data.sources[{number}] is {source!r}: each source needs a path, e.g. "
                        "{path: data.json, weight: 1}.")
    unknown = sorted(set(source) - set(KEYS))
    if unknown:
        raise DataError(f"data.sources[{number}] has unknown keys {', '.join(unknown)}; a source takes "
                        f"{', '.join(KEYS)}.")
    weight, cap = source.get("weight"), source.get("max_records")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0):
        raise DataError(f"data.sources[{number}].weight={weight} must be a number above 0.")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise DataError(f"data.sources[{number}].max_records={cap} must be a whole number, at least 1.")
    return source


def converter(source: Mapping[str, Any]):
    """The converter of a source: its ``data_format`` option (a file of ``conf/data_format``) with its
    ``format_args``."""
    from hydra.utils import instantiate

    from llmft.config.location import CONFIG_DIR
    from llmft.config.validate import check_target

    name = source.get("data_format") or "auto"
    folder = CONFIG_DIR / "data_format"
    if not (folder / f"{name}.yaml").is_file():
        raise DataError(f"data_format {name!r} of source {source['path']} is not an option: choose one of "
                        f"{', '.join(sorted(p.stem for p in folder.glob('*.yaml')))}.")
    node = OmegaConf.load(folder / f"{name}.yaml")
    for base in node.pop("defaults", []):  # an option built on another (dolly on alpaca)
        node = OmegaConf.merge(OmegaConf.load(folder / f"{base}.yaml"), node)
    node = OmegaConf.merge(node, source.get("format_args") or {})
    check_target("data_format", node)
    return instantiate(node, _convert_="all")


def _used_counts(available: Sequence[int], caps: Sequence[Optional[int]],
                 weights: Sequence[Optional[float]]) -> List[int]:
    """Training records used per source: each capped, then the weighted ones scaled to their weights' shares."""
    counts = [min(n, int(cap)) if cap else n for n, cap in zip(available, caps)]
    weighted = [i for i, w in enumerate(weights) if w]
    if weighted:
        scale = min(counts[i] / weights[i] for i in weighted)  # the largest mixture with no record repeated
        for i in weighted:
            counts[i] = min(counts[i], int(round(scale * weights[i])))
    return counts

"""Collect run folders into rows and write ``sweep_summary.csv`` / ``.md`` and the plots."""

import csv
import json
from pathlib import Path
from typing import Dict, Iterable, List

import yaml

from llmft.evaluation.report import PREFERENCE
from llmft.sweeps.plots import plot_against_parameters

# truncated_records / dropped_records: what data.max_seq_length cut or left out (two lengths that cut nothing
# train on the same data, so they give the same figures)
COLUMNS = ["job", "overrides", "status", "mean_train_loss_last_epoch", "eval_loss", "perplexity", "tokens_per_s",
           "peak_memory_mb", "trainable_params", "truncated_records", "dropped_records", "duration_s", "reason"]


PLAIN_RUN = "(none: the defaults)"


def run_folders(paths: Iterable[str]) -> List[Path]:
    """Each path itself if it is a run folder (has ``.hydra/``), else the run folders directly inside it."""
    found: List[Path] = []
    for path in map(Path, paths):
        if (path / ".hydra").is_dir():
            found.append(path)
        else:
            subdirs = [p for p in path.iterdir() if (p / ".hydra").is_dir()] if path.is_dir() else []
            found += sorted(subdirs, key=lambda p: (len(p.name), p.name))
    return found


def _summary(folder: Path) -> Dict:
    """The run's summary.json, or what can be said without one (killed, or damaged)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except FileNotFoundError:
        steps = sorted((folder / "checkpoints").glob("step-*"))
        if steps:
            return {"status": "interrupted", "error": f"killed without a summary; its last checkpoint is "
                                                      f"{steps[-1].name} (llmft-train resume={folder})"}
        return {"status": "failed", "error": "no summary.json: the job stopped before its run began"}
    except ValueError:
        return {"status": "failed", "error": "summary.json is damaged (not valid JSON)"}
    if not isinstance(summary, dict):
        return {"status": "failed", "error": "summary.json is damaged (not a JSON object)"}
    return summary


def collect_runs(paths: Iterable[str]) -> List[Dict]:
    """One row per run folder: its overrides, status and figures (a run that died early: status ``failed``)."""
    rows = []
    for folder in run_folders(paths):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        summary = _summary(folder)
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row = {key: summary.get(key) for key in COLUMNS}
        preference = summary.get("preference")  # another tool's summary.json may hold anything here
        tuned = preference.get("finetuned") if isinstance(preference, dict) else None
        if isinstance(tuned, dict):
            row.update({k: tuned.get(k) for k in PREFERENCE})
        row.update(job=str(folder), overrides=" ".join(overrides or []) or PLAIN_RUN,
                   params=_params(overrides or []), reason=summary.get("reason") or summary.get("error"))
        rows.append(row)
    return rows


def _params(overrides: List[str]) -> Dict[str, str]:
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)


def swept_parameters(rows: List[Dict]) -> List[str]:
    """The override keys whose value differs between rows."""
    keys = sorted({k for r in rows for k in r["params"]})
    return [k for k in keys if len({r["params"].get(k) for r in rows}) > 1]


def write_comparison(rows: List[Dict], out_dir: Path, name: str = "sweep_summary") -> List[Path]:
    """Write ``NAME.csv``, ``NAME.md`` and one PNG per swept parameter into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = table_columns(rows)
    with (out_dir / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / f"{name}.md").write_text(_markdown(rows, columns))
    plots = plot_against_parameters(rows, swept_parameters(rows), out_dir)
    return [out_dir / f"{name}.csv", out_dir / f"{name}.md", *plots]


def table_columns(rows: List[Dict]) -> List[str]:
    """``COLUMNS``, with the fine-tuned model's preference figures on validation pairs (summary.json's
    ``preference``) after perplexity when some row has them: a sweep of conversations gets no empty columns."""
    extra = [c for c in PREFERENCE if any(row.get(c) is not None for row in rows)]
    at = COLUMNS.index("perplexity") + 1
    return COLUMNS[:at] + extra + COLUMNS[at:]


def _markdown(rows: List[Dict], columns: List[str]) -> str:
    shown = [c for c in columns if c != "job"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) if c != "overrides" else _cell(_short(row[c]))
                                       for c in shown) + " |")
    return "\n".join(lines) + "\n"


def _short(overrides: str) -> str:
    """The overrides with each decimal value at 4 significant digits (an Optuna learning rate has 16)."""
    def shorten(override: str) -> str:
        key, sep, value = override.partition("=")
        try:
            return f"{key}={float(value):.4g}" if sep and "." in value else override
        except ValueError:
            return override
    return " ".join(shorten(o) for o in overrides.split(" "))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):  # 4 significant digits; from 1,000 (tokens/s) whole, not 1.119e+04
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")

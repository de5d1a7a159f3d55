"""``loss_curve.png`` in the run folder: training loss, validation loss and learning rate by optimizer step, drawn
from ``metrics.jsonl`` when the run ends."""

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

NAME = "loss_curve.png"


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The lines of ``metrics.jsonl`` (none when the file is absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def validation_points(rows: List[Dict[str, Any]], summary: Mapping[str, Any]) -> List[tuple]:
    """(step, validation loss): the base model's at step 0, each ``trainer.eval_every`` line, the fine-tuned
    model's at the last step."""
    points = {r["step"]: r["eval_loss"] for r in rows
              if isinstance(r.get("eval_loss"), (int, float)) and math.isfinite(r["eval_loss"])}
    if summary.get("base_perplexity"):
        points[0] = math.log(summary["base_perplexity"])
    if summary.get("eval_loss") is not None and summary.get("train_steps"):
        # one point a step: at the last step the final evaluation's loss stands for the periodic one, which batches
        # the same records differently and so differs in the 7th digit
        points[summary["train_steps"]] = summary["eval_loss"]
    return sorted(points.items())


def draw_loss_curve(run_dir: Path, summary: Mapping[str, Any]) -> Optional[Path]:
    """Draw ``loss_curve.png`` into ``run_dir`` from its ``metrics.jsonl``; None when no step was recorded."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    number = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731  (NaN is written "nan")
    train = [(r["step"], r["loss"], r.get("learning_rate") if number(r.get("learning_rate")) else float("nan"))
             for r in rows if number(r.get("loss"))]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, lr_ax) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(3, 1))
    steps, losses, rates = zip(*train)
    loss_ax.plot(steps, losses, label="training loss", linewidth=1)
    val = validation_points(rows, summary)
    if val:
        loss_ax.plot(*zip(*val), marker="o", label="validation loss (step 0: the base model)")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(f"{summary.get('model', 'run')}: loss by optimizer step")
    loss_ax.legend(fontsize=8)
    loss_ax.grid(alpha=0.3)
    lr_ax.plot(steps, rates, color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""PNG plots of the main metrics against each swept parameter."""

from pathlib import Path
from typing import Dict, List

METRICS = [("eval_loss", "validation loss"), ("perplexity", "validation perplexity"),
           ("tokens_per_s", "training tokens/s"), ("peak_memory_mb", "peak memory (MB)")]


def _value(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def plot_against_parameters(rows: List[Dict], params: List[str], out_dir: Path) -> List[Path]:
    """One figure per parameter: a panel per metric, completed runs only, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "completed"]
    written = []
    for param in params:
        values = sorted({r["params"].get(param) for r in done}, key=lambda v: (isinstance(_value(v), str), _value(v)))
        if not values:
            continue
        position = {v: (_value(v) if not isinstance(_value(v), str) else i) for i, v in enumerate(values)}
        fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
        groups: Dict[str, List[Dict]] = {}
        for row in done:
            rest = " ".join(f"{k}={v}" for k, v in sorted(row["params"].items()) if k != param and k in params)
            groups.setdefault(rest or "all", []).append(row)
        for ax, (key, label) in zip(axes, METRICS):
            for rest, members in groups.items():
                points = sorted((position[m["params"].get(param)], m[key]) for m in members if m.get(key) is not None)
                if points:
                    ax.plot(*zip(*points), marker="o", label=rest)
            ax.set_xlabel(param)
            ax.set_title(label)
            if any(isinstance(_value(v), str) for v in values):
                ax.set_xticks(list(position.values()), values, rotation=20)
        if len(groups) > 1:
            axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sweep_{param.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

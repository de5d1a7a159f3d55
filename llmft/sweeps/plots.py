"""PNG plots of the main metrics against each swept parameter."""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

# a panel each, for the metrics that some completed run has (the preference figures: runs on pairs)
METRICS = [("eval_loss", "validation loss"), ("perplexity", "validation perplexity"),
           ("preference_accuracy", "preference accuracy (val pairs)"), ("reward_margin", "reward margin (nats)"),
           ("tokens_per_s", "training tokens/s"), ("peak_memory_mb", "peak memory (MB)")]
UNSET = "(default)"  # a run that did not override the parameter: it ran with the config's value


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def axis(values: Sequence[str]) -> Tuple[Dict[str, float], str]:
    """Where each value sits on the x axis, and the scale: ``log`` for positive numbers spanning a factor of 10 or
    more (a learning rate searched on a log scale), ``linear`` for other numbers, ``category`` (evenly spaced, in
    the given order) when any value is not a number."""
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return {v: float(i) for i, v in enumerate(values)}, "category"
    scale = "log" if min(numbers) > 0 and max(numbers) >= 10 * min(numbers) else "linear"
    return dict(zip(values, numbers)), scale


def plot_against_parameters(rows: List[Dict], params: List[str], out_dir: Path) -> List[Path]:
    """One figure per parameter: a panel per metric, completed runs only, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "completed"]
    metrics = [(key, label) for key, label in METRICS if any(r.get(key) is not None for r in done)]
    written = []
    for param in params:
        values = sorted({r["params"].get(param, UNSET) for r in done},
                        key=lambda v: (_number(v) is None, _number(v) or 0.0, v))
        if not values or not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
        axes = axes[0]
        groups: Dict[str, List[Dict]] = {}
        for row in done:
            rest = " ".join(f"{k}={v}" for k, v in sorted(row["params"].items()) if k != param and k in params)
            groups.setdefault(rest or "all", []).append(row)
        _panels(axes, metrics, groups, param, values)
        if len(groups) > 1:
            axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sweep_{param.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _panels(axes, metrics, groups: Dict[str, List[Dict]], param: str, values: List[str]) -> None:
    position, scale = axis(values)
    for ax, (key, label) in zip(axes, metrics):
        for rest, members in groups.items():
            points = sorted((position[m["params"].get(param, UNSET)], m[key]) for m in members
                            if m.get(key) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=rest)
        ax.set_xlabel(param + (" (log scale)" if scale == "log" else ""))
        ax.set_title(label)
        if scale == "log":
            ax.set_xscale("log")
        elif scale == "category":
            ax.set_xticks(list(position.values()), values, rotation=20)

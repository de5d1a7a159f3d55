"""``llmft-eval RUN_DIR [OVERRIDES ...]``: evaluate a finished run again, base and fine-tuned side by side.

The run's saved config is the default; overrides change it (``eval=full``, ``eval.prompts.file=mine.json``,
``data.val_path=other.jsonl``). The new report is written beside the old one, never over it.
"""

import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from llmft.config.precheck import fail
from llmft.errors import ConfigError, LlmftError
from llmft.outcome import evaluation_parts
from llmft.quiet import quiet_libraries
from llmft.runs import load_with_adapter, open_run

log = logging.getLogger("llmft.eval")
USAGE = "usage: llmft-eval RUN_DIR [OVERRIDE ...]   e.g. llmft-eval outputs/2026-11-21/12-22-29-8e3b37 eval=full"


def reevaluate(folder: str, overrides: Sequence[str] = ()) -> Path:
    """Evaluate the run in ``folder`` again; returns the path of the new ``eval_report-*.json``.

    Raises:
        LlmftError: not a completed run, a bad override, or ``eval=none``.
    """
    from llmft.builders import build_evaluators, evaluate, evaluate_both, evaluation_data, read_splits, unpaired
    from llmft.evaluation import build_eval_report, samples_markdown
    from llmft.hardware import load_device
    from llmft.recording import RunRecorder

    run = open_run(folder, overrides)
    cfg = run.cfg
    if not cfg.eval:
        raise ConfigError("eval is none, so there is nothing to evaluate: pass eval=standard or eval=full.")
    device = load_device(cfg.hardware.device)
    model, loaded = load_with_adapter(run, device=device)
    splits = read_splits(cfg)
    data = evaluation_data(cfg, loaded.tokenizer, splits.val)
    evaluators = build_evaluators(cfg)
    base = evaluate(cfg, unpaired(evaluators, model), model, loaded.tokenizer, data, base=True, device=device)
    base, tuned = evaluate_both(cfg, evaluators, model, loaded.tokenizer, data, base, device=device)
    report = {**build_eval_report(base, tuned), "overrides": list(overrides)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = _unused(run.folder / f"eval_report-{stamp}.json")
    RunRecorder(run.folder).write_json(path.name, report)
    samples_beside(path).write_text(
        samples_markdown(report, f"{loaded.name}: base vs fine-tuned (re-evaluated {stamp})"), encoding="utf-8")
    return path


def _unused(path: Path) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3`` ... before the suffix if it exists: never overwrite a report."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def main(argv=None) -> None:
    """Console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    quiet_libraries()  # before the model loads: bitsandbytes' kernel notice, rouge_score's per-answer line, bars
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        path = reevaluate(args[0], args[1:])
    except LlmftError as exc:
        fail(str(exc), code=2, program="llmft-eval")
    log_report(json.loads(path.read_text()), path)


def log_report(report: dict, path: Path) -> None:
    """The new report's figures, base -> fine-tuned, as the end of a run says them, and where it went."""
    from llmft.evaluation import preference_figures

    parts = evaluation_parts(report.get("base", {}).get("perplexity"), report.get("perplexity"),
                             report.get("answer_means"), preference_figures(report))
    if parts:
        log.info("%s", "; ".join(parts))
    log.info("Wrote %s and %s", path, samples_beside(path))


def samples_beside(path: Path) -> Path:
    """The ``samples-*.md`` that goes with the report ``eval_report-*.json`` at ``path``."""
    return path.with_name(path.name.replace("eval_report", "samples").replace(".json", ".md"))


if __name__ == "__main__":
    main()

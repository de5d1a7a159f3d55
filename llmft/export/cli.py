"""``llmft-export RUN_DIR [--merge] [--out DIR] [--force] [--dtype D] [--tolerance X] [--trust-remote-code]``."""

import argparse
import json
import logging

from llmft.config.precheck import fail
from llmft.errors import LlmftError
from llmft.export.exporter import TOLERANCE, export_run


def main(argv=None) -> None:
    """Console script: export a finished run's adapter (and a merged model), print where and the check."""
    parser = argparse.ArgumentParser(prog="llmft-export", description="Export a finished llmft run: the adapter "
                                     "with a model card, and with --merge a merged full model checked against it.")
    parser.add_argument("run_dir", help="a completed run folder (outputs/DATE/TIME)")
    parser.add_argument("--merge", action="store_true", help="also write merged/, loadable without peft")
    parser.add_argument("--out", help="the export folder (default: RUN_DIR/export)")
    parser.add_argument("--force", action="store_true", help="replace an existing export")
    parser.add_argument("--dtype", default="float32", choices=list(TOLERANCE), help="merged weights' dtype")
    parser.add_argument("--tolerance", type=float, help="max |logit difference| accepted (default per dtype)")
    parser.add_argument("--trust-remote-code", action="store_true", help="accept a run whose model runs its own "
                        "Python code (model.trust_remote_code); a run folder alone cannot turn it on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        out = export_run(args.run_dir, args.out, args.merge, args.force, args.dtype, args.tolerance,
                         args.trust_remote_code)
    except LlmftError as exc:
        fail(str(exc), code=2, program="llmft-export")
    report = json.loads((out / "export_report.json").read_text())
    check = (f"; merged check: max |logit difference| {report['max_abs_logit_difference']:.3g} "
             f"(tolerance {report['tolerance']:.3g})" if "merged" in report else "")
    print(f"Exported to {out}{check}")


if __name__ == "__main__":
    main()

"""``llmft-export RUN_DIR [--merge] [--gguf TYPE] [--out DIR] [--force] [--dtype D] [--tolerance X] ...``."""

import argparse
import json
import logging

from llmft.config.precheck import fail
from llmft.errors import LlmftError
from llmft.quiet import quiet_libraries

quiet_libraries()  # before the exporter's imports load bitsandbytes, whose kernel notice it drops

from llmft.export.exporter import TOLERANCE, export_run  # noqa: E402
from llmft.export.gguf_export import TOLERANCE as GGUF_TOLERANCE  # noqa: E402


def main(argv=None) -> None:
    """Console script: export a finished run's adapter (and a merged model), print where and the check."""
    parser = argparse.ArgumentParser(prog="llmft-export", description="Export a finished llmft run: the adapter "
                                     "with a model card, with --merge a merged full model, with --gguf one GGUF file "
                                     "for llama.cpp and Ollama; each checked against base + adapter.")
    parser.add_argument("run_dir", help="a completed run folder (outputs/DATE/TIME)")
    parser.add_argument("--merge", action="store_true", help="also write merged/, loadable without peft")
    parser.add_argument("--out", help="the export folder (default: RUN_DIR/export)")
    parser.add_argument("--force", action="store_true", help="replace an existing export")
    parser.add_argument("--dtype", default="float32", choices=list(TOLERANCE), help="merged weights' dtype")
    parser.add_argument("--tolerance", type=float, help="max |logit difference| accepted (default per dtype)")
    parser.add_argument("--trust-remote-code", action="store_true", help="accept a run whose model runs its own "
                        "Python code (model.trust_remote_code); a run folder alone cannot turn it on")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the base is re-loaded, "
                        "merged and checked (default cpu: needs no GPU, and spares a small GPU's memory)")
    parser.add_argument("--gguf", nargs="?", const="f16", choices=list(GGUF_TOLERANCE),
                        help="also write gguf/model.gguf (default type f16) with an Ollama Modelfile, checked")
    parser.add_argument("--gguf-tolerance", type=float,
                        help="max GGUF logit difference / logit range accepted (default per type)")
    args = parser.parse_args(argv)
    if args.gguf_tolerance is not None and args.gguf is None:
        parser.error("--gguf-tolerance applies to a GGUF export: add --gguf TYPE")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        out = export_run(args.run_dir, args.out, args.merge, args.force, args.dtype, args.tolerance, args.gguf,
                         args.gguf_tolerance, args.trust_remote_code,
                         args.device)
    except LlmftError as exc:
        fail(str(exc), code=2, program="llmft-export")
    report = json.loads((out / "export_report.json").read_text())
    check = (f"; merged check: max |logit difference| {report['max_abs_logit_difference']:.3g} "
             f"(tolerance {report['tolerance']:.3g})" if "merged" in report else "")
    if "gguf" in report:
        check += (f"; GGUF {report['gguf_type']} ({report['gguf_bytes'] / 1e6:.1f} MB): max |logit difference| "
                  f"{report['gguf_relative_logit_difference']:.2g} of the range (tolerance "
                  f"{report['gguf_tolerance']:.2g}), greedy answers as the merged model's: "
                  f"{report['gguf_greedy_matches']} of {len(report['gguf_answers'])}{_ties(report)}")
    print(f"Exported to {out}{check}")


def _ties(report: dict) -> str:
    """Where GGUF answers part from the merged model's, how close to a tie the merged model was there."""
    margins = [abs(a["margin_where_parted"]) for a in report["gguf_answers"] if a["margin_where_parted"] is not None]
    if not margins:
        return ""
    worst, moved = max(margins), report["gguf_max_abs_logit_difference"]
    if worst <= moved:
        return (f" (the others part where the merged model's two likeliest tokens were at most {worst:.2g} logits "
                f"apart, within the {moved:.2g} by which the file's rounding moves logits: near-ties)")
    return (f" (one parts where the merged model's two likeliest tokens were {worst:.2g} logits apart, more than "
            f"the {moved:.2g} by which the file's rounding moves logits: see gguf_answers in export_report.json)")


if __name__ == "__main__":
    main()

"""``llmft-compare FOLDER ... [--out DIR]``: the sweep table and plots for any run or sweep folders."""

import argparse
from pathlib import Path

from llmft.config.precheck import fail
from llmft.sweeps.table import collect_runs, write_comparison


def main(argv=None) -> None:
    """Console script."""
    parser = argparse.ArgumentParser(prog="llmft-compare", description="Compare llmft runs: a table (CSV and "
                                     "Markdown) and plots of the main metrics against each parameter that differs.")
    parser.add_argument("folders", nargs="+", help="run folders, or folders holding runs (a sweep)")
    parser.add_argument("--out", default="comparison", help="where to write (default: ./comparison)")
    args = parser.parse_args(argv)
    rows = collect_runs(args.folders)
    if not rows:
        fail(f"no run folder (a folder with .hydra/) in {', '.join(args.folders)}. Pass outputs/DATE/TIME run "
             "folders or multirun/DATE/TIME sweep folders.", program="llmft-compare")
    paths = write_comparison(rows, Path(args.out), name="comparison")
    print(Path(args.out, "comparison.md").read_text())
    print("Wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

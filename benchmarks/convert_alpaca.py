"""Convert N generated Alpaca JSONL records to the conversation schema: llmft-prepare beside what users run instead.

    python benchmarks/convert_alpaca.py                  # 1,000,000 records (about 120 MB of JSONL)
    python benchmarks/convert_alpaca.py --records 200000

Each contender runs in a fresh Python process on the same input, so that its peak memory (the process's maximum
resident set, imports included) is its own; the clock starts after the imports:

- ``llmft-prepare``: ``llmft.data.prepare`` (detect, convert, validate, de-duplicate, split 0.8/0.1/0.1, report,
  write train/val/test.jsonl).
- ``prepare parquet``: the same on the same records as a parquet file (written by pyarrow before the clock starts;
  read a batch at a time).
- ``datasets``: ``datasets.load_dataset("json")`` + ``map`` to messages + ``train_test_split`` twice + ``to_json``
  (no validation, de-duplication or report), the usual Hugging Face recipe.
- ``json loop``: a hand-written loop with the standard ``json`` module that converts and writes one file.

Targets for llmft-prepare: >= 100,000 records/s and < 1 GB peak memory. The machine's load average is printed:
on a shared machine, records/s per CPU second is the steadier figure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_llmft(source: Path, work: Path) -> tuple:
    from llmft.data.prepare import prepare

    start = time.perf_counter(), time.process_time()
    report = prepare([str(source)], str(work / "llmft"))  # data_format=auto, as llmft-prepare runs by default
    return report["total"]["written"], start


def run_llmft_parquet(source: Path, work: Path) -> tuple:
    return run_llmft(source.with_suffix(".parquet"), work)


def run_datasets(source: Path, work: Path) -> tuple:
    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter(), time.process_time()

    def to_messages(row):
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]}

    data = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(work / "hf"))
    data = data.map(to_messages, remove_columns=data.column_names)
    train_rest = data.train_test_split(test_size=0.2, seed=42)
    val_test = train_rest["test"].train_test_split(test_size=0.5, seed=42)
    for name, split in (("train", train_rest["train"]), ("val", val_test["train"]), ("test", val_test["test"])):
        split.to_json(str(work / f"hf-{name}.jsonl"), force_ascii=False)
    return len(data), start


def run_json_loop(source: Path, work: Path) -> tuple:
    start = time.perf_counter(), time.process_time()
    count = 0
    with open(source, encoding="utf-8") as lines, open(work / "loop.jsonl", "w", encoding="utf-8") as out:
        for line in lines:
            row = json.loads(line)
            user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
            out.write(json.dumps({"messages": [{"role": "user", "content": user},
                                               {"role": "assistant", "content": row["output"]}]}) + "\n")
            count += 1
    return count, start


CONTENDERS = {"llmft-prepare": run_llmft, "prepare parquet": run_llmft_parquet, "datasets": run_datasets,
              "json loop": run_json_loop}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: Linux carries ru_maxrss over from the parent."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def child(name: str, source: Path, work: Path) -> None:
    """Run one contender and print its figures as JSON (called in a fresh process)."""
    count, (wall0, cpu0) = CONTENDERS[name](source, work)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak_mb = peak_rss_mb()
    print(json.dumps({"name": name, "records": count, "wall_s": wall, "cpu_s": cpu, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--only", choices=list(CONTENDERS), action="append", help="run only these contenders")
    parser.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.source, args.work)
    with tempfile.TemporaryDirectory(prefix="llmft-bench-") as tmp:
        source = Path(tmp) / "alpaca.jsonl"
        subprocess.run([sys.executable, "-m", "llmft.data.synth", "--format", "alpaca", "--count", str(args.records),
                        "--seed", "0", "--out", str(source)], check=True, capture_output=True)
        if "prepare parquet" in (args.only or CONTENDERS):
            import pyarrow.json
            import pyarrow.parquet

            pyarrow.parquet.write_table(pyarrow.json.read_json(source), source.with_suffix(".parquet"))
        print(f"{args.records:,} Alpaca records, {source.stat().st_size / 1e6:.0f} MB of JSONL; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'contender':<15}{'records':>11}{'wall s':>9}{'records/s':>12}{'CPU s':>8}{'records/CPU s':>15}"
              f"{'peak MB':>9}")
        for name in args.only or CONTENDERS:
            work = Path(tempfile.mkdtemp(dir=tmp))
            result = subprocess.run([sys.executable, __file__, "--child", name, "--source", str(source), "--work",
                                     str(work)], capture_output=True, text=True, check=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{name:<15}{r['records']:>11,}{r['wall_s']:>9.1f}{r['records'] / r['wall_s']:>12,.0f}"
                  f"{r['cpu_s']:>8.1f}{r['records'] / r['cpu_s']:>15,.0f}{r['peak_mb']:>9,.0f}")


if __name__ == "__main__":
    main()

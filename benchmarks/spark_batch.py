"""Raw notes through the registered champion on Spark and in one process: mentions/s side by side.

    python benchmarks/spark_batch.py [--model models:/ehrbert-ncbi@champion] [--master local[2]]

Every MTSamples note (the pipeline's notes file) is normalized twice in raw-text mode: by `ehrbert.batch` on
Spark (`--master`, default local[2]: two Python workers on this machine's 2 cores) and by the pyfunc in this
process, in one call. Each time is the job alone (the Spark session and the in-process model load are timed
apart); both must find the same mentions. It writes reports/benchmark_spark.json and .md. Not a test: nothing
here asserts a number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from bench import write_report  # benchmarks/: the folder of this script

from ehrbert import batch
from ehrbert.corpora.notes import read_notes
from ehrbert.stage import read_params

ROOT = Path(__file__).resolve().parents[1]


def markdown(results: dict) -> str:
    spark, local = results["spark"], results["one_process"]
    return "\n".join(
        [
            f"# Batch normalization of raw notes: {results['model']}, {results['notes']:,} MTSamples notes",
            "",
            f"Measured by `make bench` (`benchmarks/spark_batch.py`) on {results['cores']} CPU cores; job time only.",
            "",
            "| where | mentions found | seconds | mentions/s | notes/s | start-up |",
            "|---|---|---|---|---|---|",
            f"| Spark {spark['master']} | {spark['mentions']:,} | {spark['seconds']:.1f} | "
            f"{spark['mentions_per_s']:.0f} | {spark['notes_per_s']:.1f} | session {spark['startup_s']:.1f} s |",
            f"| one process | {local['mentions']:,} | {local['seconds']:.1f} | {local['mentions_per_s']:.0f} | "
            f"{local['notes_per_s']:.1f} | model load {local['startup_s']:.1f} s |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/ehrbert-ncbi@champion")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark_spark.json")
    args = parser.parse_args(argv)
    params = read_params(ROOT / "params.yaml")
    notes = pd.DataFrame(
        [(n.doc_id, n.text) for n in read_notes(ROOT / params["data"]["notes"], "auto") if n.text],
        columns=["note_id", "text"],
    )
    work = Path(tempfile.mkdtemp(prefix="ehrbert-spark-bench-"))
    try:
        notes.to_parquet(work / "notes.parquet")
        started = time.perf_counter()
        spark = batch.spark_session(args.master, {"spark.ui.enabled": "false"})
        startup = time.perf_counter() - started
        try:
            started = time.perf_counter()
            found_spark = batch.run(spark, args.model, str(work / "notes.parquet"), str(work / "out"))
            spark_s = time.perf_counter() - started
        finally:
            spark.stop()

        started = time.perf_counter()
        model = mlflow.pyfunc.load_model(args.model)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        found_local = len(model.predict(notes[["text"]]))
        local_s = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if found_spark != found_local:
        sys.exit(f"Spark found {found_spark} mentions, one process {found_local}: the answers differ")
    results = {
        "model": args.model,
        "notes": len(notes),
        "cores": os.cpu_count(),
        "spark": {
            "master": args.master,
            "mentions": found_spark,
            "seconds": round(spark_s, 2),
            "mentions_per_s": round(found_spark / spark_s, 1),
            "notes_per_s": round(len(notes) / spark_s, 1),
            "startup_s": round(startup, 2),
        },
        "one_process": {
            "mentions": found_local,
            "seconds": round(local_s, 2),
            "mentions_per_s": round(found_local / local_s, 1),
            "notes_per_s": round(len(notes) / local_s, 1),
            "startup_s": round(load_s, 2),
        },
    }
    write_report(results, args.out, markdown(results))


if __name__ == "__main__":
    main()

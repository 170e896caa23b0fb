"""Batch normalization on Spark: a table of mentions, or of raw notes, through a registered model, partition by
partition.

    python -m ehrbert.batch --model models:/ehrbert-ncbi@champion --input mentions.parquet --output out.parquet \\
        [--master local[2] | spark://host:7077]

The input is Parquet (a file or a folder of parts) with a ``mention`` column (and optional ``context``), or a
``text`` column of raw notes for a model with a mention detector (the hybrid champions). Every other column
(a note or row ID, say) is carried to the output. Mentions go through `mlflow.pyfunc.spark_udf`: one answer per
row. Notes go through `mapInPandas` with the model loaded once per Python worker, since a note gives any number
of mentions and a UDF returns one value per row. Both load the same pyfunc that `mlflow models serve` serves,
so Spark's answers are the served model's answers.

The output is Parquet written by Spark (a folder of part files, committed only when the whole job succeeds):
the carried columns, then ``concept_id``, ``concept_ids``, ``concept_name``, ``score``; for notes also
``start``, ``end`` and ``mention`` (character offsets into the note). Input that the served model would refuse
(no ``mention`` or ``text`` column, both, a missing or blank mention, a value over the serving limits) is refused
before the job starts, with the file, the number of bad rows and the first of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from ehrbert.serving import MAX_CONTEXT_CHARS, MAX_MENTION_CHARS, MAX_TEXT_CHARS
from ehrbert.stage import setup_logging

log = logging.getLogger(__name__)

ANSWER_COLUMNS = {"concept_id": "string", "concept_ids": "string", "concept_name": "string", "score": "double"}
PLACE_COLUMNS = {"start": "long", "end": "long", "mention": "string"}
EXAMPLES = 5  # bad rows shown in an error
_loaded: dict[str, mlflow.pyfunc.PyFuncModel] = {}  # per Python worker: the model, loaded once


class BatchInputError(Exception):
    """Input the served model would refuse; the message names the file, the rule and the first bad rows."""


def spark_session(master: str, conf: dict[str, str] | None = None):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers run this environment's Python
    builder = SparkSession.builder.master(master).appName("ehrbert-batch")
    for key, value in {"spark.sql.execution.arrow.pyspark.enabled": "true", **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _rules(frame, path: str, column: str, limit: int, required: bool) -> list:
    """(condition, column, what) of each value to refuse: null (if `required`), blank or punctuation-only
    (mentions), over-long; a column that is not strings is refused at once."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    kind = frame.schema[column].dataType
    if not isinstance(kind, StringType):
        raise BatchInputError(f"{path}: column '{column}' must hold strings, not {kind.simpleString()}")
    value = F.col(column)
    rules = [(value.isNull(), column, "is missing")] if required else []
    if column == "mention":
        rules.append((value.isNotNull() & ~value.rlike(r"[\p{L}\p{N}]"), column, "is blank or punctuation only"))
    return rules + [(F.length(value) > limit, column, f"is over {limit:,} characters")]


def _refuse(frame, path: str, rules: list) -> None:
    """Count every rule's bad rows in one pass over the input; the first rule with any is the error."""
    from pyspark.sql import functions as F

    counts = frame.select(*(F.sum(F.when(condition, 1).otherwise(0)) for condition, _, _ in rules)).first()
    for (condition, column, what), count in zip(rules, counts):
        if count:
            shown = [
                {k: (v[:60] if isinstance(v, str) else v) for k, v in row.asDict().items()}
                for row in frame.where(condition).limit(EXAMPLES).collect()
            ]
            raise BatchInputError(f"{path}: {count:,} rows' '{column}' {what}; the first: {shown}")


def validate(frame, path: str) -> str:
    """'mention' or 'text': which kind of input `frame` is, or a BatchInputError."""
    columns = set(frame.columns)
    if "mention" in columns and "text" in columns:
        raise BatchInputError(f"{path}: has both 'mention' and 'text' columns; give one (mentions, or raw notes)")
    if "mention" not in columns and "text" not in columns:
        raise BatchInputError(f"{path}: no 'mention' or 'text' column; columns: {sorted(columns)}")
    clash = columns & (set(ANSWER_COLUMNS) | set(PLACE_COLUMNS)) - {"mention"}
    if clash:
        raise BatchInputError(f"{path}: columns {sorted(clash)} would clash with the answer's; rename them")
    if "mention" in columns:
        rules = _rules(frame, path, "mention", MAX_MENTION_CHARS, required=True)
        if "context" in columns:
            rules += _rules(frame, path, "context", MAX_CONTEXT_CHARS, required=False)
        kind = "mention"
    else:
        rules, kind = _rules(frame, path, "text", MAX_TEXT_CHARS, required=False), "text"
    _refuse(frame, path, rules)
    return kind


def normalize_mentions(spark, frame, model_uri: str):
    """Each row's answer, through `mlflow.pyfunc.spark_udf`."""
    from pyspark.sql import functions as F

    inputs = [c for c in ("mention", "context") if c in frame.columns]
    result_type = ", ".join(f"{name} {kind}" for name, kind in ANSWER_COLUMNS.items())
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type, env_manager="local")
    answered = frame.withColumn("_answer", udf(F.struct(*inputs)))
    return answered.select(*frame.columns, *(F.col(f"_answer.{name}").alias(name) for name in ANSWER_COLUMNS))


def annotate_notes(spark, frame, model_uri: str, work: str):
    """Each mention the model's detector finds in each note, with its answer, through `mapInPandas`; the model is
    copied into `work` and shipped from there to every worker."""
    from pyspark import SparkFiles

    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=work)
    spark.sparkContext.addFile(local, recursive=True)  # shipped to every worker
    name = Path(local).name
    carried = [c for c in frame.columns if c != "text"]
    schema = ", ".join(
        [f"`{c}` {frame.schema[c].dataType.simpleString()}" for c in carried]
        + [f"{c} {kind}" for c, kind in {**PLACE_COLUMNS, **ANSWER_COLUMNS}.items()]
    )

    def annotate(batches):
        path = SparkFiles.get(name)
        if path not in _loaded:
            _loaded[path] = mlflow.pyfunc.load_model(path)
        model = _loaded[path]
        for batch in batches:
            found = model.predict(batch[["text"]].reset_index(drop=True))
            rows = batch[carried].iloc[found["row"].to_numpy()].reset_index(drop=True)
            yield pd.concat([rows, found[list(PLACE_COLUMNS) + list(ANSWER_COLUMNS)]], axis=1)

    return frame.mapInPandas(annotate, schema)


def run(spark, model_uri: str, input_path: str, output_path: str) -> int:
    """Normalize `input_path` into `output_path` on `spark`; returns the rows written."""
    frame = spark.read.parquet(input_path)
    kind = validate(frame, input_path)
    workers = spark.sparkContext.defaultParallelism
    if frame.rdd.getNumPartitions() < workers:  # a small file is one partition: give every core a share
        frame = frame.repartition(workers)
    with tempfile.TemporaryDirectory(prefix="ehrbert-batch-") as work:
        if kind == "mention":
            out = normalize_mentions(spark, frame, model_uri)
        else:
            out = annotate_notes(spark, frame, model_uri, work)
        out.write.mode("errorifexists").parquet(output_path)
    return spark.read.parquet(output_path).count()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model URI: models:/ehrbert-ncbi@champion, runs:/..., a path")
    parser.add_argument("--input", required=True, help="Parquet file or folder: a mention (+ context) or text column")
    parser.add_argument("--output", required=True, help="Parquet folder to create (Spark's part files)")
    parser.add_argument("--master", default="local[*]", help="Spark master: local[2], spark://host:7077, yarn, ...")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting")
    args = parser.parse_args(argv)
    bad = [item for item in args.conf if "=" not in item]
    if bad:
        parser.error(f"--conf takes KEY=VALUE, not {bad[0]!r}")
    if not Path(args.input).exists():
        parser.error(f"--input {args.input}: no such file or folder")
    if Path(args.output).exists():
        parser.error(f"--output {args.output} exists; name a new one")
    setup_logging()
    spark = spark_session(args.master, dict(item.split("=", 1) for item in args.conf))
    try:
        rows = run(spark, args.model, args.input, args.output)
    except BatchInputError as error:
        raise SystemExit(f"batch: {error}") from None
    finally:
        spark.stop()
    log.info("wrote %d rows to %s", rows, args.output)


if __name__ == "__main__":
    main()

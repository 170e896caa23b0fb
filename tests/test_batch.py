"""Batch normalization on Spark: a real Spark session (local[2], its JVM and Python workers) normalizes a small
table of mentions through `mlflow.pyfunc.spark_udf` and a small table of notes through `mapInPandas`, and its
answers equal the in-process pyfunc's; input the served model would refuse is refused before the job starts."""

from __future__ import annotations

import os
import sys

import mlflow
import pandas as pd
import pytest

from ehrbert import batch, registry

MENTIONS = pd.DataFrame(
    {
        "id": [1, 2, 3, 4, 5],
        "mention": ["breast cancer", "APC", "heart failure", "colon cancer", "cancer of the breast"],
        "context": [None, "adenomatous polyposis coli (APC)", "", None, "no history of cancer of the breast"],
    }
)
NOTES = pd.DataFrame(
    {
        "note_id": ["a", "b", "c"],
        "text": [
            "History of breast neoplasms and heart failure.",
            "",
            "Colonic neoplasms; no heart failure. Adenomatous polyposis coli in the family.",
        ],
    }
)


@pytest.fixture(scope="module")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = batch.spark_session("local[2]", {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


def _register(name: str, folder, concepts) -> str:
    mlflow.set_experiment("batch")  # this store's own (another test may have left MLFLOW_EXPERIMENT_ID set)
    with mlflow.start_run() as run:
        mlflow.log_param("made_by", "test")
    registry.register_champion(run.info.run_id, name, folder, lambda: concepts, max_length=16)
    return f"models:/{name}@champion"


def _read(folder) -> pd.DataFrame:
    return pd.read_parquet(folder)


def test_spark_answers_mentions_as_the_pyfunc_does(spark, tmp_path, tracking_store, tiny_normalizer, tiny_concepts):
    uri = _register("ehrbert-batch", tiny_normalizer, tiny_concepts)
    MENTIONS.to_parquet(tmp_path / "mentions.parquet")
    rows = batch.run(spark, uri, str(tmp_path / "mentions.parquet"), str(tmp_path / "out"))
    out = _read(tmp_path / "out").sort_values("id").reset_index(drop=True)
    expected = mlflow.pyfunc.load_model(uri).predict(MENTIONS[["mention", "context"]])
    assert rows == len(MENTIONS) and list(out.columns) == ["id", "mention", "context", *batch.ANSWER_COLUMNS]
    assert out["id"].tolist() == MENTIONS["id"].tolist()  # the carried column, row for row
    pd.testing.assert_frame_equal(
        out[["concept_id", "concept_ids", "concept_name"]], expected.iloc[:, :3], check_dtype=False
    )
    assert out["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)


def test_spark_annotates_notes_as_the_pyfunc_does(spark, tmp_path, tracking_store, tiny_hybrid, tiny_concepts):
    uri = _register("ehrbert-batch-notes", tiny_hybrid, tiny_concepts)
    NOTES.to_parquet(tmp_path / "notes.parquet")
    batch.run(spark, uri, str(tmp_path / "notes.parquet"), str(tmp_path / "out"))
    out = _read(tmp_path / "out").sort_values(["note_id", "start"]).reset_index(drop=True)
    expected = mlflow.pyfunc.load_model(uri).predict(NOTES[["text"]])
    expected.insert(0, "note_id", NOTES["note_id"].to_numpy()[expected["row"].to_numpy()])
    expected = expected.drop(columns="row").sort_values(["note_id", "start"]).reset_index(drop=True)
    assert len(out) >= 4 and set(out["note_id"]) == {"a", "c"}  # the empty note has no mentions
    assert list(out.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(out.drop(columns="score"), expected.drop(columns="score"), check_dtype=False)
    assert out["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)
    texts = dict(zip(NOTES["note_id"], NOTES["text"]))
    assert [texts[n][s:e] for n, s, e in zip(out["note_id"], out["start"], out["end"])] == out["mention"].tolist()


@pytest.mark.parametrize(
    "table, message",
    [
        (pd.DataFrame({"id": [1, 2, 3], "mention": ["APC", "  ", "?!"]}), r"2 rows' 'mention' is blank"),
        (pd.DataFrame({"id": [1, 2], "mention": ["APC", None]}), r"1 rows' 'mention' is missing"),
        (pd.DataFrame({"id": [1], "mention": ["a" * 1001]}), r"'mention' is over 1,000 characters"),
        (pd.DataFrame({"id": [1], "mention": [7]}), r"column 'mention' must hold strings, not bigint"),
        (pd.DataFrame({"id": [1], "name": ["APC"]}), r"no 'mention' or 'text' column"),
        (pd.DataFrame({"mention": ["APC"], "text": ["APC"]}), r"both 'mention' and 'text'"),
        (pd.DataFrame({"mention": ["APC"], "score": [1.0]}), r"would clash"),
    ],
)
def test_input_the_server_would_refuse_is_refused_before_the_job(spark, tmp_path, table, message):
    path = tmp_path / "bad.parquet"
    table.to_parquet(path)
    with pytest.raises(batch.BatchInputError, match=message) as caught:
        batch.run(spark, "models:/never-loaded@champion", str(path), str(tmp_path / "out"))
    assert str(path) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_the_command_names_a_bad_flag(tmp_path, capsys):
    MENTIONS.to_parquet(tmp_path / "in.parquet")
    (tmp_path / "out").mkdir()
    for args, message in (
        (["--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "new")], "no such file"),
        (["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")], "exists"),
        (["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "new"), "--conf", "x"], "KEY=VALUE"),
    ):
        with pytest.raises(SystemExit):
            batch.main(["--model", "models:/m@champion", *args])
        assert message in capsys.readouterr().err

"""The pyfunc normalizer: input checks, abbreviation expansion, and parity of the served model with the in-process one.

A tiny randomly initialized BERT classifier (conftest's `tiny_normalizer`, over `tiny_concepts`) stands in for a
fine-tuned normalizer; it is logged and registered on a temporary sqlite store and served with
`mlflow models serve --env-manager local`.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

from ehrbert import registry, serving
from ehrbert.microbatch import MicroBatcher
from ehrbert.models import classifier

MENTIONS = pd.DataFrame(
    {
        "mention": ["APC", "APC", "breast cancer", "Heart-Failure", "colon cancer of the breast"],
        "context": [
            "Germline mutations of adenomatous polyposis coli (APC) cause familial polyposis.",
            None,
            "",
            "Heart failure (HF) was seen.",
            None,
        ],
    }
)


def test_validate_input_names_the_bad_field():
    with pytest.raises(MlflowException, match="no 'mention' column"):
        serving.validate_input(pd.DataFrame({"text": ["a"]}))
    with pytest.raises(MlflowException, match="'mention' must be a string .* row 1 has int 3"):
        serving.validate_input(pd.DataFrame({"mention": ["a", 3]}, dtype=object))
    with pytest.raises(MlflowException, match="'mention' must be a string .* row 0 has no value"):
        serving.validate_input(pd.DataFrame({"mention": [None]}, dtype=object))
    with pytest.raises(MlflowException, match="'context' must be a string"):
        serving.validate_input(pd.DataFrame({"mention": ["a"], "context": [5]}))
    with pytest.raises(MlflowException, match="table with a 'mention' column"):
        serving.validate_input(["a"])
    assert serving.validate_input(pd.DataFrame({"mention": ["a", "b"], "context": ["x", None]})) == (
        ["a", "b"],
        ["x", ""],
    )


def test_input_limits_and_blank_mentions_get_errors_that_name_the_rows():
    with pytest.raises(MlflowException, match=r"'mention' must contain a letter or digit; rows 1, 2 is blank"):
        serving.validate_input(pd.DataFrame({"mention": ["APC", "   ", "-- ()"]}))
    with pytest.raises(MlflowException, match=r"'mention' is limited to 1,000 characters; row 0 is longer"):
        serving.validate_input(pd.DataFrame({"mention": ["x" * (serving.MAX_MENTION_CHARS + 1)]}))
    assert serving.validate_input(pd.DataFrame({"mention": ["x" * serving.MAX_MENTION_CHARS]}))[0][0].startswith("x")
    with pytest.raises(MlflowException, match="'context' is limited to 100,000 characters"):
        serving.validate_input(pd.DataFrame({"mention": ["a"], "context": ["c" * (serving.MAX_CONTEXT_CHARS + 1)]}))
    with pytest.raises(MlflowException, match="at most 10,000 rows; this one has 10,001"):
        serving.validate_input(pd.DataFrame({"mention": ["a"] * (serving.MAX_ROWS + 1)}))
    with pytest.raises(MlflowException, match="valid Unicode text; row 0 holds a lone surrogate"):
        serving.validate_input(pd.DataFrame({"mention": ["pain \ud800"]}, dtype=object))
    with pytest.raises(MlflowException, match=r"'text' is limited to 100,000 characters; rows 0, 1"):
        serving.validate_texts(pd.DataFrame({"text": ["t" * (serving.MAX_TEXT_CHARS + 1)] * 2}))
    assert serving.validate_texts(pd.DataFrame({"text": ["", "No fever."]})) == ["", "No fever."]  # empty: no mentions
    with pytest.raises(MlflowException, match=r"rows 0, 1, 2, 3, 4 \(and 2 more\)"):
        serving.validate_input(pd.DataFrame({"mention": [None] * 7}, dtype=object))


# Values a JSON body can hold, and more: every kind of Unicode (surrogates too), numbers, nulls, NaN, nested.
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    columns=st.lists(st.sampled_from(["mention", "context", "text", "other", ""]), min_size=1, max_size=3, unique=True),
    rows=st.lists(st.lists(VALUES, min_size=3, max_size=3), max_size=6),
)
def test_any_table_is_read_or_refused_with_a_400(columns, rows):
    """The pyfunc's input handling (validation, Ab3P on the context, preprocessing) either reads a table or raises
    the MlflowException the scoring server turns into a 400: never another exception, which would be a 500."""
    frame = pd.DataFrame([row[: len(columns)] for row in rows], columns=columns, dtype=object)
    try:
        if "text" in columns:
            serving.validate_texts(frame)
        else:
            assert len(serving.mention_queries(frame)) == len(frame)
    except MlflowException as error:
        assert error.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)


def test_queries_expand_abbreviations_from_the_context():
    assert serving.mention_queries(MENTIONS) == [
        "adenomatous polyposis coli",  # Ab3P found "adenomatous polyposis coli (APC)" in the context
        "apc",  # no context: nothing to expand
        "breast cancer",
        "heart failure",
        "colon cancer of the breast",
    ]


def test_normalize_mentions_output(tiny_normalizer, tiny_concepts):
    model, tokenizer = classifier.load(tiny_normalizer)
    out = serving.normalize_mentions(model, tokenizer, tiny_concepts, MENTIONS, batch_size=2)
    assert list(out.columns) == ["concept_id", "concept_ids", "concept_name", "score"]
    assert (out["concept_ids"] == out["concept_id"]).all()  # the classifier answers one concept
    assert len(out) == len(MENTIONS)
    assert set(out["concept_id"]) <= set(tiny_concepts)
    assert all(tiny_concepts[c] == name for c, name in zip(out["concept_id"], out["concept_name"]))
    assert out["score"].between(0, 1).all()
    # batching changes nothing: each row as its own batch gives the same answers
    one_by_one = serving.normalize_mentions(model, tokenizer, tiny_concepts, MENTIONS, batch_size=1)
    pd.testing.assert_frame_equal(out, one_by_one, atol=1e-5, rtol=0)


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post_raw(url: str, body: bytes, content_type: str = "application/json") -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _split(columns: list[str], rows: list[list]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


# Requests the server must refuse with a 4xx and survive: (what, body, content type).
BAD_REQUESTS = [
    ("empty body", b"", "application/json"),
    ("not JSON", b"{mention: APC", "application/json"),
    ("JSON but no table", b'{"mention": "APC"}', "application/json"),
    ("a JSON list", b'["APC"]', "application/json"),
    ("no mention column", _split(["name"], [["APC"]]), "application/json"),
    ("null mention", _split(["mention"], [[None]]), "application/json"),
    ("numeric mention", _split(["mention"], [[42]]), "application/json"),
    ("nested mention", _split(["mention"], [[{"text": "APC"}]]), "application/json"),
    ("list mention", _split(["mention"], [[["APC", "FAP"]]]), "application/json"),
    ("mention and text", _split(["mention", "text"], [["APC", "APC"]]), "application/json"),
    ("blank mention", _split(["mention"], [["APC"], ["  "]]), "application/json"),
    ("punctuation-only mention", _split(["mention"], [["?!-"]]), "application/json"),
    ("mention over the limit", _split(["mention"], [["a" * 1001]]), "application/json"),
    ("context over the limit", _split(["mention", "context"], [["APC", "c" * 100_001]]), "application/json"),
    ("too many rows", _split(["mention"], [["APC"]] * 10_001), "application/json"),
    (
        "lone surrogate",
        b'{"dataframe_split": {"columns": ["mention"], "data": [["pain \\ud800"]]}}',
        "application/json",
    ),
    ("ragged rows", b'{"dataframe_split": {"columns": ["mention"], "data": [["a", "b"], ["c"]]}}', "application/json"),
    ("text for a classifier", _split(["text"], [["No fever."]]), "application/json"),
    ("CSV without the column", b"name\nAPC\n", "text/csv"),
    ("unknown content type", b"APC", "text/plain"),
]


def test_served_model_equals_in_process_model(tmp_path, tracking_store, tiny_normalizer, tiny_concepts, servers):
    model_dir = tiny_normalizer
    mlflow.create_experiment("serving-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("serving-test")
    with mlflow.start_run() as run:  # the run that made the model; the model itself is the stage's output folder
        mlflow.log_param("max_length", 16)
    version, created = registry.register_champion(
        run.info.run_id, "ehrbert-test", model_dir, lambda: tiny_concepts, max_length=16
    )
    assert created and version.aliases == ["champion"] and version.run_id == run.info.run_id
    # the same run and the same code: the version is reused; new code: the run is packaged and registered again
    register = lambda: registry.register_champion(  # noqa: E731
        run.info.run_id, "ehrbert-test", model_dir, lambda: tiny_concepts, max_length=16
    )
    again, created = register()
    assert not created and again.version == version.version
    assert again.tags[registry.CODE_TAG] == registry.code_digest()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "code_digest", lambda: "0123456789abcdef")
        repackaged, created = register()
    assert created and int(repackaged.version) == int(version.version) + 1
    assert repackaged.tags[registry.CODE_TAG] == "0123456789abcdef" and repackaged.aliases == ["champion"]
    back, created = register()  # today's code again: its version is the champion again
    assert not created and back.version == version.version and back.aliases == ["champion"]

    in_process = mlflow.pyfunc.load_model("models:/ehrbert-test@champion")
    assert in_process.metadata.signature == serving.SIGNATURE
    expected = in_process.predict(MENTIONS)
    model, tokenizer = classifier.load(model_dir)
    pd.testing.assert_frame_equal(
        expected, serving.normalize_mentions(model, tokenizer, tiny_concepts, MENTIONS, max_length=16)
    )

    port = servers.free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    log = tmp_path / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                "models:/ehrbert-test@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # own group: uvicorn too
    try:
        servers.wait_until_up(f"http://127.0.0.1:{port}/ping", server, log)
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = _post(url, {"dataframe_split": json.loads(MENTIONS.to_json(orient="split", index=False))})
        assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        pd.testing.assert_frame_equal(
            served[["concept_id", "concept_name"]], expected[["concept_id", "concept_name"]], check_dtype=False
        )
        assert served["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-6)

        status, body = _post(url, {"dataframe_split": {"columns": ["text"], "data": [["APC"]]}})
        assert status == 400 and "mention" in body["message"]
        status, body = _post(url, {"dataframe_records": [{"mention": "APC"}, {"mention": None}]})
        assert status == 400 and "'mention' must be a string" in body["message"]
        status, body = _post(url, {"dataframe_split": {"columns": ["mention"], "data": [["APC"], [" "]]}})
        assert status == 400 and "row 1 is blank" in body["message"]
        statuses = {what: _post_raw(url, body, kind) for what, body, kind in BAD_REQUESTS}
        assert {what: code for what, code in statuses.items() if not 400 <= code < 500} == {}
        # still up, and still right
        servers.wait_until_up(f"http://127.0.0.1:{port}/ping", server, log, seconds=5)
        status, body = _post(url, {"dataframe_split": json.loads(MENTIONS.to_json(orient="split", index=False))})
        assert status == 200 and [r["concept_id"] for r in body["predictions"]] == expected["concept_id"].tolist()
    finally:
        servers.stop(server)


def test_concurrent_calls_share_batches_and_each_gets_its_own_answers():
    """The micro-batcher: calls that arrive while a batch runs are answered together in the next one, each call
    gets back exactly its own answers in order, and an error reaches every call of its batch, not the next."""
    seen: list[list[str]] = []

    def answer(items):
        seen.append(list(items))
        time.sleep(0.05)  # a batch takes a while: calls pile up meanwhile
        if "boom" in items:
            raise RuntimeError("boom")
        return [item.upper() for item in items]

    batcher = MicroBatcher(answer)
    calls = [[f"q{i}a", f"q{i}b"] for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(batcher, calls))
    assert results == [[item.upper() for item in call] for call in calls]
    assert max(batcher.batch_sizes) > 1 and len(seen) < len(calls)  # calls were answered together
    with pytest.raises(RuntimeError, match="boom"):
        batcher(["boom"])
    assert batcher(["after"]) == ["AFTER"]  # the worker goes on


def test_the_served_model_batches_concurrent_requests_with_the_same_answers(
    tmp_path, tracking_store, tiny_normalizer, tiny_concepts, monkeypatch
):
    monkeypatch.setenv(serving.BATCH_WAIT_ENV, "20")  # a window, so that the threads below surely share batches
    mlflow.set_experiment("microbatch")
    with mlflow.start_run() as run:
        mlflow.log_param("max_length", 16)
    registry.register_champion(
        run.info.run_id, "ehrbert-batched", tiny_normalizer, lambda: tiny_concepts, max_length=16
    )
    model = mlflow.pyfunc.load_model("models:/ehrbert-batched@champion")
    rows = [MENTIONS.iloc[[i]].reset_index(drop=True) for i in range(len(MENTIONS))] * 4
    alone = [model.predict(row) for row in rows]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(model.predict, rows))
    for one, other in zip(alone, together):
        pd.testing.assert_frame_equal(one, other, atol=1e-5, rtol=0)
    assert max(model.unwrap_python_model().batcher.batch_sizes) > 1

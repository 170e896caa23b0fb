"""Moving the local store into the team's server: a real sqlite store with a run (params, a metric history, tags,
an artifact) and a registered champion is moved into a real PostgreSQL database (conftest's `postgres`), and a real
`mlflow server` on that database, with proxied artifacts, then serves the same run IDs, metrics, artifacts and
champion. A second move into the same database is refused and changes nothing."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from ehrbert import move_store, registry

MENTIONS = pd.DataFrame({"mention": ["breast cancer", "heart failure", "APC"]})


@pytest.fixture
def local_store(tmp_path, tiny_normalizer, tiny_concepts):
    """A local store as the pipeline leaves one: sqlite beside `mlruns/`, an experiment per stage."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = tmp_path / "mlruns"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("finetune-ncbi", artifact_location=(artifacts / "finetune-ncbi").as_uri())
    mlflow.set_experiment("finetune-ncbi")
    with mlflow.start_run(run_name="base-ncbi-s1", tags={"model": "base", "seed": "1"}) as run:
        mlflow.log_param("max_length", 16)
        for step, value in enumerate((0.5, 0.7, 0.8), start=1):
            mlflow.log_metric("dev_acc1", value, step=step)
        (tmp_path / "test_predictions.tsv").write_text("doc_id\tmention\nd1\tAPC\n")
        mlflow.log_artifact(str(tmp_path / "test_predictions.tsv"))
    registry.register_champion(run.info.run_id, "ehrbert-test", tiny_normalizer, lambda: tiny_concepts, max_length=16)
    answers = mlflow.pyfunc.load_model("models:/ehrbert-test@champion").predict(MENTIONS)
    mlflow.set_tracking_uri(None)
    return {"uri": uri, "artifacts": artifacts, "run_id": run.info.run_id, "answers": answers}


def test_a_moved_store_keeps_every_id_and_the_server_serves_it(tmp_path, local_store, postgres, servers, monkeypatch):
    target, destination = postgres.database("moved"), tmp_path / "team-artifacts"
    moved = move_store.move(local_store["uri"], local_store["artifacts"], target, destination)
    assert moved["runs"] == 1 and moved["registered_model_aliases"] == 1 and moved["metrics"] == 3

    with servers.mlflow_server(target, destination, tmp_path / "server.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        try:
            client = MlflowClient()
            run = client.get_run(local_store["run_id"])  # the same ID: run records in git still point at it
            assert run.data.params == {"max_length": "16"} and run.data.tags["model"] == "base"
            history = client.get_metric_history(run.info.run_id, "dev_acc1")
            assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.7), (3, 0.8)]
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/finetune-ncbi/")
            downloaded = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="test_predictions.tsv", dst_path=str(tmp_path / "download")
            )
            assert open(downloaded).read() == "doc_id\tmention\nd1\tAPC\n"
            champion = client.get_model_version_by_alias("ehrbert-test", "champion")
            assert champion.run_id == local_store["run_id"]
            served = mlflow.pyfunc.load_model("models:/ehrbert-test@champion").predict(MENTIONS)  # through the server
            pd.testing.assert_frame_equal(served, local_store["answers"])
            # the server goes on numbering experiments after the moved ones
            new = client.create_experiment("after-the-move")
            assert int(new) > max(
                int(e.experiment_id) for e in client.search_experiments() if e.name != "after-the-move"
            )
        finally:
            mlflow.set_tracking_uri(None)

    files = sorted(p.relative_to(destination) for p in destination.rglob("*") if p.is_file())
    with pytest.raises(SystemExit, match="is not empty"):
        move_store.main(
            [
                "--source",
                local_store["uri"],
                "--source-artifacts",
                str(local_store["artifacts"]),
                "--target",
                target,
                "--artifacts-destination",
                str(destination),
            ]
        )
    assert sorted(p.relative_to(destination) for p in destination.rglob("*") if p.is_file()) == files


def test_a_move_that_fails_leaves_nothing_behind(tmp_path, local_store, postgres):
    """The artifact destination already holds one of the files: the move stops, the database stays empty and the
    files it had copied are gone."""
    target, destination = postgres.database("half"), tmp_path / "team-artifacts"
    clash = destination / "finetune-ncbi" / local_store["run_id"] / "artifacts" / "test_predictions.tsv"
    clash.parent.mkdir(parents=True)
    clash.write_text("another store's file\n")
    with pytest.raises(move_store.MoveError, match="already holds"):
        move_store.move(local_store["uri"], local_store["artifacts"], target, destination)
    assert [p for p in destination.rglob("*") if p.is_file()] == [clash]
    assert move_store.move(local_store["uri"], local_store["artifacts"], target, tmp_path / "elsewhere")["runs"] == 1

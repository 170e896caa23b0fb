"""The whole pipeline on a tiny project: `dvc repro` of the real dvc.yaml under a 2-process Accelerate configuration,
tracked by a team server, then what a team does with it: a run by hand beside it, a second clone that pulls every
model from the remote, and the champion served from the team's registry.

The tiny project is a git + DVC repository in a temporary folder with this repository's dvc.yaml, src/ and
accelerate/, a params.yaml that shrinks every stage (one model, one corpus, one seed, a few steps; the tiny
random BERT of conftest.py as every checkpoint), and data/ cut from the real files (a few documents of NCBI
disease and BC5CDR, the MEDIC concepts they need and a sample of the rest, a few notes, CADEC whole). Nothing
is mocked: DVC, Accelerate (two processes joined over gloo) and MLflow run for real. The tracking store is the one a
team shares (`make server`): `mlflow server` on a PostgreSQL database (conftest's `postgres`) with proxied artifacts,
and every stage reaches it only through MLFLOW_TRACKING_URI=http://127.0.0.1:<port>.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from ehrbert.analysis.champion_errors import CAUSES
from ehrbert.models import classifier, hybrid

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEEP_DOCS = {"train": 12, "dev": 4, "test": 4}
CASE_DOC = "9949209"  # an NCBI test document the case study draws ("CT", copper toxicosis)
NOTE_MARKER = "Zqxjvmarker"  # in every tiny note: stands for protected health information


def _tiny_data(raw: Path, data: Path, cut) -> None:
    needed: set[str] = set()
    for corpus, names in (
        ("ncbi_disease", ("NCBItrainset_corpus.txt", "NCBIdevelopset_corpus.txt", "NCBItestset_corpus.txt")),
        ("bc5cdr", ("CDR_TrainingSet.PubTator.txt", "CDR_DevelopmentSet.PubTator.txt", "CDR_TestSet.PubTator.txt")),
    ):
        (data / corpus).mkdir(parents=True)
        for split, name in zip(("train", "dev", "test"), names):
            also = CASE_DOC if corpus == "ncbi_disease" and split == "test" else None
            needed |= cut.pubtator(raw / corpus / name, data / corpus / name, KEEP_DOCS[split], also)
    (data / "medic").mkdir()
    cut.medic(raw / "medic" / "CTD_diseases.tsv.gz", data / "medic" / "CTD_diseases.tsv.gz", needed)
    shutil.copytree(raw / "cadec", data / "cadec")
    (data / "mtsamples").mkdir()
    notes = (raw / "mtsamples" / "mtsamples_dedup_notes.txt").read_text().splitlines()[:12]
    # each note carries a unique marker, as a patient's name would be: it must never leave the pipeline's data
    notes = [f"{note} Seen by Dr. {NOTE_MARKER}{i:02d} today." for i, note in enumerate(notes)]
    (data / "mtsamples" / "mtsamples_dedup_notes.txt").write_text("\n".join(notes) + "\n")


def _tiny_params(tiny_bert: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["notes"].update(heldout_notes=2, max_full_notes=8)
    params["pretrain"].update(max_seq_length=32, batch_size=4)
    params["pretrain"]["base"]["init"] = str(tiny_bert)
    params["pretrain"]["bio"].update(init=str(tiny_bert), max_steps=2)
    params["pretrain"]["ehr_half"]["max_steps"] = 2
    params["pretrain"]["ehr_full"]["max_steps"] = 2
    finetune = params["finetune"]
    # ncbi_bioc: the task params.yaml declares (README's worked example), trained and compared beside ncbi
    finetune.update(
        models=[{"name": "base", "path": "outputs/pretrain/base"}], corpora=["ncbi", "ncbi_bioc"], seeds=[1]
    )
    finetune["config"].update(max_epochs=1, batch_size=8, eval_batch_size=64)
    finetune["head_init_ablation"].update(corpora=["ncbi"])
    finetune["head_init_ablation"]["config"].update(max_epochs=1)
    params["hybrid"].update(corpora=["ncbi", "ncbi_bioc"], seeds=[1])
    params["hybrid"]["config"].update(encoder=str(tiny_bert), classifier_weights=[0.0, 0.5])
    params["hybrid"]["config"]["retrieval"].update(steps=2, batch_size=8, embed_batch_size=256)
    params["rerank"].update(corpora=["ncbi", "ncbi_bioc"], seeds=[1])
    params["peers"].update(corpora=["ncbi"], seeds=[1])
    params["compare"].update(corpora=["ncbi", "ncbi_bioc"])
    params["vocabulary_only"]["encoder"] = str(tiny_bert)
    params["vocabulary_only"]["retrieval"].update(steps=2, batch_size=8, embed_batch_size=256)
    params["case_study"].update(
        models=["base"],
        compare=["base", "base_uniform_head"],
        mentions=[m for m in params["case_study"]["mentions"] if m["doc_id"] == CASE_DOC],
    )
    params["error_analysis"].update(
        models=["base", "base_uniform_head"], corpora=["ncbi"], compare=["base", "base_uniform_head"]
    )
    return params


def _run(command: list[str], cwd: Path, env: dict, timeout: int = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="module")
def team_server(tmp_path_factory, postgres, servers):
    """The team's tracking server for this module: `mlflow server` on a fresh PostgreSQL database, artifacts
    proxied from a folder of its own."""
    root = tmp_path_factory.mktemp("team-server")
    database = postgres.database("pipeline")
    with servers.mlflow_server(database, root / "artifacts", root / "server.log") as url:
        yield {"url": url, "database": database, "artifacts": root / "artifacts", "log": root / "server.log"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, raw_data, tiny_bert, cut_corpora, team_server):
    """The tiny project after `dvc repro` (2 processes) and a commit; its remote holds every output (`dvc push`)."""
    root = tmp_path_factory.mktemp("pipeline")
    work, remote = root / "work", root / "remote"
    work.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "MLproject", "python_env.yaml"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "accelerate", work / "accelerate")
    (work / "params.yaml").write_text(yaml.safe_dump(_tiny_params(tiny_bert), sort_keys=False))
    (work / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    _tiny_data(raw_data, work / "data", cut_corpora)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": team_server["url"],
        "ACCELERATE_ARGS": f"--config_file {ROOT / 'accelerate' / 'cpu-2proc.yaml'}",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
    }
    for name in ("DVC_EXP_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)  # mlflow.set_experiment in this test process exports MLFLOW_EXPERIMENT_ID
    for command in (
        ["git", "init", "-q", "-b", "main"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "config", "core.autostage", "true"],
        [str(BIN / "dvc"), "remote", "add", "-d", "store", str(remote)],
        [str(BIN / "dvc"), "add", "-q", "data"],
    ):
        _run(command, work, env)
    repro = _run([str(BIN / "dvc"), "repro"], work, env, timeout=2400)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-q", "-m", "tiny pipeline"], work, env)
    _run([str(BIN / "dvc"), "push", "-q"], work, env)
    return {"root": root, "work": work, "env": env, "repro": repro, "server": team_server}


def _runs(project, experiment: str):
    mlflow.set_tracking_uri(project["env"]["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=[experiment])


def test_dvc_repro_trains_every_model_on_two_processes(project):
    work = project["work"]
    assert "Running stage 'pretrain_bio'" in project["repro"].stdout
    pretrain = _runs(project, "pretrain")
    assert set(pretrain["tags.stage"]) == {"base", "bio", "ehr_half", "ehr_full"}
    assert set(pretrain["params.processes"]) == {"2"}  # world size, asserted in every training stage
    finetune = _runs(project, "finetune-ncbi")
    trained = finetune[finetune["tags.model"].isin(["base", "base_uniform_head"])]
    assert (
        len(trained) == 2
        and set(trained["params.processes"]) == {"2"}
        and set(trained["params.mixed_precision"]) == {"bf16"}
    )
    variants = finetune[finetune["tags.model"].isin(hybrid.VARIANTS)]
    assert len(variants) == len(hybrid.VARIANTS) and set(variants["params.processes"]) == {"2"}
    assert set(finetune["tags.dvc_experiment"]) == {"workspace"} and finetune["tags.params_hash"].str.len().eq(16).all()
    # models are DVC outputs; run records and metrics are small files in git
    assert (work / "outputs" / "finetune" / "base-ncbi-s1" / "model" / "model.safetensors").is_file()
    assert (work / "outputs" / "hybrid" / "ncbi-s1" / "model" / "hybrid.json").is_file()
    tracked = subprocess.run(["git", "ls-files"], cwd=work, capture_output=True, text=True).stdout.split()
    assert {
        "runs/finetune/base-ncbi-s1.json",
        "runs/hybrid/ncbi-s1.json",
        "metrics/finetune/base-ncbi-s1.json",
        "metrics/compare.json",
        "reports/table2.csv",
    } <= set(tracked)
    assert not any(name.startswith(("outputs/", "data/")) for name in tracked)


def test_a_task_declared_only_in_params_is_trained_compared_and_registered(project):
    """ncbi_bioc, declared in params.yaml as a TSV vocabulary and BioC splits (written from the tiny ncbi task by
    stage example_task), goes through the same stages as the built-in ncbi: the same data and seed give the same
    model and the same scores, and compare registers its champion as ehrbert-ncbi_bioc."""
    work = project["work"]
    assert "Running stage 'prepare_task@ncbi_bioc'" in project["repro"].stdout
    prepared = json.loads((work / "metrics" / "tasks" / "ncbi_bioc.json").read_text())
    assert prepared["test_documents"] >= KEEP_DOCS["test"] and prepared["level"] == "document"
    for metrics in ("finetune/base-{}-s1.json", "hybrid/{}-s1.json", "rerank/{}-s1.json"):
        builtin, declared = ((work / "metrics" / metrics.format(task)).read_text() for task in ("ncbi", "ncbi_bioc"))
        assert json.loads(declared) == json.loads(builtin), metrics
    for model in ("base-{}-s1/model/model.safetensors", "base-{}-s1/test_predictions.tsv"):
        files = [(work / "outputs" / "finetune" / model.format(task)).read_bytes() for task in ("ncbi", "ncbi_bioc")]
        assert files[0] == files[1], model
    compared = json.loads((work / "metrics" / "compare.json").read_text())
    assert compared["ncbi_bioc"]["champion"]["model"] == compared["ncbi"]["champion"]["model"]
    mlflow.set_tracking_uri(project["env"]["MLFLOW_TRACKING_URI"])
    champion = mlflow.MlflowClient().get_model_version_by_alias("ehrbert-ncbi_bioc", "champion")
    assert champion.tags["corpus"] == "ncbi_bioc" and champion.tags["model"] == compared["ncbi"]["champion"]["model"]
    assert "ncbi_bioc" in (work / "reports" / "table2.csv").read_text()
    # each champion's test errors by cause: as many as its acc@1 leaves, the same for both tasks
    errors, runs = (pd.read_csv(work / "reports" / f"{name}.csv") for name in ("champion_errors", "runs"))
    for task in ("ncbi", "ncbi_bioc"):
        rows, champion = errors[errors["corpus"] == task], compared[task]["champion"]
        run = runs[(runs["corpus"] == task) & (runs["mentions"] == "gold") & (runs["model"] == champion["model"])]
        acc1 = run.loc[run["seed"] == champion["seed"], "acc1"].item()
        assert list(rows["cause"]) == list(CAUSES) and set(rows["model"]) == {champion["model"]}
        assert rows["errors"].sum() == round((1 - acc1) * rows["mentions"].iloc[0]) > 0
    assert (
        errors[errors["corpus"] == "ncbi"]["errors"].tolist()
        == errors[errors["corpus"] == "ncbi_bioc"]["errors"].tolist()
    )
    # the peers' protocol reads the hybrid's model of the same seed
    reading = json.loads((work / "metrics" / "peers" / "ncbi-s1.json").read_text())
    assert f"| ncbi | {reading['queries']} |" in (work / "reports" / "peers.md").read_text()


def _database_text(uri: str) -> list[tuple[str, str]]:
    """(table, row as text) for every row of every table of the tracking server's database."""
    import psycopg

    with psycopg.connect(uri) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        return [(table, text) for table in tables for (text,) in connection.execute(f'SELECT t::text FROM "{table}" t')]


def test_note_text_never_reaches_mlflow_logs_or_reports(project):
    """Notes are protected health information: a marker written into every note reaches the stages' note outputs
    (so the scan below could find it), and appears nowhere in the tracking server's store (every row of its
    database and every artifact file), in the pipeline's or the server's logs, or in what git keeps (reports/,
    metrics/, runs/). The prediction files and the model vocabularies would be exempt (they are meant to hold
    mention text and word pieces); here they hold none."""
    root, work, server, marker = project["root"], project["work"], project["server"], NOTE_MARKER.lower().encode()
    prepared = [p for p in (work / "outputs").rglob("*") if p.is_file() and marker in p.read_bytes().lower()]
    assert prepared, "the marker should reach the prepared notes: the scan would prove nothing"
    rows = _database_text(server["database"])
    assert len(rows) > 100 and {"runs", "params", "metrics", "tags"} <= {table for table, _ in rows}
    assert not [table for table, text in rows if marker.decode() in text.lower()]
    scanned = [*server["artifacts"].rglob("*"), server["log"]]
    scanned += [p for folder in ("reports", "metrics", "runs") for p in (work / folder).rglob("*")]
    scanned = [p for p in scanned if p.is_file()]
    assert sum(server["artifacts"] in p.parents for p in scanned) > 20  # the artifacts were found
    assert not (work / "mlruns").exists() and not (root / "mlflow.db").exists()  # nothing went to a local store
    leaks = [str(p) for p in scanned if marker in p.read_bytes().lower()]
    assert not leaks, f"note text found in {leaks}"
    logs = (project["repro"].stdout + project["repro"].stderr).lower()
    assert marker.decode() not in logs


def test_a_run_by_hand_changes_no_table_champion_or_classifier(project):
    """Another fine-tuning run in the same MLflow experiment with the same tags (`mlflow run . -e finetune`, its
    outputs under manual/) is not what the pipeline's stages read: nothing is out of date, and rerunning compare
    changes neither Table 2 nor the champion; the hybrid's classifier is still the pipeline's fine-tuning run."""
    work, env = project["work"], project["env"]
    record = json.loads((work / "runs" / "finetune" / "base-ncbi-s1.json").read_text())
    table = (work / "reports" / "table2.csv").read_text()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("ehrbert-ncbi", "champion")

    # the same model, corpus and seed as the pipeline's run, so the same tags: only the run record tells them apart
    _run(
        [
            str(BIN / "mlflow"),
            "run",
            ".",
            "-e",
            "finetune",
            "--env-manager",
            "local",
            "-P",
            "seed=1",
            "--experiment-name",
            "manual",
        ],
        work,
        env,
    )
    assert len(_runs(project, "finetune-ncbi").query("`tags.model` == 'base' and `tags.seed` == '1'")) == 2
    assert (work / "manual" / "outputs" / "finetune" / "base-ncbi-s1" / "model").is_dir()  # not DVC's output folder
    status = _run([str(BIN / "dvc"), "status"], work, env).stdout
    assert "up to date" in status, status
    _run([str(BIN / "dvc"), "repro", "-f", "-s", "compare"], work, env)
    assert (work / "reports" / "table2.csv").read_text() == table
    assert client.get_model_version_by_alias("ehrbert-ncbi", "champion").version == champion.version
    classifier_tags = _runs(project, "finetune-ncbi").query("`tags.model` == 'hybrid'")["tags.classifier_run"]
    assert set(classifier_tags) == {record["runs"]["gold"]}


def test_a_clone_pulls_every_model_and_reruns_nothing(project):
    clone = project["root"] / "clone"
    env = project["env"]
    _run(["git", "clone", "-q", str(project["work"]), str(clone)], project["root"], env)
    _run([str(BIN / "dvc"), "pull", "-q"], clone, env)
    status = _run([str(BIN / "dvc"), "status"], clone, env).stdout
    assert "Data and pipelines are up to date" in status, status
    repro = _run([str(BIN / "dvc"), "repro"], clone, env).stdout
    assert "Running stage" not in repro and "up to date" in repro, repro
    model, tokenizer, trained = classifier.load_finetuned(clone / "outputs" / "finetune" / "base-ncbi-s1")
    assert trained["seed"] == 1 and model.config.num_labels > 100
    served = hybrid.HybridNormalizer.load(clone / "outputs" / "hybrid" / "ncbi-s1" / "model")
    assert served.predict(["copper toxicosis"])[0].ranked
    metrics = json.loads((clone / "metrics" / "compare.json").read_text())
    assert metrics["ncbi"]["champion"]["model"] in (*hybrid.VARIANTS, "hybrid_rerank")
    assert not re.search(r"seconds", (clone / "metrics" / "finetune" / "base-ncbi-s1.json").read_text())


def test_the_champion_is_served_from_the_team_registry(project, servers, tmp_path):
    """`mlflow models serve -m models:/ehrbert-ncbi@champion` with MLFLOW_TRACKING_URI pointing at the team server:
    the model comes through the server (proxied artifacts) and answers as the champion loaded in process."""
    import pandas as pd

    env = project["env"]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mentions = pd.DataFrame({"mention": ["copper toxicosis", "colorectal cancer"]})
    expected = mlflow.pyfunc.load_model("models:/ehrbert-ncbi@champion").predict(mentions)
    port, log = servers.free_port(), tmp_path / "serve.log"
    command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/ehrbert-ncbi@champion", "--env-manager"]
    command += ["local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        servers.wait_until_up(f"http://127.0.0.1:{port}/ping", server, log, seconds=120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_split": json.loads(mentions.to_json(orient="split", index=False))}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        servers.stop(server)
    assert [row["concept_id"] for row in served] == expected["concept_id"].tolist()

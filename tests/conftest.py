"""Shared test fixtures.

Reader tests run on the real staged files: `data/` once `make data` has run, else the read-only
mirror named by EHRBERT_DATA_MIRROR (default `../shared/data`, where this project's CI finds it).
`tiny_raw_data` cuts a few documents of each corpus from them, for stages that read every corpus.

Models are tiny random BERTs written by `write_tiny_bert` (the `make_tiny_bert` fixture hands it to tests):
`tiny_bert` (an encoder with an MLM head), `tiny_normalizer` (a saved classifier over `tiny_concepts`) and the
base of `make_pretraining_workspace` (no pretraining heads). Session-scoped folders are shared: read them,
never write into them.

Servers are real and on 127.0.0.1: `postgres` starts a PostgreSQL server from the machine's binaries in a
temporary folder for the session (initdb, pg_ctl) and stops it at the end; `servers.mlflow_server(...)` runs
`mlflow server` on a backend store for the length of a `with` block.
"""

import contextlib
import gzip
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _raw_data_dir() -> Path | None:
    for candidate in (ROOT / "data", Path(os.environ.get("EHRBERT_DATA_MIRROR", ROOT.parent / "shared" / "data"))):
        if (candidate / "ncbi_disease").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def raw_data() -> Path:
    path = _raw_data_dir()
    if path is None:
        pytest.skip("raw data not found: run `make data` or set EHRBERT_DATA_MIRROR")
    return path


# --- a tiny slice of the real data -------------------------------------------------------------------------

TINY_DOCUMENTS = {"train": 12, "dev": 4, "test": 4}  # first documents of each PubTator file
PUBTATOR_FILES = {
    "ncbi_disease": ("NCBItrainset_corpus.txt", "NCBIdevelopset_corpus.txt", "NCBItestset_corpus.txt"),
    "bc5cdr": ("CDR_TrainingSet.PubTator.txt", "CDR_DevelopmentSet.PubTator.txt", "CDR_TestSet.PubTator.txt"),
}
TINY_CADEC_DRUGS = ("CATAFLAM", "VOLTAREN-XR")  # 10 + 22 posts: each drug has test and dev posts at 0.2 / 0.1
CADEC_FOLDERS = ("text", "original", "meddra", "sct")


def _cut_pubtator(source: Path, target: Path, keep: int, also: str | None = None) -> set[str]:
    """The first `keep` documents of a PubTator file (and document `also`); returns their gold concept IDs (with
    and without prefix)."""
    documents = [block for block in source.read_text().split("\n\n") if block.strip()]
    documents = documents[:keep] + [d for d in documents[keep:] if also and d.startswith(f"{also}|")]
    target.write_text("\n\n".join(documents) + "\n\n")
    ids = set()
    for line in (line for document in documents for line in document.splitlines()):
        fields = line.split("\t")
        if len(fields) >= 6:
            ids |= {part.strip() for part in fields[5].replace("+", "|").split("|") if part.strip()}
    return ids | {i.split(":", 1)[-1] for i in ids}


def _cut_medic(source: Path, target: Path, needed: set[str], every: int = 25) -> None:
    """MEDIC's header, every concept with a needed primary or alternative ID, and every `every`-th other one."""
    with gzip.open(source, "rt") as lines, gzip.open(target, "wt") as out:
        row = 0
        for line in lines:
            if line.startswith("#"):
                out.write(line)
                continue
            row += 1
            fields = line.split("\t")
            ids = {i for raw in [fields[1], *fields[2].split("|")] if raw for i in (raw, raw.split(":", 1)[-1])}
            if ids & needed or row % every == 0:
                out.write(line)


@pytest.fixture(scope="session")
def tiny_raw_data(raw_data, tmp_path_factory) -> Path:
    """A folder laid out like `raw_data`, cut from it: the first 12 / 4 / 4 train / dev / test documents of NCBI
    disease and BC5CDR, the MEDIC concepts their gold IDs name plus every 25th other one, and the CADEC posts
    of TINY_CADEC_DRUGS. Small enough for a stage that reads all three corpora to run in seconds."""
    root = tmp_path_factory.mktemp("tiny-data")
    needed: set[str] = set()
    for corpus, names in PUBTATOR_FILES.items():
        (root / corpus).mkdir()
        for split, name in zip(("train", "dev", "test"), names):
            needed |= _cut_pubtator(raw_data / corpus / name, root / corpus / name, TINY_DOCUMENTS[split])
    (root / "medic").mkdir()
    _cut_medic(raw_data / "medic" / "CTD_diseases.tsv.gz", root / "medic" / "CTD_diseases.tsv.gz", needed)
    for folder in CADEC_FOLDERS:
        (root / "cadec" / folder).mkdir(parents=True)
        for drug in TINY_CADEC_DRUGS:
            for path in (raw_data / "cadec" / folder).glob(f"{drug}.*"):
                shutil.copy(path, root / "cadec" / folder / path.name)
    return root


# --- tiny models -------------------------------------------------------------------------------------------

HEADS = ("mlm", "none", "classifier")


def write_tiny_bert(
    folder: Path,
    words: Sequence[str] = (),
    *,
    head: str = "mlm",
    labels: Sequence[str] = (),
    seed: int | None = None,
    initializer_range: float = 0.02,
) -> Path:
    """A randomly initialized BERT of a few hundred KB with a character-level WordPiece vocabulary, plus `words`.

    Every lowercase word tokenizes (into single characters at worst), so real mentions work as inputs.
    `head`: "mlm" (BertForMaskedLM), "none" (a bare BertModel, a checkpoint without pretraining heads like
    all-MiniLM-L6-v2) or "classifier" (BertForSequenceClassification with label i = `labels[i]`, a saved
    normalizer). `seed` seeds torch before the weights are drawn.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, BertTokenizerFast

    if head not in HEADS:
        raise ValueError(f"head {head!r}: expected one of {HEADS}")
    if (head == "classifier") != bool(labels):
        raise ValueError("labels are for head='classifier', which needs them")
    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *words]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    label_config = {}
    if labels:
        label_config = {"id2label": dict(enumerate(labels)), "label2id": {c: i for i, c in enumerate(labels)}}
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=initializer_range,
        **label_config,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model_class = {"mlm": BertForMaskedLM, "none": BertModel, "classifier": BertForSequenceClassification}[head]
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def make_tiny_bert():
    """`write_tiny_bert`, for tests that need a model of their own."""
    return write_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), words=("disease", "cancer", "syndrome", "deficiency"), seed=0
    )


TINY_CONCEPTS = {
    "D001943": "Breast Neoplasms",
    "D003110": "Colonic Neoplasms",
    "D011125": "Adenomatous Polyposis Coli",
    "D006333": "Heart Failure",
}
TINY_NORMALIZER_WORDS = (
    "breast",
    "cancer",
    "colon",
    "adenomatous",
    "polyposis",
    "coli",
    "heart",
    "failure",
    "of",
    "the",
)


@pytest.fixture(scope="session")
def tiny_concepts() -> dict[str, str]:
    """{concept ID: name} of the four MeSH concepts `tiny_normalizer` answers with."""
    return dict(TINY_CONCEPTS)


@pytest.fixture(scope="session")
def tiny_normalizer(tmp_path_factory, tiny_concepts) -> Path:
    """A saved, randomly initialized 2-layer BERT classifier over tiny_concepts' IDs (a normalizer folder, as
    fine-tuning leaves it in out/model), with spread-out scores (initializer_range 0.5)."""
    return write_tiny_bert(
        tmp_path_factory.mktemp("tiny-normalizer") / "model",
        words=TINY_NORMALIZER_WORDS,
        head="classifier",
        labels=tuple(tiny_concepts),
        seed=0,
        initializer_range=0.5,
    )


@pytest.fixture(scope="session")
def tiny_hybrid(tmp_path_factory, tiny_concepts, tiny_normalizer) -> Path:
    """A saved hybrid normalizer over tiny_concepts (a folder as the hybrid stage leaves it): a tiny random encoder,
    the concepts' names as its index, the tiny classifier (tiny_normalizer) weighted in, and a lexicon detector of
    those names, so that it also takes raw text."""
    from ehrbert.corpora.records import Concept, Vocabulary
    from ehrbert.models import classifier as classifier_model
    from ehrbert.models import retrieval
    from ehrbert.models.detector import LexiconDetector
    from ehrbert.models.hybrid import HybridNormalizer, Settings
    from ehrbert.models.name_index import NameIndex

    root = tmp_path_factory.mktemp("tiny-hybrid")
    encoder, tokenizer = retrieval.load_encoder(write_tiny_bert(root / "encoder", words=TINY_NORMALIZER_WORDS, seed=1))
    vocabulary = Vocabulary([Concept(cid, name.lower()) for cid, name in tiny_concepts.items()])
    config = retrieval.RetrievalConfig()
    index = NameIndex.build(vocabulary)
    index.embed(encoder, tokenizer, config)
    detector = LexiconDetector({name.lower(): (1, 1) for name in tiny_concepts.values()})
    classifier, classifier_tokenizer = classifier_model.load(tiny_normalizer)
    settings = Settings(classifier_weight=0.5)
    HybridNormalizer(
        encoder, tokenizer, index, config, classifier, classifier_tokenizer, settings=settings, detector=detector
    ).save(root / "model")
    return root / "model"


# --- a tiny pretraining workspace --------------------------------------------------------------------------

NOTE_WORDS = (
    "patient denies chest pain fever cough history of hypertension diabetes the was is and with no left "
    "right knee surgery performed under general anesthesia blood pressure normal exam heart lungs clear "
    "abdomen soft mild severe acute chronic daily dose tablet given"
).split()


def synthetic_notes(n_documents: int, seed: int) -> list[list[str]]:
    """Documents of 2-6 sentences of 3-9 NOTE_WORDS each, ending with " ."."""
    rng = random.Random(seed)
    return [
        [" ".join(rng.choice(NOTE_WORDS) for _ in range(rng.randint(3, 9))) + " ." for _ in range(rng.randint(2, 6))]
        for _ in range(n_documents)
    ]


def write_pretraining_workspace(root: Path, max_steps: int = 12) -> Path:
    """`root` with what a pretraining stage reads: base/ (a tiny BERT without pretraining heads whose vocabulary
    holds every note word as one word piece), params.yaml (stage `tiny`: `max_steps` steps of batch 8, a
    checkpoint's worth of science) and the tokenize stage's outputs for synthetic notes: tokenized/train.npz
    (23 documents), tokenized/heldout.npz (10, masked once) and tokenized.json."""
    from ehrbert import pretraining_data
    from ehrbert.corpora.notes import format_sentence_documents

    root.mkdir(parents=True, exist_ok=True)
    base = write_tiny_bert(root / "base", words=(*sorted(set(NOTE_WORDS)), ".", ","), head="none", seed=0)
    section = {
        "base": str(base),
        "max_seq_length": 32,
        "short_seq_prob": 0.1,
        "nsp_probability": 0.5,
        "mlm_probability": 0.15,
        "seed": 13,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.25,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "tiny": {"label": "tiny-test", "stands_in_for": "nothing (test)", "epochs": 1, "max_steps": max_steps},
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"pretrain": section}))
    (root / "train.txt").write_text(format_sentence_documents(synthetic_notes(23, seed=1)))
    (root / "heldout.txt").write_text(format_sentence_documents(synthetic_notes(10, seed=2)))
    pretraining_data.main(
        [
            "--tokenizer",
            str(base),
            "--corpus",
            f"train={root / 'train.txt'}",
            "--heldout",
            f"heldout={root / 'heldout.txt'}",
            "--params",
            str(root / "params.yaml"),
            "--out-dir",
            str(root / "tokenized"),
            "--metrics",
            str(root / "tokenized.json"),
        ]
    )
    return root


@pytest.fixture(scope="session")
def make_pretraining_workspace():
    """`write_pretraining_workspace`: each test module builds its own workspace, since runs write into it."""
    return write_pretraining_workspace


# --- MLflow ------------------------------------------------------------------------------------------------


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store and registry in tmp_path, undone afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _argv(**flags) -> list[str]:
    """A stage's command line from keyword arguments: model_path=p -> ["--model-path", str(p)], in order."""
    return [part for key, value in flags.items() for part in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture
def argv():
    """`_argv`: build a stage's command line from keyword arguments."""
    return _argv


@pytest.fixture
def ncbi_data(raw_data) -> dict:
    """The NCBI disease flags every task-reading stage takes, for `argv`."""
    return {"ncbi_dir": raw_data / "ncbi_disease", "ncbi_vocabulary": raw_data / "medic" / "CTD_diseases.tsv.gz"}


class PretrainingCLI:
    """The environment and command-line flags of a tiny pretraining run in a `make_pretraining_workspace` folder."""

    @staticmethod
    def env(workspace: Path) -> dict:
        return {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(workspace / "hf_home"),
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    @staticmethod
    def args(workspace: Path, out: str, checkpoints: str = "checkpoints", every: int = 3) -> list[str]:
        """Flags of `ehrbert.pretrain`: stage `tiny` from the workspace's base and corpora, every checkpoint kept."""
        return _argv(
            stage="tiny",
            init=workspace / "base",
            train=workspace / "tokenized" / "train.npz",
            heldout=workspace / "tokenized" / "heldout.npz",
            out=workspace / out,
            metrics=workspace / f"{out}.json",
            run_record=workspace / f"{out}-run.json",
            checkpoint_dir=workspace / checkpoints,
            params=workspace / "params.yaml",
            checkpoint_every=every,
            keep_checkpoints=0,
        )


@pytest.fixture(scope="session")
def pretraining_cli() -> type[PretrainingCLI]:
    return PretrainingCLI


@pytest.fixture(scope="session")
def cut_corpora():
    """The helpers that cut real corpus files down to a tiny copy: `.pubtator(source, target, keep, also)` and
    `.medic(source, target, needed)`."""
    from types import SimpleNamespace

    return SimpleNamespace(pubtator=_cut_pubtator, medic=_cut_medic)


# --- real servers on 127.0.0.1 -----------------------------------------------------------------------------

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path, seconds: float = 45) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"server not up after {seconds} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it was started in a session of its own), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on `backend` with artifacts proxied from `artifacts`; yields its URL."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination"]
    command += [str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server, log, seconds=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


@pytest.fixture(scope="session")
def servers() -> SimpleNamespace:
    """`free_port()`, `wait_until_up(url, server, log)`, `stop(server)` and `mlflow_server(backend, artifacts, log)`."""
    return SimpleNamespace(free_port=free_port, wait_until_up=wait_until_up, stop=stop, mlflow_server=mlflow_server)


def _postgres_bin() -> Path:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    pytest.fail(
        "PostgreSQL's initdb and pg_ctl are not on PATH nor in /usr/lib/postgresql/*/bin: install Debian's "
        "postgresql package (.ci/run does)"
    )


def _checked(command: list, what: str) -> None:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


class Postgres:
    """A running PostgreSQL server; `database(name)` creates a database and returns its SQLAlchemy URI."""

    def __init__(self, port: int, user: str):
        self.port, self.user = port, user

    def database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres") as connection:
            connection.autocommit = True
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server on 127.0.0.1 for the session, in a temporary folder; stopped and deleted at the end.
    initdb refuses to run as root, so as root the server runs as `nobody`."""
    root = Path(tempfile.mkdtemp(prefix="ehrbert-postgres-"))
    root.chmod(0o777)
    as_owner = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    folder, port, data = _postgres_bin(), free_port(), root / "data"
    _checked(
        [*as_owner, folder / "initdb", "-D", data, "-U", "ehrbert", "--auth=trust", "-E", "UTF8", "--no-sync"], "initdb"
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [*as_owner, folder / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o", options]
    _checked([*start, "start"], "pg_ctl start")
    try:
        yield Postgres(port, "ehrbert")
    finally:
        subprocess.run([str(c) for c in [*as_owner, folder / "pg_ctl", "-D", data, "-m", "fast", "stop"]], timeout=60)
        shutil.rmtree(root, ignore_errors=True)

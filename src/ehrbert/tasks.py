"""The normalization tasks: which files, which vocabulary, which splits, how each is scored.

Built in:
- ``ncbi``: NCBI disease corpus -> MEDIC, scored by document-level macro P/R/F1 (as DNorm).
- ``cdr``: BioCreative V CDR, Disease mentions only -> MEDIC, document-level (as the CDR evaluation).
- ``cadec``: CADEC v2, standing in for MADE 1.0: ADRs -> MedDRA, other mentions -> SNOMED CT, one
  vocabulary over both, scored by mention-level P/R/F1 (span and concept must match, as MADE).

Declared: a user's own task is a `TaskSpec` in params.yaml (`tasks.<name>`): a folder, a vocabulary file in one of
`ehrbert.corpora.terminology.FORMATS`, train/dev/test annotations in one of `ehrbert.corpora.annotations.FORMATS`,
the scoring level and what to do with gold IDs the vocabulary lacks. `read_declared_task` reads one; ``ncbi`` and
``cdr`` are read the same way, from the `TaskSpec` that `builtin_spec` makes of their data paths. The
`prepare_task` stage reads a declared task once, checks it and writes it as a *prepared task*
(`save_prepared`: the records as gzipped JSON), which every later stage loads (`load_task`) from
``<tasks dir>/<name>``. CADEC is not a declared task: it has no official split (one is drawn per drug, params
`cadec_split`) and its vocabulary is made from the corpus's own annotation files (`cadec_vocabulary`).

Gold IDs are mapped to the vocabulary's primary IDs on load (`Vocabulary.canonical`), so gold and
predictions meet in one ID space. A mention becomes a *query* after the paper's preprocessing:
abbreviations expanded with the ones Ab3P finds in its own document, then lowercased and stripped
of punctuation (`ehrbert.text.preprocess_mention`).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ehrbert.corpora.annotations import UNKNOWN_ID_POLICIES, check_gold_ids, read_annotations
from ehrbert.corpora.cadec import read_cadec
from ehrbert.corpora.cadec_split import split_cadec
from ehrbert.corpora.cadec_vocabulary import cadec_vocabulary
from ehrbert.corpora.pubtator import CDR_TYPES, NCBI_TYPES
from ehrbert.corpora.records import Concept, Document, Mention, Vocabulary
from ehrbert.corpora.terminology import read_vocabulary
from ehrbert.metrics import score_predictions, span_scores
from ehrbert.models.detector import LexiconDetector, predicted_mentions
from ehrbert.stage import config_from, folder_written_whole, section
from ehrbert.text import find_abbreviations, preprocess_mention

TASKS = ("ncbi", "cdr", "cadec")  # built in
# the `add_data_arguments` flags each built-in task is read from (see load_task and task_inputs)
BUILTIN_INPUTS = {
    "ncbi": ("ncbi_dir", "ncbi_vocabulary"),
    "cdr": ("cdr_dir", "cdr_vocabulary"),
    "cadec": ("cadec_dir",),
}
SPLITS = ("train", "dev", "test")
LEVELS = ("document", "mention")
PREPARED_FILE = "task.json.gz"
DEFAULT_TASKS_DIR = Path("outputs/tasks")

NCBI_FILES = {"train": "NCBItrainset_corpus.txt", "dev": "NCBIdevelopset_corpus.txt", "test": "NCBItestset_corpus.txt"}
CDR_FILES = {
    "train": "CDR_TrainingSet.PubTator.txt",
    "dev": "CDR_DevelopmentSet.PubTator.txt",
    "test": "CDR_TestSet.PubTator.txt",
}


@dataclass
class Task:
    name: str
    vocabulary: Vocabulary
    splits: dict[str, list[Document]]
    level: str  # "document" or "mention": how test results are scored
    _abbreviations: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _texts: dict[str, str] = field(default_factory=dict, repr=False)

    def mentions(self, split: str) -> list[Mention]:
        return [m for doc in self.splits[split] for m in doc.mentions]

    def queries(self, split: str) -> list[str]:
        """The preprocessed query text of every mention of `split`, in `mentions(split)` order."""
        return self.preprocess(self.mentions(split))

    def preprocess(self, mentions: list[Mention]) -> list[str]:
        """Query texts of `mentions` (gold or detected), each with its own document's abbreviations."""
        if not self._texts:
            self._texts = {doc.doc_id: doc.text for documents in self.splits.values() for doc in documents}
        out = []
        for mention in mentions:
            if mention.doc_id not in self._abbreviations:
                self._abbreviations[mention.doc_id] = find_abbreviations(self._texts[mention.doc_id])
            out.append(preprocess_mention(mention.text, self._abbreviations[mention.doc_id]))
        return out


def _to_primary_ids(documents: list[Document], vocabulary: Vocabulary) -> list[Document]:
    for doc in documents:
        doc.mentions = [vocabulary.canonical_mention(m) for m in doc.mentions]
    return documents


@dataclass
class TaskSpec:
    """A task declared in params.yaml (`tasks.<name>`); file names are relative to `dir` (absolute ones stay).

    vocabulary: ``{file, format}`` plus the format's options (mrconso: ``sources``, ``language``).
    annotations: ``{format, train, dev, test}`` plus the format's options (tsv: ``texts``, one document-text
    file for every split; bioc: ``id_key``; pubtator: ``entity_types``).
    """

    dir: str
    vocabulary: dict
    annotations: dict
    level: str = "document"  # how test results are scored: "document" (macro P/R/F1 over documents) or "mention"
    unknown_ids: str = "fail"  # gold IDs the vocabulary lacks: fail, drop the mentions, or keep them (scored)

    VOCABULARY_OPTIONS = ("sources", "language")
    ANNOTATION_OPTIONS = ("texts", "id_key", "entity_types")

    def check(self, key: str, source) -> None:
        """An error naming params key `key` for anything read_declared_task could not use."""

        def fail(message: str):
            raise SystemExit(f"{source}: {key}: {message}")

        for part, needed, options in (
            ("vocabulary", ("file", "format"), self.VOCABULARY_OPTIONS),
            ("annotations", ("format", *SPLITS), self.ANNOTATION_OPTIONS),
        ):
            value = getattr(self, part)
            if not isinstance(value, dict):
                fail(f"{part} must be a mapping with {', '.join(needed)}, got {value!r}")
            missing = [k for k in needed if not value.get(k)]
            unknown = sorted(set(value) - set(needed) - set(options))
            if missing or unknown:
                fail(
                    f"{part} lacks {missing}"
                    if missing
                    else f"{part} has unknown keys {unknown}; it takes {needed + options}"
                )
        if self.level not in LEVELS:
            fail(f"level {self.level!r}: expected one of {', '.join(LEVELS)}")
        if self.unknown_ids not in UNKNOWN_ID_POLICIES:
            fail(f"unknown_ids {self.unknown_ids!r}: expected one of {', '.join(UNKNOWN_ID_POLICIES)}")

    def path(self, file: str) -> Path:
        return Path(self.dir) / file


def builtin_spec(name: str, corpus_dir: Path, vocabulary_path: Path) -> TaskSpec:
    """``ncbi`` or ``cdr`` as a declared task: PubTator files of the corpus folder, MEDIC as CTD ships it
    (`CTD_diseases.tsv.gz`) or as BioSyn's `ID||name` dictionary, gold IDs the vocabulary lacks kept and scored
    (as the published evaluations do: NCBI test has 6 such mentions)."""
    files, types = {"ncbi": (NCBI_FILES, NCBI_TYPES), "cdr": (CDR_FILES, CDR_TYPES)}[name]
    vocabulary_format = "medic" if Path(vocabulary_path).name.endswith(".tsv.gz") else "biosyn"
    return TaskSpec(
        dir=str(corpus_dir),
        vocabulary={"file": str(Path(vocabulary_path).resolve()), "format": vocabulary_format},
        annotations={"format": "pubtator", **files, "entity_types": sorted(types)},
        level="document",
        unknown_ids="keep",
    )


def read_declared_task(name: str, spec: TaskSpec) -> Task:
    """Task `name` from the files `spec` names: gold IDs checked against the vocabulary (`spec.unknown_ids`),
    then mapped to its primary IDs."""
    vocabulary_options = {k: v for k, v in spec.vocabulary.items() if k not in ("file", "format")}
    vocabulary = read_vocabulary(spec.path(spec.vocabulary["file"]), spec.vocabulary["format"], **vocabulary_options)
    options = {k: v for k, v in spec.annotations.items() if k in TaskSpec.ANNOTATION_OPTIONS}
    if "texts" in options:
        options["texts"] = spec.path(options["texts"])
    splits = {}
    for split in SPLITS:
        path = spec.path(spec.annotations[split])
        documents = read_annotations(path, spec.annotations["format"], **options)
        splits[split] = _to_primary_ids(check_gold_ids(documents, vocabulary, path, spec.unknown_ids), vocabulary)
    return Task(name, vocabulary, splits, level=spec.level)


def declared_spec(params: dict, name: str, source="params.yaml") -> TaskSpec:
    """The `TaskSpec` of params key `tasks.<name>`, checked."""
    spec = config_from(TaskSpec, section(params, f"tasks.{name}", source), f"tasks.{name}", source)
    spec.check(f"tasks.{name}", source)
    return spec


def load_pubtator_task(name: str, corpus_dir: Path, vocabulary_path: Path) -> Task:
    return read_declared_task(name, builtin_spec(name, corpus_dir, vocabulary_path))


def save_prepared(task: Task, folder: Path) -> None:
    """`task` into `folder` as a prepared task (gzipped JSON of its records, byte-stable), whole or not at all."""
    record = {
        "name": task.name,
        "level": task.level,
        "vocabulary": {
            "name": task.vocabulary.name,
            "concepts": [_concept_record(c) for c in task.vocabulary.concepts],
        },
        "splits": {split: [asdict(doc) for doc in documents] for split, documents in task.splits.items()},
    }
    with folder_written_whole(folder) as partial:
        with open(partial / PREPARED_FILE, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            out.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def _concept_record(concept: Concept) -> dict:
    """`concept` as a prepared task's record; `parents` only where it has any, so that a flat vocabulary's prepared
    task is byte for byte what it was before hierarchies were read."""
    record = asdict(concept)
    if not record["parents"]:
        del record["parents"]
    return record


def load_prepared(folder: Path) -> Task:
    """The task `save_prepared` wrote into `folder`."""
    with gzip.open(Path(folder) / PREPARED_FILE, "rt", encoding="utf-8") as handle:
        record = json.load(handle)

    def concept(c: dict) -> Concept:
        return Concept(
            c["concept_id"],
            c["name"],
            tuple(c["synonyms"]),
            tuple(c["alt_ids"]),
            c["definition"],
            tuple(c.get("parents", ())),
        )

    def mention(m: dict) -> Mention:
        spans = tuple(tuple(span) for span in m["spans"])
        return Mention(m["doc_id"], spans, m["text"], tuple(m["concept_ids"]), m["relation"], m["type"])

    def document(d: dict) -> Document:
        return Document(d["doc_id"], d["text"], [mention(m) for m in d["mentions"]], d["title"], d["meta"])

    vocabulary = Vocabulary([concept(c) for c in record["vocabulary"]["concepts"]], record["vocabulary"]["name"])
    splits = {split: [document(d) for d in documents] for split, documents in record["splits"].items()}
    return Task(record["name"], vocabulary, splits, level=record["level"])


def load_cadec_task(cadec_dir: Path, seed: int, dev_fraction: float, test_fraction: float) -> Task:
    documents = read_cadec(Path(cadec_dir))
    by_id = {doc.doc_id: doc for doc in documents}
    split_ids = split_cadec(documents, seed=seed, dev_fraction=dev_fraction, test_fraction=test_fraction)
    splits = {s: [by_id[i] for i in split_ids[s]] for s in SPLITS}
    vocabulary = cadec_vocabulary(documents, name_documents=splits["train"])
    return Task("cadec", vocabulary, {s: _to_primary_ids(d, vocabulary) for s, d in splits.items()}, level="mention")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The raw-input paths every task-reading stage takes (dvc.yaml passes them from `data`)."""
    parser.add_argument("--ncbi-dir", type=Path, help="NCBI disease corpus folder")
    parser.add_argument("--ncbi-vocabulary", type=Path, help="MEDIC file used for NCBI")
    parser.add_argument("--cdr-dir", type=Path, help="BC5CDR corpus folder")
    parser.add_argument("--cdr-vocabulary", type=Path, help="MEDIC file used for BC5CDR")
    parser.add_argument("--cadec-dir", type=Path, help="CADEC v2 folder")
    parser.add_argument(
        "--tasks-dir",
        type=Path,
        default=DEFAULT_TASKS_DIR,
        help="prepared declared tasks (stage prepare_task), one folder per task name",
    )


def task_inputs(name: str, args: argparse.Namespace) -> list[Path]:
    """The files and folders task `name` is read from (see load_task)."""
    if name in TASKS:
        return [getattr(args, key) for key in BUILTIN_INPUTS[name]]
    return [args.tasks_dir / name]


def load_task(name: str, args: argparse.Namespace, cadec_split: dict) -> Task:
    """Task `name` from the paths in `args` (see add_data_arguments); `cadec_split` from params.yaml. A name that
    is not built in is a declared task, prepared in `args.tasks_dir`."""
    if name not in TASKS:
        folder = args.tasks_dir / name
        if not (folder / PREPARED_FILE).is_file():
            raise SystemExit(
                f"task {name!r} is not built in ({', '.join(TASKS)}) and {folder} holds no prepared task: declare it "
                f"in params.yaml under `tasks` and run `dvc repro prepare_task@{name}`"
            )
        return load_prepared(folder)
    missing = [f"--{a.replace('_', '-')}" for a in BUILTIN_INPUTS[name] if getattr(args, a) is None]
    if missing:
        raise SystemExit(f"task {name} needs {' and '.join(missing)}")
    if name == "cadec":
        return load_cadec_task(args.cadec_dir, **cadec_split)
    return load_pubtator_task(name, getattr(args, f"{name}_dir"), getattr(args, f"{name}_vocabulary"))


def score_detected(
    task: Task, detector: LexiconDetector, answer: Callable[[list[str]], Sequence[Sequence[str]]]
) -> dict[str, float]:
    """Test scores from raw text, as the paper scores the clinical corpus from MetaMap's mentions: `detector`
    finds the mentions of the test documents, `answer` gives each query's concept IDs (none, one or several),
    and the task's own P/R/F1 scores them (mention level: span and concept must match). Also the number of
    detected mentions and the detection's span P/R/F1 (`span_precision`, ...)."""
    documents = task.splits["test"]
    mentions = predicted_mentions(detector, documents)
    answers = answer(task.preprocess(mentions)) if mentions else []
    scores = score_predictions(
        documents, [(m.doc_id, m.spans, set(ids)) for m, ids in zip(mentions, answers)], task.level
    )
    detected: dict[str, list] = {doc.doc_id: [] for doc in documents}
    for mention in mentions:
        detected[mention.doc_id].append(mention.spans[0])
    spans = span_scores(documents, detected)
    return {**scores, "detected": len(mentions), **{f"span_{k}": spans[k] for k in ("precision", "recall", "f1")}}

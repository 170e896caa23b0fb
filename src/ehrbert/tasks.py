"""The three normalization tasks: which files, which vocabulary, which splits, how each is scored.

- ``ncbi``: NCBI disease corpus -> MEDIC, scored by document-level macro P/R/F1 (as DNorm).
- ``cdr``: BioCreative V CDR, Disease mentions only -> MEDIC, document-level (as the CDR evaluation).
- ``cadec``: CADEC v2, standing in for MADE 1.0: ADRs -> MedDRA, other mentions -> SNOMED CT, one
  vocabulary over both, scored by mention-level P/R/F1 (span and concept must match, as MADE).

Gold IDs are mapped to the vocabulary's primary IDs on load (`Vocabulary.canonical`), so gold and
predictions meet in one ID space. A mention becomes a *query* after the paper's preprocessing:
abbreviations expanded with the ones Ab3P finds in its own document, then lowercased and stripped
of punctuation (`ehrbert.text.preprocess_mention`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ehrbert.corpora.cadec import read_cadec
from ehrbert.corpora.cadec_split import split_cadec
from ehrbert.corpora.cadec_vocabulary import cadec_vocabulary
from ehrbert.corpora.medic import read_biosyn_dictionary, read_medic
from ehrbert.corpora.pubtator import CDR_TYPES, NCBI_TYPES, read_pubtator
from ehrbert.corpora.records import Document, Mention, Vocabulary
from ehrbert.metrics import score_predictions, span_scores
from ehrbert.models.detector import LexiconDetector, predicted_mentions
from ehrbert.text import find_abbreviations, preprocess_mention

TASKS = ("ncbi", "cdr", "cadec")
SPLITS = ("train", "dev", "test")

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


def read_disease_vocabulary(path: Path) -> Vocabulary:
    """MEDIC as CTD ships it (`CTD_diseases.tsv.gz`) or as BioSyn's `ID||name` dictionary (`.txt`)."""
    path = Path(path)
    return read_medic(path) if path.name.endswith(".tsv.gz") else read_biosyn_dictionary(path)


def load_pubtator_task(name: str, corpus_dir: Path, vocabulary_path: Path) -> Task:
    files, types = {"ncbi": (NCBI_FILES, NCBI_TYPES), "cdr": (CDR_FILES, CDR_TYPES)}[name]
    vocabulary = read_disease_vocabulary(vocabulary_path)
    splits = {
        s: _to_primary_ids(read_pubtator(Path(corpus_dir) / f, entity_types=types), vocabulary)
        for s, f in files.items()
    }
    return Task(name, vocabulary, splits, level="document")


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


def load_task(name: str, args: argparse.Namespace, cadec_split: dict) -> Task:
    """Task `name` from the paths in `args` (see add_data_arguments); `cadec_split` from params.yaml."""
    needed = {"ncbi": ("ncbi_dir", "ncbi_vocabulary"), "cdr": ("cdr_dir", "cdr_vocabulary"), "cadec": ("cadec_dir",)}
    if name not in needed:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    missing = [f"--{a.replace('_', '-')}" for a in needed[name] if getattr(args, a) is None]
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

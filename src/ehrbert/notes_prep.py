"""Note preparation as in the paper, and the pretraining text of the biomedical stand-in.

Two stages share one sentence rule and one word tokenizer:
- `notes`: the notes file (data.notes) -> empty and duplicate notes dropped -> sentences -> NLTK tokens ->
  three splits drawn with a seed: `heldout` (never trained on; held-out MLM perplexity), `full` (the paper's
  1M notes) and `half` (the paper's 500k: the first half of `full`, so half is inside full) -> one
  sentence-per-line file per split, and the corpus statistics as DVC metrics.
- `biomedical`: the text the biomedical stand-in (our "BioBERT" analog) is pretrained on: the TRAINING-split
  abstracts of NCBI disease and BC5CDR, minus any PMID that occurs in a dev or test file given with
  `--held-out`, plus MEDIC definitions (each as a two-part document: the disease name, then its definition).

Sentences: the paper splits notes on periods, line breaks and tabs. A period splits only when followed by
white space (or by the comma MTSamples writes for a line break), so "2.5 mg" stays whole. MTSamples also
writes the line break after a heading as a comma ("SUBJECTIVE:,  This ..."), which is split too.
Tokens: NLTK's `NLTKWordTokenizer` (the Treebank-style tokenizer behind `word_tokenize`, which is
`word_tokenize(s, preserve_line=True)`). It needs no NLTK data: sentences come from the rule above, not from
punkt, so nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nltk.tokenize import NLTKWordTokenizer
from tqdm.auto import tqdm

from ehrbert.corpora.medic import read_medic
from ehrbert.corpora.notes import format_sentence_documents, read_notes
from ehrbert.corpora.pubtator import read_pubtator
from ehrbert.corpora.records import Concept, Document
from ehrbert.stage import config_from, read_params, setup_logging, write_json

log = logging.getLogger(__name__)

SPLITS = ("heldout", "half", "full")
_SENTENCE_BREAK = re.compile(
    r"[\r\n\t]+"  # line breaks and tabs
    r"|(?<=\.)[\s,]+"  # a period before white space (not a decimal point), or before MTSamples' line-break comma
    r"|(?<=:)\s*,\s*"  # MTSamples' line break after a heading: "SUBJECTIVE:,  This ..."
)
_WORDS = NLTKWordTokenizer()

Sentence = list[str]  # NLTK tokens
Prepared = list[Sentence]  # one note or abstract


@dataclass
class NotesConfig:
    format: str = "auto"  # notes file layout: csv (MTSamples columns), lines (one note a line), auto (by suffix)
    seed: int = 13  # draws the splits
    heldout_notes: int = 100  # notes kept out of all training, for held-out MLM perplexity
    max_full_notes: int | None = 700  # size of `full` (the paper's 1M notes); None: every remaining note
    half_fraction: float = 0.5  # `half` = this share of `full`, taken from its start (the paper's 500k)


def split_sentences(text: str) -> list[str]:
    """The sentences of a text by the paper's rule; pieces without a letter or digit are dropped."""
    pieces = (piece.strip(" ,") for piece in _SENTENCE_BREAK.split(text))
    return [piece for piece in pieces if any(ch.isalnum() for ch in piece)]


def tokenize(sentence: str) -> Sentence:
    return _WORDS.tokenize(sentence)


def prepare_text(text: str) -> Prepared:
    """Sentences of NLTK tokens."""
    return [tokens for tokens in map(tokenize, split_sentences(text)) if tokens]


def usable_notes(notes: list[Document]) -> tuple[list[Document], dict[str, int]]:
    """The notes without empty ones and exact repeats (first kept), and how many of each were dropped."""
    kept: dict[str, Document] = {}
    empty = 0
    for note in notes:
        text = note.text.strip()
        if not text:
            empty += 1
        elif text not in kept:
            kept[text] = note
    counts = {"notes_read": len(notes), "notes_empty": empty, "notes_duplicate": len(notes) - empty - len(kept)}
    return list(kept.values()), counts


def split_notes(note_ids: list[str], config: NotesConfig) -> dict[str, list[str]]:
    """Note IDs of `heldout`, `half` and `full`: one seeded shuffle; half is a prefix of full, both outside heldout.

    The held-out notes depend only on the seed and `heldout_notes`, so resizing `full` keeps them fixed.
    """
    if not 0 < config.heldout_notes < len(note_ids):
        raise ValueError(f"heldout_notes must be between 1 and {len(note_ids) - 1}, got {config.heldout_notes}")
    if not 0 < config.half_fraction <= 1:
        raise ValueError(f"half_fraction must be in (0, 1], got {config.half_fraction}")
    order = list(note_ids)
    random.Random(config.seed).shuffle(order)
    heldout, pool = order[: config.heldout_notes], order[config.heldout_notes :]
    full = pool if config.max_full_notes is None else pool[: config.max_full_notes]
    half = full[: max(1, round(len(full) * config.half_fraction))]
    return {"heldout": heldout, "half": half, "full": full}


def statistics(documents: Iterable[Prepared], prefix: str = "") -> dict[str, float]:
    """Documents, sentences, tokens and mean sentence length (tokens), keys prefixed by `prefix`."""
    documents = list(documents)
    sentences = sum(len(d) for d in documents)
    tokens = sum(len(s) for d in documents for s in d)
    return {
        f"{prefix}documents": len(documents),
        f"{prefix}sentences": sentences,
        f"{prefix}tokens": tokens,
        f"{prefix}mean_sentence_length": round(tokens / sentences, 3) if sentences else 0.0,
    }


def as_lines(documents: Iterable[Prepared]) -> list[list[str]]:
    """Documents of sentences as lines of space-joined tokens (the input of `ehrbert.pretraining_data`)."""
    return [[" ".join(tokens) for tokens in document] for document in documents]


def prepare_notes(notes: list[Document], config: NotesConfig) -> tuple[dict[str, list[Prepared]], dict, dict]:
    """(prepared documents per split, note IDs per split, metrics) of the notes read from the file."""
    kept, counts = usable_notes(notes)
    prepared = {note.doc_id: prepare_text(note.text) for note in tqdm(kept, desc="notes", unit="note")}
    ids = split_notes([note.doc_id for note in kept if prepared[note.doc_id]], config)
    metrics: dict[str, float] = {**counts, **statistics(prepared.values())}
    metrics["notes"] = metrics.pop("documents")
    splits = {}
    for split in SPLITS:
        splits[split] = [prepared[i] for i in ids[split]]
        split_metrics = statistics(splits[split], prefix=f"{split}_")
        split_metrics[f"{split}_notes"] = split_metrics.pop(f"{split}_documents")
        metrics.update(split_metrics)
    return splits, ids, metrics


def biomedical_documents(
    abstracts: list[Document], concepts: list[Concept], held_out_ids: set[str]
) -> tuple[list[Document], int]:
    """(documents, abstracts left out) of the biomedical stand-in's text.

    Abstracts become `PMID:<id>` documents (title on its own line) unless their PMID is in `held_out_ids`;
    a PMID in several training files is kept once. Concepts with a definition become `MEDIC:<id>` documents.
    """
    documents: dict[str, Document] = {}
    left_out = 0
    for doc in abstracts:
        if doc.doc_id in held_out_ids:
            left_out += 1
            continue
        abstract = doc.text[len(doc.title) + 1 :] if doc.title and doc.text.startswith(doc.title) else doc.text
        text = f"{doc.title}\n{abstract}" if doc.title else abstract
        documents.setdefault(f"PMID:{doc.doc_id}", Document(doc_id=f"PMID:{doc.doc_id}", text=text))
    for concept in concepts:
        if concept.definition.strip():
            doc_id = f"MEDIC:{concept.concept_id}"
            documents[doc_id] = Document(doc_id=doc_id, text=f"{concept.name}\n{concept.definition}")
    return list(documents.values()), left_out


def prepare_biomedical(
    abstracts: list[Document], concepts: list[Concept], held_out_ids: set[str]
) -> tuple[list[str], list[Prepared], dict]:
    """(document IDs, prepared documents, metrics) of the biomedical stand-in's text."""
    documents, left_out = biomedical_documents(abstracts, concepts, held_out_ids)
    prepared = [(doc.doc_id, prepare_text(doc.text)) for doc in tqdm(documents, desc="biomedical", unit="doc")]
    prepared = [(doc_id, sentences) for doc_id, sentences in prepared if sentences]
    metrics = {
        "abstracts": sum(doc_id.startswith("PMID:") for doc_id, _ in prepared),
        "abstracts_left_out": left_out,
        "definitions": sum(doc_id.startswith("MEDIC:") for doc_id, _ in prepared),
        **statistics(sentences for _, sentences in prepared),
    }
    return [doc_id for doc_id, _ in prepared], [sentences for _, sentences in prepared], metrics


def _notes_main(args: argparse.Namespace) -> None:
    config = config_from(NotesConfig, read_params(args.params)["notes"], "notes", args.params)
    splits, ids, metrics = prepare_notes(read_notes(args.notes, config.format), config)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, documents in splits.items():
        (args.out_dir / f"{split}.txt").write_text(format_sentence_documents(as_lines(documents)), encoding="utf-8")
    write_json(args.out_dir / "note_ids.json", ids)
    write_json(args.metrics, metrics)
    log.info(
        "%d notes, %d sentences, %d tokens; held-out %d, half %d, full %d notes",
        metrics["notes"],
        metrics["sentences"],
        metrics["tokens"],
        metrics["heldout_notes"],
        metrics["half_notes"],
        metrics["full_notes"],
    )


def _biomedical_main(args: argparse.Namespace) -> None:
    abstracts = [doc for path in args.train for doc in read_pubtator(path)]
    held_out_ids = {doc.doc_id for path in args.held_out for doc in read_pubtator(path)}
    concepts = read_medic(args.medic).concepts
    doc_ids, documents, metrics = prepare_biomedical(abstracts, concepts, held_out_ids)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "corpus.txt").write_text(format_sentence_documents(as_lines(documents)), encoding="utf-8")
    (args.out_dir / "doc_ids.txt").write_text("".join(f"{doc_id}\n" for doc_id in doc_ids))
    write_json(args.metrics, metrics)
    log.info(
        "%d abstracts (%d left out as dev/test), %d definitions, %d tokens",
        metrics["abstracts"],
        metrics["abstracts_left_out"],
        metrics["definitions"],
        metrics["tokens"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    notes = commands.add_parser("notes", help="sentences, tokens, splits and statistics of the notes")
    notes.add_argument("--notes", type=Path, required=True, help="notes file (MTSamples CSV or one note a line)")
    notes.add_argument("--params", type=Path, default=Path("params.yaml"))
    notes.add_argument("--out-dir", type=Path, required=True, help="heldout/half/full.txt and note_ids.json")
    notes.add_argument("--metrics", type=Path, required=True)
    notes.set_defaults(run=_notes_main)
    bio = commands.add_parser(
        "biomedical", help="text of the biomedical stand-in: training abstracts + MEDIC definitions"
    )
    bio.add_argument("--train", type=Path, action="append", required=True, help="PubTator training file (repeat)")
    bio.add_argument(
        "--held-out",
        type=Path,
        action="append",
        default=[],
        help="PubTator dev/test file whose PMIDs must not enter (repeat)",
    )
    bio.add_argument("--medic", type=Path, required=True, help="CTD_diseases.tsv(.gz), for its definitions")
    bio.add_argument("--out-dir", type=Path, required=True, help="corpus.txt and doc_ids.txt")
    bio.add_argument("--metrics", type=Path, required=True)
    bio.set_defaults(run=_biomedical_main)
    args = parser.parse_args(argv)
    setup_logging()
    args.run(args)


if __name__ == "__main__":
    main()

"""The name index of retrieval: vocabulary names and training mentions, the concepts each stands for, their vectors.

Entries are `normalize`d vocabulary names and synonyms plus (if asked) the preprocessed training mentions;
each points to the concept-ID tuples it stands for (a composite training mention such as "breast and ovarian
cancer" points to both concepts at once). The vectors come from the retrieval encoder (`ehrbert.models.retrieval`
embeds them); the index itself needs neither torch nor transformers, so the served fast form
(`ehrbert.models.fast`) loads it without them. Saved as `index.json` (entries and their concept tuples) and
`index.npy` (float16 vectors).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ehrbert.corpora.records import Mention, Vocabulary
from ehrbert.text import normalize

log = logging.getLogger(__name__)

INDEX_FORMAT = "ehrbert-name-index/1"


class NameIndex:
    """Entries (normalized names and training mentions) -> the concept-ID tuples each stands for."""

    def __init__(self, entries: dict[str, list[tuple[str, ...]]], embeddings: np.ndarray | None = None):
        self.texts = list(entries)
        self.position = {text: i for i, text in enumerate(self.texts)}
        self.concepts = [list(entries[t]) for t in self.texts]
        self.embeddings = embeddings
        if embeddings is not None and len(embeddings) != len(self.texts):
            raise ValueError(f"{len(self.texts)} entries but {len(embeddings)} embeddings")

    def __len__(self) -> int:
        return len(self.texts)

    def concept_ids(self) -> set[str]:
        return {c for tuples in self.concepts for ids in tuples for c in ids}

    @classmethod
    def build(cls, vocabulary: Vocabulary, mentions: Sequence[Mention] = (), queries: Sequence[str] = ()) -> NameIndex:
        """Every vocabulary name, then every training mention's query with its concept tuple.

        An entry that stands for several tuples (a name two concepts share, a mention annotated two ways)
        lists them most frequent in training first, then the concept whose preferred name it is, so its
        first tuple is the one to answer with.
        """
        counts: dict[str, Counter] = {}
        preferred: set[tuple[str, tuple[str, ...]]] = set()
        for concept in vocabulary.concepts:
            for name in concept.names:
                text = normalize(name)
                if text:
                    counts.setdefault(text, Counter())[(concept.concept_id,)] += 0
            preferred.add((normalize(concept.name), (concept.concept_id,)))
        for mention, query in zip(mentions, queries):
            ids = tuple(c for c in mention.concept_ids if c in vocabulary.index)
            if query and ids:
                counts.setdefault(query, Counter())[ids] += 1
        order = lambda text, counter: sorted(counter, key=lambda ids: (-counter[ids], (text, ids) not in preferred))
        return cls({text: order(text, counter) for text, counter in counts.items()})

    def embed(self, model, tokenizer, config) -> None:
        """Vectors of every entry from the retrieval encoder (`config`: its RetrievalConfig)."""
        from ehrbert.models.retrieval import embed  # torch: only where an encoder runs

        started = time.perf_counter()
        self.embeddings = embed(model, tokenizer, self.texts, config.max_length, config.embed_batch_size)
        log.info("embedded %d index entries in %.0f s", len(self), time.perf_counter() - started)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "format": INDEX_FORMAT,
            "entries": [[t, [list(ids) for ids in c]] for t, c in zip(self.texts, self.concepts)],
        }
        (folder / "index.json").write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
        np.save(folder / "index.npy", self.embeddings.astype(np.float16))  # half the bytes; cosine ranks unchanged

    @classmethod
    def load(cls, folder: str | Path, vectors: bool = True) -> NameIndex:
        """The index saved in `folder`; without its vectors when `vectors` is False (a caller with its own copy)."""
        folder = Path(folder)
        data = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        if data.get("format") != INDEX_FORMAT:
            raise ValueError(f"{folder / 'index.json'}: not a {INDEX_FORMAT} file (format {data.get('format')!r})")
        entries = {text: [tuple(ids) for ids in concepts] for text, concepts in data["entries"]}
        return cls(entries, np.load(folder / "index.npy").astype(np.float32) if vectors else None)

"""The lexicon mention detector: finds mention spans in raw text, standing where MetaMap stands.

1. The lexicon is the `normalize`d vocabulary names and synonyms plus the normalized texts of the contiguous
   *training* mentions (never dev or test ones). Entries made of stop words only ("off", "not well") are
   dropped: they are English before they are mentions.
2. Text is cut into tokens, runs of letters, digits and the apostrophes `normalize` deletes, each keeping its
   character offsets in the raw text; each token is `normalize`d, so the token sequence is
   `normalize(text).split()` and the lexicon and the text meet in one string space.
3. Every token sequence that is an entry is a candidate; the longest win (in tokens, the leftmost on a tie)
   and candidates overlapping a winner are dropped. A span runs from the first token's start to the last
   token's end, plus a closing bracket right after it when the span leaves one open ("Lipitor(atorvastatin)").
4. Too generic entries are skipped: `fit` runs step 3 with the whole lexicon over the training documents and
   counts, per entry, how often it was matched and how often the match was exactly a gold mention's span.
   An entry whose training precision is below `min_precision` is not matched; an entry never matched in
   training (a vocabulary name the posts do not use) has no estimate and is kept. `choose_min_precision`
   picks the threshold on dev.

Detected spans are contiguous: the discontinuous mentions of CADEC ("pain ... in my legs") cannot be found.
`predicted_mentions` turns detected spans into `Mention`s without concepts, for a normalizer to label.
A saved detector is one JSON file (`save` / `load`). The stage that fits it is `ehrbert.detector`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ehrbert.corpora.records import Document, Mention
from ehrbert.metrics import span_scores
from ehrbert.text import normalize

log = logging.getLogger(__name__)

Span = tuple[int, int]  # character offsets into the raw text, end exclusive

FORMAT = "ehrbert-lexicon-detector/1"
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(20))  # 0.0, 0.05, ..., 0.95

# Letters and digits (`\w` without `_`) and the apostrophes `ehrbert.text.normalize` deletes: the characters
# normalize keeps together. Everything else separates tokens, as normalize turns it into a space.
_TOKEN = re.compile(r"(?:[^\W_]|['\u2018\u2019\u02bc`\u00b4])+")
_CLOSING = {"(": ")", "[": "]", "{": "}"}
_END = ""  # trie key that marks the end of an entry (no token is empty)


@dataclass(frozen=True)
class Token:
    text: str  # normalized
    start: int  # offsets of the raw token, end exclusive
    end: int


def normalized_tokens(text: str) -> list[Token]:
    """The normalized tokens of `text` with their raw offsets; their texts are `normalize(text).split()`.

    A raw token that normalizes to nothing (a lone apostrophe) is skipped. One that normalizes to several
    words (lowercasing that yields a combining mark, e.g. "İ") gives each word the raw token's offsets.
    """
    tokens = []
    for match in _TOKEN.finditer(text):
        for word in normalize(match.group()).split():
            tokens.append(Token(word, match.start(), match.end()))
    return tokens


@cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words, imported when a detector is fitted: detecting needs none of it."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _is_stop_entry(entry: str) -> bool:
    return all(word in stop_words() for word in entry.split())


def _close_bracket(text: str, start: int, end: int) -> int:
    """`end`, moved past the closing bracket right after it when text[start:end] leaves that bracket open."""
    if end < len(text):
        for opening, closing in _CLOSING.items():
            if text[end] == closing and text.count(opening, start, end) > text.count(closing, start, end):
                return end + 1
    return end


class LexiconDetector:
    """Longest-match lexicon detector over normalized tokens.

    entries: normalized entry -> (times matched in the training documents, times that match was exactly a gold
    mention's span); (0, 0) for an entry never matched there. Entries with matches and a precision
    hits / matches below `min_precision` are skipped when detecting.
    """

    def __init__(self, entries: Mapping[str, tuple[int, int]], min_precision: float = 0.0):
        if not 0.0 <= min_precision <= 1.0:
            raise ValueError(f"min_precision must be in [0, 1], got {min_precision}")
        self.entries = {entry: (int(n), int(hits)) for entry, (n, hits) in entries.items()}
        self.min_precision = min_precision
        self.active = [entry for entry in self.entries if self.keeps(entry)]
        self._trie: dict = {}
        for entry in self.active:
            node = self._trie
            for word in entry.split():
                node = node.setdefault(word, {})
            node[_END] = entry

    def precision(self, entry: str) -> float | None:
        """Training precision of `entry`; None when it was never matched in training."""
        n, hits = self.entries[entry]
        return hits / n if n else None

    def keeps(self, entry: str) -> bool:
        precision = self.precision(entry)
        return precision is None or precision >= self.min_precision

    def with_min_precision(self, min_precision: float) -> LexiconDetector:
        return LexiconDetector(self.entries, min_precision)

    # --- building --------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, names: Iterable[str], train_documents: Sequence[Document], min_precision: float = 0.0
    ) -> LexiconDetector:
        """The lexicon of `names` (vocabulary names and synonyms) and the contiguous mentions of
        `train_documents`, with each entry's training counts (see the module docstring)."""
        lexicon = {normalize(name) for name in names}
        lexicon |= {normalize(m.text) for doc in train_documents for m in doc.mentions if len(m.spans) == 1}
        stop = {entry for entry in lexicon if entry and _is_stop_entry(entry)}
        lexicon = {entry for entry in lexicon if entry and entry not in stop}
        log.info("lexicon: %d entries (%d stop-word-only entries dropped)", len(lexicon), len(stop))

        everything = cls({entry: (0, 0) for entry in lexicon})
        counts = {entry: [0, 0] for entry in lexicon}
        for doc in train_documents:
            gold = {m.spans[0] for m in doc.mentions if len(m.spans) == 1}
            for entry, span in everything._matches(doc.text):
                counts[entry][0] += 1
                counts[entry][1] += span in gold
        return cls({entry: (n, hits) for entry, (n, hits) in counts.items()}, min_precision)

    # --- detecting -------------------------------------------------------------------------------------

    def _matches(self, text: str) -> list[tuple[str, Span]]:
        """(entry, span) of every match that survives longest-first selection, in text order."""
        tokens = normalized_tokens(text)
        candidates = []  # (first token, one past the last token, entry)
        for i in range(len(tokens)):
            node = self._trie
            for j in range(i, len(tokens)):
                node = node.get(tokens[j].text)
                if node is None:
                    break
                if _END in node:
                    candidates.append((i, j + 1, node[_END]))
        candidates.sort(key=lambda c: (c[0] - c[1], c[0]))  # longest first, then leftmost
        taken = [False] * len(tokens)
        chosen = []
        for i, j, entry in candidates:
            if not any(taken[i:j]):
                taken[i:j] = [True] * (j - i)
                chosen.append((i, j, entry))
        chosen.sort()
        out = []
        for i, j, entry in chosen:
            start = tokens[i].start
            out.append((entry, (start, _close_bracket(text, start, tokens[j - 1].end))))
        return out

    def detect(self, text: str) -> list[Span]:
        """The detected mention spans of `text`, in text order, non-overlapping."""
        return [span for _, span in self._matches(text)]

    # --- files -----------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One small JSON file: the format, the threshold and the entries with their training counts."""
        data = {
            "format": FORMAT,
            "min_precision": self.min_precision,
            "entries": {entry: list(self.entries[entry]) for entry in sorted(self.entries)},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LexiconDetector:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format {data.get('format')!r})")
        return cls({entry: tuple(counts) for entry, counts in data["entries"].items()}, data["min_precision"])


def detect_documents(detector: LexiconDetector, documents: Iterable[Document]) -> dict[str, list[Span]]:
    """{doc_id: detected spans} for each document."""
    return {doc.doc_id: detector.detect(doc.text) for doc in documents}


def predicted_mentions(detector: LexiconDetector, documents: Iterable[Document]) -> list[Mention]:
    """The detected mentions of `documents` as `Mention`s without concepts, for a normalizer to label."""
    return [
        Mention(doc.doc_id, ((start, end),), doc.text[start:end], concept_ids=(), type="")
        for doc in documents
        for start, end in detector.detect(doc.text)
    ]


def choose_min_precision(
    detector: LexiconDetector, dev_documents: Sequence[Document], grid: Iterable[float] = DEFAULT_GRID
) -> tuple[float, dict[float, dict[str, float]]]:
    """The threshold of `grid` with the best dev span F1 (the lowest on a tie), and the scores of each."""
    table = {}
    for t in grid:
        table[t] = span_scores(dev_documents, detect_documents(detector.with_min_precision(t), dev_documents))
    best = max(table, key=lambda t: (table[t]["f1"], -t))
    return best, table

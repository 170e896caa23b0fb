"""The beyond-the-paper normalizer: retrieval over vocabulary names and the paper's classifier together.

`HybridNormalizer` holds the retrieval encoder and its name index (`ehrbert.models.retrieval`), optionally the
classifier (`ehrbert.models.classifier`) and the lexicon detector (`ehrbert.models.detector`), and the settings
chosen on dev (`Settings`). `candidates` computes, once per list of queries, everything the decision needs;
`decide` turns it into answers:

- a concept's score is its retrieval cosine (the best entry that stands for it) plus `classifier_weight` x
  its classifier probability;
- **composite**: the best entry's concept tuple when it has several concepts (a composite training mention),
  else, for a coordinated query, the best concepts of its parts when every part's cosine reaches
  `composite_threshold`;
- **no concept**: an empty answer when the best score is below `no_concept_threshold`;
- **rerank** (variants listed as reranked): the second stage (`ehrbert.models.rerank`) reorders the first
  candidates and may change a single-concept answer.

A saved normalizer is one folder that loads by itself: retriever/, classifier/ (if any), detector.json (if
any), reranker/ (if any) and hybrid.json, the settings of every variant (`VARIANTS`) the stages chose and the
variants that rerank; `load` answers as one of them. The stage that trains it and chooses the settings is
`ehrbert.hybrid` (`ehrbert.rerank` adds the reranker). The encoders' work is two methods, `search` and `classify`
(`encode` calls both); the served fast form (`ehrbert.models.fast`) does the same work another way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ehrbert.composite import split_coordination
from ehrbert.models.detector import LexiconDetector
from ehrbert.models.name_index import NameIndex
from ehrbert.text import find_abbreviations, preprocess_mention

if TYPE_CHECKING:
    from ehrbert.models.rerank import Reranker
    from ehrbert.models.retrieval import RetrievalConfig

# The encoders run in torch (`ehrbert.models.retrieval`, `ehrbert.models.classifier`), imported where they run: the
# served fast form (`ehrbert.models.fast`) answers through this class's decisions without importing torch at all.

SETTINGS_FILE = "hybrid.json"
RERANKER_DIR = "reranker"
FORMAT = "ehrbert-hybrid/2"  # /2: the settings of every variant, one of them the default
# the first stage's, cumulative: each adds a component (the second stage, `ehrbert.rerank`, adds hybrid_rerank)
VARIANTS = ("retrieval", "hybrid", "hybrid_composite", "hybrid_no_concept")


@dataclass
class Settings:
    """The decisions made on dev."""

    classifier_weight: float = 0.0
    composite_threshold: float | None = None  # None: one concept a mention
    no_concept_threshold: float | None = None  # None: always answer


@dataclass
class Answer:
    ranked: list[str]  # best first
    scores: list[float]
    concept_ids: tuple[str, ...]  # the answer: one, several (composite) or none

    @property
    def score(self) -> float:
        return self.scores[0] if self.scores else 0.0


@dataclass
class Candidates:
    """Everything the decisions need about a list of queries, computed once (dev is decided on many times)."""

    retrieval: list[dict[str, float]]  # concept -> cosine of its best entry among the top-k
    best_tuple: list[tuple[str, ...]]  # concept tuple of the best entry
    classifier: list[dict[str, float]]  # concept -> probability (top-k); empty without a classifier
    parts: list[list[tuple[str, float]]]  # a coordinated query's parts: (best concept, cosine); [] if none
    # the cosine of the query's k-th best entry: the most that a concept with no entry among the top k can have.
    # Not the least cosine in `retrieval`: when the top k entries name one concept, that is its own cosine, and
    # every concept the classifier adds would tie with it.
    floor: list[float]


def decide(candidates: Candidates, settings: Settings, k: int = 5) -> list[Answer]:
    answers = []
    for i, retrieved in enumerate(candidates.retrieval):
        probabilities = candidates.classifier[i] if candidates.classifier else {}
        combined = {
            c: retrieved.get(c, candidates.floor[i]) + settings.classifier_weight * probabilities.get(c, 0.0)
            for c in retrieved.keys() | probabilities.keys()
        }
        ranked = sorted(combined, key=lambda c: (-combined[c], c))[:k]
        ids = tuple(ranked[:1])
        if settings.composite_threshold is not None and ranked:
            best_tuple, parts = candidates.best_tuple[i], candidates.parts[i]
            if len(best_tuple) > 1 and ranked[0] in best_tuple:
                ids = best_tuple
            elif parts and min(s for _, s in parts) >= settings.composite_threshold and len({c for c, _ in parts}) > 1:
                ids = tuple(dict.fromkeys(c for c, _ in parts))
        if settings.no_concept_threshold is not None and (
            not ranked or combined[ranked[0]] < settings.no_concept_threshold
        ):
            ids = ()
        answers.append(Answer(ranked, [combined[c] for c in ranked], ids))
    return answers


class HybridNormalizer:
    """Retrieval encoder + name index, optionally the classifier and the detector; `settings` from dev."""

    def __init__(
        self,
        encoder,
        tokenizer,
        index: NameIndex,
        config: RetrievalConfig,
        classifier=None,
        classifier_tokenizer=None,
        classifier_max_length: int = 24,
        classifier_top_k: int = 20,
        settings: Settings | None = None,
        detector: LexiconDetector | None = None,
        variants: dict[str, Settings] | None = None,
    ):
        self.encoder, self.tokenizer, self.index, self.config = encoder, tokenizer, index, config
        self.classifier, self.classifier_tokenizer = classifier, classifier_tokenizer
        self.classifier_max_length, self.classifier_top_k = classifier_max_length, classifier_top_k
        self.settings = settings or Settings()
        self.detector = detector
        self.variants = dict(variants or {})  # variant name -> its dev-chosen settings (saved with the model)
        self.reranker: Reranker | None = None  # the second stage (`load_reranker`)
        self.reranked: list[str] = []  # the variants that use it
        self.rerank = False  # whether `answer` reranks: the loaded variant is one of `reranked`

    @staticmethod
    def concept_ids_in(folder: str | Path) -> set[str]:
        """The concept IDs a saved normalizer can answer with (read from its index, no weights loaded)."""
        return NameIndex.load(Path(folder) / "retriever", vectors=False).concept_ids()

    def search(self, texts: list[str]) -> list[list[tuple[int, float]]]:
        """Per text, the `top_k` best (index position, cosine) pairs, best first (`retrieval.search`)."""
        from ehrbert.models import retrieval

        return retrieval.search(self.encoder, self.tokenizer, self.index, texts, self.config)

    def classify(self, queries: list[str]) -> list[dict[str, float]]:
        """Per query, the classifier's `classifier_top_k` concepts and probabilities; [] without a classifier."""
        if self.classifier is None:
            return []
        from ehrbert.models import classifier as classifier_model

        ranked, probs = classifier_model.predict(
            self.classifier,
            self.classifier_tokenizer,
            queries,
            k=self.classifier_top_k,
            max_length=self.classifier_max_length,
        )
        return [dict(zip(r, p)) for r, p in zip(ranked, probs)]

    def encode(self, texts: list[str], queries: list[str]) -> tuple[list, list[dict[str, float]]]:
        """`search(texts)` and `classify(queries)`: the work of the two encoders, one after the other here."""
        return self.search(texts), self.classify(queries)

    def candidates(self, queries: list[str]) -> Candidates:
        parts = [split_coordination(q) for q in queries]
        flat = list(dict.fromkeys(p for ps in parts for p in ps))
        hits, probabilities = self.encode(list(queries) + flat, queries)
        part_best = {}
        for part, found in zip(flat, hits[len(queries) :]):
            position, cosine = found[0]
            part_best[part] = (self.index.concepts[position][0][0], cosine)
        scores, best, floors = [], [], []
        for found in hits[: len(queries)]:
            concept_scores: dict[str, float] = {}
            for position, cosine in found:
                for c in self.index.concepts[position][0]:  # an entry answers with its most frequent tuple
                    concept_scores.setdefault(c, cosine)  # hits come best first
            scores.append(concept_scores)
            best.append(self.index.concepts[found[0][0]][0] if found else ())
            floors.append(found[-1][1] if found else 0.0)
        return Candidates(scores, best, probabilities, [[part_best[p] for p in ps] for ps in parts], floors)

    def predict(self, queries: list[str]) -> list[Answer]:
        return self.answer(queries, self.candidates(queries))

    def answer(self, queries: list[str], candidates: Candidates) -> list[Answer]:
        """The answers to `queries` from their `candidates`: `decide`, then the reranker if this variant reranks."""
        if not self.rerank:
            return decide(candidates, self.settings)
        answers = decide(candidates, self.settings, k=self.reranker.config.depth)
        return self.reranker.rerank(queries, answers, candidates)

    def annotate(self, texts: list[str]) -> list[list[tuple[int, int, str, Answer]]]:
        """Per raw text, (start, end, mention text, answer) of each mention the detector finds in it; the
        mentions of all texts are normalized in one batch."""
        if self.detector is None:
            raise ValueError("this normalizer has no mention detector: it takes mentions, not raw text")
        spans = [self.detector.detect(text) for text in texts]
        queries = []
        for text, found in zip(texts, spans):
            abbreviations = find_abbreviations(text) if found else {}
            queries += [preprocess_mention(text[s:e], abbreviations) for s, e in found]
        answers = iter(self.predict(queries) if queries else [])
        return [[(s, e, text[s:e], next(answers)) for s, e in found] for text, found in zip(texts, spans)]

    # --- files ---------------------------------------------------------------------------------------

    def save(self, folder: str | Path, default_variant: str | None = None) -> None:
        """One folder that loads by itself: retriever/, classifier/ (if any), detector.json (if any), hybrid.json
        (the settings of every variant in `self.variants`; `default_variant` is the one `load` picks unasked)."""
        from ehrbert.models import retrieval

        folder = Path(folder)
        retrieval.save_retriever(self.encoder, self.tokenizer, self.index, folder / "retriever")
        if self.classifier is not None:
            self.classifier.save_pretrained(str(folder / "classifier"))
            self.classifier_tokenizer.save_pretrained(str(folder / "classifier"))
        if self.detector is not None:
            self.detector.save(folder / "detector.json")
        if self.reranker is not None:
            self.reranker.save(folder / RERANKER_DIR)
        self.save_settings(folder, default_variant)

    def save_settings(self, folder: str | Path, default_variant: str | None = None) -> None:
        """hybrid.json alone: the settings of every variant, the default one and the variants that rerank."""
        variants = self.variants or {"default": self.settings}
        default_variant = default_variant or next(reversed(variants))
        settings = {
            "format": FORMAT,
            "default_variant": default_variant,
            "variants": {name: asdict(s) for name, s in variants.items()},
            "retrieval": asdict(self.config),
            "classifier_max_length": self.classifier_max_length,
            "classifier_top_k": self.classifier_top_k,
        }
        if self.reranked:
            settings["reranked"] = self.reranked
        (Path(folder) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, variant: str | None = None) -> HybridNormalizer:
        """The normalizer saved in `folder`, answering with `variant`'s settings (default: the folder's default)."""
        from ehrbert.models import classifier as classifier_model
        from ehrbert.models import retrieval

        folder = Path(folder)
        data, variants, variant = read_settings(folder, variant)
        encoder, tokenizer, index = retrieval.load_retriever(folder / "retriever")
        classifier = classifier_tokenizer = None
        if (folder / "classifier").is_dir():
            classifier, classifier_tokenizer = classifier_model.load(folder / "classifier")
        model = cls(
            encoder,
            tokenizer,
            index,
            retrieval.RetrievalConfig(**data["retrieval"]),
            classifier,
            classifier_tokenizer,
            data["classifier_max_length"],
            data["classifier_top_k"],
            variants[variant],
            load_detector(folder),
            variants,
        )
        model.load_reranker(folder, data, variant)
        return model

    def load_reranker(self, folder: str | Path, data: dict, variant: str) -> None:
        """The saved second stage, if `variant` reranks (hybrid.json's `data` lists it)."""
        self.reranked = list(data.get("reranked", []))
        self.rerank = variant in self.reranked
        if self.rerank:
            from ehrbert.models.rerank import Reranker

            self.reranker = Reranker.load(Path(folder) / RERANKER_DIR)

    @staticmethod
    def variants_in(folder: str | Path) -> list[str]:
        """The variants a saved normalizer can answer as (read from hybrid.json, no weights loaded)."""
        return list(json.loads((Path(folder) / SETTINGS_FILE).read_text())["variants"])


def is_hybrid(folder: str | Path) -> bool:
    return (Path(folder) / SETTINGS_FILE).exists()


def read_settings(folder: str | Path, variant: str | None = None) -> tuple[dict, dict[str, Settings], str]:
    """(hybrid.json's data, every variant's settings, the variant to answer as) of a saved normalizer."""
    path = Path(folder) / SETTINGS_FILE
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format {data.get('format')!r})")
    variants = {name: Settings(**values) for name, values in data["variants"].items()}
    variant = variant or data["default_variant"]
    if variant not in variants:
        raise ValueError(f"{path}: no variant {variant!r}; it has {', '.join(variants)}")
    return data, variants, variant


def load_detector(folder: str | Path) -> LexiconDetector | None:
    path = Path(folder) / "detector.json"
    return LexiconDetector.load(path) if path.exists() else None

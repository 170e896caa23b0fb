"""The second stage: a learned reranker over the hybrid normalizer's top candidates.

The first stage (`ehrbert.models.hybrid`) scores a concept as ``cosine + w * probability``: one weight, the
same for every mention. It cannot learn the corpus's conventions, for example that a mention whose exact text
the training split annotates one way should be answered that way, or that a candidate one of whose names is
inside the mention ("familial *melanoma*" -> Melanoma) is more often right than a longer name that matches
more words. The reranker reads the mention and each of its first `candidates` candidates together and
scores the pair with a gradient-boosted tree model (scikit-learn's `HistGradientBoostingClassifier`) over
`FEATURES`:

- the first stage's view: the combined score, its parts (retrieval cosine, classifier probability), the
  candidate's ranks, its gap to the best candidate, the mention's top-2 margin;
- the candidate's training evidence: how many training mentions it has, and what share of the training
  mentions with exactly this query text it annotates;
- the mention against the candidate's names and its training mentions: exact name, character 2-4-gram
  TF-IDF cosine (best name, best training mention), word coverage both ways, a name inside the mention;
- optionally (`hierarchy`), the candidate's place in the vocabulary's hierarchy against the other candidates
  (`HIERARCHY_FEATURES`): whether it is an ancestor or a descendant of the first-ranked one, how many of the
  others are its ancestors or descendants, its depth.

It is trained on the first stage's candidates for the dev split: mentions that neither the encoders nor the
index saw, the candidates the first stage really produces at test time (the training split's candidates are
no stand-in: every training mention is an index entry and the classifier has learned it). The stage that
trains it and decides on dev whether to use it is `ehrbert.rerank`.

The reranker changes the order of the candidates and the single-concept answer, not whether a mention gets
a composite or no-concept answer (those stay the first stage's decisions). A reranked answer's scores are the
reranker's probabilities that each candidate is right.

Saved as a folder of JSON and NumPy arrays, no pickle (nothing runs code at load): `reranker.json` (format,
config, the training evidence, each concept's names and training mentions as rows of the TF-IDF matrix, the
vectorizer's n-grams), `tfidf.npz` (that matrix), `idf.npy` and `trees.npz` (`Trees`: the fitted trees as
arrays). The served model evaluates the trees with NumPy (`Trees.probability`, checked against scikit-learn's
`predict_proba` by the tests): skops, scikit-learn's pickle-free format, imports every scikit-learn estimator
and, through them, torch; loading a reranker took 5.9 s with it, 1.7 s without. The loaded TF-IDF
(`SavedVectorizer`) transforms without scikit-learn too, whose import alone added about 110 MB to a served model.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ehrbert.corpora.records import Mention, Vocabulary
from ehrbert.text import normalize

if TYPE_CHECKING:
    from ehrbert.models.hybrid import Answer, Candidates

FORMAT = "ehrbert-reranker/1"
FEATURES = (
    "score",  # the first stage's combined score
    "cosine",  # retrieval cosine of the candidate's best entry (-1: not among the retrieval's top-k)
    "probability",  # classifier probability (0: not among the classifier's top-k)
    "rank",  # first-stage rank, 0 = best
    "gap",  # best combined score - this one
    "margin",  # the mention's top-2 margin
    "cosine_rank",
    "probability_rank",
    "training_mentions",  # log(1 + training mentions annotated with the candidate)
    "query_share",  # share of the training mentions with this exact query that the candidate annotates; -1: none
    "exact_name",  # the query is one of the candidate's names
    "name_similarity",  # best character 2-4-gram TF-IDF cosine with a name
    "mention_similarity",  # the same with a training mention (0: none)
    "name_coverage",  # best share of a name's words found in the query
    "query_coverage",  # best share of the query's words found in a name
    "name_inside",  # a name occurs in the query as whole words
    "length",  # words in the query
)
# With `hierarchy` (params.yaml rerank.hierarchy), where the vocabulary is a hierarchy (MEDIC's parents): where the
# candidate stands among the others, for conventions such as "a subtype is annotated as its parent".
HIERARCHY_FEATURES = (
    "ancestor_of_first",  # the candidate is an ancestor of the first-ranked one
    "descendant_of_first",  # ... a descendant of it
    "ancestors_listed",  # how many of the other candidates are its ancestors
    "descendants_listed",  # ... its descendants
    "depth",  # how many ancestors it has
)
ABSENT_RANK = 99
TREE_FIELDS = ("feature", "threshold", "left", "right", "is_leaf", "value", "missing_go_to_left")


class Trees:
    """A fitted binary `HistGradientBoostingClassifier` as arrays: every tree's nodes, one after the other (`left`
    and `right` index the whole array), each tree's root, and the baseline log-odds."""

    def __init__(self, baseline: float, roots: np.ndarray, **nodes: np.ndarray):
        self.baseline, self.roots = baseline, roots
        for name in TREE_FIELDS:
            setattr(self, name, nodes[name])

    @classmethod
    def from_sklearn(cls, model) -> Trees:
        if list(model.classes_) != [0, 1]:
            raise ValueError(f"a reranker is a binary model over labels 0 and 1, got classes {list(model.classes_)}")
        roots, parts, start = [], [], 0
        for (tree,) in model._predictors:  # one tree per boosting iteration for a binary model
            nodes = tree.nodes
            if nodes["is_categorical"].any():
                raise ValueError("categorical splits are not supported")
            roots.append(start)
            parts.append(
                {
                    "feature": nodes["feature_idx"].astype(np.int64),
                    "threshold": nodes["num_threshold"].astype(np.float64),
                    "left": nodes["left"].astype(np.int64) + start,
                    "right": nodes["right"].astype(np.int64) + start,
                    "is_leaf": nodes["is_leaf"].astype(bool),
                    "value": nodes["value"].astype(np.float64),
                    "missing_go_to_left": nodes["missing_go_to_left"].astype(bool),
                }
            )
            start += len(nodes)
        arrays = {name: np.concatenate([part[name] for part in parts]) for name in TREE_FIELDS}
        return cls(float(np.ravel(model._baseline_prediction)[0]), np.asarray(roots, dtype=np.int64), **arrays)

    def probability(self, features: np.ndarray, chunk: int = 128) -> np.ndarray:
        """P(label 1) of each row: every tree walked for `chunk` rows at once, one level a step (small blocks stay
        in the CPU's cache: 3x faster than all rows at once over a test set)."""
        if len(features) > chunk:
            return np.concatenate([self.probability(features[i : i + chunk]) for i in range(0, len(features), chunk)])
        rows = np.arange(len(features))[:, None]
        node = np.broadcast_to(self.roots, (len(features), len(self.roots))).copy()
        while True:
            inner = ~self.is_leaf[node]
            if not inner.any():
                break
            value = features[rows, self.feature[node]]
            left = np.where(np.isnan(value), self.missing_go_to_left[node], value <= self.threshold[node])
            node = np.where(inner, np.where(left, self.left[node], self.right[node]), node)
        raw = self.baseline + self.value[node].sum(axis=1)
        return 1.0 / (1.0 + np.exp(-raw))

    def save(self, path: Path) -> None:
        np.savez(
            path, baseline=np.float64(self.baseline), roots=self.roots, **{n: getattr(self, n) for n in TREE_FIELDS}
        )

    @classmethod
    def load(cls, path: Path) -> Trees:
        with np.load(path) as data:  # no pickle: allow_pickle stays False
            return cls(float(data["baseline"]), data["roots"], **{n: data[n] for n in TREE_FIELDS})


@dataclass
class RerankConfig:
    candidates: int = 10  # the first stage's top candidates reranked
    folds: int = 5  # document-grouped folds of dev for the cross-validated choice
    significance: float = 0.05  # used only when its dev gain has a McNemar P below this (`ehrbert.rerank`)
    max_iter: int = 200
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0

    @property
    def depth(self) -> int:
        """How many candidates an answer keeps for the reranker: those it reranks, and at least the 5 every
        answer lists."""
        return max(5, self.candidates)


class Reranker:
    """Features of (mention, candidate) pairs and the tree model that scores them."""

    def __init__(
        self,
        config: RerankConfig,
        texts: list[str],
        names: dict[str, list[int]],
        mentions: dict[str, list[int]],
        mention_counts: dict[str, int],
        query_counts: dict[str, dict[str, int]],
        vectorizer,
        vectors,
        model=None,
        parents: dict[str, list[str]] | None = None,
    ):
        self.config = config
        self.texts = texts  # every name and training query, once; rows of `vectors`
        self.names, self.mentions = names, mentions  # concept -> rows of its names / of its training mentions
        self.mention_counts, self.query_counts = mention_counts, query_counts
        self.vectorizer, self.vectors, self.model = vectorizer, vectors, model
        self._words: dict[str, tuple[list[str], list[set[str]]]] = {}  # `_name_words`
        # concept -> its direct parents; None: no hierarchy features. Ancestors are found as asked (`_ancestors`).
        self.parents = parents
        self._above: dict[str, frozenset[str]] = {}

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURES + HIERARCHY_FEATURES if self.parents is not None else FEATURES

    @classmethod
    def build(
        cls,
        config: RerankConfig,
        vocabulary: Vocabulary,
        mentions: Sequence[Mention],
        queries: Sequence[str],
        hierarchy: bool = False,
    ) -> Reranker:
        """The features' evidence from the vocabulary and the training split (no model yet: `fit`); with
        `hierarchy`, the vocabulary's parents too (each in its canonical ID; none for a flat vocabulary)."""
        row: dict[str, int] = {}
        names: dict[str, list[int]] = defaultdict(list)
        training: dict[str, list[int]] = defaultdict(list)
        for concept in vocabulary.concepts:
            for name in dict.fromkeys(normalize(n) for n in concept.names):
                if name:
                    names[concept.concept_id].append(row.setdefault(name, len(row)))
        counts: Counter = Counter()
        query_counts: dict[str, Counter] = defaultdict(Counter)
        for mention, query in zip(mentions, queries):
            for concept in mention.concept_ids:
                counts[concept] += 1
                query_counts[query][concept] += 1
                position = row.setdefault(query, len(row))
                if position not in training[concept]:
                    training[concept].append(position)
        texts = list(row)
        vectorizer = new_vectorizer()
        vectors = vectorizer.fit_transform(texts).tocsr()
        return cls(
            config,
            texts,
            dict(names),
            dict(training),
            dict(counts),
            {q: dict(c) for q, c in query_counts.items()},
            vectorizer,
            vectors,
            parents=hierarchy_of(vocabulary) if hierarchy else None,
        )

    # --- features ------------------------------------------------------------------------------------

    def features(
        self, queries: Sequence[str], answers: Sequence[Answer], candidates: Candidates
    ) -> tuple[np.ndarray, np.ndarray]:
        """(one row of FEATURES per (mention, candidate) pair, the mention index of each row); the candidates
        are each answer's first `config.candidates`, in first-stage order."""
        rows, owners = [], []
        live = [i for i, answer in enumerate(answers) if answer.ranked[: self.config.candidates]]
        query_vectors = self.vectorizer.transform(list(queries)).tocsr()
        groups = []  # per live mention: the rows of each candidate's names, then of each one's training mentions
        for i in live:
            ranked = answers[i].ranked[: self.config.candidates]
            groups.append([self.names.get(c, []) for c in ranked] + [self.mentions.get(c, []) for c in ranked])
        similarities = self._similarities(query_vectors[live], groups)
        for i, similarity in zip(live, similarities):
            query, answer = queries[i], answers[i]
            ranked = answer.ranked[: self.config.candidates]
            cosine = candidates.retrieval[i]
            probability = candidates.classifier[i] if candidates.classifier else {}
            cosine_rank = {c: r for r, c in enumerate(sorted(cosine, key=lambda c: -cosine[c]))}
            probability_rank = {c: r for r, c in enumerate(sorted(probability, key=lambda c: -probability[c]))}
            scores = answer.scores
            margin = scores[0] - scores[1] if len(scores) > 1 else 1.0
            words = set(query.split())
            padded = f" {query} "
            shares = self.query_counts.get(query, {})
            total = sum(shares.values())
            for r, concept in enumerate(ranked):
                own_names, name_words = self._name_words(concept)
                coverage = [len(words & w) for w in name_words]
                rows.append(
                    [
                        scores[r],
                        cosine.get(concept, -1.0),
                        probability.get(concept, 0.0),
                        r,
                        scores[0] - scores[r],
                        margin,
                        cosine_rank.get(concept, ABSENT_RANK),
                        probability_rank.get(concept, ABSENT_RANK),
                        math.log1p(self.mention_counts.get(concept, 0)),
                        shares.get(concept, 0) / total if total else -1.0,
                        float(query in own_names),
                        similarity[r],
                        similarity[len(ranked) + r],
                        max((n / len(w) for n, w in zip(coverage, name_words)), default=0.0),
                        max(coverage, default=0) / max(1, len(words)),
                        float(any(f" {name} " in padded for name in own_names)),
                        len(words),
                    ]
                )
                owners.append(i)
                if self.parents is not None:
                    rows[-1] += self._placement(concept, ranked)
        width = len(self.feature_names)
        return np.asarray(rows, dtype=np.float64).reshape(-1, width), np.asarray(owners, dtype=np.int64)

    def _ancestors(self, concept: str) -> frozenset[str]:
        found = self._above.get(concept)
        if found is None:
            above, todo = set(), list(self.parents.get(concept, []))
            while todo:
                parent = todo.pop()
                if parent not in above and parent != concept:
                    above.add(parent)
                    todo += self.parents.get(parent, [])
            found = self._above[concept] = frozenset(above)
        return found

    def _placement(self, concept: str, ranked: list[str]) -> list[float]:
        """`HIERARCHY_FEATURES` of one candidate among its mention's `ranked` ones."""
        above = self._ancestors(concept)
        others = [c for c in ranked if c != concept]
        first = ranked[0]
        return [
            float(first != concept and concept in self._ancestors(first)),
            float(first != concept and first in above),
            float(sum(c in above for c in others)),
            float(sum(concept in self._ancestors(c) for c in others)),
            float(len(above)),
        ]

    def _name_words(self, concept: str) -> tuple[list[str], list[set[str]]]:
        """A concept's names and the set of words of each, kept once asked for (the served model asks again for
        the same few thousand concepts)."""
        found = self._words.get(concept)
        if found is None:
            own_names = [self.texts[j] for j in self.names.get(concept, [])]
            found = self._words[concept] = (own_names, [set(name.split()) for name in own_names])
        return found

    def _similarities(self, query_vectors, groups: list[list[list[int]]]) -> list[list[float]]:
        """Per query (a row of the CSR matrix `query_vectors`), the best cosine between its TF-IDF vector and the
        rows of each of its groups (0 for an empty group).

        Computed from the matrices' arrays, without building a sparse product per mention: each row's products
        with the query, in the row's order, summed one after the other in float32, as scipy's product sums them,
        so that every cosine has the same bits as `vectors @ query.T`."""
        vectors = self.vectors
        query = np.zeros(vectors.shape[1], dtype=np.float32)  # one query's vector at a time, dense
        out: list[list[float]] = []
        for i, own in enumerate(groups):
            sizes = np.fromiter((len(group) for group in own), dtype=np.int64, count=len(own))
            rows = np.fromiter((j for group in own for j in group), dtype=np.int64, count=int(sizes.sum()))
            best = np.zeros(len(own), dtype=np.float32)
            if len(rows):
                columns = query_vectors.indices[query_vectors.indptr[i] : query_vectors.indptr[i + 1]]
                query[columns] = query_vectors.data[query_vectors.indptr[i] : query_vectors.indptr[i + 1]]
                begins, lengths = vectors.indptr[rows], vectors.indptr[rows + 1] - vectors.indptr[rows]
                filled = np.arange(lengths.max()) < lengths[:, None]  # each row's entries, padded with zeros
                at = (begins[:, None] + np.arange(lengths.max()))[filled]
                products = np.zeros(filled.shape, dtype=np.float32)
                products[filled] = vectors.data[at] * query[vectors.indices[at]]
                cosines = np.cumsum(products, axis=1, dtype=np.float32)[:, -1]  # in order, as scipy sums
                query[columns] = 0.0
                nonempty = sizes > 0
                best[nonempty] = np.maximum.reduceat(cosines, (np.cumsum(sizes) - sizes)[nonempty])
            out.append(best.tolist())
        return out

    @staticmethod
    def labels(answers: Sequence[Answer], owners: np.ndarray, gold: Sequence[Mention], k: int) -> np.ndarray:
        """1 for a pair whose candidate is one of its mention's gold concepts, else 0."""
        candidates = [c for i in dict.fromkeys(owners.tolist()) for c in answers[i].ranked[:k]]
        return np.asarray([int(c in gold[i].concept_ids) for c, i in zip(candidates, owners)], dtype=np.int64)

    # --- the model -----------------------------------------------------------------------------------

    def new_model(self, seed: int):
        from sklearn.ensemble import HistGradientBoostingClassifier

        c = self.config
        return HistGradientBoostingClassifier(
            max_iter=c.max_iter,
            learning_rate=c.learning_rate,
            max_leaf_nodes=c.max_leaf_nodes,
            min_samples_leaf=c.min_samples_leaf,
            l2_regularization=c.l2_regularization,
            random_state=seed,
        )

    def fit(self, features: np.ndarray, labels: np.ndarray, seed: int) -> Reranker:
        self.model = Trees.from_sklearn(self.new_model(seed).fit(features, labels))
        return self

    def rerank(self, queries: Sequence[str], answers: list[Answer], candidates: Candidates) -> list[Answer]:
        """The answers with their first `config.candidates` candidates in the reranker's order."""
        features, owners = self.features(queries, answers, candidates)
        probabilities = self.model.probability(features) if len(features) else np.zeros(0)
        return reorder(answers, owners, probabilities, self.config.candidates)

    # --- files ---------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        from scipy import sparse

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "config": asdict(self.config),
            "features": list(self.feature_names),
            "ngrams": sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get),
            "texts": self.texts,
            "names": self.names,
            "mentions": self.mentions,
            "mention_counts": self.mention_counts,
            "query_counts": self.query_counts,
        }
        if self.parents is not None:
            data["parents"] = self.parents
        (folder / "reranker.json").write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
        sparse.save_npz(folder / "tfidf.npz", self.vectors)
        np.save(folder / "idf.npy", self.vectorizer.idf_)
        self.model.save(folder / "trees.npz")

    @classmethod
    def load(cls, folder: str | Path) -> Reranker:
        from scipy import sparse

        folder = Path(folder)
        path = folder / "reranker.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format {data.get('format')!r})")
        if data["features"] not in (list(FEATURES), list(FEATURES + HIERARCHY_FEATURES)):
            raise ValueError(f"{path}: its trees read other features ({data['features']}) than this code's")
        if (data["features"] != list(FEATURES)) != ("parents" in data):
            raise ValueError(f"{path}: hierarchy features {'without' if 'parents' not in data else 'and no'} parents")
        vectorizer = SavedVectorizer(data["ngrams"], np.load(folder / "idf.npy"))
        return cls(
            RerankConfig(**data["config"]),
            data["texts"],
            data["names"],
            data["mentions"],
            data["mention_counts"],
            data["query_counts"],
            vectorizer,
            sparse.load_npz(folder / "tfidf.npz").tocsr(),
            Trees.load(folder / "trees.npz"),
            parents=data.get("parents"),
        )


def hierarchy_of(vocabulary: Vocabulary) -> dict[str, list[str]]:
    """Each concept's direct parents in the vocabulary (canonical IDs, those it holds), for concepts that have any."""
    out = {}
    for concept in vocabulary.concepts:
        parents = [vocabulary.canonical(p) for p in concept.parents]
        parents = [p for p in dict.fromkeys(parents) if p in vocabulary and p != concept.concept_id]
        if parents:
            out[concept.concept_id] = parents
    return out


def new_vectorizer(vocabulary: dict[str, int] | None = None):
    """Character 2-4-grams within word boundaries, sublinear TF, IDF; fitted, or with a saved `vocabulary`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, dtype=np.float32, vocabulary=vocabulary
    )


def char_ngrams(text: str, low: int = 2, high: int = 4) -> list[str]:
    """`new_vectorizer`'s analyzer (scikit-learn's ``char_wb``): each lowercased word, padded with a space on each
    side, cut into its n-grams of `low` to `high` characters; a padded word no longer than n gives itself, once."""
    out = []
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) <= n:
                out.append(padded)
                break
            out.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return out


class SavedVectorizer:
    """A saved `new_vectorizer` (its n-grams and IDF) that transforms without scikit-learn, whose import alone
    costs a served model about 110 MB: sublinear TF times IDF, each row scaled to unit length. Its rows equal the
    fitted vectorizer's (the tests check it); training still fits scikit-learn's."""

    def __init__(self, ngrams: list[str], idf: np.ndarray):
        self.vocabulary_ = {ngram: i for i, ngram in enumerate(ngrams)}
        self.idf_ = np.asarray(idf, dtype=np.float32)

    def transform(self, texts: Sequence[str]):
        from scipy import sparse

        indptr, indices, values = [0], [], []
        for text in texts:
            counts = Counter(self.vocabulary_[g] for g in char_ngrams(text) if g in self.vocabulary_)
            columns = sorted(counts)
            weights = 1 + np.log(np.asarray([counts[c] for c in columns], dtype=np.float32))
            weights *= self.idf_[columns]
            # scikit-learn's arithmetic, for the same bits: float32 squares summed in order in float64
            norm = math.sqrt(sum((weights * weights).astype(np.float64).tolist()))
            indices += columns
            values.append((weights.astype(np.float64) / norm).astype(np.float32) if norm > 0 else weights)
            indptr.append(len(indices))
        data = np.concatenate(values) if values else np.zeros(0, np.float32)
        return sparse.csr_matrix((data, indices, indptr), shape=(len(texts), len(self.idf_)))


def reorder(answers: list[Answer], owners: np.ndarray, probabilities: np.ndarray, k: int) -> list[Answer]:
    """Each answer with its first `k` candidates sorted by `probabilities` (rows grouped by `owners`, in
    candidate order); a single-concept answer becomes the new best candidate, a composite or empty one stays."""
    from ehrbert.models.hybrid import Answer

    out = list(answers)
    by_mention: dict[int, list[float]] = defaultdict(list)
    for owner, p in zip(owners.tolist(), probabilities.tolist()):
        by_mention[owner].append(p)
    for i, scores in by_mention.items():
        answer = answers[i]
        order = sorted(range(len(scores)), key=lambda r: -scores[r])  # stable: ties keep the first stage's order
        ranked = [answer.ranked[r] for r in order]
        ids = answer.concept_ids
        if len(ids) == 1 and ids[0] == answer.ranked[0]:
            ids = (ranked[0],)
        out[i] = Answer(ranked, [scores[r] for r in order], ids)
    return out

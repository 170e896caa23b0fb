"""Retrieval over vocabulary names: any concept of the vocabulary can be the answer, seen in training or not.

The paper's classifier can only answer with concepts it was trained on. Retrieval, as BioSyn and SapBERT do
it, embeds every vocabulary name and synonym once and answers with the concept of the nearest name:

1. **Encoder** (`train_encoder`): a BERT encoder, mean-pooled and L2-normalized, trained SapBERT-style with an
   in-batch contrastive (InfoNCE) loss on pairs that should meet: a training mention and a name of its
   concept, and two names of one concept (vocabulary synonyms). Pairs of the same concept in one batch are
   not counted as negatives. Sized for CPU: a few hundred steps. With `hard_negatives`, each anchor also
   meets its nearest texts of other concepts (BioSyn's candidates: every vocabulary name and training
   mention, embedded by the encoder as it was when last mined, `Negatives`).
2. **Index** (`ehrbert.models.name_index.NameIndex`): the `normalize`d vocabulary names and synonyms, plus (if
   asked) the preprocessed training mentions, each pointing to the concept-ID tuples it stands for. Entries are
   embedded once per encoder and saved beside it.
3. **Search** (`search`): cosine similarity of each query to every entry; per query, the best entries.

A saved retriever is one folder: the encoder and tokenizer (`save_pretrained`) and `index.json` +
`index.npy` (entries, their concept tuples, their embeddings).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ehrbert.corpora.records import Mention, Vocabulary
from ehrbert.launch import make_accelerator
from ehrbert.models.encoding import encode_by_length
from ehrbert.models.name_index import NameIndex
from ehrbert.text import normalize

log = logging.getLogger(__name__)


@dataclass
class RetrievalConfig:
    steps: int = 100  # optimizer steps of contrastive training; 0 keeps the encoder as it is (zero-shot)
    batch_size: int = 64  # pairs per step; every other pair of the batch is a negative
    learning_rate: float = 2.0e-5
    temperature: float = 0.05
    synonym_fraction: float = 0.5  # share of each batch that is (name, synonym) pairs; the rest (mention, name)
    max_length: int = 24
    index_training_mentions: bool = True  # training mentions become index entries too (a DNorm-like use)
    embed_batch_size: int = 512
    top_k: int = 20  # entries kept per query
    hard_negatives: int = 0  # per anchor, the nearest texts of other concepts as extra negatives; 0: in-batch only
    refresh_steps: int = 0  # re-embed the texts negatives are mined from every this many steps; 0: mined once


# --- encoder ---------------------------------------------------------------------------------------


def load_encoder(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return AutoModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def mean_pool(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalized mean of the last layer over the real tokens (sentence-transformers' pooling)."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def embed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int = 24,
    batch_size: int = 512,
) -> np.ndarray:
    """(len(texts), hidden) float32 unit vectors (mean pooling); texts batched in order of length, bf16 autocast
    where the device has bf16 in hardware (`encoding.native_bf16`)."""
    return encode_by_length(model, tokenizer, texts, mean_pool, max_length, batch_size).numpy()


# --- training ----------------------------------------------------------------------------------------


def concept_names(vocabulary: Vocabulary) -> dict[str, list[str]]:
    """{concept ID: its distinct normalized names}."""
    return {
        c.concept_id: list(dict.fromkeys(normalize(n) for n in c.names if normalize(n))) for c in vocabulary.concepts
    }


def mention_pairs(mentions: Iterable[Mention], queries: Iterable[str], known: Iterable[str]) -> list[tuple[str, str]]:
    """Distinct (query, concept ID) pairs of training mentions, one per concept of a composite mention."""
    known = set(known)
    return list(dict.fromkeys((q, cid) for m, q in zip(mentions, queries) for cid in m.concept_ids if cid in known))


def train_encoder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    names: dict[str, list[str]],
    pairs: Sequence[tuple[str, str]],
    config: RetrievalConfig,
    seed: int,
    accelerator: Accelerator | None = None,
) -> list[dict]:
    """Contrastive training in place (see the module docstring); one record per 25 steps and the last.

    On N processes (`accelerator`, from `accelerate launch`) every process draws the same batch, encodes its
    share of the pairs, and gathers the others' vectors with their gradients, so that each pair still meets
    every other pair of the whole batch as a negative: the loss, and after DDP's averaging the step, are those
    of one process. `batch_size` is pairs per step over all processes. Without `accelerator`: one process.
    """
    if config.steps <= 0:
        return []
    accelerator = accelerator or make_accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    rng = random.Random(seed)
    torch.manual_seed(seed)
    synonym_concepts = [c for c, ns in names.items() if len(ns) > 1]
    n_synonyms = round(config.batch_size * config.synonym_fraction) if synonym_concepts else 0
    n_mentions = config.batch_size - n_synonyms if pairs else 0
    if n_mentions + n_synonyms < 2:
        raise ValueError("contrastive training needs at least two pairs a batch: no training mentions or synonyms")
    if getattr(model, "pooler", None) is not None:
        # mean pooling never reads BERT's pooler: it gets no gradient, so AdamW would leave it alone anyway; frozen,
        # it also does not stall DDP, which waits for a gradient of every trainable weight
        model.pooler.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    trained, optimizer = accelerator.prepare(model, optimizer)
    history, started, total = [], time.perf_counter(), 0.0

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt").to(
            accelerator.device
        )

    negatives = Negatives(names, pairs, config) if config.hard_negatives > 0 else None
    trained.train()
    for step in range(1, config.steps + 1):
        if negatives is not None and (step == 1 or config.refresh_steps and (step - 1) % config.refresh_steps == 0):
            negatives.refresh(model, tokenizer)
        batch = [rng.choice(pairs) for _ in range(n_mentions)]
        for cid in rng.sample(synonym_concepts, min(n_synonyms, len(synonym_concepts))):
            batch.append((rng.choice(names[cid]), cid))
        anchors = [a for a, _ in batch]
        positives = [rng.choice([n for n in names[c] if n != a] or names[c]) for a, c in batch]
        concepts = [c for _, c in batch]
        hard = negatives.mine(anchors, concepts) if negatives is not None else []
        if world > 1 and negatives is not None:  # one list for every process, whatever each one's table rounds to
            hard = broadcast_object_list([hard])[0]
        share, hard_share = shard(len(batch), world, rank), shard(len(hard), world, rank)
        texts = [anchors[i] for i in share] + [positives[i] for i in share] + [hard[i] for i in hard_share]
        with accelerator.autocast():  # the encoder under the launch's mixed precision, the loss in fp32
            vectors = mean_pool(trained, encode(texts)).float()  # one forward a step: anchors, positives, negatives
        left, right, extra = vectors[: len(share)], vectors[len(share) : 2 * len(share)], vectors[2 * len(share) :]
        if world > 1:
            left, right = gather_with_grad(left, len(batch), world), gather_with_grad(right, len(batch), world)
            extra = gather_with_grad(extra, len(hard), world) if hard else extra
        similarity = torch.cat([left @ right.T, left @ extra.T], dim=1) / config.temperature
        same = torch.tensor(
            [[a == b for b in concepts] + [a in negatives.concepts_of(t) for t in hard] for a in concepts],
            device=similarity.device,
        )
        same.fill_diagonal_(False)  # the first len(batch) columns: each anchor's own positive
        loss = torch.nn.functional.cross_entropy(
            similarity.masked_fill(same, -1e4), torch.arange(len(batch), device=similarity.device)
        )
        # every process holds the whole loss: all_gather's backward sums the processes' gradients of their own
        # rows (world x each), and DDP's average divides that out again: the step is the one-process step
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        total += loss.item()
        if step % 25 == 0 or step == config.steps:
            history.append(
                {
                    "step": step,
                    "loss": total / (step - (history[-1]["step"] if history else 0)),
                    "seconds": time.perf_counter() - started,
                }
            )
            log.info("retrieval step %d: loss %.4f (%.0f s)", step, history[-1]["loss"], history[-1]["seconds"])
            total = 0.0
    model.eval()
    return history


class Negatives:
    """Hard negatives: per anchor, the texts of other concepts nearest to it.

    Every vocabulary name and training mention is embedded once (`refresh`, about a minute for MEDIC's 74k names
    on 2 CPU cores); an anchor's neighbours are then one product with that table, so a step costs no extra
    encoding beyond the negatives themselves. The table is as stale as the last refresh, as BioSyn's per-epoch
    candidates are.
    """

    def __init__(self, names: dict[str, list[str]], pairs: Sequence[tuple[str, str]], config: RetrievalConfig):
        concepts: dict[str, set[str]] = {}
        for cid, texts in names.items():
            for text in texts:
                concepts.setdefault(text, set()).add(cid)
        for query, cid in pairs:
            concepts.setdefault(query, set()).add(cid)
        self.texts = list(concepts)
        self.concepts = [concepts[t] for t in self.texts]
        self.position = {t: i for i, t in enumerate(self.texts)}
        self.config = config
        self.vectors: torch.Tensor | None = None

    def refresh(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        started = time.perf_counter()
        self.vectors = torch.from_numpy(
            embed(model, tokenizer, self.texts, self.config.max_length, self.config.embed_batch_size)
        )
        log.info("hard negatives: embedded %d texts in %.0f s", len(self.texts), time.perf_counter() - started)

    def mine(self, anchors: Sequence[str], concepts: Sequence[str]) -> list[str]:
        """The distinct texts that are, for some anchor, among its `hard_negatives` nearest texts of which its
        concept is not one, in order of first appearance."""
        wanted = self.config.hard_negatives
        rows = self.vectors[[self.position[a] for a in anchors]]
        nearest = (rows @ self.vectors.T).topk(min(len(self.texts), wanted + 32), dim=-1).indices.tolist()
        found: dict[str, None] = {}
        for anchor, concept, row in zip(anchors, concepts, nearest):
            others = [self.texts[j] for j in row if concept not in self.concepts[j] and self.texts[j] != anchor]
            found.update(dict.fromkeys(others[:wanted]))
        return list(found)

    def concepts_of(self, text: str) -> set[str]:
        return self.concepts[self.position[text]]


def shard(n: int, world: int, rank: int) -> list[int]:
    """The batch positions process `rank` of `world` encodes: a contiguous block, the first n % world blocks one
    longer."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return list(range(start, start + size + (rank < extra)))


def gather_with_grad(local: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """(n, d): every process's rows of the batch in order, the gradient flowing back to each process's own rows."""
    import torch.distributed.nn.functional as distributed

    width = -(-n // world)  # all_gather needs equal sizes: pad each block to the longest
    padded = torch.nn.functional.pad(local, (0, 0, 0, width - local.shape[0]))
    blocks = distributed.all_gather(padded)
    return torch.cat([block[: len(shard(n, world, rank))] for rank, block in enumerate(blocks)])


# --- search ------------------------------------------------------------------------------------------


def search(
    model, tokenizer, index: NameIndex, queries: Sequence[str], config: RetrievalConfig
) -> list[list[tuple[int, float]]]:
    """Per query, the `top_k` best (entry position, cosine) pairs, best first; each distinct query once.

    A query that is itself an entry meets it at cosine 1.0 exactly (the same text, whatever the rounding
    of batched half-precision encoding), so an exact vocabulary name always finds its concept.
    """
    unique = list(dict.fromkeys(queries))
    vectors = embed(model, tokenizer, unique, config.max_length, config.embed_batch_size)
    entries = torch.from_numpy(index.embeddings)
    k = min(config.top_k, len(index))
    found: dict[str, list[tuple[int, float]]] = {}
    for start in range(0, len(unique), 1024):
        chunk = unique[start : start + 1024]
        scores = torch.from_numpy(vectors[start : start + 1024]) @ entries.T
        for row, query in enumerate(chunk):
            if query in index.position:
                scores[row, index.position[query]] = 1.0
        top = scores.topk(k, dim=-1)
        for query, values, positions in zip(chunk, top.values.tolist(), top.indices.tolist()):
            found[query] = list(zip(positions, values))
    return [found[q] for q in queries]


def save_retriever(model, tokenizer, index: NameIndex, folder: str | Path) -> None:
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    index.save(folder)


def load_retriever(folder: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, NameIndex]:
    model, tokenizer = load_encoder(folder)
    return model.eval(), tokenizer, NameIndex.load(folder)

"""WordPiece sentence-pair examples for BERT pretraining (MLM + NSP), built once per corpus, reused by every run.

Pairs are made as in `create_instances_from_document` of Google BERT's create_pretraining_data.py: walk a
document's sentences, gather them up to a target length (`max_seq_length` - 3; a random shorter one for
`short_seq_prob` of the chunks), cut the chunk at a random sentence into A and B, and with `nsp_probability`
replace B by sentences from a random other document (the unused sentences are put back for the next
chunk). One change: BERT gives a chunk of one sentence a random B every time, which here pushed the share of
random next sentences to 54-61 %; we cut such a sentence at a random word piece instead when its B should be
the true continuation, so the share is `nsp_probability` (50 %) in expectation. Pairs too long are trimmed
one word piece at a time from a random end of the longer segment.

Masking is not stored for training corpora: DataCollatorForLanguageModeling masks 15 % anew each time an
example is seen (RoBERTa-style dynamic masking rather than BERT's 10 static copies). Held-out corpora are
masked once here, with a fixed seed, so that every model is scored on the very same masked tokens.

`<name>.npz` holds input_ids (N, L) padded with [PAD], token_type_ids, special_tokens_mask, lengths (N,) and
next_sentence_label (N,) (1: B is random, the transformers convention); held-out files also hold
masked_input_ids and labels (N, L) (-100 where nothing is predicted), and `meta` names the tokenizer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from ehrbert.corpora.notes import read_sentence_documents
from ehrbert.hub import resolve_model
from ehrbert.stage import read_params, setup_logging, write_json

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int], bool]  # (segment A, segment B, B is a random next sentence)


@dataclass
class PairConfig:
    max_seq_length: int = 128  # word pieces per example, [CLS] and both [SEP] included; paper: 128
    short_seq_prob: float = 0.1  # share of chunks with a random shorter target length; BERT: 0.1
    nsp_probability: float = 0.5  # share of random next sentences; paper: 50 %
    mlm_probability: float = 0.15  # share of word pieces masked in held-out sets; paper: 15 %
    seed: int = 13


def vocabulary_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identifies a WordPiece vocabulary: corpora and models must agree on it."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def encode_documents(documents: list[list[str]], tokenizer: PreTrainedTokenizerBase) -> list[list[list[int]]]:
    """Documents of sentences -> documents of word-piece ID lists; empty sentences and documents dropped."""
    sentences = [sentence for document in documents for sentence in document]
    ids = tokenizer(sentences, add_special_tokens=False, verbose=False)["input_ids"] if sentences else []
    encoded, start = [], 0
    for document in documents:
        pieces = [piece for piece in ids[start : start + len(document)] if piece]
        start += len(document)
        if pieces:
            encoded.append(pieces)
    return encoded


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    """Trim the longer segment, from a random end, until len(a) + len(b) <= max_tokens (in place)."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def document_pairs(documents: list[list[list[int]]], index: int, config: PairConfig, rng: random.Random) -> list[Pair]:
    """The pairs of document `index` (see the module docstring)."""
    document = documents[index]
    max_tokens = config.max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target = rng.randint(2, max_tokens) if rng.random() < config.short_seq_prob else max_tokens
    pairs: list[Pair] = []
    chunk: list[list[int]] = []
    length, i = 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            random_next = len(documents) > 1 and rng.random() < config.nsp_probability
            if len(chunk) == 1 and not random_next and len(chunk[0]) >= 2:
                cut = rng.randint(1, len(chunk[0]) - 1)  # one long sentence: its true continuation is its own tail
                chunk = [chunk[0][:cut], chunk[0][cut:]]
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for segment in chunk[:a_end] for t in segment]
            if random_next:
                other = index
                for _ in range(10):  # as BERT: a few tries to find another document
                    other = rng.randint(0, len(documents) - 1)
                    if other != index:
                        break
                b: list[int] = []
                for segment in documents[other][rng.randint(0, len(documents[other]) - 1) :]:
                    b.extend(segment)
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end  # the sentences after A were not used: start the next chunk with them
            else:
                b = [t for segment in chunk[a_end:] for t in segment]
            truncate_pair(a, b, max_tokens, rng)
            if a and b:
                pairs.append((a, b, random_next))
            chunk, length = [], 0
        i += 1
    return pairs


def pair_examples(documents: list[list[list[int]]], config: PairConfig) -> list[Pair]:
    rng = random.Random(config.seed)
    return [pair for index in range(len(documents)) for pair in document_pairs(documents, index, config, rng)]


def to_arrays(pairs: list[Pair], tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] B [SEP], padded to max_seq_length."""
    n = len(pairs)
    arrays = {
        "input_ids": np.full((n, max_seq_length), tokenizer.pad_token_id, dtype=np.int32),
        "token_type_ids": np.zeros((n, max_seq_length), dtype=np.int8),
        "special_tokens_mask": np.ones((n, max_seq_length), dtype=np.int8),
        "lengths": np.zeros(n, dtype=np.int32),
        "next_sentence_label": np.zeros(n, dtype=np.int8),
    }
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for row, (a, b, random_next) in enumerate(pairs):
        ids = [cls, *a, sep, *b, sep]
        arrays["input_ids"][row, : len(ids)] = ids
        arrays["token_type_ids"][row, len(a) + 2 : len(ids)] = 1
        arrays["special_tokens_mask"][row, 1 : len(a) + 1] = 0
        arrays["special_tokens_mask"][row, len(a) + 2 : len(ids) - 1] = 0
        arrays["lengths"][row] = len(ids)
        arrays["next_sentence_label"][row] = int(random_next)
    return arrays


def mask_once(
    arrays: dict[str, np.ndarray], tokenizer: PreTrainedTokenizerBase, mlm_probability: float, seed: int
) -> dict[str, np.ndarray]:
    """The arrays plus one fixed masking (80 % [MASK], 10 % random, 10 % kept) by the training collator's rule."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    features = [
        {"input_ids": ids, "special_tokens_mask": special}
        for ids, special in zip(arrays["input_ids"].tolist(), arrays["special_tokens_mask"].tolist())
    ]
    batch = collator(features) if features else {"input_ids": torch.zeros(0, 0), "labels": torch.zeros(0, 0)}
    return {
        **arrays,
        "masked_input_ids": batch["input_ids"].numpy().astype(np.int32),
        "labels": batch["labels"].numpy().astype(np.int32),
    }


def build(
    documents: list[list[str]], tokenizer: PreTrainedTokenizerBase, config: PairConfig, held_out: bool = False
) -> dict[str, np.ndarray]:
    """The example arrays of one corpus (documents of sentences, as `read_sentence_documents` gives them)."""
    arrays = to_arrays(pair_examples(encode_documents(documents, tokenizer), config), tokenizer, config.max_seq_length)
    return mask_once(arrays, tokenizer, config.mlm_probability, config.seed) if held_out else arrays


def save_examples(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:  # an open handle keeps numpy from appending .npz to the name
        np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)


def load_examples(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files if key != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta


def statistics(name: str, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    n = len(arrays["lengths"])
    stats = {
        f"{name}_examples": n,
        f"{name}_word_pieces": int(arrays["lengths"].sum()),
        f"{name}_random_next_fraction": round(float(arrays["next_sentence_label"].mean()), 4) if n else 0.0,
    }
    if "labels" in arrays:
        stats[f"{name}_masked_word_pieces"] = int((arrays["labels"] != -100).sum())
    return stats


class PairDataset(torch.utils.data.Dataset):
    """Training examples, unpadded, for DataCollatorForLanguageModeling (which pads and masks them)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["lengths"])

    def __getitem__(self, i: int) -> dict:
        n = int(self.arrays["lengths"][i])
        return {
            "input_ids": self.arrays["input_ids"][i, :n].tolist(),
            "token_type_ids": self.arrays["token_type_ids"][i, :n].tolist(),
            "special_tokens_mask": self.arrays["special_tokens_mask"][i, :n].tolist(),
            "next_sentence_label": int(self.arrays["next_sentence_label"][i]),
        }


class MaskedPairDataset(torch.utils.data.Dataset):
    """Held-out examples with their fixed masks, padded to max_seq_length (default collation works)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        if "labels" not in arrays:
            raise ValueError("not a held-out set: no fixed masks (build it with held_out=True)")
        self.arrays = arrays
        self.positions = np.arange(arrays["input_ids"].shape[1])

    def __len__(self) -> int:
        return len(self.arrays["lengths"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.from_numpy(self.arrays["masked_input_ids"][i]).long(),
            "token_type_ids": torch.from_numpy(self.arrays["token_type_ids"][i]).long(),
            "attention_mask": torch.from_numpy(self.positions < self.arrays["lengths"][i]).long(),
            "labels": torch.from_numpy(self.arrays["labels"][i]).long(),
            "next_sentence_label": torch.tensor(int(self.arrays["next_sentence_label"][i])),
        }


def _named_path(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer", required=True, help="model whose WordPiece vocabulary to use (see ehrbert.checkpoints)"
    )
    parser.add_argument(
        "--corpus", type=_named_path, action="append", default=[], help="NAME=PATH of a training corpus (repeat)"
    )
    parser.add_argument(
        "--heldout", type=_named_path, action="append", default=[], help="NAME=PATH of a held-out corpus (repeat)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-dir", type=Path, required=True, help="NAME.npz for each corpus")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()

    section = read_params(args.params)["pretrain"]
    config = PairConfig(**{key: section[key] for key in PairConfig.__dataclass_fields__})
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.tokenizer))
    meta = {
        "tokenizer": args.tokenizer,
        "vocabulary": vocabulary_digest(tokenizer),
        "vocab_size": len(tokenizer),
        "config": vars(config),
    }
    metrics: dict[str, float] = {}
    for (name, path), held_out in [(item, False) for item in args.corpus] + [(item, True) for item in args.heldout]:
        arrays = build(read_sentence_documents(path), tokenizer, config, held_out=held_out)
        save_examples(args.out_dir / f"{name}.npz", arrays, {**meta, "source": str(path), "held_out": held_out})
        metrics.update(statistics(name, arrays))
        log.info(
            "%s: %d examples, %d word pieces, %.1f %% random next",
            name,
            metrics[f"{name}_examples"],
            metrics[f"{name}_word_pieces"],
            100 * metrics[f"{name}_random_next_fraction"],
        )
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()

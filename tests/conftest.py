"""Shared test fixtures.

Reader tests run on the real staged files: `data/` once `make data` has run, else the read-only
mirror named by EHRBERT_DATA_MIRROR (default `../shared/data`, where this project's CI finds it).
"""

import os
from pathlib import Path

import mlflow
import pytest

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


def write_tiny_bert(folder: Path, num_labels: int | None = None, words: tuple[str, ...] = ()) -> Path:
    """A randomly initialized BERT of a few hundred KB with a character-level WordPiece vocabulary.

    Every lowercase word tokenizes (into single characters at worst), so real mentions work as inputs.
    """
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    import string

    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *words]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), words=("disease", "cancer", "syndrome", "deficiency"))


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store and registry in tmp_path, undone afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)

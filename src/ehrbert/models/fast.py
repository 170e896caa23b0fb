"""The served normalizer's fast form: its two encoders in ONNX Runtime, its name index as an HNSW graph.

In torch, a hybrid normalizer spends about 30 ms on one mention on 2 CPU cores, most of it fixed cost: two BERT
forwards through transformers' Python modules, and a product of the query with every index vector. The fast form
answers through the same decisions (`HybridNormalizer.candidates` and `decide`) and does that work elsewhere:

- **encoders**: the retrieval encoder (mean-pooled, unit length) and the classifier (softmax and its top k inside
  the graph) exported to ONNX and run by ONNX Runtime; optionally their dynamic int8 quantization (`weights`);
- **index**: the name vectors in a faiss HNSW graph (inner product), memory-mapped, or the exact product
  (`index: exact`);
- **tokenizers**: the `tokenizers` library on each encoder's `tokenizer.json`, as transformers' fast tokenizer.

`build` makes the form from a saved hybrid folder (it needs torch; `ehrbert.registry` runs it when it registers
a version). `FastNormalizer.load` reads it without importing torch or transformers, so a served model starts in
seconds and holds no torch weights. `FastOptions` are the run-time choices; `make bench` measures each of them
with its acc@1 (`reports/benchmark.md`).
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ehrbert.models.hybrid import HybridNormalizer, load_detector, read_settings
from ehrbert.models.name_index import NameIndex
from ehrbert.stage import folder_written_whole

FORMAT = "ehrbert-fast/1"
MANIFEST = "fast.json"
GRAPH_FILE = "names.hnsw"
WEIGHTS = ("fp32", "int8-classifier", "int8")  # int8: both encoders; int8-classifier: the classifier alone
INDEXES = ("hnsw", "exact")
BATCH_SIZE = 64  # texts per encoder call, in order of length (64 was faster than 256 on 2 cores)


@dataclass(frozen=True)
class FastOptions:
    """How the fast form runs; each choice is measured by `make bench`."""

    weights: str = "fp32"  # int8 (both encoders) or int8-classifier: matrix products in int8 (dynamic quantization)
    index: str = "hnsw"  # "exact": the query against every name vector, as in torch
    threads: int = 0  # ONNX Runtime threads a process (half to each encoder, at least one); 0: every core
    ef_search: int = 128  # HNSW candidates examined a query: recall against time

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights {self.weights!r}: expected one of {', '.join(WEIGHTS)}")
        if self.index not in INDEXES:
            raise ValueError(f"index {self.index!r}: expected one of {', '.join(INDEXES)}")
        if self.threads < 0 or self.ef_search < 1:
            raise ValueError(f"threads must be >= 0 and ef_search >= 1, got {self.threads}, {self.ef_search}")


# --- building (torch) ------------------------------------------------------------------------------------------


def build(model_dir: str | Path, out: str | Path, hnsw_m: int = 32, ef_construction: int = 200) -> None:
    """The fast form of the hybrid normalizer saved in `model_dir`, written whole to the folder `out` (replaced if
    it exists): each encoder as ONNX in fp32 and int8, the name vectors as an HNSW graph, and `fast.json`."""
    model_dir = Path(model_dir)
    data, _, _ = read_settings(model_dir)
    with folder_written_whole(out) as partial:
        _build(model_dir, data, partial, hnsw_m, ef_construction)


def _build(model_dir: Path, data: dict, out: Path, hnsw_m: int, ef_construction: int) -> None:
    import faiss
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ehrbert.models import classifier as classifier_model
    from ehrbert.models import retrieval

    encoder, tokenizer, index = retrieval.load_retriever(model_dir / "retriever")

    class MeanPooled(torch.nn.Module):  # the retrieval query vector, as `retrieval.mean_pool`
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return retrieval.mean_pool(self.encoder, {"input_ids": input_ids, "attention_mask": attention_mask})

    _export(MeanPooled(), tokenizer, out / "retriever.onnx", ["vectors"])
    has_classifier = (model_dir / "classifier").is_dir()
    if has_classifier:
        classifier, classifier_tokenizer = classifier_model.load(model_dir / "classifier")
        k = min(data["classifier_top_k"], classifier.config.num_labels)

        class TopConcepts(torch.nn.Module):  # the classifier's k best labels and probabilities, as its `predict`
            def __init__(self):
                super().__init__()
                self.classifier = classifier

            def forward(self, input_ids, attention_mask):
                logits = self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits
                return logits.float().softmax(-1).topk(k, dim=-1)

        _export(TopConcepts(), classifier_tokenizer, out / "classifier.onnx", ["probabilities", "labels"])
    for name in ("retriever", "classifier")[: 1 + has_classifier]:
        quantize_dynamic(out / f"{name}.onnx", out / f"{name}-int8.onnx", weight_type=QuantType.QInt8)
    graph = faiss.IndexHNSWFlat(index.embeddings.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = ef_construction
    graph.add(np.ascontiguousarray(index.embeddings, dtype=np.float32))
    faiss.write_index(graph, str(out / GRAPH_FILE))
    manifest = {
        "format": FORMAT,
        "classifier": has_classifier,
        "hnsw": {"m": hnsw_m, "ef_construction": ef_construction, "entries": len(index)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _export(module, tokenizer, path: Path, outputs: list[str]) -> None:
    """`module` (input_ids, attention_mask) -> `outputs` as ONNX, batch and length left free."""
    import torch

    example = tokenizer(["a first example", "a second"], padding=True, return_tensors="pt")
    free = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    # the tracer warns of branches it fixes for the example's shapes: each holds for every batch and length here (a
    # mask is always given, as long as the input), which the fast form's tests check against torch
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter: dynamo needs onnxscript
        torch.onnx.export(
            module.eval(),
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=list(free),
            output_names=outputs,
            dynamic_axes={**free, **{name: {0: "batch"} for name in outputs}},
            opset_version=17,
            dynamo=False,
        )


# --- serving (no torch) ----------------------------------------------------------------------------------------


class OnnxEncoder:
    """One exported encoder and its tokenizer: texts in, the graph's outputs (one row a text) out."""

    def __init__(self, model: Path, tokenizer_dir: Path, max_length: int, threads: int):
        import onnxruntime
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()  # `run` pads each batch to its longest text
        self.pad_id = self.tokenizer.token_to_id(_pad_token(tokenizer_dir))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # a worker that spins between calls takes a core from the HTTP threads of the same server
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def run(self, texts: list[str]) -> list[np.ndarray]:
        """Each graph output for every text, in the order of `texts`; texts are batched in order of length, so a
        batch pads only to its own longest text."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        outputs: list[np.ndarray] | None = None
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start : start + BATCH_SIZE]
            results = self.session.run(None, self.tokens([texts[i] for i in chunk]))
            if outputs is None:
                outputs = [np.empty((len(texts), *r.shape[1:]), dtype=r.dtype) for r in results]
            for output, result in zip(outputs, results):
                output[chunk] = result
        return outputs or []

    def tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids and attention_mask of `texts`, padded to the longest, as transformers' tokenizer gives them.
        One text at a time: `encode_batch` wakes a thread pool, which costs more than it saves on a small batch and
        takes cores from the encoders under load."""
        encodings = [self.tokenizer.encode(text) for text in texts]
        ids = np.full((len(texts), max(len(e.ids) for e in encodings)), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _pad_token(tokenizer_dir: Path) -> str:
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    pad = config.get("pad_token", "[PAD]")
    return pad["content"] if isinstance(pad, dict) else pad


class FastNormalizer(HybridNormalizer):
    """A saved hybrid normalizer answering through its fast form (see the module docstring)."""

    @classmethod
    def load_fast(
        cls, folder: str | Path, fast_folder: str | Path, variant: str | None = None, options: FastOptions | None = None
    ) -> FastNormalizer:  # not `load`: that one builds the torch form
        """The normalizer saved in `folder` (a hybrid folder), run from `fast_folder` (`build`'s output)."""
        folder, fast_folder = Path(folder), Path(fast_folder)
        options = options or FastOptions()
        manifest = json.loads((fast_folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{fast_folder / MANIFEST}: not a {FORMAT} file (format {manifest.get('format')!r})")
        data, variants, variant = read_settings(folder, variant)
        index = NameIndex.load(folder / "retriever", vectors=options.index == "exact")
        model = cls(
            None,
            None,
            index,
            None,
            classifier_max_length=data["classifier_max_length"],
            classifier_top_k=data["classifier_top_k"],
            settings=variants[variant],
            detector=load_detector(folder),
            variants=variants,
        )
        model.load_reranker(folder, data, variant)
        model.top_k = data["retrieval"]["top_k"]
        threads = options.threads or os.cpu_count() or 1
        # with a classifier, the two encoders run side by side (`encode`), each on half the threads
        threads = max(1, threads // 2) if manifest["classifier"] else threads
        suffix = "-int8" if options.weights == "int8" else ""
        model.retriever = OnnxEncoder(
            fast_folder / f"retriever{suffix}.onnx", folder / "retriever", data["retrieval"]["max_length"], threads
        )
        suffix = "-int8" if options.weights.startswith("int8") else ""
        model.scorer = model.labels = None
        if manifest["classifier"]:
            model.scorer = OnnxEncoder(
                fast_folder / f"classifier{suffix}.onnx", folder / "classifier", model.classifier_max_length, threads
            )
            id2label = json.loads((folder / "classifier" / "config.json").read_text())["id2label"]
            model.labels = [id2label[str(i)] for i in range(len(id2label))]
            model.side = ThreadPoolExecutor(1, thread_name_prefix="ehrbert-classifier")
        model.graph = None
        if options.index == "hnsw":
            import faiss

            faiss.omp_set_num_threads(threads)
            # memory-mapped in place: file pages, loaded as touched and shared by every worker on the machine
            model.graph = faiss.read_index(str(fast_folder / GRAPH_FILE), faiss.IO_FLAG_MMAP_IFC)
            model.graph.hnsw.efSearch = options.ef_search
        return model

    def search(self, texts: list[str]) -> list[list[tuple[int, float]]]:
        """As `HybridNormalizer.search`: per text, the best (index position, cosine) pairs, best first; a text
        that is itself an entry meets it at cosine 1.0."""
        unique = list(dict.fromkeys(texts))
        (vectors,) = self.retriever.run(unique)
        k = min(self.top_k, len(self.index))
        if self.graph is not None:
            scores, positions = self.graph.search(vectors, k)
        else:
            product = vectors @ self.index.embeddings.T
            positions = np.argpartition(-product, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(product, positions, axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")
            positions, scores = np.take_along_axis(positions, order, 1), np.take_along_axis(scores, order, 1)
        found = {}
        for text, row_scores, row_positions in zip(unique, scores.tolist(), positions.tolist()):
            hits = [(p, s) for p, s in zip(row_positions, row_scores) if p >= 0]  # faiss pads with -1
            own = self.index.position.get(text)
            if own is not None:
                hits = [(own, 1.0), *(hit for hit in hits if hit[0] != own)][:k]
            found[text] = hits
        return [found[t] for t in texts]

    def encode(self, texts: list[str], queries: list[str]) -> tuple[list, list[dict[str, float]]]:
        """`search` and `classify` side by side: ONNX Runtime leaves the GIL while it runs, so each encoder has
        its share of the cores, and one mention waits for the slower encoder, not for both."""
        if self.scorer is None:
            return self.search(texts), []
        classified = self.side.submit(self.classify, queries)
        return self.search(texts), classified.result()

    def classify(self, queries: list[str]) -> list[dict[str, float]]:
        if self.scorer is None:
            return []
        unique = list(dict.fromkeys(queries))
        probabilities, labels = self.scorer.run(unique)
        answers = {
            query: {self.labels[j]: p for j, p in zip(row_labels, row_probabilities)}
            for query, row_probabilities, row_labels in zip(unique, probabilities.tolist(), labels.tolist())
        }
        return [answers[q] for q in queries]

"""The paper's case study: what each fine-tuned normalizer attends to in a mention, and what it answers.

For a few test mentions (params `case_study.mentions`: an abbreviation, a composite mention, a rare
concept, a paraphrase from each corpus; plus, per corpus, mentions where two models disagree, picked
from the fine-tuning predictions), every model's normalizer is run on the mention's query with its
attention weights returned. The classifier reads only the [CLS] vector, so the row of [CLS] in each
layer's dot-product attention, softmax(q_CLS . k_j / sqrt(d)) over the word pieces j, says which
pieces that vector draws from. One PNG per mention, one panel per model:

- the top layer's [CLS] row averaged over heads (the paper's view), numbers on the cells;
- the same for every layer, bottom layer at the bottom (how the focus builds up);
- the model's top-k concepts with their probabilities, gold ones marked.

Each model is the fine-tuning stage's output folder of that model, corpus and the seed chosen in params
(`<model>-<corpus>-s<seed>/model`, a DVC output), and its run record names the MLflow run it came from.
transformers 5 computes attention with SDPA by default, and SDPA returns no weights (`attentions`
comes back empty), so the models are loaded with ``attn_implementation="eager"``: the same arithmetic,
written out. The weights also go to ``attention.csv`` and the top-k to ``predictions.csv``.

The figures and CSVs show the mentions' text. Those of a corpus whose text may not be redistributed
(`restricted_corpora`: CADEC is research-only) go to a separate folder, which dvc.yaml keeps in DVC's
cache and out of git.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ehrbert.models import classifier
from ehrbert.models.classifier import MODEL_DIR, TRAINING_FILE
from ehrbert.models.encoding import encode
from ehrbert.predictions import PREDICTION_FILE, format_spans, read_predictions, run_folder, top1_correct
from ehrbert.stage import config_from, read_params, setup_logging
from ehrbert.tasks import Task, add_data_arguments, load_task
from ehrbert.tracking import read_run_record, start_run

log = logging.getLogger(__name__)

ATTENTION_COLUMNS = ["case", "corpus", "doc_id", "spans", "model", "layer", "position", "piece", "weight"]
TOP_K_COLUMNS = [
    "case",
    "corpus",
    "doc_id",
    "spans",
    "why",
    "query",
    "gold",
    "model",
    "rank",
    "concept_id",
    "name",
    "probability",
    "correct",
]


@dataclass
class CaseStudyConfig:
    # what is shown: params.yaml names it, there is no default
    models: list[str]  # panels, top to bottom
    # {corpus, doc_id, spans: "start end" pairs joined by ";", why, and optionally text, checked against the corpus}
    mentions: list[dict]
    compare: list[str]  # disagreements between these two models
    seed: int = 1  # each model's fine-tuning run with this seed is shown
    top_k: int = 3
    disagreements: int = 1  # per corpus and direction (one model right, the other wrong); 0: none
    restricted_corpora: list[str] = field(default_factory=lambda: ["cadec"])  # text must stay out of git


@dataclass
class Case:
    """One test mention of the case study; text, query and gold are filled from the task."""

    corpus: str
    doc_id: str
    spans: str  # as the predictions TSV writes them: "start end;start end"
    why: str = ""
    text: str = ""
    query: str = ""
    gold: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        """File name stem: attention_<corpus>_<doc>_<start>-<end>."""
        offsets = [int(x) for x in re.split(r"[ ;]", self.spans)]
        return re.sub(r"[^\w.-]", "_", f"attention_{self.corpus}_{self.doc_id}_{offsets[0]}-{offsets[-1]}")


@dataclass
class Panel:
    """One model's view of one case."""

    model: str
    pieces: list[str]  # word pieces, [CLS] and [SEP] included
    attention: np.ndarray  # (layers, heads, pieces): the [CLS] row of each layer's attention
    ranked: list[str]  # top-k concept IDs, best first
    scores: list[float]  # their probabilities

    @property
    def per_layer(self) -> np.ndarray:
        return self.attention.mean(axis=1)  # (layers, pieces), averaged over heads


# ---------------------------------------------------------------------------------------------------
# Core: models in, attention and predictions out.


def load_for_attention(folder: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved normalizer (`ehrbert.models.classifier` folder) that returns attention weights (eager attention)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))


@torch.inference_mode()
def cls_attention(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, query: str, max_length: int
) -> tuple[list[str], np.ndarray]:
    """The query's word pieces and the [CLS] row of every layer's attention: (pieces, (layers, heads, pieces)).

    Each row is a distribution over the pieces (sums to 1). Raises ValueError when the model returns no
    weights (an SDPA or flash attention model: load it with `load_for_attention`).
    """
    batch = encode(tokenizer, [query], max_length).to(model.device)
    attentions = model(**batch, output_attentions=True).attentions  # layers x (1, heads, T, T)
    if not attentions or any(a is None for a in attentions):
        raise ValueError(
            f"the model returned no attention weights (attn_implementation="
            f"{model.config._attn_implementation!r}); load it with attn_implementation='eager'"
        )
    rows = torch.stack([a[0, :, 0, :] for a in attentions]).float()  # (L, H, T): row of position 0 = [CLS]
    pieces = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    return pieces, rows.cpu().numpy()


def panel(
    model_name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, query: str, top_k: int, max_length: int
) -> Panel:
    """`model`'s attention over `query` and its top-k concepts (`classifier.predict`, as in the stage's tables)."""
    pieces, attention = cls_attention(model, tokenizer, query, max_length)
    ranked, scores = classifier.predict(model, tokenizer, [query], k=top_k, max_length=max_length)
    return Panel(model_name, pieces, attention, ranked[0], scores[0])


def resolve(cases: Sequence[Case], task: Task) -> list[Case]:
    """The cases with text, query and gold IDs from `task`'s test split; an unknown mention raises ValueError."""
    mentions = {(m.doc_id, format_spans(m.spans)): m for m in task.mentions("test")}
    resolved = []
    for case in cases:
        mention = mentions.get((case.doc_id, case.spans))
        if mention is None:
            raise ValueError(f"{case.corpus}: no test mention at {case.doc_id} {case.spans!r}")
        if case.text and case.text != mention.text:
            raise ValueError(
                f"{case.corpus}: {case.doc_id} {case.spans!r} is {mention.text!r}, params say {case.text!r}"
            )
        query = task.preprocess([mention])[0]
        resolved.append(Case(case.corpus, case.doc_id, case.spans, case.why, mention.text, query, mention.concept_ids))
    return resolved


def pick_disagreements(
    corpus: str,
    tables: dict[str, pd.DataFrame],
    compare: Sequence[str],
    n: int,
    exclude: set[tuple[str, str]] = frozenset(),
    seed: int | None = None,
) -> list[Case]:
    """Up to `n` mentions where only the second `compare` model is right at top-1, then up to `n` where
    only the first is; each time the winner's most confident ones first, one per distinct query."""
    first, second = compare
    a, b = tables[first], tables[second]
    right_a = np.array([top1_correct(g, p) for g, p in zip(a["gold"], a["predicted"])], dtype=bool)
    right_b = np.array([top1_correct(g, p) for g, p in zip(b["gold"], b["predicted"])], dtype=bool)
    cases = []
    for winner, loser, table, only in ((second, first, b, right_b & ~right_a), (first, second, a, right_a & ~right_b)):
        rows = table[only].sort_values("score", ascending=False, kind="stable")
        queries: set[str] = set()
        for row in rows.itertuples():
            if len(queries) == n:
                break
            if (row.doc_id, row.spans) in exclude or row.query in queries:
                continue
            queries.add(row.query)
            at = "" if seed is None else f" (seed {seed})"
            cases.append(Case(corpus, row.doc_id, row.spans, f"{winner} right, {loser} wrong{at}"))
    return cases


# ---------------------------------------------------------------------------------------------------
# Presentation.


def _short(text: str, width: int = 38) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_case(case: Case, panels: Sequence[Panel], names: Callable[[str], str], path: Path) -> None:
    """One PNG: per model, the top layer's head-averaged [CLS] attention, every layer's, and the top-k."""
    if not panels:
        raise ValueError(f"no model to draw for {case.stem}")
    layers = max(p.attention.shape[0] for p in panels)
    width = max(len(p.pieces) for p in panels)
    vmax = max(float(p.per_layer.max()) for p in panels)  # one colour scale for every model and layer
    # no pyplot: Agg canvas, no global state; constrained layout keeps tick labels and titles apart
    figure = Figure(
        figsize=(max(5.0, 0.55 * width) + 4.2, len(panels) * (1.0 + 0.2 * layers) + 1.0), layout="constrained"
    )
    grid = figure.add_gridspec(
        2 * len(panels), 2, width_ratios=[max(5.0, 0.55 * width), 4.2], height_ratios=[0.5, 0.2 * layers] * len(panels)
    )
    gold = set(case.gold)
    for i, p in enumerate(panels):
        strip, matrix = figure.add_subplot(grid[2 * i, 0]), figure.add_subplot(grid[2 * i + 1, 0])
        text = figure.add_subplot(grid[2 * i : 2 * i + 2, 1])
        top = p.per_layer[-1]
        strip.imshow(top[None, :], cmap="Blues", vmin=0, vmax=vmax, aspect="auto")
        for j, value in enumerate(top):
            strip.text(
                j,
                0,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.6 * vmax else "black",
            )
        strip.set_xticks(range(len(p.pieces)), p.pieces, fontsize=8)
        strip.xaxis.tick_top()
        strip.set_yticks([0], [f"{p.model}\ntop layer"], fontsize=8)
        own = p.per_layer.shape[0]
        matrix.imshow(p.per_layer[::-1], cmap="Blues", vmin=0, vmax=vmax, aspect="auto")  # top layer on top
        matrix.set_xticks([])
        matrix.set_yticks(range(own), [f"L{own - k}" for k in range(own)], fontsize=6)
        lines = [f"{p.model}: top {len(p.ranked)}"]
        for rank, (cid, score) in enumerate(zip(p.ranked, p.scores), start=1):
            lines.append(f"{rank}. {cid} {_short(names(cid))} (p={score:.3g})" + ("  ✓ gold" if cid in gold else ""))
        text.text(0.02, 0.5, "\n".join(lines), va="center", ha="left", fontsize=8, family="DejaVu Sans")
        text.axis("off")
    gold_text = "; ".join(f"{cid} {_short(names(cid))}" for cid in case.gold) or "no concept"
    figure.suptitle(
        f'{case.corpus} {case.doc_id} [{case.spans}]: "{case.text}" → query "{case.query}"\n'
        f"gold: {gold_text}   ({case.why})\n[CLS] attention over word pieces, averaged over heads",
        fontsize=9,
    )
    figure.savefig(path, dpi=110, bbox_inches="tight")


def attention_rows(case: Case, p: Panel) -> list[dict]:
    """Long-format weights of one panel: a row per (layer, head-average, piece)."""
    return [
        {
            "case": case.stem,
            "corpus": case.corpus,
            "doc_id": case.doc_id,
            "spans": case.spans,
            "model": p.model,
            "layer": layer + 1,
            "position": j,
            "piece": piece,
            "weight": round(float(weight), 6),
        }
        for layer, weights in enumerate(p.per_layer)
        for j, (piece, weight) in enumerate(zip(p.pieces, weights))
    ]


def prediction_rows(case: Case, p: Panel, names: Callable[[str], str]) -> list[dict]:
    return [
        {
            "case": case.stem,
            "corpus": case.corpus,
            "doc_id": case.doc_id,
            "spans": case.spans,
            "why": case.why,
            "query": case.query,
            "gold": "|".join(case.gold),
            "model": p.model,
            "rank": rank,
            "concept_id": cid,
            "name": names(cid),
            "probability": round(float(score), 6),
            "correct": cid in case.gold,
        }
        for rank, (cid, score) in enumerate(zip(p.ranked, p.scores), start=1)
    ]


# ---------------------------------------------------------------------------------------------------
# The stage: MLflow runs and predictions in, figures out.


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="fine-tuning outputs (<model>-<corpus>-s<seed>/: model/ and test_predictions.tsv)",
    )
    parser.add_argument(
        "--run-records",
        type=Path,
        required=True,
        help="the fine-tuning run records (<model>-<corpus>-s<seed>.json): the runs the figures show",
    )
    add_data_arguments(parser)  # the tasks give each mention's text, query, gold IDs and concept names
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for attention_*.png and the CSVs")
    parser.add_argument(
        "--restricted-out-dir",
        type=Path,
        required=True,
        help="the same for the restricted corpora (their text must stay out of git)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    params = read_params(args.params)
    config = config_from(CaseStudyConfig, params["case_study"], "case_study", args.params)
    chosen = [Case(**{k: str(v) for k, v in m.items()}) for m in config.mentions]
    rows: dict[Path, dict[str, list[dict]]] = {}
    for folder in (args.out_dir, args.restricted_out_dir):
        folder.mkdir(parents=True, exist_ok=True)
        rows[folder] = {"attention": [], "predictions": []}
    figures, source_runs = [], {}
    for corpus in dict.fromkeys(case.corpus for case in chosen):
        task = load_task(corpus, args, params["cadec_split"])
        cases = [case for case in chosen if case.corpus == corpus]
        tables = {m: run_folder(args.predictions, m, corpus, config.seed) / PREDICTION_FILE for m in config.compare}
        if config.disagreements and all(path.is_file() for path in tables.values()):
            exclude = {(case.doc_id, case.spans) for case in cases}
            cases += pick_disagreements(
                corpus,
                {m: read_predictions(p) for m, p in tables.items()},
                config.compare,
                config.disagreements,
                exclude,
                config.seed,
            )
        elif config.disagreements:
            log.warning("%s: no seed-%d predictions of %s: no disagreement cases", corpus, config.seed, config.compare)
        cases = resolve(cases, task)
        names = task.vocabulary.name_of
        panels: dict[str, list[Panel]] = {case.stem: [] for case in cases}
        for model_name in config.models:
            folder = run_folder(args.predictions, model_name, corpus, config.seed)
            if not (folder / MODEL_DIR).is_dir():
                log.warning("%s: no fine-tuned model of %s with seed %d in %s", corpus, model_name, config.seed, folder)
                continue
            record = args.run_records / f"{folder.name}.json"
            source_runs[f"run_{corpus}_{model_name}"] = read_run_record(record)["runs"]["gold"]
            max_length = int(json.loads((folder / MODEL_DIR / TRAINING_FILE).read_text())["config"]["max_length"])
            model, tokenizer = load_for_attention(folder / MODEL_DIR)
            for case in cases:
                panels[case.stem].append(panel(model_name, model, tokenizer, case.query, config.top_k, max_length))
            del model
        folder = args.restricted_out_dir if corpus in config.restricted_corpora else args.out_dir
        for case in cases:
            if not panels[case.stem]:
                continue
            plot_case(case, panels[case.stem], names, folder / f"{case.stem}.png")
            figures.append(folder / f"{case.stem}.png")
            for p in panels[case.stem]:
                rows[folder]["attention"] += attention_rows(case, p)
                rows[folder]["predictions"] += prediction_rows(case, p, names)
    if not figures:
        raise SystemExit(f"no case drawn: no fine-tuned models with seed {config.seed} under {args.predictions}")

    for folder, tables in rows.items():  # header-only CSVs where a folder got no case
        pd.DataFrame(tables["attention"], columns=ATTENTION_COLUMNS).to_csv(folder / "attention.csv", index=False)
        pd.DataFrame(tables["predictions"], columns=TOP_K_COLUMNS).to_csv(folder / "predictions.csv", index=False)
    with start_run(
        experiment="case-study",
        run_name=f"case-study-s{config.seed}",
        tags={"models": ",".join(config.models), "seed": str(config.seed)},
        params={"case_study": params["case_study"], "cadec_split": params["cadec_split"]},
    ):
        mlflow.log_params({**{k: str(v) for k, v in asdict(config).items() if k != "mentions"}, **source_runs})
        mlflow.log_artifacts(str(args.out_dir), artifact_path="case_study")
        mlflow.log_artifacts(str(args.restricted_out_dir), artifact_path="case_study_restricted")
    log.info("drew %d cases into %s", len(figures), args.out_dir)


if __name__ == "__main__":
    main()

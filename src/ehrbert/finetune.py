"""Fine-tune one [CLS] normalizer (one model x one corpus x one seed) and log the run to MLflow.

The paper's recipe: the train split's gold mentions, preprocessed, each labelled with its concept
(a composite mention gives one example per concept; mentions without a concept are left out);
Adam; early stopping when dev accuracy has not improved for `patience` epochs; the best-on-dev
weights are the ones kept, evaluated once on test. Speed on CPU comes from work not done rather
than from less science: identical (query, concept) pairs can be merged (`deduplicate`), queries are
short (`max_length`), batches group queries of similar length, and dev is scored once per epoch.

One script for 1 or N processes: dvc.yaml starts it with `accelerate launch`, and Accelerate's configuration
(processes, devices, mixed precision) is chosen at run time. `batch_size` is the examples per optimizer step over
all processes, so the science does not change with the hardware.

The output folder (a DVC out) holds what later stages and the registry use: `model/` (weights, tokenizer and
`training.json`, the config it was trained with) and the test predictions; `--run-record` names the file that
gets the MLflow run IDs (`ehrbert.tracking.write_run_record`).

With `--checkpoint-dir` (dvc.yaml gives one outside the stage's outs, which DVC deletes before a rerun), the
training state is saved after every epoch that is not the last (`ehrbert.checkpoints`): weights, optimizer and
RNG states, the best-on-dev weights so far, the sampler's generator and the epoch history. A run killed and
started again with the same fingerprint (config, data, initial weights, seed, process layout) goes on from the
newest complete epoch and ends as the uninterrupted run ends; a finished run deletes its checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from ehrbert import checkpoints
from ehrbert.corpora.records import Mention
from ehrbert.hub import resolve_model
from ehrbert.launch import make_accelerator
from ehrbert.metrics import accuracy_at_k, evaluate
from ehrbert.models import classifier
from ehrbert.models.detector import LexiconDetector
from ehrbert.predictions import PREDICTION_FILE, predictions_table, write_predictions
from ehrbert.stage import config_from, read_params, section, setup_logging, write_json
from ehrbert.tasks import Task, add_data_arguments, load_task, score_detected, task_inputs
from ehrbert.text import normalize
from ehrbert.tracking import log_detected_run, start_run, write_run_record

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """params.yaml `finetune.config`. The defaults are the default profile's values (a test keeps them equal);
    the comments give the paper's."""

    encoder_lr: float = 1e-4  # paper: 1e-5 for all weights
    head_lr: float = 3e-4  # paper: 1e-5
    batch_size: int = 32  # paper: 32
    dropout: float = 0.1  # paper: 0.1
    max_epochs: int = 6  # paper: up to 200
    patience: int = 3  # epochs without dev improvement before stopping; paper: 20
    max_length: int = 24  # word pieces per query, [CLS]/[SEP] included
    deduplicate: bool = True  # merge identical (query, concept) training pairs; paper: false
    add_vocabulary_names: bool = False  # also train on every vocabulary name and synonym; paper: false
    head_init: str = "names"  # uniform or names (classifier.HEAD_INITS); paper: uniform
    head_scale: float = 20.0  # names: a logit is about head_scale x cosine before training
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.head_init not in classifier.HEAD_INITS:
            raise ValueError(
                f"finetune.config.head_init: {self.head_init!r} is not one of {', '.join(classifier.HEAD_INITS)}"
            )


BEST_WEIGHTS, SAMPLER_STATE = "best_on_dev.safetensors", "sampler.safetensors"  # a checkpoint's own files
HEAD_INIT_LABELS = {"uniform": "uniform head (paper)", "names": "head imprinted from names"}  # appended to model labels


def training_pairs(
    task: Task, config: FinetuneConfig, label2id: dict[str, int], splits: tuple[str, ...] = ("train",)
) -> list[tuple[str, int]]:
    """(query, label) training examples from `splits` (and, if asked, the vocabulary names)."""
    pairs = [
        (query, label2id[cid])
        for split in splits
        for mention, query in zip(task.mentions(split), task.queries(split))
        for cid in mention.concept_ids
        if cid in label2id
    ]
    if config.add_vocabulary_names:
        pairs += [(normalize(name), label2id[c.concept_id]) for c in task.vocabulary.concepts for name in c.names]
    if config.deduplicate:
        pairs = list(dict.fromkeys(pairs))
    return pairs


def _restore(folder: Path, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The sampler's generator from a checkpoint; returns its best-on-dev weights."""
    generator.set_state(load_file(str(folder / SAMPLER_STATE))["state"])
    return {k: v.to(device) for k, v in load_file(str(folder / BEST_WEIGHTS)).items()}


def train(
    model,
    tokenizer,
    pairs: list[tuple[str, int]],
    dev_queries: list[str],
    dev_mentions: list[Mention],
    config: FinetuneConfig,
    accelerator: Accelerator,
    seed: int,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
) -> list[dict]:
    """Train in place; leaves the best-on-dev weights in `model`. Returns one record per epoch (a resumed run: also
    those of the epochs before the checkpoint). With `checkpoint_dir`: resume from the newest checkpoint with this
    `fingerprint`, and save one after each epoch that is not the last. Without dev mentions (dev is training data,
    as in the peers' protocol) every one of `config.max_epochs` epochs runs and the last epoch's weights are kept."""
    if config.batch_size % accelerator.num_processes:
        raise ValueError(
            f"finetune.config.batch_size {config.batch_size} is not divisible by {accelerator.num_processes} processes"
        )
    if checkpoint_dir is not None and not dev_mentions:
        raise ValueError("resumable training keeps the best-on-dev weights: it needs dev mentions")
    per_process = config.batch_size // accelerator.num_processes  # batch_size is per optimizer step, all processes
    features = [dict(tokenizer(q, truncation=True, max_length=config.max_length), labels=y) for q, y in pairs]
    generator = torch.Generator().manual_seed(seed)  # the sampler's own: each epoch's order, saved in checkpoints
    sampler = LengthGroupedSampler(
        config.batch_size, lengths=[len(f["input_ids"]) for f in features], generator=generator
    )
    loader = DataLoader(
        features, batch_size=per_process, sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer)
    )
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    encoder = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    groups = [{"params": encoder, "lr": config.encoder_lr}, {"params": head, "lr": config.head_lr}]
    optimizer = torch.optim.Adam(groups, fused=True)  # fused: one kernel per step, same arithmetic
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    history: list[dict] = []
    best, best_state, stale, first = -1.0, None, 0, 1
    resume = checkpoints.resume_point(accelerator, checkpoint_dir, fingerprint) if checkpoint_dir else None
    if resume is not None:
        done, folder, record = resume
        accelerator.load_state(str(folder))  # weights, optimizer and RNG states
        best_state = _restore(folder, generator, accelerator.device)
        history, best, stale, first = record["history"], record["best"], record["stale"], done + 1
        log.info("resuming from %s (after epoch %d of at most %d)", folder, done, config.max_epochs)
    for epoch in range(first, config.max_epochs + 1):
        started = time.perf_counter()
        model.train()
        total, steps = 0.0, 0
        progress = tqdm(
            loader, desc=f"epoch {epoch}", leave=False, mininterval=5, disable=not accelerator.is_main_process
        )
        for batch in progress:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            total, steps = total + loss.item(), steps + 1
        unwrapped = accelerator.unwrap_model(model)
        if not dev_mentions:
            history.append(
                {"epoch": epoch, "train_loss": total / max(steps, 1), "epoch_seconds": time.perf_counter() - started}
            )
            log.info("epoch %d: loss %.4f (%.0f s)", epoch, history[-1]["train_loss"], history[-1]["epoch_seconds"])
            continue
        ranked, _ = classifier.predict(
            unwrapped, tokenizer, dev_queries, k=1, max_length=config.max_length, batch_size=config.eval_batch_size
        )
        dev_acc = accuracy_at_k(dev_mentions, ranked, k=1)
        record = {
            "epoch": epoch,
            "train_loss": total / max(steps, 1),
            "dev_acc1": dev_acc,
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(record)
        log.info(
            "epoch %d: loss %.4f, dev acc@1 %.4f (%.0f s)",
            epoch,
            record["train_loss"],
            dev_acc,
            record["epoch_seconds"],
        )
        if dev_acc > best:
            best, stale = dev_acc, 0
            best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stop: no dev improvement for %d epochs", stale)
                break
        if checkpoint_dir is not None and epoch < config.max_epochs:

            def write_extra(folder: Path, best_state=best_state) -> None:
                save_file({k: v.contiguous().cpu() for k, v in best_state.items()}, str(folder / BEST_WEIGHTS))
                save_file({"state": generator.get_state()}, str(folder / SAMPLER_STATE))

            state = {"fingerprint": fingerprint, "history": history, "best": best, "stale": stale}
            checkpoints.save(accelerator, checkpoint_dir, epoch, state, keep=1, write_extra=write_extra)
    if dev_mentions:
        accelerator.unwrap_model(model).load_state_dict(best_state)
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", required=True, help="a built-in task (ncbi, cdr, cadec) or one declared in params.yaml `tasks`"
    )
    parser.add_argument("--model", required=True, help="model name for tables and MLflow tags")
    parser.add_argument("--model-path", required=True, help="encoder: a folder, hub ID or package:<module>")
    parser.add_argument("--seed", type=int, required=True)
    add_data_arguments(parser)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="the run's model/ (weights, tokenizer, training.json) and test predictions",
    )
    parser.add_argument("--run-record", type=Path, required=True, help="JSON file for the MLflow run IDs")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument(
        "--cadec-detector",
        type=Path,
        help="mention detector (JSON); cadec runs are then also scored on detected mentions",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="resumable training state after each epoch (not a DVC out); without it a killed run starts over",
    )
    parser.add_argument(
        "--config-overrides",
        metavar="KEY",
        help="dotted params key of a mapping that overrides finetune.config (e.g. "
        "finetune.head_init_ablation.config, the head-initialization ablation)",
    )
    args = parser.parse_args(argv)

    accelerator = make_accelerator()  # processes, devices and mixed precision: `accelerate launch`'s configuration
    setup_logging(accelerator.is_main_process)
    params = read_params(args.params)
    overrides = section(params, args.config_overrides, args.params) if args.config_overrides else {}
    if not isinstance(overrides, dict):
        raise SystemExit(f"{args.params}: {args.config_overrides} must map finetune.config fields to values")
    config = config_from(
        FinetuneConfig,
        {**params["finetune"]["config"], **overrides},
        f"finetune.config (with {args.config_overrides})" if overrides else "finetune.config",
        args.params,
    )
    model_label = (
        f"{params['finetune']['model_labels'].get(args.model, args.model)}, {HEAD_INIT_LABELS[config.head_init]}"
    )
    stage_params = {
        "finetune.config": asdict(config),
        "finetune.model_labels": params["finetune"]["model_labels"],
        "cadec_split": params["cadec_split"],
    }
    set_seed(args.seed)

    with accelerator.main_process_first():
        task = load_task(args.corpus, args, params["cadec_split"])
        dev_queries, test_queries = task.queries("dev"), task.queries("test")
    model, tokenizer = classifier.build(
        resolve_model(args.model_path),
        task.vocabulary,
        config.dropout,
        args.seed,
        config.head_init,
        config.head_scale,
        config.max_length,
    )
    pairs = training_pairs(task, config, model.config.label2id)
    log.info("%s: %d concepts, %d training pairs", args.corpus, len(task.vocabulary), len(pairs))

    fingerprint = ""  # what a checkpoint must have been made of to be resumed (only with --checkpoint-dir)
    if args.checkpoint_dir:
        made_of = {
            "config": asdict(config),
            "corpus": args.corpus,
            "seed": args.seed,
            "init": checkpoints.digest(resolve_model(args.model_path)),
            "data": {str(path): checkpoints.digest(path) for path in task_inputs(args.corpus, args)},
            "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
        }
        fingerprint = checkpoints.fingerprint(made_of)
    started = time.perf_counter()
    history = train(
        model,
        tokenizer,
        pairs,
        dev_queries,
        task.mentions("dev"),
        config,
        accelerator,
        args.seed,
        args.checkpoint_dir,
        fingerprint,
    )
    train_seconds = time.perf_counter() - started
    if not accelerator.is_main_process:
        return

    model = accelerator.unwrap_model(model)
    ranked, scores = classifier.predict(model, tokenizer, test_queries, k=5, max_length=config.max_length)
    test = evaluate(task.splits["test"], task.mentions("test"), ranked, level=task.level)
    test["best_epoch"] = max(history, key=lambda r: r["dev_acc1"])["epoch"]  # in the metrics file, not a test score
    # the kept model's dev document F1: what `compare` chooses champions by, never a test score
    dev_ranked, _ = classifier.predict(model, tokenizer, dev_queries, k=1, max_length=config.max_length)
    test["dev_f1"] = evaluate(task.splits["dev"], task.mentions("dev"), dev_ranked, level=task.level)["f1"]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.run_record.unlink(missing_ok=True)  # written last: a stale record never outlives a failed run
    model_dir = args.out_dir / classifier.MODEL_DIR
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_json(
        model_dir / classifier.TRAINING_FILE,
        {"config": asdict(config), "model": args.model, "corpus": args.corpus, "seed": args.seed},
    )
    predictions = write_predictions(
        predictions_table(task, "test", test_queries, ranked, scores), args.out_dir / PREDICTION_FILE
    )
    tags = {
        "model": args.model,
        "model_label": model_label,
        "corpus": args.corpus,
        "seed": str(args.seed),
        "mentions": "gold",
        "encoder_path": str(args.model_path),
    }
    runs = {}
    with start_run(
        experiment=f"finetune-{args.corpus}",
        run_name=f"{args.model}-{args.corpus}-s{args.seed}",
        tags=tags,
        params=stage_params,
    ) as run:
        mlflow.log_params(
            {
                **asdict(config),
                "corpus": args.corpus,
                "model": args.model,
                "seed": args.seed,
                "concepts": len(task.vocabulary),
                "train_pairs": len(pairs),
                "mixed_precision": accelerator.mixed_precision,
                "processes": accelerator.num_processes,
            }
        )
        for record in history:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
        mlflow.log_metrics({f"test_{k}": v for k, v in test.items() if k not in ("best_epoch", "dev_f1")})
        mlflow.log_metrics({"best_epoch": test["best_epoch"], "dev_f1": test["dev_f1"]})
        mlflow.log_metric("train_seconds", round(train_seconds, 1))  # wall clock: MLflow only, not the DVC metrics
        mlflow.log_artifact(str(predictions))
        mlflow.log_artifacts(
            str(model_dir), artifact_path="model"
        )  # also in MLflow, for the UI; stages read the DVC out
        runs["gold"] = run.info.run_id
    if args.corpus == "cadec" and args.cadec_detector is not None:
        detector = LexiconDetector.load(args.cadec_detector)
        top1 = lambda queries: [
            r[:1] for r in classifier.predict(model, tokenizer, queries, k=1, max_length=config.max_length)[0]
        ]
        predicted = score_detected(task, detector, top1)
        runs["predicted"] = log_detected_run(
            f"finetune-{args.corpus}",
            f"{args.model}-{args.corpus}-s{args.seed}",
            tags,
            stage_params,
            runs["gold"],
            predicted,
            detector=str(args.cadec_detector),
            model=args.model,
            seed=args.seed,
        )
        test["predicted_mentions"] = predicted
    write_json(args.metrics, test)
    write_run_record(
        args.run_record,
        runs,
        experiment=f"finetune-{args.corpus}",
        model=args.model,
        corpus=args.corpus,
        seed=args.seed,
        model_dir=str(model_dir),
    )
    if args.checkpoint_dir is not None:
        checkpoints.discard(args.checkpoint_dir)  # the run is complete: nothing left to resume


if __name__ == "__main__":
    main()

"""Domain-adaptive pretraining (MLM + NSP) of a BERT checkpoint with Accelerate; one MLflow run per invocation.

The paper continued pretraining BioBERT on EHR notes (MLM 15 % + NSP 50 %, 15 epochs, sequence length 128,
batch 64, lr 3e-5) into EhrBERT_500k and EhrBERT_1M. The chain here (params.yaml `pretrain.<stage>`):
  base      the general model (the paper's BERT), passed through: saved with pretraining heads and scored
  bio       the biomedical model (BioBERT): a stand-in continued on training-split abstracts + MEDIC
            definitions, or a real BioBERT passed through
  ehr_half  bio continued on the half notes split (the EhrBERT_500k analog)
  ehr_full  bio continued on the full notes split (the EhrBERT_1M analog)
each one invocation of this script on corpora built by `ehrbert.pretraining_data`, and each scored by MLM
perplexity on the same held-out notes, masked once. Heads missing from the initial checkpoint
(all-MiniLM-L6-v2 ships no MLM or NSP head) are initialized, logged and tagged; the perplexity of such a
checkpoint measures a random head, so compare perplexities from the biomedical model onward.

Science (lr, batch, epochs) comes from params.yaml; processes, devices and mixed precision from `accelerate
launch`'s configuration (see `ehrbert.launch`); accumulation, checkpoint interval and resume from flags.
`batch_size` is the examples per optimizer step over all processes and accumulation steps, so the science does
not change with the hardware. dvc.yaml runs it as `accelerate launch $ACCELERATE_ARGS -m ehrbert.pretrain ...`.
The saved model folder records what made it (`pretraining.json`) but no wall-clock time, so two runs of the
same configuration on one machine give identical files; timings go to MLflow.

Training state goes to `--checkpoint-dir` every `--checkpoint-every` steps (see `ehrbert.checkpoints`); keep
that folder outside the stage's DVC outs, which DVC deletes before rerunning a stage. Rerun after a crash, the
run resumes from its newest complete checkpoint with the same fingerprint and skips the batches already done.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForPreTraining,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    get_linear_schedule_with_warmup,
)

from ehrbert import checkpoints
from ehrbert.hub import resolve_model
from ehrbert.launch import make_accelerator
from ehrbert.pretraining_data import MaskedPairDataset, PairDataset, load_examples, vocabulary_digest
from ehrbert.stage import read_params, setup_logging, write_json
from ehrbert.tracking import start_run, write_run_record

log = logging.getLogger(__name__)

EXPERIMENT = "pretrain"


@dataclass
class PretrainConfig:
    batch_size: int = 32  # examples per optimizer step, all processes and accumulation steps together; paper: 64
    learning_rate: float = 1e-4  # peak, after linear warm-up, then linear decay to 0; paper: 3e-5
    warmup_ratio: float = 0.1  # share of the steps spent warming up
    weight_decay: float = 0.01  # AdamW, not on biases and LayerNorm weights (as BERT)
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15  # paper: 15 % (80 % [MASK], 10 % random, 10 % kept)
    seed: int = 13
    epochs: int = 1  # passes over the training corpus; paper: 15
    max_steps: int | None = None  # optimizer steps; overrides epochs when set; 0: no training (pass the init through)


@dataclass
class RunInfo:
    label: str  # MLflow run name, tables: e.g. "EhrBERT_half"
    stands_in_for: str = ""  # the paper's model this run imitates, "" when it is the real thing


def stage_settings(section: dict, stage: str) -> tuple[PretrainConfig, RunInfo]:
    """The config of one link of the chain: shared `pretrain` keys overridden by `pretrain.<stage>`."""
    if not isinstance(section.get(stage), dict):
        raise KeyError(f"params.yaml has no section pretrain.{stage}")
    own = section[stage]
    fields = PretrainConfig.__dataclass_fields__
    config = PretrainConfig(**{k: v for k, v in {**section, **own}.items() if k in fields})
    info = RunInfo(**{k: v for k, v in own.items() if k in RunInfo.__dataclass_fields__})
    return config, info


def plan(batches_per_epoch: int, accumulation: int, config: PretrainConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps). Accelerate also steps on a short last accumulation."""
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    if steps_per_epoch == 0:
        raise ValueError("the training corpus is smaller than one batch")
    total = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    return steps_per_epoch, total


def position(completed_steps: int, steps_per_epoch: int, accumulation: int) -> tuple[int, int]:
    """(epoch, batches of that epoch already done) after `completed_steps` optimizer steps."""
    epoch, steps_into_epoch = divmod(completed_steps, steps_per_epoch)
    return epoch, steps_into_epoch * accumulation


class SeededMasking(DataCollatorForLanguageModeling):
    """BERT's dynamic masking with each batch's masks drawn from a generator of its own, seeded by the run's seed,
    the epoch and the batch's content, so that a resumed run masks every batch as the uninterrupted run did.

    The collator's default, the global torch RNG, breaks resume: Accelerate's data loader collates one batch
    ahead, so the RNG state a checkpoint saves after step k has already drawn batch k+1's masks. Dropout keeps the
    global RNG, which the checkpoint restores exactly. `epoch` is set by the training loop before each epoch, so a
    batch met again in a later epoch gets new masks."""

    def __init__(self, tokenizer, mlm_probability: float, seed: int):
        super().__init__(tokenizer, mlm_probability=mlm_probability, pad_to_multiple_of=8)
        self.base_seed, self.epoch = seed, 0

    def torch_call(self, examples):
        content = repr([self.base_seed, self.epoch, [e["input_ids"] for e in examples]]).encode()
        seed = int.from_bytes(hashlib.sha256(content).digest()[:8], "little") & (2**63 - 1)
        self.seed, self.generator, self._generator_pid = seed, torch.Generator().manual_seed(seed), os.getpid()
        return super().torch_call(examples)


def load_model(name: str):
    """(model with MLM + NSP heads, tokenizer, names of the weights newly initialized)."""
    path = resolve_model(name)
    model, info = AutoModelForPreTraining.from_pretrained(path, output_loading_info=True)
    return model, AutoTokenizer.from_pretrained(path), sorted(info["missing_keys"])


class PretrainingObjective(torch.nn.Module):
    """BERT's two pretraining heads on the encoder, with the vocabulary projection applied only where a word piece
    is predicted (~15 % of positions). BertForPreTraining projects every position onto the 30k-word vocabulary,
    which for MiniLM costs more than the encoder itself. Wraps the model so that DDP sees one forward."""

    def __init__(self, model):
        super().__init__()
        heads = getattr(model, "cls", None)
        if not (hasattr(heads, "predictions") and hasattr(heads, "seq_relationship")):
            raise TypeError(
                f"{type(model).__name__} has no BERT pretraining heads (cls.predictions, cls.seq_relationship)"
            )
        self.model = model

    def forward(
        self, input_ids, token_type_ids, attention_mask, labels, next_sentence_label
    ) -> dict[str, torch.Tensor]:
        encoded = self.model.base_model(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        )
        predicted = labels != -100  # (B, L)
        return {
            "word_logits": self.model.cls.predictions(encoded.last_hidden_state[predicted]),  # (M, V)
            "word_labels": labels[predicted],  # (M,)
            "word_rows": predicted.nonzero()[:, 0],  # (M,) the example of each predicted word piece
            "nsp_logits": self.model.cls.seq_relationship(encoded.pooler_output),  # (B, 2)
            "nsp_labels": next_sentence_label.view(-1),  # (B,)
        }


def _forward(objective, batch: dict) -> dict[str, torch.Tensor]:
    return objective(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        next_sentence_label=batch["next_sentence_label"],
    )


def pretraining_losses(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLM loss: mean over predicted word pieces, NSP loss: mean over examples)."""
    word_losses = F.cross_entropy(out["word_logits"].float(), out["word_labels"], reduction="sum")
    mlm = word_losses / max(len(out["word_labels"]), 1)  # a batch without a masked word piece gives 0, not NaN
    return mlm, F.cross_entropy(out["nsp_logits"].float(), out["nsp_labels"])


@torch.no_grad()
def evaluate(objective, dataloader, accelerator: Accelerator) -> dict[str, float]:
    """Held-out MLM perplexity (exp of the mean loss over all masked word pieces) and NSP accuracy."""
    objective.eval()
    loss_sum, masked, correct, examples = 0.0, 0, 0, 0
    for batch in dataloader:
        out = _forward(objective, batch)
        word_losses = F.cross_entropy(out["word_logits"].float(), out["word_labels"], reduction="none")  # (M,)
        rows, size = out["word_rows"], len(batch["input_ids"])
        per_example = torch.stack(
            [
                word_losses.new_zeros(size).index_add_(0, rows, word_losses),  # summed loss of its masked word pieces
                word_losses.new_zeros(size).index_add_(0, rows, torch.ones_like(word_losses)),  # how many
                (out["nsp_logits"].argmax(-1) == out["nsp_labels"]).float(),  # NSP right
            ],
            dim=1,
        )  # (B, 3)
        per_example = accelerator.gather_for_metrics(per_example)
        loss_sum += per_example[:, 0].sum().item()
        masked += int(per_example[:, 1].sum().item())
        correct += int(per_example[:, 2].sum().item())
        examples += len(per_example)
    objective.train()
    mlm_loss = loss_sum / max(masked, 1)
    return {
        "mlm_loss": mlm_loss,
        "perplexity": math.exp(mlm_loss),
        "nsp_accuracy": correct / max(examples, 1),
        "masked_word_pieces": masked,
    }


def _optimizer(model, config: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=device.type in ("cpu", "cuda"))


def train(
    objective,
    optimizer,
    scheduler,
    train_dl,
    accelerator: Accelerator,
    config: PretrainConfig,
    *,
    total_steps: int,
    steps_per_epoch: int,
    start_step: int,
    checkpoint_dir: Path,
    checkpoint_every: int,
    keep: int,
    record: dict,
    label: str,
) -> dict:
    """Optimizer steps `start_step` + 1 .. `total_steps`, in place; returns what this invocation did."""
    accumulation = accelerator.gradient_accumulation_steps
    epoch, skip = position(start_step, steps_per_epoch, accumulation)
    completed, window = start_step, torch.zeros(3, device=accelerator.device)  # window: MLM loss, NSP loss, tokens
    tokens, examples = 0, 0
    progress = tqdm(
        total=total_steps, initial=start_step, desc=label, unit="step", disable=not accelerator.is_local_main_process
    )
    started = window_started = time.perf_counter()
    objective.train()
    while completed < total_steps:
        train_dl.set_epoch(epoch)  # the seedable sampler's order of this epoch, the same after a restart
        train_dl.collate_fn.epoch = epoch  # and its masks (`SeededMasking`)
        batches = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        skip = 0
        for batch in batches:
            with accelerator.accumulate(objective):
                mlm, nsp = pretraining_losses(_forward(objective, batch))
                accelerator.backward(mlm + nsp)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(objective.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            n_tokens = int(batch["attention_mask"].sum())
            tokens, examples = tokens + n_tokens, examples + len(batch["input_ids"])
            window += torch.tensor([mlm.item(), nsp.item(), n_tokens], device=window.device)
            if not accelerator.sync_gradients:
                continue
            completed += 1
            mlm_loss, nsp_loss, window_tokens = (
                accelerator.reduce(window, "sum")
                / torch.tensor([accelerator.num_processes * accumulation] * 2 + [1], device=window.device)
            ).tolist()
            now = time.perf_counter()
            metrics = {
                "train_loss": mlm_loss + nsp_loss,
                "train_mlm_loss": mlm_loss,
                "train_nsp_loss": nsp_loss,
                "learning_rate": scheduler.get_last_lr()[0],
                "tokens_per_s": window_tokens / (now - window_started),
            }
            window.zero_()
            window_started = now
            if accelerator.is_main_process:
                mlflow.log_metrics(metrics, step=completed)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['train_loss']:.3f}")
            if completed % checkpoint_every == 0 or completed == total_steps:
                checkpoints.save(accelerator, checkpoint_dir, completed, record, keep)
            if completed >= total_steps:
                break
        epoch += 1
    progress.close()
    seconds = time.perf_counter() - started
    counts = accelerator.gather(torch.tensor([examples, tokens], device=accelerator.device).view(1, 2)).tolist()
    return {
        "steps_run": completed - start_step,
        "train_seconds": seconds,
        "examples_per_process": [c[0] for c in counts],
        "tokens_per_process": [c[1] for c in counts],
        "train_tokens_per_s": sum(c[1] for c in counts) / seconds if seconds > 0 else 0.0,
    }


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stage", required=True, help="section pretrain.<stage> of params.yaml: base, bio, ehr_half, ehr_full"
    )
    parser.add_argument("--init", required=True, help="initial checkpoint: folder, hub ID or package:<module>")
    parser.add_argument(
        "--train", type=Path, help="training examples (.npz from ehrbert.pretraining_data); not with max_steps 0"
    )
    parser.add_argument("--heldout", type=Path, required=True, help="held-out masked examples (.npz)")
    parser.add_argument("--out", type=Path, required=True, help="final model + tokenizer (save_pretrained)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--run-record", type=Path, required=True, help="JSON file for the MLflow run ID")
    parser.add_argument("--checkpoint-dir", type=Path, required=True, help="step_<n> training states (not a DVC out)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--checkpoint-every", type=int, default=50, help="optimizer steps between checkpoints")
    parser.add_argument("--keep-checkpoints", type=int, default=1, help="newest checkpoints kept; 0: all")
    parser.add_argument(
        "--resume",
        choices=["auto", "never"],
        default="auto",
        help="auto: continue from the newest matching checkpoint; never: discard checkpoints, start over",
    )
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="per process")
    args = parser.parse_args(argv)
    if args.checkpoint_every < 1 or args.grad_accum < 1:
        parser.error("--checkpoint-every and --grad-accum must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    config, info = stage_settings(read_params(args.params)["pretrain"], args.stage)
    if config.max_steps != 0 and args.train is None:
        raise SystemExit(f"pretrain.{args.stage} trains (max_steps is not 0): --train is required")

    # the seedable sampler draws each epoch's order from data_seed + epoch: the same order after a restart
    accelerator = make_accelerator(
        gradient_accumulation_steps=args.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    setup_logging(accelerator.is_main_process)
    world, accumulation = accelerator.num_processes, args.grad_accum
    if config.batch_size % (world * accumulation):
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by {world} processes x {accumulation} accumulation steps"
        )
    micro_batch = config.batch_size // (world * accumulation)
    set_seed(config.seed, device_specific=True)  # masks differ between processes; DDP copies rank 0's new heads

    with accelerator.main_process_first():
        train_arrays, train_meta = load_examples(args.train) if config.max_steps != 0 else (None, None)
        heldout_arrays, heldout_meta = load_examples(args.heldout)
        model, tokenizer, new_heads = load_model(args.init)
    vocabulary = vocabulary_digest(tokenizer)
    for path, meta in ((args.train, train_meta), (args.heldout, heldout_meta)):
        if meta and meta["vocabulary"] != vocabulary:
            raise ValueError(
                f"{path} was tokenized with {meta['tokenizer']}, whose vocabulary differs from {args.init}'s"
            )
    if new_heads:
        log.warning(
            "%s lacks %d weights, newly initialized: %s. Its held-out perplexity measures an untrained head.",
            args.init,
            len(new_heads),
            ", ".join(new_heads),
        )

    eval_dl = accelerator.prepare(DataLoader(MaskedPairDataset(heldout_arrays), batch_size=args.eval_batch_size))
    train_dl, steps_per_epoch, total_steps = None, 0, 0
    if train_arrays is not None:
        collator = SeededMasking(tokenizer, config.mlm_probability, config.seed + accelerator.process_index)
        # a generator of its own: starting an iterator then draws nothing from the global RNG (dropout's)
        loader = DataLoader(
            PairDataset(train_arrays),
            batch_size=micro_batch,
            shuffle=True,
            drop_last=True,
            collate_fn=collator,
            generator=torch.Generator().manual_seed(config.seed),
        )
        train_dl = accelerator.prepare(loader)
        steps_per_epoch, total_steps = plan(len(train_dl), accumulation, config)
    objective = PretrainingObjective(model)
    optimizer = _optimizer(objective, config, accelerator.device)
    # a prepared scheduler steps once per process at each optimizer step
    scheduler = get_linear_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * total_steps) * world, total_steps * world
    )
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)

    made_of = {
        "stage": args.stage,
        "config": asdict(config),
        "init": checkpoints.digest(resolve_model(args.init)),
        "train": checkpoints.digest(args.train) if train_dl else None,
        "processes": world,
        "accumulation": accumulation,
        "mixed_precision": accelerator.mixed_precision,
        "total_steps": total_steps,
    }
    if train_dl is not None:  # checkpoints of the global-RNG masking (before SeededMasking) are not resumed
        made_of["masking"] = SeededMasking.__name__
    fingerprint = checkpoints.fingerprint(made_of)
    resume = checkpoints.resume_point(accelerator, args.checkpoint_dir, fingerprint, args.resume == "auto")
    if resume is not None:
        start_step, folder, record = resume
        accelerator.load_state(str(folder))
        before = record["heldout_before"]
        log.info("resuming from %s (step %d of %d)", folder, start_step, total_steps)
    else:
        start_step, before = 0, evaluate(objective, eval_dl, accelerator)
    log.info("held-out before: perplexity %.2f, NSP accuracy %.3f", before["perplexity"], before["nsp_accuracy"])

    tags = {
        "model_label": info.label,
        "stage": args.stage,
        "stands_in_for": info.stands_in_for or "-",
        "init_checkpoint": args.init,
        "init_path": resolve_model(args.init),
        "fingerprint": fingerprint,
        "newly_initialized_heads": ", ".join(new_heads)[:5000] or "-",
        "resumed_from_step": str(start_step) if resume else "-",
    }
    if resume:
        tags["resumed_mlflow_run"] = resume[2].get("mlflow_run_id") or "-"
    stage_params = {"pretrain": asdict(config), f"pretrain.{args.stage}": asdict(info)}
    tracking = (
        start_run(EXPERIMENT, run_name=info.label, tags=tags, params=stage_params)
        if accelerator.is_main_process
        else contextlib.nullcontext()
    )
    with tracking as run:
        if accelerator.is_main_process:
            mlflow.log_params(
                {
                    **asdict(config),
                    "stage": args.stage,
                    "init": args.init,
                    "train": str(args.train),
                    "heldout": str(args.heldout),
                    "processes": world,
                    "grad_accum": accumulation,
                    "per_device_batch_size": micro_batch,
                    "mixed_precision": accelerator.mixed_precision,
                    "train_examples": len(train_arrays["lengths"]) if train_dl else 0,
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps,
                    "max_seq_length": int(heldout_arrays["input_ids"].shape[1]),
                }
            )
            mlflow.log_metrics({f"heldout_{k}_before": v for k, v in before.items()}, step=start_step)
        record = {
            "fingerprint": fingerprint,
            "made_of": made_of,
            "heldout_before": before,
            "mlflow_run_id": run.info.run_id if run else None,
        }
        done = {
            "steps_run": 0,
            "train_seconds": 0.0,
            "examples_per_process": [0] * world,
            "tokens_per_process": [0] * world,
            "train_tokens_per_s": 0.0,
        }
        if total_steps:
            done = train(
                objective,
                optimizer,
                scheduler,
                train_dl,
                accelerator,
                config,
                total_steps=total_steps,
                steps_per_epoch=steps_per_epoch,
                start_step=start_step,
                checkpoint_dir=args.checkpoint_dir,
                checkpoint_every=args.checkpoint_every,
                keep=args.keep_checkpoints,
                record=record,
                label=info.label,
            )
        after = evaluate(objective, eval_dl, accelerator) if total_steps else before
        log.info(
            "held-out after: perplexity %.2f (before %.2f), NSP accuracy %.3f; %d steps here, %.0f tokens/s",
            after["perplexity"],
            before["perplexity"],
            after["nsp_accuracy"],
            done["steps_run"],
            done["train_tokens_per_s"],
        )

        accelerator.wait_for_everyone()
        accelerator.unwrap_model(objective).model.save_pretrained(
            args.out, is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
        if accelerator.is_main_process:
            tokenizer.save_pretrained(args.out)
            summary = {
                "label": info.label,
                "stands_in_for": info.stands_in_for,
                "init": args.init,
                "train": str(args.train),
                "heldout": str(args.heldout),
                "newly_initialized_heads": new_heads,
                "fingerprint": fingerprint,
                "made_of": made_of,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "batches_per_epoch": len(train_dl) if train_dl else 0,
                "processes": world,
                "heldout_before": before,
                "heldout_after": after,
            }
            write_json(args.out / "pretraining.json", summary)
            metrics = {
                "init_new_head_weights": len(new_heads),
                "heldout_perplexity_before": before["perplexity"],
                "heldout_perplexity_after": after["perplexity"],
                "heldout_nsp_accuracy_before": before["nsp_accuracy"],
                "heldout_nsp_accuracy_after": after["nsp_accuracy"],
                "train_steps": total_steps,
            }
            mlflow.log_metrics({f"heldout_{k}_after": v for k, v in after.items()}, step=total_steps)
            mlflow.log_metrics(
                {"train_tokens_per_s_mean": done["train_tokens_per_s"], "train_seconds": done["train_seconds"]}
            )
            # what this invocation did (a resumed run does less): MLflow only, so the model folder depends on the
            # configuration alone
            mlflow.log_dict({**done, "resumed_from_step": start_step if resume else None}, "progress.json")
            write_json(args.metrics, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
            write_run_record(args.run_record, {"pretrain": run.info.run_id}, experiment=EXPERIMENT, stage=args.stage)
    accelerator.end_training()


if __name__ == "__main__":
    main()

"""Stage `detector`: fit the lexicon mention detector on CADEC train, its threshold on dev, and score it on test.

In the paper the clinical corpus (MADE 1.0) is also scored from *predicted* mentions, MetaMap's output, with
mention-level P/R/F1 where span and concept must both match. Here a dictionary matcher plays MetaMap's part
(`ehrbert.models.detector`): cheap on CPU, no training loop, the same on any text (CADEC posts, NCBI/CDR
abstracts, text sent to a server). Detection is scored by exact span match (`ehrbert.metrics.span_scores`).

    python -m ehrbert.detector --cadec-dir data/cadec --out outputs/detector/cadec.json \
        --metrics metrics/detector.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ehrbert.metrics import span_scores
from ehrbert.models.detector import LexiconDetector, choose_min_precision, detect_documents
from ehrbert.stage import read_params, setup_logging, write_json
from ehrbert.tasks import load_cadec_task

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fit the lexicon detector on CADEC train, threshold on dev.")
    parser.add_argument("--cadec-dir", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="the detector JSON")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    task = load_cadec_task(args.cadec_dir, **read_params(args.params)["cadec_split"])

    started = time.perf_counter()
    names = [name for concept in task.vocabulary.concepts for name in concept.names]
    detector = LexiconDetector.fit(names, task.splits["train"])
    fit_seconds = time.perf_counter() - started
    best, table = choose_min_precision(detector, task.splits["dev"])
    detector = detector.with_min_precision(best)
    started = time.perf_counter()
    detected = detect_documents(detector, task.splits["test"])
    detect_seconds = time.perf_counter() - started

    metrics = {
        "min_precision": best,
        "entries": len(detector.entries),
        "active_entries": len(detector.active),
        "dev": table[best],
        "test": span_scores(task.splits["test"], detected),
    }
    # wall clock goes to the log only: the tracked metrics stay equal when a deterministic stage reruns
    log.info("fit %.2f s, test detection %.2f s", fit_seconds, detect_seconds)
    log.info("dev F1 by min_precision: %s", {t: round(s["f1"], 4) for t, s in table.items()})
    log.info("%s", json.dumps(metrics))
    detector.save(args.out)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()

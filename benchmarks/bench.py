"""Speed, memory and soak of the registered champion normalizer, with its accuracy beside every speed figure.

    python benchmarks/bench.py [--model models:/ehrbert-ncbi@champion] [--out reports/benchmark.json]

What it measures (each timing the median of `--repeats` runs, on this machine's cores):
- batch: NCBI test mentions through the pyfunc in one call (mentions/s), against the ceiling, the models' own
  encoder forwards over the same queries in the same batches and nothing else, and against a loop of one-mention
  calls; raw text: MTSamples notes through the detector and the normalizer (notes/s);
- accuracy: acc@1 of the pyfunc's answers on NCBI test (the top-1 concept is one of the gold IDs);
- served: `mlflow models serve` on 127.0.0.1, start-up to /ping, then one client and 8 concurrent clients, one
  mention a request, for `--seconds` each: requests/s, p50 and p99 latency, errors; server memory (RSS of its
  process tree) before and after;
- soak: 8 clients for `--soak-seconds`: errors and RSS growth.

It writes the JSON and a Markdown table beside it (`reports/benchmark.md`). It is not a test: nothing here
asserts a number; the targets are in the issue tracker and the README compares against them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import torch

from ehrbert.corpora.notes import read_notes
from ehrbert.models.hybrid import HybridNormalizer
from ehrbert.serving import BATCH_WAIT_ENV, MICROBATCH_ENV, mention_queries
from ehrbert.stage import read_params
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def with_current_code(model_uri: str) -> str:
    """A local copy of the model whose packaged `ehrbert` code is this checkout's; returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="ehrbert-bench-")) / "model"
    mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder))
    code = folder / "code" / "ehrbert"
    shutil.rmtree(code)
    shutil.copytree(ROOT / "src" / "ehrbert", code, ignore=shutil.ignore_patterns("__pycache__"))
    return str(folder)


def write_report(results: dict, out: Path, table: str) -> None:
    """The figures as JSON in `out`, the Markdown table beside it (same name, .md), and the table on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ncbi_test(params: dict) -> tuple[pd.DataFrame, list[set[str]]]:
    """The NCBI test mentions as the served model takes them (mention + its abstract as context), and gold IDs."""
    data = params["data"]
    args = argparse.Namespace(ncbi_dir=ROOT / data["ncbi_dir"], ncbi_vocabulary=ROOT / data["ncbi_vocabulary"])
    task = load_task("ncbi", args, params["cadec_split"])
    texts = {doc.doc_id: doc.text for doc in task.splits["test"]}
    mentions = task.mentions("test")
    frame = pd.DataFrame({"mention": [m.text for m in mentions], "context": [texts[m.doc_id] for m in mentions]})
    return frame, [set(m.concept_ids) for m in mentions]


def encoder_ceiling(model: HybridNormalizer, queries: list[str]) -> None:
    """The encoders' forwards alone over the distinct queries, batched in order of length under bf16 autocast as
    the model batches them: what no normalizer built on these encoders can beat."""
    from ehrbert.models import classifier, retrieval

    unique = list(dict.fromkeys(queries))
    retrieval.embed(model.encoder, model.tokenizer, unique, model.config.max_length, model.config.embed_batch_size)
    if model.classifier is not None:
        classifier.pooled_vectors(model.classifier, model.classifier_tokenizer, unique, model.classifier_max_length)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def load_clients(url: str, mentions: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads, each sending one mention a request, back to back, for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            body = json.dumps({"dataframe_split": {"columns": ["mention"], "data": [[mentions[i % len(mentions)]]]}})
            request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    ok = response.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    pick = lambda q: 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "errors": errors[0],
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pick(0.5), 1),
        "p99_ms": round(pick(0.99), 1),
    }


def served(model_uri: str, mentions: list[str], seconds: float, soak_seconds: float) -> dict:
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    started = time.perf_counter()
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        while True:
            if server.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit(f"the server did not come up: {' '.join(command)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        startup = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/invocations"
        rss_before = tree_rss(server.pid)
        one = load_clients(url, mentions, 1, seconds)
        eight = load_clients(url, mentions, 8, seconds)
        rss_after = tree_rss(server.pid)
        soak = load_clients(url, mentions, 8, soak_seconds)
        rss_soak = tree_rss(server.pid)
        return {
            "startup_to_ping_s": round(startup, 2),
            "one_client": one,
            "eight_clients": eight,
            "rss_before_mb": round(rss_before / 2**20),
            "rss_after_mb": round(rss_after / 2**20),
            "soak": {
                **soak,
                "rss_start_mb": round(rss_after / 2**20),
                "rss_end_mb": round(rss_soak / 2**20),
                "rss_growth_percent": round(100 * (rss_soak - rss_after) / rss_after, 2),
            },
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def markdown(results: dict) -> str:
    b, s = results["batch"], results["served"]
    rows = [
        (
            "batch, NCBI test mentions (one call)",
            f"{b['mentions_per_s']:,.0f} mentions/s",
            f"{b['ceiling_mentions_per_s']:,.0f} mentions/s (encoders alone); {b['share_of_ceiling']:.0%} of it",
        ),
        (
            "one-mention calls, in process",
            f"{b['single_call_ms']:.1f} ms a call",
            f"batching is {b['batch_vs_loop']:.1f}x the loop",
        ),
        (
            "raw text, MTSamples notes",
            f"{results['notes']['notes_per_s']:.1f} notes/s",
            f"{results['notes']['mentions_found']:,} mentions in {results['notes']['notes']} notes",
        ),
        (
            "served, 1 client",
            f"p50 {s['one_client']['p50_ms']} ms, p99 {s['one_client']['p99_ms']} ms",
            f"{s['one_client']['requests_per_s']} requests/s, {s['one_client']['errors']} errors",
        ),
        (
            "served, 8 clients",
            f"{s['eight_clients']['requests_per_s']} requests/s",
            f"p50 {s['eight_clients']['p50_ms']} ms, p99 {s['eight_clients']['p99_ms']} ms, "
            f"{s['eight_clients']['errors']} errors",
        ),
        ("server memory", f"{s['rss_before_mb']} MB before load", f"{s['rss_after_mb']} MB after"),
        ("start-up to /ping", f"{s['startup_to_ping_s']} s", f"in-process load {results['load_s']} s"),
        (
            f"soak, 8 clients, {s['soak']['seconds']} s",
            f"{s['soak']['errors']} errors",
            f"RSS {s['soak']['rss_start_mb']} -> {s['soak']['rss_end_mb']} MB "
            f"({s['soak']['rss_growth_percent']:+.1f} %)",
        ),
        ("accuracy, NCBI test", f"acc@1 {100 * results['accuracy']['ncbi_acc1']:.2f}", "the same answers as above"),
    ]
    lines = [
        f"# Benchmark: {results['model']} on {results['machine']}",
        "",
        "Medians of repeated runs; measured by `make bench` (`benchmarks/bench.py`). Micro-batching of concurrent "
        + (
            f"requests: on, window {results['microbatch']['wait_ms']:g} ms."
            if results["microbatch"]["on"]
            else "requests: off."
        ),
        "",
        "| what | measured | beside it |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b_} | {c} |" for a, b_, c in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/ehrbert-ncbi@champion")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-calls", type=int, default=100)
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--soak-seconds", type=float, default=60)
    parser.add_argument(
        "--current-code",
        action="store_true",
        help="the model's weights with this checkout's ehrbert package (a registered version packages the code it "
        "was registered with): measures code changes without registering a new version",
    )
    args = parser.parse_args(argv)
    params = read_params(args.params)
    named = args.model + (", with this checkout's code" if args.current_code else "")
    if args.current_code:
        args.model = with_current_code(args.model)

    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(args.model)
    load_s = time.perf_counter() - started
    normalizer = pyfunc.unwrap_python_model().model
    frame, gold = ncbi_test(params)
    answers = pyfunc.predict(frame)
    acc1 = sum(c in g for c, g in zip(answers["concept_id"], gold)) / len(gold)

    queries = mention_queries(frame)
    batch_s = median_time(lambda: pyfunc.predict(frame), args.repeats)
    ceiling_s = median_time(lambda: encoder_ceiling(normalizer, queries), args.repeats)
    singles = frame.head(args.single_calls)
    single_s = median_time(lambda: [pyfunc.predict(singles.iloc[[i]]) for i in range(len(singles))], args.repeats)
    notes = [n.text for n in read_notes(ROOT / params["data"]["notes"], "auto")[: args.notes] if n.text]
    text_frame = pd.DataFrame({"text": notes})
    found = pyfunc.predict(text_frame)
    notes_s = median_time(lambda: pyfunc.predict(text_frame), args.repeats)

    results = {
        "model": named,
        "microbatch": {
            "on": os.environ.get(MICROBATCH_ENV, "1") != "0",
            "wait_ms": float(os.environ.get(BATCH_WAIT_ENV, 0)),
        },
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_s": round(load_s, 2),
        "batch": {
            "mentions": len(frame),
            "mentions_per_s": round(len(frame) / batch_s, 1),
            "ceiling_mentions_per_s": round(len(frame) / ceiling_s, 1),
            "share_of_ceiling": round(ceiling_s / batch_s, 3),
            "single_call_ms": round(1000 * single_s / len(singles), 2),
            "batch_vs_loop": round((single_s / len(singles)) / (batch_s / len(frame)), 1),
        },
        "notes": {"notes": len(notes), "mentions_found": len(found), "notes_per_s": round(len(notes) / notes_s, 1)},
        "accuracy": {"ncbi_acc1": round(acc1, 4)},
    }
    results["served"] = served(args.model, frame["mention"].tolist(), args.seconds, args.soak_seconds)
    write_report(results, args.out, markdown(results))


if __name__ == "__main__":
    main()

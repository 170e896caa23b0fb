"""Speed, memory and soak of the registered champion normalizer, with its accuracy beside every speed figure.

    python benchmarks/bench.py [--model models:/ehrbert-ncbi@champion] [--out reports/benchmark.json]

What it measures (each timing the median of `--repeats` runs, on this machine's cores):
- each way to run the model (`OPTIONS`: the torch form, and the fast form with each index and weights choice,
  `ehrbert.models.fast`): load time; NCBI test mentions through the pyfunc in one call (mentions/s) against the
  ceiling, the same model's encoder forwards over the same queries and nothing else, and against a loop of
  one-mention calls; acc@1 on NCBI test and on BC5CDR test (`--cdr-model`, run the same way); how many NCBI answers
  equal the torch form's; raw text: MTSamples notes through the detector and the normalizer (notes/s);
- served as registered (its model config, or the EHRBERT_* environment): `mlflow models serve` on 127.0.0.1,
  start-up to /ping, then one client and 8 concurrent clients, one mention a request, each client on one
  keep-alive connection, for `--seconds` each: requests/s, p50 and p99 latency, errors; server memory (RSS of its
  process tree) before and after; then 8 clients on 2 server workers of one thread each, with a micro-batching
  window (`--window-ms`) and without micro-batching; and the same for a model that does nothing (`Echo`): the
  ceiling of every served figure on this machine;
- soak: 8 clients for `--soak-seconds`: errors and RSS growth.

It writes the JSON and a Markdown table beside it (`reports/benchmark.md`). It is not a test: nothing here
asserts a number; the issue's targets (`TARGETS`) are printed beside the measurements, met or not.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import http.client
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
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import psutil
from data_paths import data_paths  # benchmarks/ (this script's folder) is on the path

from ehrbert.corpora.notes import read_notes
from ehrbert.models.fast import FastNormalizer
from ehrbert.serving import BATCH_WAIT_ENV, FAST_OPTION_ENVS, MICROBATCH_ENV, mention_queries
from ehrbert.stage import read_params
from ehrbert.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]

# Each way to run a registered hybrid version: a model config over the registered one.
OPTIONS = {
    "torch": {"runtime": "torch"},
    "onnx fp32, exact index": {"runtime": "onnx", "weights": "fp32", "index": "exact"},
    "onnx fp32, hnsw index": {"runtime": "onnx", "weights": "fp32", "index": "hnsw"},
    "onnx int8 classifier, hnsw index": {"runtime": "onnx", "weights": "int8-classifier", "index": "hnsw"},
    "onnx int8, hnsw index": {"runtime": "onnx", "weights": "int8", "index": "hnsw"},
}
TARGETS = {  # the performance issue's, on 2 cores
    "eight_clients_requests_per_s": 200,
    "eight_clients_p99_ms": 50,
    "one_client_p50_ms": 10,
    "batch_mentions_per_s": 1500,
    "share_of_ceiling_percent": 50,  # of the encoders-alone ceiling
    "rss_mb": 1024,
    "startup_to_ping_s": 5,
    "acc1_within": 0.002,
}


def with_current_code(model_uri: str) -> str:
    """A local copy of the model whose packaged `ehrbert` code is this checkout's; returns its path."""
    folder = Path(tempfile.mkdtemp(prefix="ehrbert-bench-")) / "model"
    atexit.register(shutil.rmtree, folder.parent, True)  # a copy of the model: gone when the benchmark ends
    mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder))
    code = folder / "code" / "ehrbert"
    shutil.rmtree(code)
    shutil.copytree(ROOT / "src" / "ehrbert", code, ignore=shutil.ignore_patterns("__pycache__"))
    return str(folder)


README_MARKERS = ("<!-- benchmark: start -->\n", "<!-- benchmark: end -->\n")


def readme_body(table: str) -> str:
    """The report as the README shows it: without its title, its sections one level down (under "## Speed")."""
    return table.split("\n", 2)[2].replace("\n## ", "\n### ")


def write_report(results: dict, out: Path, table: str, readme: Path | None = None) -> None:
    """The figures as JSON in `out`, the Markdown tables beside it (same name, .md) and in `readme` between its
    README_MARKERS (the tables without their title), and the tables on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    if readme is not None:
        text = readme.read_text()
        start, end = (text.index(marker) for marker in README_MARKERS)
        readme.write_text(text[: start + len(README_MARKERS[0])] + readme_body(table) + text[end:])
    print(table)


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_mentions(params: dict, corpus: str) -> tuple[pd.DataFrame, list[set[str]]]:
    """A corpus's test mentions as the served model takes them (mention + its document as context), and gold IDs."""
    task = load_task(corpus, data_paths(params["data"], ROOT), params["cadec_split"])
    texts = {doc.doc_id: doc.text for doc in task.splits["test"]}
    mentions = task.mentions("test")
    frame = pd.DataFrame({"mention": [m.text for m in mentions], "context": [texts[m.doc_id] for m in mentions]})
    return frame, [set(m.concept_ids) for m in mentions]


def acc_at_1(answers: pd.DataFrame, gold: list[set[str]]) -> float:
    return round(sum(c in g for c, g in zip(answers["concept_id"], gold)) / len(gold), 4)


def encoder_ceiling(model, queries: list[str]) -> None:
    """The encoders' forwards alone over the distinct queries, batched as the model batches them (torch: in order of
    length under bf16 autocast, one after the other; the fast form: its ONNX sessions side by side): what no
    normalizer built on them can beat."""
    unique = list(dict.fromkeys(queries))
    if isinstance(model, FastNormalizer):  # side by side, as `FastNormalizer.encode` runs them
        classified = model.side.submit(model.scorer.run, unique) if model.scorer is not None else None
        model.retriever.run(unique)
        if classified is not None:
            classified.result()
        return
    from ehrbert.models import classifier, retrieval

    retrieval.embed(model.encoder, model.tokenizer, unique, model.config.max_length, model.config.embed_batch_size)
    if model.classifier is not None:
        classifier.pooled_vectors(model.classifier, model.classifier_tokenizer, unique, model.classifier_max_length)


def in_process(uri: str, cdr_uri: str, config: dict, tests: dict, notes: list[str], args) -> tuple[dict, list]:
    """One way to run the model (`config`), in process: load, batch, ceiling, single calls, raw text, acc@1."""
    started = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(uri, model_config=config)
    load_s = time.perf_counter() - started
    model = pyfunc.unwrap_python_model().model
    frame, gold = tests["ncbi"]
    answers = pyfunc.predict(frame)
    queries = mention_queries(frame)
    batch_s = median_time(lambda: pyfunc.predict(frame), args.repeats)
    ceiling_s = median_time(lambda: encoder_ceiling(model, queries), args.repeats)
    singles = frame.head(args.single_calls)
    single_s = median_time(lambda: [pyfunc.predict(singles.iloc[[i]]) for i in range(len(singles))], args.repeats)
    text_frame = pd.DataFrame({"text": notes})
    found = pyfunc.predict(text_frame)
    notes_s = median_time(lambda: pyfunc.predict(text_frame), args.repeats)
    cdr_frame, cdr_gold = tests["cdr"]
    cdr_acc = acc_at_1(mlflow.pyfunc.load_model(cdr_uri, model_config=config).predict(cdr_frame), cdr_gold)
    return {
        "config": config,
        "load_s": round(load_s, 2),
        "mentions": len(frame),
        "mentions_per_s": round(len(frame) / batch_s, 1),
        "ceiling_mentions_per_s": round(len(frame) / ceiling_s, 1),
        "share_of_ceiling": round(ceiling_s / batch_s, 3),
        "single_call_ms": round(1000 * single_s / len(singles), 2),
        "batch_vs_loop": round((single_s / len(singles)) / (batch_s / len(frame)), 1),
        "notes": len(notes),
        "mentions_found": len(found),
        "notes_per_s": round(len(notes) / notes_s, 1),
        "ncbi_acc1": acc_at_1(answers, gold),
        "cdr_acc1": cdr_acc,
    }, answers["concept_ids"].tolist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def repeated_load(port: int, mentions: list[str], clients: int, seconds: float, repeats: int) -> dict:
    """`load_clients` `repeats` times: each figure the median over the runs, requests and errors summed."""
    runs = [load_clients(port, mentions, clients, seconds) for _ in range(repeats)]
    summed = {key: sum(run[key] for run in runs) for key in ("seconds", "requests", "errors")}
    medians = {key: statistics.median(run[key] for run in runs) for key in ("requests_per_s", "p50_ms", "p99_ms")}
    return {"clients": clients, "runs": repeats, **summed, **medians}


def load_clients(port: int, mentions: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads, each sending one mention a request on its own keep-alive connection, back to back, for
    `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}

    def client(offset: int) -> None:
        i = offset
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            body = json.dumps({"dataframe_split": {"columns": ["mention"], "data": [[mentions[i % len(mentions)]]]}})
            started = time.perf_counter()
            try:
                connection.request("POST", "/invocations", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (http.client.HTTPException, OSError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1
            i += clients
        connection.close()

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


class Server:
    """`mlflow models serve` of `model_uri` on 127.0.0.1 with `workers` and extra environment, up until closed."""

    def __init__(self, model_uri: str, workers: int = 1, env: dict[str, str] | None = None):
        self.port = _free_port()
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow execs uvicorn
        command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri]
        command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port), "--workers", str(workers)]
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "PATH": path, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while True:
            if self.process.poll() is not None or time.perf_counter() - started > 120:
                self.close()
                raise SystemExit(f"the server did not come up: {' '.join(command)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        self.startup_s = time.perf_counter() - started

    def rss(self) -> int:
        return tree_rss(self.process.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


class Echo(mlflow.pyfunc.PythonModel):
    """A model that does nothing: one fixed answer a row. Served, it measures `mlflow models serve` itself."""

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"concept_id": ["D000001"] * len(model_input), "score": [1.0] * len(model_input)})


def server_ceiling(mentions: list[str], seconds: float, repeats: int) -> dict:
    """Start-up, 1 client and 8 clients of the model that does nothing (`Echo`), served the same way: what no served
    model can beat on this machine."""
    folder = Path(tempfile.mkdtemp(prefix="ehrbert-bench-echo-")) / "model"
    mlflow.pyfunc.save_model(str(folder), python_model=Echo(), input_example=pd.DataFrame({"mention": ["a"]}))
    server = Server(str(folder))
    try:
        one = repeated_load(server.port, mentions, 1, seconds, repeats)
        eight = repeated_load(server.port, mentions, 8, seconds, repeats)
    finally:
        server.close()
        shutil.rmtree(folder.parent, ignore_errors=True)
    return {"startup_to_ping_s": round(server.startup_s, 2), "one_client": one, "eight_clients": eight}


def served(
    model_uri: str, mentions: list[str], seconds: float, soak_seconds: float, window_ms: float, repeats: int
) -> dict:
    """As registered: start-up, 1 and 8 clients, memory, soak; then 8 clients on 2 one-thread workers, with a
    micro-batching window and without micro-batching; then the ceiling (`server_ceiling`)."""
    server = Server(model_uri)
    try:
        rss_before = server.rss()
        one = repeated_load(server.port, mentions, 1, seconds, repeats)
        eight = repeated_load(server.port, mentions, 8, seconds, repeats)
        rss_after = server.rss()
        soak = load_clients(server.port, mentions, 8, soak_seconds)
        rss_soak = server.rss()
    finally:
        server.close()
    results = {
        "startup_to_ping_s": round(server.startup_s, 2),
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
    for key, workers, env in (
        ("two_workers", 2, {FAST_OPTION_ENVS["threads"]: "1"}),
        ("window", 1, {BATCH_WAIT_ENV: f"{window_ms:g}"}),
        ("no_microbatch", 1, {MICROBATCH_ENV: "0"}),
    ):
        server = Server(model_uri, workers, env)
        try:
            load = repeated_load(server.port, mentions, 8, seconds, repeats)
            results[key] = {**load, "rss_mb": round(server.rss() / 2**20)}
        finally:
            server.close()
    results["two_workers"]["threads_each"] = 1
    results["window"]["window_ms"] = window_ms
    results["ceiling"] = server_ceiling(mentions, seconds, repeats)
    return results


def _met(value: float, target: float, at_most: bool = False) -> str:
    return "met" if (value <= target if at_most else value >= target) else "not met"


def markdown(results: dict) -> str:
    s, t = results["served"], TARGETS
    base = results["options"]["torch"]
    lines = [
        f"# Benchmark: {results['model']} on {results['machine']}",
        "",
        "Medians of repeated runs; measured by `make bench` (`benchmarks/bench.py`). BC5CDR accuracy: "
        f"{results['cdr_model']}, run the same way.",
        "",
        "## Each way to run the model, in process",
        "",
        "| option | batch, NCBI test | encoders alone (share) | one-mention call | raw notes | load | acc@1 NCBI | "
        "acc@1 BC5CDR | answers as torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, o in results["options"].items():
        lines.append(
            f"| {name} | {o['mentions_per_s']:,.0f} mentions/s | {o['ceiling_mentions_per_s']:,.0f} "
            f"({o['share_of_ceiling']:.0%}) | {o['single_call_ms']:.1f} ms | {o['notes_per_s']:.1f} notes/s | "
            f"{o['load_s']:.1f} s | {100 * o['ncbi_acc1']:.2f} ({100 * (o['ncbi_acc1'] - base['ncbi_acc1']):+.2f}) | "
            f"{100 * o['cdr_acc1']:.2f} ({100 * (o['cdr_acc1'] - base['cdr_acc1']):+.2f}) | "
            f"{o['same_answers_as_torch']} of {o['mentions']} |"
        )
    registered = results["registered_config"]
    chosen = results["options"].get(results["served_option"], base)
    one, eight, soak = s["one_client"], s["eight_clients"], s["soak"]

    def target(label: str, measured: str, value: float, key: str, at_most: bool = False, unit: str = "") -> tuple:
        goal = t[key]
        return label, measured, f"{'<=' if at_most else '>='} {goal:,}{unit}", _met(value, goal, at_most)

    c = s["ceiling"]
    ceilings = {
        "8 clients, requests/s": f"{c['eight_clients']['requests_per_s']} requests/s",
        "8 clients, p99": f"{c['eight_clients']['p99_ms']} ms",
        "1 client, p50": f"{c['one_client']['p50_ms']} ms",
        "start-up to /ping": f"{c['startup_to_ping_s']} s",
    }

    acc_change = max(abs(chosen["ncbi_acc1"] - base["ncbi_acc1"]), abs(chosen["cdr_acc1"] - base["cdr_acc1"]))
    rows = [
        target(
            "8 clients, requests/s",
            f"{eight['requests_per_s']}",
            eight["requests_per_s"],
            "eight_clients_requests_per_s",
        ),
        target(
            "8 clients, p99",
            f"{eight['p99_ms']} ms (p50 {eight['p50_ms']} ms, {eight['errors']} errors)",
            eight["p99_ms"],
            "eight_clients_p99_ms",
            True,
            " ms",
        ),
        target(
            "1 client, p50",
            f"{one['p50_ms']} ms (p99 {one['p99_ms']} ms, {one['requests_per_s']} requests/s)",
            one["p50_ms"],
            "one_client_p50_ms",
            True,
            " ms",
        ),
        target(
            "batch, NCBI test mentions",
            f"{chosen['mentions_per_s']:,.0f} mentions/s",
            chosen["mentions_per_s"],
            "batch_mentions_per_s",
        ),
        target(
            "share of the encoders-alone ceiling",
            f"{chosen['share_of_ceiling']:.0%} of {chosen['ceiling_mentions_per_s']:,.0f} mentions/s",
            100 * chosen["share_of_ceiling"],
            "share_of_ceiling_percent",
            unit=" %",
        ),
        target(
            "server RSS",
            f"{s['rss_before_mb']} MB before load, {s['rss_after_mb']} MB after",
            s["rss_after_mb"],
            "rss_mb",
            True,
            " MB",
        ),
        target(
            "start-up to /ping", f"{s['startup_to_ping_s']} s", s["startup_to_ping_s"], "startup_to_ping_s", True, " s"
        ),
        (
            "acc@1 against the torch form",
            f"NCBI {100 * (chosen['ncbi_acc1'] - base['ncbi_acc1']):+.2f}, BC5CDR "
            f"{100 * (chosen['cdr_acc1'] - base['cdr_acc1']):+.2f} points",
            f"within {100 * t['acc1_within']:.1f} points",
            _met(acc_change, t["acc1_within"] + 1e-9, True),
        ),
        (
            f"soak, 8 clients, {soak['seconds']} s",
            f"{soak['errors']} errors, RSS {soak['rss_start_mb']} -> "
            f"{soak['rss_end_mb']} MB ({soak['rss_growth_percent']:+.1f} %)",
            "0 errors",
            _met(-soak["errors"], 0),
        ),
    ]
    w, m, off = s["two_workers"], s["window"], s["no_microbatch"]
    lines += [
        "",
        f"## Served as registered ({results['served_option']}: `{json.dumps(registered)}`), micro-batching "
        + ("on" if results["microbatch"]["on"] else "off"),
        "",
        "The ceiling of a served figure is the same server and clients with a model that does nothing (`Echo`); of "
        "the batch, the encoders alone.",
        "",
        "| what | measured | target | | ceiling |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c_} | {d} | {ceilings.get(a, '')} |" for a, b, c_, d in rows),
        "",
        "| 8 clients, other settings | requests/s | p50 / p99 | errors | RSS |",
        "|---|---|---|---|---|",
        f"| 2 workers (`--workers 2`), 1 thread each | {w['requests_per_s']} | {w['p50_ms']} / {w['p99_ms']} ms | "
        f"{w['errors']} | {w['rss_mb']} MB |",
        f"| micro-batching window {m['window_ms']:g} ms | {m['requests_per_s']} | {m['p50_ms']} / {m['p99_ms']} ms | "
        f"{m['errors']} | {m['rss_mb']} MB |",
        f"| micro-batching off | {off['requests_per_s']} | {off['p50_ms']} / {off['p99_ms']} ms | {off['errors']} | "
        f"{off['rss_mb']} MB |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/ehrbert-ncbi@champion")
    parser.add_argument("--cdr-model", default="models:/ehrbert-cdr@champion")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmark.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="shows the tables between its markers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-calls", type=int, default=100)
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10, help="a load run; each is repeated --repeats times")
    parser.add_argument("--soak-seconds", type=float, default=60)
    parser.add_argument("--window-ms", type=float, default=2.0)
    parser.add_argument(
        "--current-code",
        action="store_true",
        help="the model's weights with this checkout's ehrbert package (a registered version packages the code it "
        "was registered with): measures code changes without registering a new version",
    )
    args = parser.parse_args(argv)
    params = read_params(args.params)
    named = args.model + (", with this checkout's code" if args.current_code else "")
    cdr_named = args.cdr_model
    if args.current_code:
        args.model, args.cdr_model = with_current_code(args.model), with_current_code(args.cdr_model)
    registered = mlflow.pyfunc.load_model(args.model).model_config  # loads it once: warms the file cache too
    registered = {k: registered[k] for k in ("runtime", *FAST_OPTION_ENVS) if k in registered}
    tests = {corpus: test_mentions(params, corpus) for corpus in ("ncbi", "cdr")}
    notes = [n.text for n in read_notes(ROOT / params["data"]["notes"], "auto")[: args.notes] if n.text]

    options, answers = {}, {}
    for name, config in OPTIONS.items():
        options[name], answers[name] = in_process(args.model, args.cdr_model, config, tests, notes, args)
        same = sum(a == b for a, b in zip(answers[name], answers["torch"]))
        options[name]["same_answers_as_torch"] = same
        print(f"{name}: {json.dumps(options[name])}", flush=True)
    served_option = next((n for n, c in OPTIONS.items() if all(registered.get(k) == v for k, v in c.items())), "torch")
    results = {
        "model": named,
        "cdr_model": cdr_named,
        "machine": f"{os.cpu_count()} CPU cores",
        "microbatch": {
            "on": os.environ.get(MICROBATCH_ENV, "1") != "0",
            "wait_ms": float(os.environ.get(BATCH_WAIT_ENV, 0)),
        },
        "registered_config": registered,
        "served_option": served_option,
        "options": options,
        "targets": TARGETS,
    }
    mentions = tests["ncbi"][0]["mention"].tolist()
    # the models loaded above stay alive (each pyfunc's micro-batching thread holds its model): keep the garbage
    # collector from walking them while this process is the served model's clients
    gc.collect()
    gc.freeze()
    results["served"] = served(args.model, mentions, args.seconds, args.soak_seconds, args.window_ms, args.repeats)
    write_report(results, args.out, markdown(results), args.readme)


if __name__ == "__main__":
    main()

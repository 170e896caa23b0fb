"""Micro-batching: the queries of concurrent calls answered together, in one batch.

`mlflow models serve` runs each request's `predict` in a thread of its own, so under load several requests are
in `predict` at once; each alone would run the encoders on one short query, which costs nearly as much as a batch
of many. A `MicroBatcher` owns one worker thread: a call hands over its queries and waits; the worker takes every
call that is waiting (and, with `wait_s` > 0, those that arrive within that window after the first), answers all
their queries with one call of `answer`, and gives each call its own slice back, in order. With `wait_s` 0 no
request waits for company: a batch is whatever queued while the previous batch ran, so a lone client sees no
added latency and a crowd is served in batches. Validation stays per request, before the hand-over, so one bad
request never fails another's batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future


class MicroBatcher:
    """Answers `answer(items)` for concurrent callers in shared batches of at most `max_items` items."""

    def __init__(self, answer: Callable[[list], Sequence], wait_s: float = 0.0, max_items: int = 10_000):
        if wait_s < 0 or max_items < 1:
            raise ValueError(f"wait_s must be >= 0 and max_items >= 1, got {wait_s}, {max_items}")
        self.answer, self.wait_s, self.max_items = answer, wait_s, max_items
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # calls per batch, newest last: what the tests read
        self._queue: queue.Queue[tuple[list, Future]] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="ehrbert-microbatch", daemon=True)
        self._worker.start()

    def __call__(self, items: Sequence) -> list:
        if not items:
            return []
        future: Future = Future()
        self._queue.put((list(items), future))
        return future.result()

    def _gather(self) -> list[tuple[list, Future]]:
        calls = [self._queue.get()]
        size = len(calls[0][0])
        deadline = time.monotonic() + self.wait_s
        while size < self.max_items:
            try:
                remaining = deadline - time.monotonic()
                call = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            calls.append(call)
            size += len(call[0])
        return calls

    def _serve(self) -> None:
        while True:
            calls = self._gather()
            self.batch_sizes.append(len(calls))
            try:
                answers = list(self.answer([item for items, _ in calls for item in items]))
            except BaseException as error:  # every waiting call gets the error, and the worker goes on
                for _, future in calls:
                    future.set_exception(error)
                continue
            start = 0
            for items, future in calls:
                future.set_result(answers[start : start + len(items)])
                start += len(items)

"""Answering Triton requests from worker threads, so a python-backend execute() returns at once.

Why: while a stub runs execute(), Triton 2.51's python backend waits for it in 1-second slices and,
when a slice ends with the stub's 300 ms heartbeat late (a busy 2-core machine), answers the batch
"Stub process ... is not healthy" and moves on while the stub is still executing. The stub's late
answer then desynchronises the shared-memory message queue, and tritonserver crashes a few
batches later (README, Reliability). A model whose execute() only validates its requests and hands
them to threads never holds execute() long enough for that check to run.

Since python_backend 24.06 a non-decoupled model may do exactly that: execute() returns None for a
request and sends its one response later through the request's response sender, with the FINAL
flag. Clients see an ordinary (non-streaming) model: tritonclient infer and perf_analyzer as before.

Plain Python (no pb_utils): the adapters pass `send(sender, answer)` and `fail(error) -> answer`.
Every accepted request gets exactly one answer: the work's, else fail(error), and if sending that
raises, one more try with fail(send error). Work must not touch the request object: copy its inputs
in execute(), because the request's shared memory is released when execute() returns.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

Send = Callable[[Any, Any], None]  # (response sender, answer) -> None
Fail = Callable[[BaseException], Any]  # an error -> the answer that reports it
Log = Callable[[str], None]


class _Deliveries:
    """Counts accepted requests until their answer is sent; delivers exactly one answer each."""

    def __init__(self, send: Send, fail: Fail, log_error: Log, on_pending: Callable[[int], None] | None = None) -> None:
        self._send, self._fail, self._log_error = send, fail, log_error
        self._on_pending = on_pending  # e.g. a gauge of requests in flight
        self._pending = 0
        self._idle = threading.Condition()

    def _report(self, pending: int) -> None:
        if self._on_pending is None:
            return
        try:
            self._on_pending(pending)
        except Exception as err:  # reporting must never cost a request its answer
            self._log_error(f"reporting {pending} pending requests failed: {type(err).__name__}: {err}")

    @property
    def pending(self) -> int:
        with self._idle:
            return self._pending

    def _reserve(self, limit: int | None) -> bool:
        with self._idle:
            if limit is not None and self._pending >= limit:
                return False
            self._pending += 1
            self._report(self._pending)  # under the lock: reports arrive in order
        return True

    def _deliver(self, sender: Any, answer: Any) -> None:
        try:
            try:
                self._send(sender, answer)
            except Exception as err:  # e.g. an output tensor the response could not hold
                self._log_error(f"sending an answer failed ({type(err).__name__}: {err}); sending the error instead")
                try:
                    self._send(sender, self._fail(err))
                except Exception as second:  # the sender is gone: nothing left to answer with
                    self._log_error(f"sending the error failed too: {type(second).__name__}: {second}")
        finally:
            with self._idle:
                self._pending -= 1
                self._report(self._pending)
                self._idle.notify_all()

    def _answer(self, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except BaseException as err:  # noqa: BLE001 - whatever happens, the request is answered
            return self._fail(err)

    def wait_idle(self, timeout_s: float) -> int:
        """Waits until every accepted request is answered (or the timeout); returns those left."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)
            return self._pending


class WorkerPool(_Deliveries):
    """Runs one piece of work per request on a pool of threads (the routing BLS: each request
    waits on BLS calls and T4's HTTP API, so requests overlap instead of queueing behind each other).
    At most `max_pending` requests are accepted at once; submit() refuses more (the adapter answers
    those with UNAVAILABLE, like Triton's own queue limit)."""

    def __init__(
        self, workers: int, *, send: Send, fail: Fail, log_error: Log, max_pending: int | None = None,
        on_pending: Callable[[int], None] | None = None, name: str = "answer",
    ) -> None:  # fmt: skip
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_pending is not None and max_pending < workers:
            raise ValueError(f"max_pending ({max_pending}) must be >= workers ({workers})")
        super().__init__(send, fail, log_error, on_pending)
        self.workers = workers
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    def submit(self, sender: Any, work: Callable[[], Any]) -> bool:
        if not self._reserve(self.max_pending):
            return False
        try:
            self._pool.submit(lambda: self._deliver(sender, self._answer(work)))
        except RuntimeError as err:  # the pool was shut down (finalize): answer now, never drop
            self._deliver(sender, self._fail(err))
        return True

    def close(self, timeout_s: float) -> int:
        """Waits for the accepted requests (up to timeout_s), then stops the threads; returns how
        many were still unanswered."""
        left = self.wait_idle(timeout_s)
        self._pool.shutdown(wait=left == 0, cancel_futures=False)
        return left


_STOP = object()


class StepEngine(Protocol):
    """A continuous-batching engine driven one step at a time (vLLM's LLMEngine behind an adapter)."""

    def add(self, key: str, item: Any) -> None: ...  # raises when the engine refuses the request

    def step(self) -> Sequence[tuple[str, Any]]: ...  # (key, output) of the requests that finished

    def abort(self, keys: Sequence[str]) -> None: ...

    def has_unfinished(self) -> bool: ...

    def answer(self, item: Any, output: Any) -> Any: ...  # a finished request's output -> its answer


class StepLoop(_Deliveries):
    """One thread drives a continuous-batching engine: queued requests join the engine between
    steps (up to `max_running` at once) and each is answered as soon as it finishes.

    Why not one engine call per batch: generate() returns when its slowest request is done, so a
    short answer waited for the longest one beside it and a new request for the whole batch before
    it (perf_analyzer at concurrency 16: p99 16 s for ~10 answers/s). A step failure answers every
    running request with fail(error) and aborts them in the engine."""

    def __init__(self, engine: StepEngine, *, max_running: int, send: Send, fail: Fail, log_error: Log, name: str = "engine") -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        super().__init__(send, fail, log_error)
        self.max_running = max_running
        self._engine = engine
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._keys = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, sender: Any, item: Any) -> None:
        self._reserve(None)
        if self._closed:
            self._deliver(sender, self._fail(RuntimeError("the model is shutting down")))
            return
        self._queue.put((sender, item))

    def _admit(self, running: dict[str, tuple[Any, Any]]) -> bool:
        """Moves queued requests into the engine while there is room; blocks for the first one only
        when nothing is running. False once close() was called and everything before it admitted."""
        while len(running) < self.max_running:
            try:
                entry = self._queue.get_nowait() if running else self._queue.get()
            except queue.Empty:
                return True
            if entry is _STOP:
                return False
            sender, item = entry
            key = str(next(self._keys))
            try:
                self._engine.add(key, item)
            except BaseException as err:  # noqa: BLE001 - refused: this request alone gets the error
                self._deliver(sender, self._fail(err))
                continue
            running[key] = entry
        return True

    def _step(self, running: dict[str, tuple[Any, Any]]) -> None:
        try:
            finished = self._engine.step()
            if not finished and not self._engine.has_unfinished():
                raise RuntimeError(f"the engine holds none of the {len(running)} requests it was given")
        except BaseException as err:  # noqa: BLE001 - every running request gets the error
            entries = list(running.values())
            self._abort(list(running))
            running.clear()
            for sender, _ in entries:
                self._deliver(sender, self._fail(err))
            return
        for key, output in finished:
            entry = running.pop(key, None)
            if entry is None:
                self._log_error(f"the engine finished request {key!r}, which is not running")
                continue
            sender, item = entry
            self._deliver(sender, self._answer(lambda: self._engine.answer(item, output)))

    def _abort(self, keys: list[str]) -> None:
        try:
            self._engine.abort(keys)
        except Exception as err:  # the engine is already broken; its requests are answered anyway
            self._log_error(f"aborting {len(keys)} requests failed: {type(err).__name__}: {err}")

    def _run(self) -> None:
        running: dict[str, tuple[Any, Any]] = {}
        accepting = True
        while accepting or running:
            if accepting:
                accepting = self._admit(running)
            if running:
                self._step(running)

    def close(self, timeout_s: float) -> int:
        """Answers everything queued (up to timeout_s), then stops the thread; returns how many
        were still unanswered."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():  # a submit that raced the close: answer it, never drop it
            while True:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is not _STOP:
                    self._deliver(entry[0], self._fail(RuntimeError("the model is shutting down")))
        return self.pending


def call_with_deadline(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """call() on its own thread, waiting at most timeout_s (then TimeoutError naming `what`).

    For BLS calls to a tier that answers through its response sender: if that tier's stub dies
    with the request inside, no answer ever comes, and without a deadline the routing thread (and
    the client) would wait forever. The abandoned thread ends if the answer comes after all."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name=f"deadline-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"{what}: no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]

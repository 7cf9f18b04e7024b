"""bls_router.deferred: every accepted request gets exactly one answer, from a worker thread."""

from __future__ import annotations

import threading
import time

import pytest

from bls_router.deferred import BatchLoop, WorkerPool, call_with_deadline


class Sender:
    """Records what a request was answered with; refuses a second answer like Triton's sender."""

    def __init__(self, refuse: type[Exception] | None = None) -> None:
        self.answers: list = []
        self.refuse = refuse
        self.done = threading.Event()

    def send(self, answer) -> None:
        if self.answers:
            raise RuntimeError("a non-decoupled request takes one response")
        if self.refuse is not None and not str(answer).startswith("error"):
            raise self.refuse("cannot hold this output")
        self.answers.append(answer)
        self.done.set()


def _hooks(log: list):
    return {
        "send": lambda sender, answer: sender.send(answer),
        "fail": lambda err: f"error: {type(err).__name__}: {err}",
        "log_error": log.append,
    }


def test_work_runs_on_a_worker_and_execute_does_not_wait_for_it():
    log: list = []
    pool = WorkerPool(2, **_hooks(log))
    release = threading.Event()
    sender = Sender()
    started = time.perf_counter()
    assert pool.submit(sender, lambda: release.wait(5) and "answer")
    assert time.perf_counter() - started < 0.5 and pool.pending == 1 and not sender.answers
    release.set()
    assert sender.done.wait(5) and sender.answers == ["answer"]
    assert pool.close(5) == 0 and pool.pending == 0 and log == []


def test_a_failing_work_is_answered_with_its_error():
    pool = WorkerPool(1, **_hooks([]))
    sender = Sender()
    pool.submit(sender, lambda: 1 / 0)
    assert pool.close(5) == 0
    assert sender.answers == ["error: ZeroDivisionError: division by zero"]


def test_an_answer_that_cannot_be_sent_is_replaced_by_the_error_once():
    log: list = []
    pool = WorkerPool(1, **_hooks(log))
    sender = Sender(refuse=ValueError)
    pool.submit(sender, lambda: "an answer too large")
    assert pool.close(5) == 0
    assert sender.answers == ["error: ValueError: cannot hold this output"]
    assert len(log) == 1 and "sending an answer failed" in log[0]


def test_requests_overlap_up_to_the_worker_count():
    pool = WorkerPool(4, **_hooks([]))
    barrier = threading.Barrier(4, timeout=5)  # only passes if 4 works run at once
    senders = [Sender() for _ in range(4)]
    for sender in senders:
        pool.submit(sender, lambda: barrier.wait() >= 0 and "ok")
    assert pool.close(10) == 0
    assert [s.answers for s in senders] == [["ok"]] * 4


def test_more_than_max_pending_is_refused_and_nothing_accepted_is_dropped():
    reports: list[int] = []
    pool = WorkerPool(1, max_pending=2, on_pending=reports.append, **_hooks([]))
    release = threading.Event()
    first, second, third = Sender(), Sender(), Sender()
    assert pool.submit(first, lambda: release.wait(5) and "1")
    assert pool.submit(second, lambda: "2")
    assert not pool.submit(third, lambda: "3")  # the adapter answers UNAVAILABLE itself
    release.set()
    assert pool.close(5) == 0
    assert first.answers == ["1"] and second.answers == ["2"] and third.answers == []
    assert reports[:2] == [1, 2] and reports[-1] == 0


def test_a_submit_after_close_is_answered_with_an_error():
    pool = WorkerPool(1, **_hooks([]))
    pool.close(1)
    sender = Sender()
    assert pool.submit(sender, lambda: "late")
    assert sender.answers and sender.answers[0].startswith("error: RuntimeError")
    assert pool.pending == 0


def test_close_reports_requests_still_running_at_its_timeout():
    pool = WorkerPool(1, **_hooks([]))
    release = threading.Event()
    sender = Sender()
    pool.submit(sender, lambda: release.wait(5) and "slow")
    assert pool.close(0.2) == 1
    release.set()
    assert sender.done.wait(5) and sender.answers == ["slow"]


@pytest.mark.parametrize("bad", [0, -1])
def test_pool_sizes_are_checked(bad):
    with pytest.raises(ValueError):
        WorkerPool(bad, **_hooks([]))
    with pytest.raises(ValueError):
        BatchLoop(lambda items: items, max_batch=bad, **_hooks([]))
    with pytest.raises(ValueError, match="max_pending"):
        WorkerPool(4, max_pending=2, **_hooks([]))


# ---------------------------------------------------------------- BatchLoop


def test_queued_requests_are_answered_in_batches_in_order():
    calls: list[list] = []
    gate = threading.Event()

    def process(items):
        gate.wait(5)  # the first call holds the thread while the rest queue up
        calls.append(list(items))
        return [f"answer {item}" for item in items]

    loop = BatchLoop(process, max_batch=3, **_hooks([]))
    senders = [Sender() for _ in range(7)]
    for index, sender in enumerate(senders):
        loop.submit(sender, index)
    gate.set()
    assert loop.close(5) == 0
    assert [s.answers for s in senders] == [[f"answer {i}"] for i in range(7)]
    assert all(1 <= len(batch) <= 3 for batch in calls) and sum(calls, []) == list(range(7))
    assert len(calls) < 7  # what queued behind the first call went to the engine together


def test_a_failing_batch_answers_each_request_with_the_error():
    def process(items):
        raise RuntimeError("engine down")

    loop = BatchLoop(process, max_batch=8, **_hooks([]))
    senders = [Sender() for _ in range(3)]
    for sender in senders:
        loop.submit(sender, "x")
    assert loop.close(5) == 0
    assert all(s.answers == ["error: RuntimeError: engine down"] for s in senders)


def test_a_batch_with_the_wrong_number_of_answers_is_an_error_for_each():
    loop = BatchLoop(lambda items: [], max_batch=8, **_hooks([]))
    senders = [Sender(), Sender()]
    for sender in senders:
        loop.submit(sender, "x")
    assert loop.close(5) == 0
    assert all(s.answers[0].startswith("error: RuntimeError: process() returned 0 answers") for s in senders)


def test_close_answers_what_is_queued_and_later_submits_get_an_error():
    loop = BatchLoop(lambda items: [f"done {i}" for i in items], max_batch=2, **_hooks([]))
    senders = [Sender() for _ in range(5)]
    for index, sender in enumerate(senders):
        loop.submit(sender, index)
    assert loop.close(5) == 0
    assert [s.answers for s in senders] == [[f"done {i}"] for i in range(5)]
    late = Sender()
    loop.submit(late, 99)
    assert late.answers[0].startswith("error: RuntimeError: the model is shutting down") and loop.pending == 0


# ---------------------------------------------------------------- call_with_deadline


def test_call_with_deadline_returns_the_value_or_reraises():
    assert call_with_deadline(lambda: 42, 5, "t2") == 42
    with pytest.raises(KeyError):
        call_with_deadline(lambda: {}["missing"], 5, "t2")


def test_call_with_deadline_gives_up_on_a_call_that_never_answers():
    never = threading.Event()
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="t2: no answer within 0.2 s"):
        call_with_deadline(lambda: never.wait(30), 0.2, "t2")
    assert time.perf_counter() - started < 2
    never.set()

"""bls_router.deferred: every accepted request gets exactly one answer, from a worker thread."""

from __future__ import annotations

import threading
import time

import pytest

from bls_router.deferred import StepLoop, WorkerPool, call_with_deadline


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
        StepLoop(CountdownEngine(), max_running=bad, **_hooks([]))
    with pytest.raises(ValueError, match="max_pending"):
        WorkerPool(4, max_pending=2, **_hooks([]))


# ---------------------------------------------------------------- StepLoop


class CountdownEngine:
    """A continuous-batching engine in miniature: item n finishes after n steps. Records what it
    held at each step; `fail_steps` makes that many steps raise, `refuse` items are not added."""

    def __init__(self, *, fail_steps: int = 0, refuse=(), lose: bool = False, step_s: float = 0.0) -> None:
        self.left: dict[str, int] = {}
        self.items: dict[str, object] = {}
        self.held: list[int] = []
        self.aborted: list[str] = []
        self.fail_steps, self.refuse, self.lose, self.step_s = fail_steps, set(refuse), lose, step_s

    def add(self, key, item):
        if item in self.refuse:
            raise ValueError(f"refused {item}")
        self.left[key], self.items[key] = item, item

    def step(self):
        time.sleep(self.step_s)
        self.held.append(len(self.left))
        if self.fail_steps:
            self.fail_steps -= 1
            raise RuntimeError("engine down")
        if self.lose:
            self.left.clear()
            return []
        for key in self.left:
            self.left[key] -= 1
        finished = [(key, f"output {self.items[key]}") for key, n in self.left.items() if n <= 0]
        for key, _ in finished:
            del self.left[key]
        return finished

    def abort(self, keys):
        self.aborted.extend(keys)
        for key in keys:
            self.left.pop(key, None)

    def has_unfinished(self):
        return bool(self.left)

    def answer(self, item, output):
        if item == 13:
            raise ValueError("unlucky output")
        return f"{output} for {item}"


def _submit_all(loop, items):
    senders = [Sender() for _ in items]
    for sender, item in zip(senders, items):
        loop.submit(sender, item)
    return senders


def test_each_request_is_answered_when_it_finishes_not_when_its_batch_does():
    engine = CountdownEngine(step_s=0.01)
    loop = StepLoop(engine, max_running=8, **_hooks([]))
    long, short = _submit_all(loop, [200, 1])
    assert short.done.wait(5) and short.answers == ["output 1 for 1"]
    assert not long.done.is_set()  # the short one did not wait for the long one beside it
    late = _submit_all(loop, [2])[0]
    assert late.done.wait(5) and not long.done.is_set()  # nor did a request that came later
    assert loop.close(10) == 0 and long.answers == ["output 200 for 200"]


def test_the_engine_never_holds_more_than_max_running():
    engine = CountdownEngine()
    loop = StepLoop(engine, max_running=3, **_hooks([]))
    senders = _submit_all(loop, [3, 1, 4, 1, 5, 9, 2, 6])
    assert loop.close(5) == 0
    assert [s.answers for s in senders] == [[f"output {i} for {i}"] for i in [3, 1, 4, 1, 5, 9, 2, 6]]
    assert max(engine.held) == 3


def test_a_refused_request_gets_its_error_and_the_others_their_answers():
    loop = StepLoop(CountdownEngine(refuse=[7]), max_running=4, **_hooks([]))
    good, bad, other = _submit_all(loop, [2, 7, 1])
    assert loop.close(5) == 0
    assert bad.answers == ["error: ValueError: refused 7"]
    assert good.answers == ["output 2 for 2"] and other.answers == ["output 1 for 1"]


def test_a_failed_step_answers_every_running_request_with_the_error_and_aborts_them():
    engine = CountdownEngine(fail_steps=1)
    gate = threading.Event()
    original_step = engine.step
    engine.step = lambda: gate.wait(5) and original_step()  # both requests are in before the step
    loop = StepLoop(engine, max_running=4, **_hooks([]))
    first, second = _submit_all(loop, [3, 2])
    time.sleep(0.1)
    gate.set()
    assert first.done.wait(5) and second.done.wait(5)
    assert first.answers == second.answers == ["error: RuntimeError: engine down"]
    assert sorted(engine.aborted) == ["0", "1"]
    after = _submit_all(loop, [1])[0]  # the engine works again: so does the loop
    assert loop.close(5) == 0 and after.answers == ["output 1 for 1"]


def test_an_output_that_cannot_be_answered_is_an_error_for_that_request_only():
    loop = StepLoop(CountdownEngine(), max_running=4, **_hooks([]))
    unlucky, fine = _submit_all(loop, [13, 1])
    assert loop.close(5) == 0
    assert unlucky.answers == ["error: ValueError: unlucky output"] and fine.answers == ["output 1 for 1"]


def test_requests_the_engine_lost_are_answered_with_an_error():
    loop = StepLoop(CountdownEngine(lose=True), max_running=4, **_hooks([]))
    (sender,) = _submit_all(loop, [3])
    assert loop.close(5) == 0
    assert sender.answers[0].startswith("error: RuntimeError: the engine holds none of the 1 requests")


def test_close_answers_what_is_queued_and_later_submits_get_an_error():
    loop = StepLoop(CountdownEngine(), max_running=2, **_hooks([]))
    senders = _submit_all(loop, [1, 2, 3, 4, 5])
    assert loop.close(5) == 0
    assert [s.answers for s in senders] == [[f"output {i} for {i}"] for i in range(1, 6)]
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

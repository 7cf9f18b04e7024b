"""A thread-safe circuit breaker for a remote tier.

closed --N consecutive failures--> open --cool-down--> half-open (one trial call)
half-open --trial succeeds--> closed;  half-open --trial fails--> open (cool-down restarts)

While open, callers fail fast instead of waiting out timeouts against an endpoint that is down, so
the cascade falls back at once. The clock is injectable so tests can step through the cool-down.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import Any


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._trial_started = 0.0
        self._times_opened = 0
        self._rejected = 0

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.reset_timeout_s

    @property
    def state(self) -> BreakerState:
        """The state a caller would see now (an open breaker past its cool-down reads half-open)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooled_down():
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open only one trial call is let through at a time.

        A caller that got True must report the outcome with record_success / record_failure.
        """
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooled_down():
                self._state = BreakerState.HALF_OPEN
                self._trial_in_flight = False
            if self._state is BreakerState.CLOSED:
                return True
            # A trial whose outcome never came back (caller died) stops blocking after a cool-down.
            trial_lost = self._trial_in_flight and self._clock() - self._trial_started >= self.reset_timeout_s
            if self._state is BreakerState.HALF_OPEN and (not self._trial_in_flight or trial_lost):
                self._trial_in_flight = True
                self._trial_started = self._clock()
                return True
            self._rejected += 1
            return False

    def record_success(self) -> None:
        # Any success closes the breaker, even one that left before it opened: the endpoint answers.
        with self._lock:
            self._state = BreakerState.CLOSED
            self._consecutive_failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive_failures += 1
            trial_failed = self._state is BreakerState.HALF_OPEN
            if trial_failed or (
                self._state is BreakerState.CLOSED and self._consecutive_failures >= self.failure_threshold
            ):
                self._open()
            # A failure reported while already open (a call let through before it opened) does not
            # restart the cool-down, so stragglers cannot keep the breaker open forever.

    def trip(self) -> None:
        """Open now, whatever the streak: an outside check (a failed health probe) saw the
        endpoint down, which needs no N failures in a row to be believed."""
        with self._lock:
            if self._state is not BreakerState.OPEN or self._cooled_down():  # half-open: a failed trial
                self._open()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False
        self._times_opened += 1

    def seconds_until_trial(self) -> float:
        """0 unless open; otherwise how long the cool-down still runs."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def snapshot(self) -> dict[str, Any]:
        """State and counters for metrics endpoints and logs."""
        state = self.state
        with self._lock:
            return {
                "state": state.value,
                "consecutive_failures": self._consecutive_failures,
                "failure_threshold": self.failure_threshold,
                "times_opened": self._times_opened,
                "rejected_calls": self._rejected,
            }

    def __repr__(self) -> str:
        snap = self.snapshot()
        return (
            f"CircuitBreaker(state={snap['state']}, failures={snap['consecutive_failures']}"
            f"/{self.failure_threshold}, reset_timeout_s={self.reset_timeout_s})"
        )

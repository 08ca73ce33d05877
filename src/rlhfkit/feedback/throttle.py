"""Login throttling: failed attempts counted per username and per client address, in a sliding window.

After ``per_user`` failures for one username (by its key: ``Alice`` and ``alice`` count together,
whether or not the account exists) within ``window``, or ``per_client`` failures from one address,
further attempts are refused with 429 and Retry-After until the oldest failure leaves the window,
even with the right password, so guessing costs the attacker time, not the annotators. A success
clears the username's count. Counts live in the server process's memory (a restart forgets them;
several server processes count separately); at most ``max_keys`` keys are kept, the stalest dropped.
Behind a reverse proxy every client has the proxy's address: raise ``per_client`` there.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rlhfkit.feedback.assignment import FeedbackError


@dataclass
class LoginThrottle:
    per_user: int = 5
    per_client: int = 30
    window: timedelta = timedelta(minutes=15)
    max_keys: int = 100_000
    _failures: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, key: tuple, now: datetime) -> deque:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def wait_seconds(self, user_key: str, client: str, now: datetime) -> int:
        """Seconds until this username and client may try again (0: now)."""
        with self._lock:
            waits = [0]
            for key, limit in ((("user", user_key), self.per_user), (("client", client), self.per_client)):
                times = self._recent(key, now)
                if len(times) >= limit:
                    waits.append(math.ceil((times[-limit] + self.window - now).total_seconds()))
            return max(waits)

    def check(self, user_key: str, client: str, now: datetime) -> None:
        """A 429 FeedbackError (with Retry-After) when this username or client must wait."""
        if (wait := self.wait_seconds(user_key, client, now)) > 0:
            raise FeedbackError(429, "too_many_attempts", f"Too many failed sign-ins; try again in {wait} seconds.",
                                retry_after=wait)

    def failed(self, user_key: str, client: str, now: datetime) -> None:
        with self._lock:
            for key in (("user", user_key), ("client", client)):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def succeeded(self, user_key: str) -> None:
        with self._lock:
            self._failures.pop(("user", user_key), None)

"""A judge behind any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, Ollama, hosted APIs,
``rlhfkit serve``).

The judge asks for one token at temperature 0 with ``logprobs`` and ``top_logprobs``; P(A) is the
softmax of the log-probs of "A" and "B" among the top tokens (the tokens "A" and "B" themselves, else
variants such as " A"; one missing counts as impossible). When
the server returns no log-probs, or neither label is among them, the answer's text decides (A, B or,
if it is neither, a tie).

Operation: the URL comes from the spec (or ``$OPENAI_BASE_URL`` for the spec ``openai``) and the key
from ``$OPENAI_API_KEY``; at most ``concurrency`` requests are in flight; each has a ``timeout`` and
is retried up to ``retries`` times with exponential backoff on connection errors, timeouts, 429 and
5xx answers; every answer is stored in an SQLite cache keyed by the request, so a rerun sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rlhfkit.config import ConfigError
from rlhfkit.judge.base import Comparison, Verdict
from rlhfkit.judge.constitution import Principle, principles_for
from rlhfkit.judge.request_text import judge_request

RETRIABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeRequestError(RuntimeError):
    """A judge request that failed after all retries (or with an error that retrying cannot fix)."""


class ResponseCache:
    """Answers by request key, in an SQLite file shared by the judge's threads."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self.db.commit()

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, body: dict) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO answers (key, body) VALUES (?, ?)", (key, json.dumps(body)))
            self.db.commit()


def label_probability(choice: dict) -> float:
    """P(A) from one chat-completion choice (see the module docstring)."""
    content = (choice.get("logprobs") or {}).get("content") or []
    if content:
        found: dict[str, float] = {}
        entries = content[0].get("top_logprobs") or [content[0]]
        for exact in (True, False):  # the tokens "A"/"B" themselves first, then variants such as " A"
            for entry in entries:
                label = entry["token"] if exact else entry["token"].strip()
                if label in ("A", "B") and label not in found:
                    found[label] = entry["logprob"]
        if found:
            a, b = found.get("A", -math.inf), found.get("B", -math.inf)
            top = max(a, b)
            return math.exp(a - top) / (math.exp(a - top) + math.exp(b - top))
    text = (choice.get("message") or {}).get("content", "").strip()
    return 1.0 if text.startswith("A") else 0.0 if text.startswith("B") else 0.5


class HTTPJudge:
    """An LLM judge over HTTP (OpenAI chat completions)."""

    def __init__(self, base_url: str, constitution: list[Principle], *, model: str | None = None,
                 api_key: str | None = None, principles: str = "all", seed: int = 0, concurrency: int = 8,
                 timeout: float = 60.0, retries: int = 4, cache: str | Path | None = None, top_logprobs: int = 20,
                 backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.constitution, self.principles, self.rng = constitution, principles, random.Random(seed)
        self.api_key = api_key
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.top_logprobs = top_logprobs
        self.cache = ResponseCache(cache) if cache else None
        self.sent = 0  # HTTP attempts made (answers from the cache send none)
        self.model = model or self.first_model()
        self.name = f"http:{self.model}"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One HTTP exchange with retries; returns the decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            self.sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode(errors="replace")
                last_error = JudgeRequestError(f"{method} {self.base_url}{path}: HTTP {err.code}: {detail}")
                if err.code not in RETRIABLE_STATUS:
                    raise last_error from err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last_error = err
        raise JudgeRequestError(f"{method} {self.base_url}{path}: failed after {self.retries + 1} attempts: "
                                f"{last_error}")

    def first_model(self) -> str:
        models = self._call("GET", "/models").get("data") or []
        if not models:
            raise JudgeRequestError(f"{self.base_url}/models lists no model; pass --judge-model")
        return models[0]["id"]

    def request_body(self, comparison: Comparison) -> dict:
        chosen = principles_for(self.constitution, self.principles, self.rng)
        return {"model": self.model, "messages": [{"role": "user", "content": judge_request(comparison, chosen)}],
                "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs}

    def ask(self, body: dict) -> dict:
        key = hashlib.sha256(json.dumps([self.base_url, body], sort_keys=True).encode()).hexdigest()
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            return cached
        answer = self._call("POST", "/chat/completions", body)
        if self.cache is not None:
            self.cache.put(key, answer)
        return answer

    def judge(self, comparisons: list[Comparison]) -> list[Verdict]:
        bodies = [self.request_body(c) for c in comparisons]  # in order: principle sampling is seeded
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self.ask, bodies))
        return [Verdict(label_probability(answer["choices"][0])) for answer in answers]


def http_judge_from_spec(spec: str, constitution: list[Principle], **options) -> HTTPJudge:
    """``http(s)://host/v1`` or ``openai`` ($OPENAI_BASE_URL); the key from $OPENAI_API_KEY."""
    url = os.environ.get("OPENAI_BASE_URL") if spec == "openai" else spec
    if not url:
        raise ConfigError("judge 'openai': set $OPENAI_BASE_URL (e.g. https://api.openai.com/v1)")
    return HTTPJudge(url, constitution, api_key=os.environ.get("OPENAI_API_KEY"), **options)

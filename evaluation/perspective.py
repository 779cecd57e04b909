"""Perspective API as a toxicity scorer: `client(texts) -> list[float | None]`, higher meaning more toxic.

The API is slow (1 query per second by default), flaky under load and paid for in quota, so the client
rate-limits itself, retries transient failures with exponential backoff, and keeps every score in a sqlite cache
so a rerun never asks twice. A text that still cannot be scored is `None` and counted in `failures`, never 0.
The key travels as the `key` query parameter and is blanked out of every message and log record.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import requests
from tqdm.auto import tqdm

from core.errors import SuiteError
from evaluation.scorers import Scorer, register_scorer

DEFAULT_ENDPOINT = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
RETRY_STATUS = {429} | set(range(500, 600))
REJECTED_KEY_STATUS = {401, 403}
RETRY_ERRORS = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)

log = logging.getLogger(__name__)


def redact(text: str, secrets: set[str] | frozenset[str]) -> str:
    """Replace each secret (raw or URL-encoded) by `***`, so a key never reaches a message or a log."""
    for secret in secrets:
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


class _RedactKeys(logging.Filter):
    """Blanks keys out of urllib3's records: it logs each request's URL, `?key=...` included, at DEBUG."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACT_KEYS = _RedactKeys()
_URL_LOGGERS = ["urllib3.connectionpool", "urllib3.util.retry"]


def read_score(payload: object, attribute: str) -> float | None:
    """`attributeScores.<attribute>.summaryScore.value` as a float, or None when absent or not a finite number."""
    try:
        value = payload["attributeScores"][attribute]["summaryScore"]["value"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class PerspectiveClient:
    """A Perspective API scorer with a rate limit, retries and an on-disk cache; follows the scorer protocol.

    `cache` is a sqlite file shared across runs (None keeps the cache in memory, for this process only).
    Only successful scores are cached, so a rerun retries the texts that failed.
    """

    def __init__(
        self,
        cache: str | Path | None = None,
        api_key_env: str = "PERSPECTIVE_API_KEY",
        endpoint: str = DEFAULT_ENDPOINT,
        attribute: str = "TOXICITY",
        languages: list[str] | None = None,
        qps: float = 1.0,
        timeout: float = 10.0,
        max_retries: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise SuiteError(f"environment variable {api_key_env} is not set: put your Perspective API key in it")
        if qps <= 0 or timeout <= 0 or max_retries < 0 or base_delay < 0:
            raise SuiteError("perspective: qps and timeout must be positive, max_retries and base_delay not negative")
        self._key = key
        self.api_key_env = api_key_env
        self.endpoint = redact(endpoint, {key})
        self._url = endpoint
        self.attribute = attribute
        self.languages = ["en"] if languages is None else list(languages)
        self.qps, self.timeout = qps, timeout
        self.max_retries, self.base_delay, self.max_delay = max_retries, base_delay, max_delay
        self.failures = 0  # returned Nones, over every call
        self.requests_sent = 0  # HTTP requests, retries included: what the quota is charged for
        self._next_slot = 0.0  # time.monotonic() before which no request may start
        self._session = requests.Session()
        try:
            self._db = sqlite3.connect(":memory:" if cache is None else str(cache))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (attribute TEXT NOT NULL, text TEXT NOT NULL, score REAL NOT NULL, "
                "PRIMARY KEY (attribute, text))"
            )
            self._db.commit()
        except sqlite3.Error as exc:
            raise SuiteError(f"cannot open the Perspective cache {cache}: {exc}") from None
        _REDACT_KEYS.secrets.add(key)
        for name in _URL_LOGGERS:
            logging.getLogger(name).addFilter(_REDACT_KEYS)  # a no-op when already there

    def __repr__(self) -> str:
        return f"PerspectiveClient(endpoint={self.endpoint!r}, attribute={self.attribute!r}, qps={self.qps})"

    def __call__(self, texts: list[str]) -> list[float | None]:
        """Score a batch: cached texts cost nothing, each distinct new text costs one request (plus retries)."""
        unique = list(dict.fromkeys(texts))
        scores = self._cached(unique)
        todo = [t for t in unique if t not in scores]
        for text in tqdm(todo, desc=f"perspective {self.attribute}", unit="text", leave=False):
            scores[text] = self._score(text)
            if scores[text] is not None:
                self._db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", (self.attribute, text, scores[text]))
                self._db.commit()  # per text, so an interrupted run keeps what it paid for
        out = [scores[t] for t in texts]
        self.failures += sum(s is None for s in out)
        return out

    def check(self) -> None:
        """One request, before any training starts: a wrong endpoint or key fails now, in one line, not hours in."""
        try:
            response = self._post("Perspective connectivity check.")
        except RETRY_ERRORS as exc:
            raise SuiteError(f"cannot reach the Perspective API at {self.endpoint}: {self._reason(exc)}") from None
        if response.status_code in REJECTED_KEY_STATUS:
            raise self._rejected_key(response.status_code)
        if response.status_code != 200:
            raise SuiteError(f"the Perspective API at {self.endpoint} answered HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if read_score(payload, self.attribute) is None:
            raise SuiteError(f"the Perspective API at {self.endpoint} gave no {self.attribute} summary score")

    def close(self) -> None:
        self._session.close()
        self._db.close()

    def __enter__(self) -> PerspectiveClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cached(self, texts: list[str]) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for i in range(0, len(texts), 500):  # under sqlite's limit on bound parameters
            chunk = texts[i : i + 500]
            query = f"SELECT text, score FROM scores WHERE attribute = ? AND text IN ({', '.join('?' * len(chunk))})"
            found.update(self._db.execute(query, (self.attribute, *chunk)))
        return found

    def _score(self, text: str) -> float | None:
        """One text through the retry loop. Transient failures (429, 5xx, timeouts, dropped connections, broken
        JSON) are retried; an answer without the score (e.g. HTTP 400, unsupported language) is not."""
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
                log.debug("perspective: %s, retry %d/%d in %.2fs", reason, attempt, self.max_retries, delay)
                time.sleep(delay)
            try:
                response = self._post(text)
            except RETRY_ERRORS as exc:
                reason = type(exc).__name__
                continue
            if response.status_code in REJECTED_KEY_STATUS:
                raise self._rejected_key(response.status_code)
            if response.status_code in RETRY_STATUS:
                reason = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                return self._give_up(text, f"HTTP {response.status_code}")
            try:
                payload = response.json()
            except ValueError:
                reason = "malformed JSON"
                continue
            score = read_score(payload, self.attribute)
            if score is None:
                return self._give_up(text, f"no attributeScores.{self.attribute}.summaryScore.value in the answer")
            return score
        return self._give_up(text, f"{reason} after {self.max_retries + 1} attempts")

    def _post(self, text: str) -> requests.Response:
        """One request, once the rate limit allows it. Errors that are not worth retrying become a SuiteError."""
        now = time.monotonic()
        if now < self._next_slot:
            time.sleep(self._next_slot - now)
        self._next_slot = max(now, self._next_slot) + 1.0 / self.qps
        body = {
            "comment": {"text": text},
            "requestedAttributes": {self.attribute: {}},
            "languages": self.languages,
            "doNotStore": True,
        }
        self.requests_sent += 1
        try:
            return self._session.post(self._url, params={"key": self._key}, json=body, timeout=self.timeout)
        except RETRY_ERRORS:
            raise
        except requests.RequestException as exc:  # a malformed endpoint URL and the like: the user's to fix
            raise SuiteError(f"perspective: bad request to {self.endpoint}: {self._reason(exc)}") from None

    def _reason(self, exc: Exception) -> str:
        return redact(f"{type(exc).__name__}: {exc}", {self._key}).replace("\n", " ")

    def _rejected_key(self, status: int) -> SuiteError:
        return SuiteError(
            f"the Perspective API at {self.endpoint} rejected the key in {self.api_key_env} (HTTP {status})"
        )

    def _give_up(self, text: str, reason: str) -> None:
        log.warning("perspective: could not score a text (%s): %.60r", redact(reason, {self._key}), text)
        return None


@register_scorer("perspective")
def perspective(**kwargs) -> Scorer:
    """A checked PerspectiveClient: it has answered once before anything trains on its scores."""
    client = PerspectiveClient(**kwargs)
    client.check()
    return client

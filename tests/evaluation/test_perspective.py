"""The Perspective client against a scripted local server: retries, rate limit, cache, and a key that never leaks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from core.errors import SuiteError
from evaluation.perspective import PerspectiveClient

SECRET = "AIzaTest-not-a-real-key_0123456789"
PATH = "/v1alpha1/comments:analyze"


@dataclass
class Reply:
    status: int = 200
    body: str | None = None  # None: a well-formed answer whose score is len(text) / 100
    delay: float = 0.0


def answer(score: float) -> str:
    return json.dumps({"attributeScores": {"TOXICITY": {"summaryScore": {"value": score, "type": "PROBABILITY"}}}})


class FakePerspective:
    """Answers each request with the next scripted Reply, then with well-formed scores; records what it got."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
        self.script: list[Reply] = []
        self.received: list[dict] = []  # {"query": ..., "body": ...} per request
        self.lock = threading.Lock()

    def take(self, query: dict, body: dict) -> Reply:
        with self.lock:
            self.received.append({"query": query, "body": body})
            return self.script.pop(0) if self.script else Reply()


@pytest.fixture
def fake():
    holder: list[FakePerspective] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = holder[0].take(parse_qs(urlparse(self.path).query), body)
            time.sleep(reply.delay)
            data = (reply.body if reply.body is not None else answer(len(body["comment"]["text"]) / 100)).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(FakePerspective(server))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


@pytest.fixture
def client_for(monkeypatch, tmp_path):
    """Build clients on a shared cache file with test-sized delays; every one is closed afterwards."""
    monkeypatch.setenv("PERSPECTIVE_API_KEY", SECRET)
    clients = []

    def make(endpoint: str, **kwargs) -> PerspectiveClient:
        options = {
            "cache": tmp_path / "perspective.sqlite",
            "qps": 1000.0,
            "timeout": 2.0,
            "max_retries": 3,
            "base_delay": 0.01,
            **kwargs,
        }
        clients.append(PerspectiveClient(endpoint=endpoint, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{PATH}"


def test_scores_come_back_in_order_and_the_key_goes_as_the_key_parameter(fake, client_for):
    client = client_for(fake.url)
    assert client(["ab", "abcd", "a"]) == [0.02, 0.04, 0.01]
    assert [r["query"]["key"] for r in fake.received] == [[SECRET]] * 3
    assert fake.received[0]["body"]["requestedAttributes"] == {"TOXICITY": {}}
    assert fake.received[0]["body"]["comment"] == {"text": "ab"}
    assert client.failures == 0 and client([]) == []


@pytest.mark.parametrize(
    "script",
    [
        [Reply(429), Reply(429), Reply(429)],
        [Reply(500), Reply(503)],
        [Reply(delay=0.5)],  # slower than the client's timeout
    ],
    ids=["429s", "5xx", "timeout"],
)
def test_transient_failures_are_retried_until_a_score_comes(fake, client_for, script):
    fake.script = list(script)
    client = client_for(fake.url, timeout=0.2)
    assert client(["abc"]) == [0.03]
    assert len(fake.received) == len(script) + 1
    assert client.failures == 0 and client.requests_sent == len(script) + 1


@pytest.mark.parametrize("reply", [Reply(body="{not json"), Reply(500)], ids=["malformed-json", "500"])
def test_exhausted_retries_give_none_counted_and_not_cached(fake, client_for, reply):
    fake.script = [reply] * 4
    client = client_for(fake.url, max_retries=3)
    assert client(["abc", "ab"]) == [None, 0.02]
    assert len(fake.received) == 4 + 1
    assert client.failures == 1
    assert client(["abc"]) == [0.03]  # a rerun asks again for what failed, and only for that
    assert len(fake.received) == 6


@pytest.mark.parametrize(
    "reply",
    [Reply(body=json.dumps({"attributeScores": {}})), Reply(body=answer(float("nan"))), Reply(400)],
    ids=["missing-field", "nan", "400"],
)
def test_answers_without_a_score_give_none_without_retrying(fake, client_for, reply):
    fake.script = [reply]
    client = client_for(fake.url)
    assert client(["abc", "abc"]) == [None, None]
    assert len(fake.received) == 1
    assert client.failures == 2


def test_backoff_doubles_between_retries(fake, client_for):
    fake.script = [Reply(429)] * 3
    client = client_for(fake.url, base_delay=0.05)
    start = time.monotonic()
    assert client(["abc"]) == [0.03]
    assert time.monotonic() - start >= 0.05 * (1 + 2 + 4)


def test_requests_are_spaced_by_the_rate_limit(fake, client_for):
    client = client_for(fake.url, qps=20.0)
    texts = [f"text {i}" for i in range(5)]
    start = time.monotonic()
    client(texts)
    assert time.monotonic() - start >= (len(texts) - 1) / 20
    assert len(fake.received) == len(texts)


def test_the_cache_means_no_text_is_paid_for_twice(fake, client_for):
    first = client_for(fake.url)
    scores = first(["ab", "abc", "ab"])
    assert scores == [0.02, 0.03, 0.02] and len(fake.received) == 2  # duplicates in a batch are asked once
    assert first(["abc", "ab"]) == [0.03, 0.02] and len(fake.received) == 2
    first.close()
    second = client_for(fake.url)
    assert second(["ab", "abc"]) == [0.02, 0.03] and len(fake.received) == 2
    assert second.requests_sent == 0
    assert client_for(fake.url, attribute="INSULT")(["ab"]) == [None]  # another attribute is another cache entry
    assert len(fake.received) == 3


def test_the_key_stays_out_of_the_cache_file(fake, client_for, tmp_path):
    client = client_for(fake.url)
    client(["a rather distinctive sentence"])
    files = list(tmp_path.glob("perspective.sqlite*"))
    stored = b"".join(f.read_bytes() for f in files)
    assert b"a rather distinctive sentence" in stored  # the files read are the ones written
    assert SECRET.encode() not in stored


def test_the_key_stays_out_of_logs_and_errors(fake, client_for, caplog):
    caplog.set_level(logging.DEBUG)
    fake.script = [Reply(500)] * 4
    assert client_for(fake.url)(["abc"]) == [None]
    with pytest.raises(SuiteError) as info:
        client_for(closed_port_url(), max_retries=0).check()
    assert "key=***" in caplog.text  # urllib3 logged the request URL, with the key blanked out
    assert "could not score" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_a_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_PERSPECTIVE_KEY", raising=False)
    with pytest.raises(SuiteError, match="environment variable MY_PERSPECTIVE_KEY is not set"):
        PerspectiveClient(api_key_env="MY_PERSPECTIVE_KEY")


def test_check_names_an_unreachable_endpoint_in_one_line(client_for):
    url = closed_port_url()
    client = client_for(url)
    with pytest.raises(SuiteError, match="cannot reach the Perspective API") as info:
        client.check()
    message = str(info.value)
    assert url in message and SECRET not in message and "\n" not in message
    assert client.requests_sent == 1


def test_check_passes_on_a_live_endpoint_and_names_the_variable_of_a_rejected_key(fake, client_for):
    client = client_for(fake.url)
    client.check()
    assert len(fake.received) == 1
    fake.script = [Reply(403)]
    with pytest.raises(SuiteError, match="rejected the key in PERSPECTIVE_API_KEY") as info:
        client.check()
    assert SECRET not in str(info.value)


def test_an_unusable_cache_path_is_a_suite_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", SECRET)
    with pytest.raises(SuiteError, match="cannot open the Perspective cache"):
        PerspectiveClient(cache=tmp_path / "missing-dir" / "perspective.sqlite")


def test_the_suite_finds_the_perspective_scorer_by_name(monkeypatch):
    from evaluation.scorers import get_scorer

    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(SuiteError, match="PERSPECTIVE_API_KEY"):
        get_scorer("perspective")

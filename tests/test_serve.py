"""`rlhfkit serve` over real loopback HTTP, and the HTTP judge against it (cache, retries)."""

import http.server
import json
import math
import socket
import threading
import time
import urllib.request

import pytest

from rlhfkit.cli import main
from rlhfkit.judge.backends import LocalModelJudge
from rlhfkit.judge.base import Comparison
from rlhfkit.judge.constitution import load_constitution
from rlhfkit.judge.http import HTTPJudge, JudgeRequestError
from rlhfkit.serve import create_app, load_engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    import uvicorn

    engine = load_engine(str(tiny_model_dir), device="cpu", name="tiny")
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    assert uv.started
    yield engine, f"http://127.0.0.1:{port}/v1"
    uv.should_exit = True
    thread.join(timeout=10)


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_models_and_chat_completions(server):
    _, url = server
    with urllib.request.urlopen(url + "/models", timeout=10) as response:
        assert json.loads(response.read())["data"][0]["id"] == "tiny"
    answer = post(url + "/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                              "max_tokens": 6, "n": 2, "logprobs": True, "top_logprobs": 3})
    assert answer["object"] == "chat.completion" and len(answer["choices"]) == 2
    for choice in answer["choices"]:
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
        tokens = choice["logprobs"]["content"]
        assert 1 <= len(tokens) <= 6 and all(len(t["top_logprobs"]) == 3 for t in tokens)
        assert all(t["top_logprobs"][0]["logprob"] >= t["logprob"] - 1e-6 for t in tokens)
    assert answer["usage"]["completion_tokens"] == sum(len(c["logprobs"]["content"]) for c in answer["choices"])
    with pytest.raises(urllib.error.HTTPError) as error:
        post(url + "/chat/completions", {"messages": []})
    assert error.value.code == 422


def post_raw(url, text):
    request = urllib.request.Request(url, data=text.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_requests_are_refused_with_what_is_wrong_never_a_500(server):
    engine, url = server
    chat = url + "/chat/completions"
    hi = '[{"role": "user", "content": "Hi"}]'
    status, body = post_raw(chat, '{"messages": ' + hi + ', "temperature": NaN}')
    assert status == 422 and "temperature" in json.dumps(body)
    status, body = post_raw(chat, json.dumps({"messages": [{"role": "robot", "content": "Hi"}]}))
    assert status == 400 and "messages[0]" in body["detail"] and "robot" in body["detail"]
    status, body = post_raw(chat, json.dumps({"messages": [{"role": "system", "content": "Be kind."}]}))
    assert status == 400 and "role 'user'" in body["detail"]
    limit = engine.model.config.max_position_embeddings
    status, body = post_raw(chat, json.dumps({"messages": [{"role": "user", "content": "word " * (2 * limit)}]}))
    assert status == 400 and f"at most {limit}" in body["detail"]
    status, body = post_raw(chat, json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**9}))
    assert status == 400 and "max_tokens 1000000000" in body["detail"] and "answer tokens fit" in body["detail"]


def test_batched_logprobs_equal_each_answer_scored_alone(server):
    import torch

    engine, _ = server
    tokenizer = engine.tokenizer
    prompts = [tokenizer.encode("What colour is snow?"), tokenizer.encode("Hi")]
    answers = [[11, 12, tokenizer.eos_token_id], [13, 14, 15, 16, 17]]  # ragged: padding inside the batch
    got = engine._logprobs(prompts, answers, temperature=0.7, tops=[2, 4])
    for prompt, answer, content, top in zip(prompts, answers, got, [2, 4], strict=True):
        with torch.no_grad():
            logits = engine.model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1)
        assert [entry["logprob"] for entry in content] == pytest.approx(
            expected.gather(-1, torch.tensor(answer)[:, None]).squeeze(-1).tolist(), abs=1e-4)
        assert all(len(entry["top_logprobs"]) == top for entry in content)
        assert [entry["top_logprobs"][0]["logprob"] for entry in content] == pytest.approx(
            expected.max(-1).values.tolist(), abs=1e-4)


def test_concurrent_requests_are_all_answered(server):
    _, url = server
    results = [None] * 8

    def ask(i):
        results[i] = post(url + "/chat/completions", {"messages": [{"role": "user", "content": f"Hello {i}"}],
                                                      "max_tokens": 4, "temperature": 0})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r and len(r["choices"]) == 1 for r in results)


def test_http_judge_agrees_with_the_local_judge_on_the_same_model(server, tiny_model_dir):
    engine, url = server
    constitution = load_constitution()
    comparisons = [Comparison("What colour is snow?", "White.", "Blue."),
                   Comparison([{"role": "user", "content": "Hi"}], "Hello!", "Go away.")]
    remote = HTTPJudge(url, constitution, top_logprobs=10_000).judge(comparisons)
    local = LocalModelJudge(engine.model, engine.tokenizer, constitution).judge(comparisons)
    for r, loc in zip(remote, local, strict=True):
        assert r.prob_a == pytest.approx(loc.prob_a, abs=1e-4)


def test_judge_cli_over_http_labels_a_dataset_and_the_cache_makes_the_rerun_free(server, tmp_path):
    engine, url = server
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "responses": [f"Answer {i}.", "No.", "Yes!"]})
                            + "\n" for i in range(4)))
    output = tmp_path / "judged.jsonl"
    args = ["judge", "--judge", url, "--data", str(data), "--output", str(output), "--concurrency", "4"]
    before = engine.requests
    main(args)
    sent = engine.requests - before
    assert sent == 4 * 3 * 2  # 3 pairs per record, both orders
    report = json.loads((tmp_path / "judged.jsonl.report.json").read_text())
    assert report["comparisons"] == 12 and report["judge"] == "http:tiny+swap"
    first = output.read_text()
    main(args)
    assert engine.requests - before == sent  # every answer came from the cache
    assert output.read_text() == first


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Fails the first ``failures`` POSTs with 503, then answers "A" with known log-probs."""

    failures = 2
    posts = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).posts += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).posts <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        body = {"choices": [{"message": {"role": "assistant", "content": "A"}, "logprobs": {"content": [
            {"token": "A", "logprob": -0.5, "top_logprobs": [{"token": "A", "logprob": -0.5},
                                                              {"token": "B", "logprob": -1.5}]}]}}]}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_http_judge_retries_a_failing_server_and_gives_up_with_a_clear_error():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        FlakyHandler.posts, FlakyHandler.failures = 0, 2
        judge = HTTPJudge(url, load_constitution(), model="m", retries=3, backoff=0.01)
        [verdict] = judge.judge([Comparison("p", "x", "y")])
        assert FlakyHandler.posts == 3
        assert verdict.prob_a == pytest.approx(1 / (1 + math.exp(-1.0)))  # softmax of -0.5 and -1.5
        FlakyHandler.posts, FlakyHandler.failures = 0, 100
        with pytest.raises(JudgeRequestError, match="HTTP 503"):
            HTTPJudge(url, load_constitution(), model="m", retries=1, backoff=0.01).judge([Comparison("p", "x", "y")])
        assert FlakyHandler.posts == 2
    finally:
        server.shutdown()

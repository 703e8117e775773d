"""scalabl serve, started for real on loopback in a subprocess: answers equal `scalabl predict`'s,
bad requests get the right 4xx while the server keeps serving, a bounded load test sees no 5xx and
the sequential answers, a full queue answers 503, SIGTERM drains the requests in flight."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import trained_tiny_run

from scalabl.cli import main
from scalabl.config import MethodConfig
from scalabl.config.serve import ServeConfig

KEY = "test-key-0123456789"
QUESTIONS = [
    {"id": f"q{i}", "question": f"Question number {i}?", "choices": ["yes", "no", "maybe"][: 2 + i % 2]}
    for i in range(12)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`scalabl serve` in a subprocess on a free loopback port."""

    def __init__(self, run: Path, *flags: str, key: str | None = KEY) -> None:
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        if key is not None:
            env["SCALABL_API_KEY"] = key
        self.key = key
        cmd = [sys.executable, "-m", "scalabl", "serve", str(run), "--port", str(self.port), *flags]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get(self, path: str, key: str | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.request("GET", path, headers=headers)

    def predict(self, payload, key: str | None = "default", raw: bytes | None = None):
        key = self.key if key == "default" else key
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        status, body = self.request(
            "POST", "/v1/predict", raw if raw is not None else json.dumps(payload).encode(), headers
        )
        return status, json.loads(body)

    def stop(self) -> int:
        """SIGTERM and wait; 0 for a clean exit (uvicorn re-raises the signal after its graceful
        shutdown, so the status is -SIGTERM; a traceback on stderr is not clean)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=60)
        err = self.proc.stderr.read()
        assert "Traceback" not in err, err
        return 0 if status in (0, -signal.SIGTERM) else status


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    _, out = trained_tiny_run(
        tmp_path_factory,
        MethodConfig(method="scalabl", rank=2, sigma_init=0.5),
        max_test=8,
        n_validation=30,
        n_samples=(3,),
    )
    assert main(["calibrate-decisions", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def server(run):
    s = Server(run)
    yield s
    assert s.stop() == 0


def test_answers_equal_scalabl_predict(server, run, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    answers = tmp_path / "a.jsonl"
    assert main(["predict", str(run), "--input", str(questions), "--output", str(answers), "--quiet"]) == 0
    offline = [json.loads(line) for line in answers.read_text().splitlines()]
    status, body = server.predict({"questions": QUESTIONS})
    assert status == 200
    for a, b in zip(body["answers"], offline, strict=True):
        assert a["id"] == b["id"] and a["decision"] == b["decision"]
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    status, one = server.predict(QUESTIONS[3])  # a single question object
    assert status == 200 and one["answers"][0]["probs"] == pytest.approx(offline[3]["probs"], abs=1e-6)


@pytest.mark.parametrize(
    ("payload", "raw", "status", "message"),
    [
        (None, b"{not json", 400, "not valid JSON"),
        ({"question": "Which?"}, None, 422, "question: missing field 'choices'"),
        ({"question": "One?", "choices": ["only"]}, None, 422, "has 1 choice(s); at least 2"),
        ({"questions": []}, None, 422, "non-empty list"),
        ({"questions": [QUESTIONS[0]] * 65}, None, 413, "max_questions = 64"),
        ({"question": "Many?", "choices": [str(i) for i in range(17)]}, None, 422, "max_choices = 16"),
        ({"question": "x" * 9000, "choices": ["a", "b"]}, None, 422, "max_text = 8192"),
        (None, b'{"question": "' + b"y" * 1_100_000 + b'"}', 413, "max_body_bytes"),
        ([1, 2], None, 422, "a question object"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(
    server, payload, raw, status, message
):
    got, body = server.predict(payload, raw=raw)
    assert got == status and message in body["error"]
    assert server.predict(QUESTIONS[0])[0] == 200


def test_the_api_key_is_required_and_checked(server):
    status, body = server.predict(QUESTIONS[0], key=None)
    assert status == 401 and "missing API key" in body["error"]
    status, body = server.predict(QUESTIONS[0], key="wrong-key")
    assert status == 401 and body["error"] == "invalid API key"
    assert server.get("/metrics")[0] == 401
    assert server.get("/healthz")[0] == 200  # liveness needs no key
    assert server.predict(QUESTIONS[0])[0] == 200


def test_metrics_count_requests_latency_batches_and_errors(server):
    server.predict(QUESTIONS[0])
    status, text = server.get("/metrics", key=KEY)
    text = text.decode()
    assert status == 200
    assert 'scalabl_requests_total{path="/v1/predict",status="200"}' in text
    assert "scalabl_request_seconds_bucket" in text and "scalabl_batch_questions_count" in text
    assert "scalabl_queue_depth" in text and "scalabl_errors_total" in text


def test_a_bounded_load_gets_no_5xx_and_the_sequential_answers(server):
    """500 requests from 32 concurrent clients, loopback only; the loop ends by itself."""
    sequential = {q["id"]: server.predict(q)[1]["answers"][0]["probs"] for q in QUESTIONS}
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(500)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(server.predict, jobs))
    assert all(status == 200 for status, _ in results), {s for s, _ in results}
    for question, (_, body) in zip(jobs, results, strict=True):
        assert body["answers"][0]["probs"] == pytest.approx(sequential[question["id"]], abs=1e-6)
    _, text = server.get("/metrics", key=KEY)
    count = next(
        line for line in text.decode().splitlines() if line.startswith("scalabl_batch_questions_count")
    )
    batches = float(count.split()[-1])
    assert batches < 500 + len(QUESTIONS) + 20  # requests were gathered into batches


def test_a_full_queue_answers_503_and_recovers(run):
    busy = Server(run, "--queue-size", "1", "--max-batch", "1", "--max-wait-ms", "0")
    try:
        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = [s for s, _ in pool.map(busy.predict, [{"questions": QUESTIONS}] * 24)]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        assert busy.predict(QUESTIONS[0])[0] == 200
    finally:
        assert busy.stop() == 0


def test_sigterm_drains_the_requests_in_flight(run):
    s = Server(run)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(s.predict, {"questions": QUESTIONS * 4}) for _ in range(4)]
        time.sleep(0.5)  # the requests are in flight
        s.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]
    assert all(status == 200 and len(body["answers"]) == 48 for status, body in results)
    assert s.stop() == 0


def test_serving_without_a_key_needs_loopback_and_without_one_it_refuses(run, capsys):
    with pytest.raises(ValueError, match="loopback"):
        ServeConfig(host="0.0.0.0", auth=False)
    env_key = os.environ.pop("SCALABL_API_KEY", None)
    try:
        assert main(["serve", str(run), "--port", str(free_port())]) == 2
        assert "no API key" in capsys.readouterr().err
    finally:
        if env_key is not None:
            os.environ["SCALABL_API_KEY"] = env_key

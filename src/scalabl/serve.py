"""``scalabl serve``: a trained run behind an HTTP API (FastAPI on uvicorn; ``pip install 'scalabl[serve]'``).

* ``POST /v1/predict``: ``{"question": ..., "choices": [...]}`` (one question, the JSONL schema of
  training data, ``answer`` optional) or ``{"questions": [...]}``; answers ``{"answers": [...]}``,
  each what ``scalabl predict`` writes for the question.
* ``GET /healthz``: liveness and what is served (no key needed).
* ``GET /metrics``: Prometheus text: requests by status, latency, batch sizes, errors, queue depth.

One worker thread owns the model and its posterior noise: requests never share a forward pass's
noise or interleave passes. Requests that arrive together are gathered into one batch of at most
``max_batch`` questions, the first waiting ``max_wait_ms`` for company; each question's noise is
seeded by its own text, so an answer does not depend on the batch it was in (and equals
``scalabl predict``'s). The queue of waiting requests is bounded: when full, a request gets 503
at once instead of waiting without end. Every bad request gets a 4xx naming the problem and the
server keeps serving. An API key (``Authorization: Bearer KEY``) is required unless ``auth`` is off
on a loopback host; keys are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from scalabl.answers import Answerer
from scalabl.config.serve import API_KEY_ENV, ServeConfig
from scalabl.data import parse_question
from scalabl.examples import Example


class RequestError(Exception):
    """A bad request: its HTTP status and the message the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def api_key(config: ServeConfig) -> str | None:
    """The key requests must present (None without ``auth``): ``api_key_file``'s contents, else the
    environment variable; neither is an error."""
    if not config.auth:
        return None
    if config.api_key_file is not None:
        key = Path(config.api_key_file).read_text().strip()
        where = f"api_key_file {config.api_key_file}"
    else:
        key, where = os.environ.get(API_KEY_ENV, "").strip(), f"environment variable {API_KEY_ENV}"
    if not key:
        raise ValueError(
            f"serve: no API key ({where} is empty or unset); set {API_KEY_ENV}, pass --api-key-file, "
            "or --no-auth on a loopback host"
        )
    return key


def parse_request(body: bytes, config: ServeConfig) -> list[Example]:
    """The questions of a request body, each checked as training data is, and against the limits."""
    if len(body) > config.max_body_bytes:
        raise RequestError(
            413, f"request body of {len(body)} bytes exceeds max_body_bytes = {config.max_body_bytes}"
        )
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"request body is not valid JSON: {err}") from None
    if isinstance(payload, dict) and "questions" in payload:
        if set(payload) != {"questions"}:
            raise RequestError(422, "a batch request holds only 'questions': a list of questions")
        rows, name = payload["questions"], "questions"
        if not isinstance(rows, list) or not rows:
            raise RequestError(422, "questions: must be a non-empty list of question objects")
    elif isinstance(payload, dict):
        rows, name = [payload], "question"
    else:
        raise RequestError(422, 'request body must be a question object or {"questions": [...]}')
    if len(rows) > config.max_questions:
        raise RequestError(413, f"{len(rows)} questions exceed max_questions = {config.max_questions}")
    examples = []
    for i, row in enumerate(rows):
        where = f"questions[{i}]" if name == "questions" else "question"
        try:
            example = parse_question(row, where, str(i), require_answer=False)
        except ValueError as err:
            raise RequestError(422, str(err)) from None
        if len(example.choices) > config.max_choices:
            raise RequestError(
                422, f"{where}: {len(example.choices)} choices exceed max_choices = {config.max_choices}"
            )
        texts = [("question", example.question), ("context", example.context or "")]
        for field, text in [*texts, *((f"choices[{j}]", c) for j, c in enumerate(example.choices))]:
            if len(text) > config.max_text:
                raise RequestError(
                    422,
                    f"{where}: field '{field}' has {len(text)} characters, more than max_text = {config.max_text}",
                )
        examples.append(example)
    return examples


@dataclass
class _Job:
    examples: Sequence[Example]
    future: Future


class ModelWorker:
    """The one thread that runs the model: gathers waiting requests into batches (see the module
    docstring) and answers them; the queue is bounded."""

    def __init__(self, answerer: Answerer, config: ServeConfig, batch_sizes: Histogram) -> None:
        self.answerer, self.config, self.batch_sizes = answerer, config, batch_sizes
        self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=config.queue_size)
        self.thread = threading.Thread(target=self._run, name="scalabl-model", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, examples: Sequence[Example]) -> Future:
        """Queue a request; raises ``queue.Full`` when the queue is full."""
        future: Future = Future()
        self.jobs.put_nowait(_Job(examples, future))
        return future

    def stop(self) -> None:
        """Answer what is queued, then end the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, size, stop = [first], len(first.examples), False
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while size < self.config.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            size += len(job.examples)
        return jobs, stop

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            examples = [e for job in jobs for e in job.examples]
            self.batch_sizes.observe(len(examples))
            try:
                answers = self.answerer.answer(examples)
            except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, not the server
                for job in jobs:
                    job.future.set_exception(err)
            else:
                start = 0
                for job in jobs:
                    job.future.set_result(answers[start : start + len(job.examples)])
                    start += len(job.examples)
            if stop:
                return


def create_app(answerer: Answerer, config: ServeConfig, *, run: str = "") -> FastAPI:
    """The FastAPI application serving ``answerer`` (see the module docstring)."""
    key = api_key(config)
    registry = CollectorRegistry()
    requests = Counter(
        "scalabl_requests", "HTTP requests by path and status", ["path", "status"], registry=registry
    )
    errors = Counter(
        "scalabl_errors", "requests answered with an error, by status", ["status"], registry=registry
    )
    latency = Histogram("scalabl_request_seconds", "latency of POST /v1/predict", registry=registry)
    batch_sizes = Histogram(
        "scalabl_batch_questions",
        "questions per model batch",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        registry=registry,
    )
    depth = Gauge("scalabl_queue_depth", "requests waiting for the model", registry=registry)
    worker = ModelWorker(answerer, config, batch_sizes)
    depth.set_function(worker.jobs.qsize)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()  # after uvicorn has drained the requests in flight

    app = FastAPI(title="scalabl", lifespan=lifespan)

    def authorised(request: Request) -> None:
        if key is None:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise RequestError(401, "missing API key: send the header 'Authorization: Bearer KEY'")
        if not hmac.compare_digest(header[len("Bearer ") :].encode(), key.encode()):
            raise RequestError(401, "invalid API key")

    def failed(path: str, err: RequestError) -> JSONResponse:
        requests.labels(path, str(err.status)).inc()
        errors.labels(str(err.status)).inc()
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        requests.labels("/healthz", "200").inc()
        blora = answerer.blora
        return {
            "status": "ok",
            "run": run,
            "method": blora.config.method.value,
            "n_samples": answerer.config.n_samples,
            "decisions": answerer.decisions is not None,
        }

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        try:
            authorised(request)
        except RequestError as err:
            return failed("/metrics", err)
        requests.labels("/metrics", "200").inc()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            authorised(request)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
                raise RequestError(
                    413, f"request body of {declared} bytes exceeds max_body_bytes = {config.max_body_bytes}"
                )
            examples = parse_request(await request.body(), config)
            try:
                future = worker.submit(examples)
            except queue.Full:
                raise RequestError(
                    503, f"the server is busy: {config.queue_size} requests are waiting; retry later"
                ) from None
            answers = await asyncio.wrap_future(future)
        except RequestError as err:
            return failed("/v1/predict", err)
        except Exception as err:  # noqa: BLE001 - the model failed on a valid request: 500, keep serving
            return failed("/v1/predict", RequestError(500, f"prediction failed: {type(err).__name__}: {err}"))
        latency.observe(time.perf_counter() - t0)
        requests.labels("/v1/predict", "200").inc()
        return JSONResponse({"answers": answers})

    return app


def serve(answerer: Answerer, config: ServeConfig, *, run: str = "") -> None:
    """Run the server until SIGINT/SIGTERM (which drains the requests in flight, then stops)."""
    import uvicorn

    app = create_app(answerer, config, run=run)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=60)

"""How ``scalabl serve`` runs (``ServeConfig``): where it listens, who may call it, and its limits."""

from __future__ import annotations

from dataclasses import dataclass

from scalabl.config.fields import JSONConfig, option, positive_ints

LOOPBACK = ("127.0.0.1", "::1", "localhost")
API_KEY_ENV = "SCALABL_API_KEY"


@dataclass
class ServeConfig(JSONConfig):
    """The server's address, authentication, batching and request limits (see :mod:`scalabl.serve`)."""

    label = "serve config"

    host: str = option("127.0.0.1", "address to bind (loopback by default)")
    port: int = option(8000, "port to listen on")
    auth: bool = option(True, "require an API key (--no-auth: serve without one, on a loopback host only)")
    api_key_file: str | None = option(
        None, f"file holding the API key (else the {API_KEY_ENV} environment variable)", shown="none"
    )
    max_batch: int = option(16, "questions gathered from concurrent requests into one model batch at most")
    max_wait_ms: float = option(10.0, "how long the first request of a batch waits for others (ms)")
    queue_size: int = option(64, "requests waiting for the model at most; more are answered 503")
    max_questions: int = option(64, "questions in one request at most")
    max_choices: int = option(16, "choices of one question at most")
    max_text: int = option(8192, "characters of one question, context or choice at most")
    max_body_bytes: int = option(1_000_000, "bytes of one request body at most")

    def __post_init__(self) -> None:
        positive_ints(
            self, "max_batch", "queue_size", "max_questions", "max_choices", "max_text", "max_body_bytes"
        )
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be an integer in 0..65535, got {self.port!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: must be >= 0, got {self.max_wait_ms!r}")
        if self.max_choices < 2:
            raise ValueError(f"max_choices: must be >= 2, got {self.max_choices!r}")
        if not self.auth and self.host not in LOOPBACK:
            raise ValueError(
                f"auth: serving without an API key is allowed on a loopback host ({', '.join(LOOPBACK)}) "
                f"only, not on {self.host!r}"
            )

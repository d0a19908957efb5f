"""A real uvicorn server on 127.0.0.1 (free port, background thread) serving a tiny model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from inference.conftest import make_fake_run
from pneumo.runs import ood as runs_ood
from pneumo.serve import create_app

MAX_UPLOAD_MB = 1
MAX_PIXELS = 1_000_000


class FakeOod:
    """Stands in for ``pneumo.runs.ood.score``: the verdict is whatever the test sets."""

    inside = True

    @classmethod
    def score(cls, params: dict, *, logits: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.abs(features).mean(axis=1)
        return scores, np.full(len(scores), cls.inside)


@dataclass
class LiveServer:
    url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app: FastAPI) -> LiveServer:
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", app, server, thread)


@pytest.fixture(scope="package")
def ood_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A served run whose OOD verdict comes from :class:`FakeOod` for as long as the serve tests run.

    The real scorer is tested in tests/trust; here the point is that a verdict reaches the client.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs_ood, "score", FakeOod.score)
        mp.setattr(runs_ood, "check", lambda params: None)
        yield make_fake_run(tmp_path_factory.mktemp("serve"), name="served", ood={"method": "fake"})


@pytest.fixture(scope="package")
def live(ood_run: Path) -> Iterator[LiveServer]:
    """The service with a tiny CNN whose OOD verdict comes from :class:`FakeOod`, 1 MB / 1 Mpx limits."""
    app = create_app(ood_run, max_upload_mb=MAX_UPLOAD_MB, max_pixels=MAX_PIXELS, max_concurrency=2, timeout_s=20)
    server = start_server(app)
    yield server
    server.stop()

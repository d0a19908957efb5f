"""The service over real HTTP (uvicorn on 127.0.0.1): answers, every bad input, concurrency and timeouts."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import pneumo
from inference.conftest import dicom_announcing, dicom_bytes, encode, make_fake_run, xray_like
from pneumo.inference import Predictor
from pneumo.serve import create_app

from .conftest import MAX_PIXELS, FakeOod, LiveServer, start_server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


def png_bytes(seed: int = 0, height: int = 48, width: int = 40) -> bytes:
    return encode(Image.fromarray(xray_like(height, width, seed=seed)), "PNG")


def upload(client: httpx.Client, data: bytes, name: str = "x.png", path: str = "/v1/predict") -> httpx.Response:
    return client.post(path, files={"file": (name, data, "application/octet-stream")})


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width x height`` pixels, with almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_predict_answers_like_the_library(client: httpx.Client, ood_run: Path) -> None:
    data = png_bytes(seed=5)
    resp = upload(client, data, "chest.png")
    assert resp.status_code == 200
    body = resp.json()
    expected = Predictor.load(ood_run).predict(data)
    assert body["label"] == expected.label and body["threshold"] == 0.5
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert body["in_distribution"] is True and isinstance(body["ood_score"], float)
    assert body["model_id"] == Predictor.load(ood_run).model_id and body["pneumo_version"] == pneumo.__version__
    assert body["source"] == "chest.png"


def test_dicom_upload(client: httpx.Client) -> None:
    resp = upload(client, dicom_bytes(xray_like(seed=2).astype(np.uint16) * 16), "image.dcm")
    assert resp.status_code == 200 and set(resp.json()["probabilities"]) == {"NORMAL", "PNEUMONIA"}


def test_explain_returns_an_overlay_at_the_original_size(client: httpx.Client) -> None:
    resp = upload(client, png_bytes(height=70, width=52), path="/v1/explain")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(resp.content)) as img:
        assert img.size == (52, 70) and img.mode == "RGB"


def test_model_card_health_docs_and_page(client: httpx.Client) -> None:
    card = client.get("/v1/model").json()
    assert card["task"] == "binary" and card["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert card["preprocessing"]["image_size"] == 32 and card["threshold"] == 0.5 and card["temperature"] is None
    assert "Research use only, not a medical device" in card["disclaimer"]
    assert card["ood"]["active"] is True
    assert client.get("/healthz").json() == {"status": "ok", "model_id": card["model_id"]}
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Research use only, not a medical device" in page.text


def test_model_card_carries_evaluation_metrics(tmp_path: Path) -> None:
    run = make_fake_run(tmp_path)
    (run / "eval-test").mkdir()
    (run / "eval-test" / "metrics.json").write_text('{"auroc": 0.93}')
    app = create_app(run)
    server = start_server(app)
    try:
        card = httpx.get(f"{server.url}/v1/model").json()
    finally:
        server.stop()
    assert card["metrics"] == {"eval-test": {"auroc": 0.93}} and card["ood"]["enabled"] is False


def _chunked_too_large() -> Iterator[bytes]:
    yield b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    for _ in range(40):  # 2.5 MB in 64 KB chunks, no Content-Length
        yield b"\0" * 65536
    yield b"\r\n--bnd--\r\n"


def _bad_requests() -> dict[str, tuple[dict, int, str, str]]:
    jpeg = encode(Image.fromarray(xray_like()), "JPEG")
    zeros = np.zeros((16, 16), np.uint16)
    return {
        "empty body": (
            {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=bnd"}},
            400,
            "empty_body",
            "",
        ),
        "empty file": ({"files": {"file": ("a.png", b"")}}, 400, "empty_file", "'a.png' is empty"),
        "json body": ({"json": {"image": "x"}}, 415, "unsupported_media_type", "multipart/form-data"),
        "raw image body": (
            {"content": png_bytes(), "headers": {"content-type": "image/png"}},
            415,
            "unsupported_media_type",
            "",
        ),
        "look-alike content type": (
            {"content": b"x", "headers": {"content-type": "multipart/form-dataX; boundary=b"}},
            415,
            "unsupported_media_type",
            "multipart/form-dataX",
        ),
        "missing file field": ({"files": {"image": ("a.png", png_bytes())}}, 422, "missing_file", "'file'"),
        "file as text field": ({"data": {"file": "hello"}, "files": {"x": ("x", b"1")}}, 422, "missing_file", "text"),
        "truncated jpeg": (
            {"files": {"file": ("cut.jpg", jpeg[: len(jpeg) // 2])}},
            422,
            "invalid_image",
            "cut.jpg: truncated",
        ),
        "text renamed png": (
            {"files": {"file": ("notes.png", b"just some text\n" * 10)}},
            422,
            "invalid_image",
            "not a supported image format",
        ),
        "too many pixels": (
            {"files": {"file": ("wide.png", encode(Image.new("L", (1100, 1000)), "PNG"))}},
            413,
            "image_too_large",
            f"limit {MAX_PIXELS:,}",
        ),
        "decompression bomb header": (
            {"files": {"file": ("bomb.png", png_header_only(60_000, 60_000))}},
            413,
            "image_too_large",
            "",
        ),
        "upload over the limit": ({"files": {"file": ("big.png", b"\0" * 1_300_000)}}, 413, "upload_too_large", "1 MB"),
        "chunked upload over the limit": (
            {"content": _chunked_too_large(), "headers": {"content-type": "multipart/form-data; boundary=bnd"}},
            413,
            "upload_too_large",
            "",
        ),
        "dicom without pixel data": (
            {"files": {"file": ("nopix.dcm", dicom_bytes(zeros, with_pixels=False))}},
            422,
            "invalid_image",
            "no pixel data",
        ),
        "multi-frame dicom": (
            {"files": {"file": ("cine.dcm", dicom_bytes(zeros, frames=4))}},
            422,
            "invalid_image",
            "multi-frame",
        ),
        "image too small for a radiograph": (
            {"files": {"file": ("pixel.png", encode(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), "PNG"))}},
            422,
            "invalid_image",
            "pixel.png: image of 1x1 pixels is too small for a radiograph",
        ),
        "dicom announcing too many pixels": (
            {"files": {"file": ("huge.dcm", dicom_announcing(2000, 2000))}},
            413,
            "image_too_large",
            "",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
@pytest.mark.parametrize("path", ["/v1/predict", "/v1/explain"])
def test_bad_input_gets_a_clear_4xx_json_error(client: httpx.Client, case: str, path: str) -> None:
    kwargs, status, error, detail = _bad_requests()[case]
    resp = client.post(path, **kwargs)
    assert resp.status_code == status, (case, resp.text)
    body = resp.json()
    assert body["error"] == error and set(body) == {"error", "detail"}
    assert detail in body["detail"]
    assert upload(client, png_bytes()).status_code == 200  # and the service keeps answering


def test_no_paths_but_its_own(client: httpx.Client) -> None:
    for path in ["/static/index.html", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/v1/../pyproject.toml"]:
        resp = client.get(path)
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", path
    assert client.get("/v1/predict").status_code == 405


def test_fifty_concurrent_requests_all_answered_correctly(live: LiveServer, ood_run: Path) -> None:
    images = [png_bytes(seed=s) for s in range(5)]
    expected = [Predictor.load(ood_run).predict(im).probabilities for im in images]

    def one(i: int) -> tuple[int, httpx.Response]:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            return i, upload(c, images[i % 5], f"img{i}.png")

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(50)))
    assert len(answers) == 50
    for i, resp in answers:
        assert resp.status_code == 200, resp.text
        assert resp.json()["source"] == f"img{i}.png"
        assert resp.json()["probabilities"] == pytest.approx(expected[i % 5], abs=1e-6)


def test_ood_verdict_reaches_the_client(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    assert upload(client, png_bytes()).json()["reason"] is None
    monkeypatch.setattr(FakeOod, "inside", False)
    resp = upload(client, png_bytes())
    assert resp.status_code == 200 and resp.json()["in_distribution"] is False
    assert resp.json()["reason"].startswith("the image is unlike the chest X-rays this model was trained on")


def test_refuse_ood_answers_422(ood_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(ood_run, refuse_ood=True)) as c:
        ok = c.post("/v1/predict", files={"file": ("x.png", png_bytes(), "image/png")})
        assert ok.status_code == 200 and ok.json()["in_distribution"] is True
        monkeypatch.setattr(FakeOod, "inside", False)
        refused = c.post("/v1/predict", files={"file": ("odd.png", png_bytes(), "image/png")})
    assert refused.status_code == 422 and refused.json()["error"] == "out_of_distribution"
    assert refused.json()["detail"].startswith("odd.png: the image is unlike the chest X-rays")


def test_slow_model_gets_503_not_a_hang(tmp_path: Path) -> None:
    app = create_app(make_fake_run(tmp_path), timeout_s=0.3, max_concurrency=1)
    predictor = app.state.predictor
    real = predictor.predict_prepared

    def slow(images):  # the deliberately slow model
        time.sleep(1.5)
        return real(images)

    predictor.predict_prepared = slow
    server = start_server(app)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            started = time.monotonic()
            resp = upload(c, png_bytes())
            assert resp.status_code == 503 and resp.json()["error"] == "timeout"
            assert resp.headers["retry-after"] == "1"
            assert time.monotonic() - started < 1.4
            assert c.get("/healthz").status_code == 200  # the event loop stayed free
            predictor.predict_prepared = real
            time.sleep(1.3)  # let the abandoned slow call finish and free the one worker
            assert upload(c, png_bytes()).status_code == 200
    finally:
        server.stop()


def test_a_model_too_small_to_explain_answers_501_with_the_reason(tmp_path: Path) -> None:
    server = start_server(create_app(make_fake_run(tmp_path, arch="resnet18", image_size=32)))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert upload(c, png_bytes(seed=8)).status_code == 200
            resp = upload(c, png_bytes(seed=8), path="/v1/explain")
            assert resp.status_code == 501 and resp.json()["error"] == "explain_unavailable"
            assert "cannot localise at 32 px" in resp.json()["detail"]
            assert c.get("/v1/model").json()["format"] == "pytorch"
    finally:
        server.stop()


def test_onnx_service_predicts_but_does_not_explain(tmp_path: Path) -> None:
    from pneumo.inference.onnx import export_onnx

    run = make_fake_run(tmp_path)
    server = start_server(create_app(export_onnx(run, tmp_path / "m.onnx")))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            data = png_bytes(seed=7)
            body = upload(c, data).json()
            assert body["probabilities"] == pytest.approx(Predictor.load(run).predict(data).probabilities, abs=1e-4)
            resp = upload(c, data, path="/v1/explain")
            assert resp.status_code == 501 and resp.json()["error"] == "explain_unavailable"
            assert c.get("/v1/model").json()["format"] == "onnx"
    finally:
        server.stop()


def test_inference_concurrency_is_bounded(tmp_path: Path) -> None:
    app = create_app(make_fake_run(tmp_path), max_concurrency=2, timeout_s=30)
    predictor = app.state.predictor
    real, lock = predictor.predict_prepared, threading.Lock()
    running, peak = 0, 0

    def counting(images):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return real(images)

    predictor.predict_prepared = counting
    server = start_server(app)
    try:

        def one(_: int) -> int:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return upload(c, png_bytes()).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(one, range(8))) == [200] * 8
    finally:
        server.stop()
    assert peak == 2


def test_app_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumo.serve import create_app_from_env

    run = make_fake_run(tmp_path)
    monkeypatch.setenv("PNEUMO_SERVE_MODEL", str(run))
    monkeypatch.setenv("PNEUMO_SERVE_MAX_PIXELS", "100")
    monkeypatch.setenv("PNEUMO_SERVE_TIMEOUT_S", "7")
    monkeypatch.setenv("PNEUMO_SERVE_DEVICE", "auto")
    app = create_app_from_env()
    assert app.state.predictor.max_pixels == 100 and app.state.runner.timeout_s == 7
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert str(app.state.predictor.backend.device) == expected
    server = start_server(app)
    try:
        resp = httpx.post(f"{server.url}/v1/predict", files={"file": ("a.png", png_bytes())})
        assert resp.status_code == 413 and resp.json()["error"] == "image_too_large"
    finally:
        server.stop()


def test_uploads_beyond_the_waiting_room_get_503_at_once(tmp_path: Path) -> None:
    app = create_app(make_fake_run(tmp_path), max_concurrency=1, max_waiting=1, timeout_s=30)
    predictor = app.state.predictor
    real, entered, release = predictor.predict_prepared, threading.Event(), threading.Event()

    def held(images):  # the model answers only when the test says so
        entered.set()
        release.wait(20)
        return real(images)

    def post() -> int:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return upload(c, png_bytes()).status_code

    predictor.predict_prepared = held
    server = start_server(app)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = pool.submit(post)
            assert entered.wait(10)  # the one inference slot is taken
            waiting = pool.submit(post)
            assert _settled_in_flight(app, 2) == 2  # one running, one in the waiting room
            with httpx.Client(base_url=server.url, timeout=5) as c:
                started = time.monotonic()
                resp = upload(c, png_bytes())
                assert resp.status_code == 503 and resp.json()["error"] == "busy"
                assert resp.headers["retry-after"] == "1" and time.monotonic() - started < 2
                assert c.get("/healthz").status_code == 200  # only uploads are counted
            release.set()
            assert running.result() == 200 and waiting.result() == 200
        assert _settled_in_flight(app, 0) == 0 and post() == 200
    finally:
        release.set()
        server.stop()


def _settled_in_flight(app, expected: int, timeout: float = 10) -> int:
    """The in-flight count once it reaches ``expected`` or the timeout passes: the middleware frees a slot after the
    response has gone out, which the client may see a moment earlier."""
    deadline = time.monotonic() + timeout
    while _in_flight(app) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return _in_flight(app)


def _in_flight(app) -> int:
    from pneumo.serve.guards import InFlightLimitMiddleware

    layer = app.middleware_stack
    while layer is not None and not isinstance(layer, InFlightLimitMiddleware):
        layer = getattr(layer, "app", None)
    return layer.in_flight if layer is not None else -1


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_pixels": 10**12}, "above Pillow's own limit"),
        ({"max_pixels": 0}, "pixel limit must be positive"),
        ({"max_upload_mb": 0}, "upload limit must be positive"),
        ({"max_waiting": -1}, "max_waiting >= 0"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path: Path, limits: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_app(make_fake_run(tmp_path), **limits)


def test_a_stalled_upload_gets_408_and_frees_its_slot(tmp_path: Path) -> None:
    # One slot in all (1 running + 0 waiting). A client that sends its headers and half its body, then stalls, must
    # not hold that slot for as long as it keeps the connection open.
    app = create_app(make_fake_run(tmp_path), max_concurrency=1, max_waiting=0, upload_timeout_s=0.5)
    server = start_server(app)
    host, port = server.url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as stalled:
            stalled.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            chunks = []
            while chunk := stalled.recv(4096):  # sent once the deadline has passed; the server then closes
                chunks.append(chunk)
            answer = b"".join(chunks).decode()
            assert answer.startswith("HTTP/1.1 408") and "upload_timeout" in answer
            with httpx.Client(base_url=server.url, timeout=10) as c:
                assert upload(c, png_bytes()).status_code == 200  # the slot is free again
        assert _settled_in_flight(app, 0) == 0
    finally:
        server.stop()


def test_405_names_the_allowed_method(client: httpx.Client) -> None:
    resp = client.get("/v1/predict")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert resp.json()["error"] == "method_not_allowed"


def test_serving_a_predictor_leaves_the_callers_object_alone(tmp_path: Path) -> None:
    predictor = Predictor.load(make_fake_run(tmp_path))
    before = predictor.max_pixels
    app = create_app(predictor, max_pixels=1234)
    assert app.state.predictor.max_pixels == 1234 and predictor.max_pixels == before


def test_requests_that_time_out_waiting_leave_nothing_queued_in_the_pool() -> None:
    """Submitted at once, each timed-out upload stayed in the executor's queue with its bytes (30 uploads of
    3.8 MB: 115 MB held past the in-flight limit); now work reaches the pool only when a thread is free."""
    import asyncio

    from pneumo.serve.guards import ApiError, InferenceRunner

    release = threading.Event()

    async def scenario() -> tuple[list[int], int, str]:
        runner = InferenceRunner(max_concurrency=1, timeout_s=0.2)
        blocked = asyncio.ensure_future(runner(lambda: release.wait(5)))  # holds the only thread

        async def upload(data: bytes) -> int:
            try:
                await runner(len, data)
            except ApiError as exc:
                return exc.status
            return 200

        codes = await asyncio.gather(*(upload(bytes(1 << 20)) for _ in range(20)))
        queued = runner.pool._work_queue.qsize()
        release.set()
        with contextlib.suppress(ApiError):
            await blocked  # timed out too; its thread ends now and gives the slot back
        await asyncio.sleep(0.05)
        answer = await runner(str.upper, "free again")
        runner.shutdown()
        return codes, queued, answer

    codes, queued, answer = asyncio.run(scenario())
    assert codes == [503] * 20 and queued == 0 and answer == "FREE AGAIN"


def test_one_app_serves_again_after_its_lifespan_ended(tmp_path: Path) -> None:
    # the pool was shut down for good and the slots stayed bound to the first event loop: 500s from then on
    app = create_app(make_fake_run(tmp_path), max_concurrency=1)
    for _ in range(2):
        server = start_server(app)
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                assert [upload(c, png_bytes(seed)).status_code for seed in range(3)] == [200] * 3
        finally:
            server.stop()

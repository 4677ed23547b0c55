"""Shared test fixtures: offline Hub settings, the tiny models and the packaged SmolLM2 (built once per cache and
reused), and `loopback_server` (an HTTP server on 127.0.0.1 run by the test itself, for web backends and judges)."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# Before anything imports huggingface_hub / transformers / vllm.
for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402

# torch.distributed rendezvous variables. TRL's colocated vLLM sets them in the test process (and keeps the port);
# a stage started as a subprocess must not inherit them, or it tries to join that process group.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_leaked_distributed_env():
    """Each test starts and ends without torch.distributed variables left behind by an earlier in-process run."""
    for k in DISTRIBUTED_ENV:
        os.environ.pop(k, None)
    yield
    for k in DISTRIBUTED_ENV:
        os.environ.pop(k, None)


@pytest.fixture(scope="session")
def tiny_text_model_path():
    """Folder of the tiny random Qwen2 text model (built on first use in the model cache)."""
    from pipeline.models import tiny_text_model

    return tiny_text_model()


@pytest.fixture(scope="session")
def tiny_vlm_path():
    """Folder of the tiny random Qwen2-VL model with its image processor (load it with pipeline.models.load_processor)."""
    from pipeline.models import tiny_vlm

    return tiny_vlm()


@pytest.fixture(scope="session")
def smollm2_path():
    """Folder of the packaged SmolLM2-135M-Instruct converted to bf16 (about 20 s the first time, then cached)."""
    from pipeline.models import packaged_smollm2

    return packaged_smollm2()


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Handler = Callable[[Request], "tuple[int, Any] | tuple[int, Any, dict]"]


@pytest.fixture
def loopback_server():
    """Factory: `url = loopback_server(handler)` starts a ThreadingHTTPServer on 127.0.0.1 (free port) and returns
    its base URL. `handler(request) -> (status, body[, headers])`; a dict/list body is sent as JSON, str/bytes as
    is. The Requests each server received are listed in `loopback_server.requests[url]`. Servers shut down after
    the test."""
    servers: list[ThreadingHTTPServer] = []
    received: dict[str, list[Request]] = {}

    def start(handler: Handler) -> str:
        log: list[Request] = []

        class _H(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(length) if length else b"")
                log.append(req)
                out = handler(req)
                status, body = out[0], out[1]
                headers = dict(out[2]) if len(out) > 2 else {}
                if isinstance(body, (dict, list)):
                    payload = json.dumps(body).encode()
                    headers.setdefault("Content-Type", "application/json")
                elif isinstance(body, str):
                    payload = body.encode()
                else:
                    payload = body or b""
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        received[url] = log
        return url

    start.requests = received  # type: ignore[attr-defined]
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()

"""Real local servers for the sinks: an HTTP server (webhook and a fake Telegram Bot API) and
an SMTP server (aiosmtpd), each on 127.0.0.1 and a free port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpSink:
    """Records every request; answers with ``status`` (or the next of ``script``)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    script: list[int] = field(default_factory=list)
    telegram: bool = False
    # When set, the first request waits here before answering (a send in progress).
    hold_first: threading.Event | None = None
    first_arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.body for r in self.requests]


def _handler(sink: HttpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            body = orjson.loads(raw) if raw else None
            with sink.lock:
                first = not sink.requests
                sink.requests.append(Received(self.path, dict(self.headers), body))
                status = sink.script.pop(0) if sink.script else sink.status
            if first and sink.hold_first is not None:
                sink.first_arrived.set()
                sink.hold_first.wait(30)
            if sink.telegram:
                answer = ({"ok": True, "result": {"message_id": len(sink.requests)}} if status == 200
                          else {"ok": False, "error_code": status, "description": "Bad Request: chat not found"})
            else:
                answer = {"received": True} if status < 300 else {"error": "no"}
            data = orjson.dumps(answer)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client went away (a killed worker)

    return Handler


@contextmanager
def http_sink(**kw: Any) -> Iterator[HttpSink]:
    sink = HttpSink(**kw)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(sink))
    server.daemon_threads = True
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        if sink.hold_first is not None:
            sink.hold_first.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list[Any] = field(default_factory=list)


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    import socket
    from email import message_from_bytes
    from email.policy import default

    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox("127.0.0.1", port)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            msg = message_from_bytes(envelope.original_content or envelope.content, policy=default)
            box.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
            return "250 Message accepted for delivery"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()

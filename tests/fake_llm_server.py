"""A local HTTP server that speaks just enough of the Anthropic and OpenAI wire formats.

Tests point the real SDK clients at it (``base_url``), queue canned replies, and read back
what was sent::

    with FakeLLMServer() as server:
        server.reply("TITLE: ...")            # 200 with this text, formatted per endpoint
        server.error(429)                      # an error status with a provider-shaped body
        server.reply("...", delay=2.0)         # answers late (for client timeouts)
        agent = AnthropicAgent(base_url=server.anthropic_url, ...)
        ...
        server.requests[0].prompt_text         # everything the model was shown

Replies are consumed in order, one per request, whichever endpoint asks: a full-loop test can
queue several answers up front. An empty queue answers 400 (a fatal error for the agents) so a
test that asks more often than it expected fails at once instead of hanging or retrying.
Binds 127.0.0.1 on a free port; serves from a daemon thread.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"


@dataclass
class Reply:
    status: int = 200
    text: str = ""
    input_tokens: int = 100
    output_tokens: int = 50
    delay: float = 0.0  # seconds to wait before answering
    model: str | None = None  # the model named in the response; default: the requested one
    message: str = ""  # error message for status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    # Anthropic: a thinking block before the text; OpenAI: reasoning tokens in the usage
    thinking: str | None = None
    reasoning_tokens: int | None = None


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def prompt_text(self) -> str:
        """System prompt and all message contents, joined: what the model was shown."""
        parts: list[str] = []
        system = self.body.get("system")
        if isinstance(system, str):
            parts.append(system)
        elif isinstance(system, list):
            parts.extend(str(b.get("text", "")) for b in system if isinstance(b, dict))
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(b.get("text", "")) for b in content if isinstance(b, dict))
        return "\n".join(parts)

    @property
    def user_text(self) -> str:
        """The first user message (the proposal request)."""
        for message in self.body.get("messages", []):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""

    @property
    def system_text(self) -> str:
        system = self.body.get("system")
        if isinstance(system, str):
            return system
        for message in self.body.get("messages", []):
            if message.get("role") == "system":
                return str(message.get("content", ""))
        return ""

    @property
    def roles(self) -> list[str]:
        return [str(m.get("role")) for m in self.body.get("messages", [])]


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _anthropic_body(reply: Reply, model: str) -> dict[str, Any]:
    if reply.status >= 400:
        kind = _ERROR_TYPES.get(reply.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": reply.message or kind}}
    content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}]
    usage: dict[str, Any] = {"input_tokens": reply.input_tokens,
                             "output_tokens": reply.output_tokens}
    if reply.thinking is not None:
        content.insert(0, {"type": "thinking", "thinking": reply.thinking,
                           "signature": "fake-signature"})
    if reply.reasoning_tokens is not None:
        usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": reply.model or model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _openai_body(reply: Reply, model: str) -> dict[str, Any]:
    if reply.status >= 400:
        kind = _ERROR_TYPES.get(reply.status, "server_error")
        message = reply.message or kind
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": reply.model or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
            **({} if reply.reasoning_tokens is None else
               {"completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens}}),
        },
    }


class FakeLLMServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        # called with each request before it is answered (a test acting "while the loop runs")
        self.on_request: Any = None
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at once
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers waiting out a delay
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def anthropic_url(self) -> str:
        return self.url  # the Anthropic SDK appends /v1/messages

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"  # the OpenAI SDK appends /chat/completions

    # -- scripting ---------------------------------------------------------------------------

    def reply(self, text: str, **kwargs: Any) -> None:
        """Queue a successful answer with ``text`` (usage and delay via keywords)."""
        self.push(Reply(text=text, **kwargs))

    def error(self, status: int, message: str = "", **kwargs: Any) -> None:
        """Queue an error status with a provider-shaped error body."""
        self.push(Reply(status=status, message=message, **kwargs))

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _next(self) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return Reply(status=400, message="fake server: no reply queued for this request")

    # -- HTTP --------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                request = Request(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with server._lock:
                    server.requests.append(request)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.on_request is not None:
                        server.on_request(request)
                    self._answer(request)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, request: Request) -> None:
                if self.path.rstrip("/") == ANTHROPIC_PATH:
                    make = _anthropic_body
                elif self.path.rstrip("/") == OPENAI_PATH:
                    make = _openai_body
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                reply = server._next()
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                self._send(reply.status, make(reply, request.model), reply.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

        return Handler

"""A fake OpenAI-compatible chat-completions server, run by the tests as a process of its own.

    python -m tests.fake_openai [--port P] [--script FILE]

It prints `READY <port>` on stdout once it listens. Answers are scripted per scenario: a run's
prompt (its first user message) holds a marker `scenario:<name>:<id>`, and the n-th request of
one marker gets answer n of scenario <name> (the last answer repeats once the script runs out).
Counting requests, not messages, lets a retried request get the next answer (a 429, then a
success); a unique <id> per run keeps concurrent runs apart.

An answer (JSON) is one of:

- `{"content": TEXT}`: a final message;
- `{"tool_calls": [{"name", "arguments": {...} or "raw text", "id"?}], "content"?}`: tool calls;
- `{"status": 429 | 500 | ..., "retry_after"?: "1", "body"?: TEXT, "echo_auth"?: true}`: an error
  answer (`echo_auth`: its message quotes the request's Authorization header);
- `{"choices": []}` (or any `"body": {...}` object): that JSON body as it is;

each with optional `"usage": {"prompt_tokens", "completion_tokens"}` (default 10 and 5) and
`"delay_s"` (answer that much later: a slow model).

Control: `POST /_script {"name", "answers": [...]}` loads a scenario; `GET /_requests?marker=M`
lists the chat requests received (all, without `marker`): `{"t", "path", "marker", "headers",
"body"}`, `t` being the server's time.time() on arrival. `GET /page/<text>` answers
`{"page": text}` (a page for the agent's http.get).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MARKER_RE = re.compile(r"scenario:([A-Za-z0-9_]+):([A-Za-z0-9_-]+)")
DEFAULT_USAGE = {"prompt_tokens": 10, "completion_tokens": 5}


class Script:
    """Scenarios, the requests received, and how many each marker has had; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scenarios: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def load(self, name: str, answers: list[dict[str, Any]]) -> None:
        with self.lock:
            self.scenarios[name] = list(answers)

    def take(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Record a chat request and return the answer scripted for it (None: no such scenario)."""
        with self.lock:
            self.requests.append(record)
            marker = record["marker"]
            if marker is None:
                return None
            answers = self.scenarios.get(marker.split(":")[1])
            if not answers:
                return None
            index = self.counts.get(marker, 0)
            self.counts[marker] = index + 1
            return answers[min(index, len(answers) - 1)]

    def received(self, marker: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if marker is None or r["marker"] == marker]


def find_marker(body: Any) -> str | None:
    """`scenario:<name>:<id>` from the first user message of a chat request."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "user":
            match = MARKER_RE.search(str(message.get("content")))
            return match.group(0) if match else None
    return None


def completion(answer: dict[str, Any], model: str, marker: str, n: int) -> dict[str, Any]:
    """A chat.completion body for a scripted final message or tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.get("content")}
    finish_reason = "stop"
    if answer.get("tool_calls"):
        calls = []
        for position, call in enumerate(answer["tool_calls"], start=1):
            arguments = call.get("arguments", {})
            calls.append(
                {
                    "id": call.get("id", f"call_{position}"),
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
        message["tool_calls"] = calls
        finish_reason = "tool_calls"
    usage = {**DEFAULT_USAGE, **answer.get("usage", {})}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-{marker.rsplit(':', 1)[-1]}-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


def make_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may have given up on a slow answer
                self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/_requests":
                marker = parse_qs(url.query).get("marker", [None])[0]
                self._send(200, script.received(marker))
            elif url.path.startswith("/page/"):
                self._send(200, {"page": url.path[len("/page/") :]})
            else:
                self._send(404, {"error": {"message": f"no {url.path}"}})

        def do_POST(self) -> None:
            arrived = time.time()
            raw = self._body()
            path = urlsplit(self.path).path
            if path == "/_script":
                spec = json.loads(raw)
                script.load(spec["name"], spec["answers"])
                self._send(200, {"loaded": spec["name"]})
                return
            if not path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no {path}"}})
                return
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            marker = find_marker(body)
            record = {
                "t": arrived,
                "path": path,
                "marker": marker,
                "headers": dict(self.headers),
                "body": body,
            }
            answer = script.take(record)
            if answer is None:
                self._send(400, {"error": {"message": "no scenario for this request", "type": "bad_request"}})
                return
            time.sleep(float(answer.get("delay_s", 0)))
            if "status" in answer:
                extra = {"Retry-After": str(answer["retry_after"])} if "retry_after" in answer else {}
                error = answer.get("body", {"error": {"message": f"scripted {answer['status']}"}})
                if answer.get("echo_auth"):  # like a service that quotes the key it refuses
                    error = {"error": {"message": f"bad key: {self.headers.get('Authorization')}"}}
                self._send(
                    int(answer["status"]), error if isinstance(error, dict) else str(error).encode(), extra
                )
            elif "body" in answer or "choices" in answer:
                self._send(200, answer.get("body", {"choices": answer.get("choices")}))
            else:
                assert isinstance(body, dict) and marker is not None
                n = len(script.received(marker))
                self._send(200, completion(answer, str(body.get("model")), marker, n))

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", help="a JSON file {scenario name: [answers]}")
    args = parser.parse_args(argv)
    script = Script()
    if args.script:
        with open(args.script) as f:
            for name, answers in json.load(f).items():
                script.load(name, answers)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(script))
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small HTTP servers on 127.0.0.1 for bad-input tests: a web server that is not tardis-machine, and a
proxy in front of the fake tardis-machine that knows some symbols as unknown (it sends nothing for them,
which is what tardis-machine does for a symbol the exchange never listed).
"""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import requests


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="stub-http", daemon=True)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _answer(handler, status, content_type, body):
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class NotTardis(_Server):
    """Answers every GET with 200 and an HTML page (e.g. some other web application)."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                _answer(self, 200, "text/html", b"<html><body>It works!</body></html>")

            def log_message(self, *args):
                pass

        super().__init__(Handler)


class SilentSymbols(_Server):
    """Forwards to ``upstream`` (the double) but drops every replay line of the ``silent`` symbols."""

    def __init__(self, upstream, silent):
        silent = {s.encode() for s in silent}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def do_GET(self):
                with requests.get(upstream + self.path, stream=True, timeout=(5, 60)) as answer:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                    self.end_headers()
                    if answer.status_code != 200 or not self.path.startswith("/replay-normalized"):
                        self.wfile.write(answer.content)
                        return
                    for line in answer.iter_lines(chunk_size=65536):
                        if line and orjson.loads(line).get("symbol", "").encode() in silent:
                            continue
                        self.wfile.write(line + b"\n")

            def log_message(self, *args):
                pass

        super().__init__(Handler)


class HeldHealthCheck(_Server):
    """A tardis-machine whose ``GET /health-check`` waits until ``release()`` (``asked`` is set when it arrives);
    every other request is answered 503. For what a process does while it waits on its first request."""

    def __init__(self):
        self.asked, self.released = threading.Event(), threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/health-check"):
                    stub.asked.set()
                    stub.released.wait(30)
                    status, body = 200, b'{"status":"Healthy"}'
                else:
                    status, body = 503, b"{}"
                _answer(self, status, "application/json", body)

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def release(self):
        self.released.set()

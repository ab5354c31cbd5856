"""The static server behind `lmforge web DIR`: 127.0.0.1 only, GET/HEAD only, and only these files: the page
(index.html, app.js, decode.js, tokenizer.js), onnxruntime-web's wasm build (from node_modules/onnxruntime-web, put
there by `npm ci` in this directory), and the model directory's lmforge.json, tokenizer file and ONNX files named by
its manifest. Cross-origin isolation headers let onnxruntime-web use wasm threads; a Host other than the loopback
address is refused (DNS rebinding).

Each file is opened once, when the server starts (`Served`): what it serves is the file checked then, even if a
path is later replaced by a symlink. Each connection has a socket timeout and an overall deadline, and at most
MAX_CONNECTIONS are served at once (a further one gets 503 and is closed): idle or half-sent requests cannot
pile up threads."""
from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from lmforge.core.errors import LmforgeError

WEB = Path(__file__).resolve().parent
PAGE = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/decode.js": "decode.js",
        "/tokenizer.js": "tokenizer.js"}
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream"}
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff",
           "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                                      "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
                                      "connect-src 'self'; object-src 'none'; base-uri 'none'"}


READ_TIMEOUT = 10.0       # seconds a connection may stay silent
CONNECTION_SECONDS = 60.0  # seconds one connection (one request: HTTP/1.0) may last in all
MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class Served:
    """A file opened when the server started: its descriptor, size and content type."""
    fd: int
    size: int
    content_type: str

    @classmethod
    def open(cls, path: Path) -> "Served":
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise LmforgeError(f"{path} is not a regular file", hint="serve a directory written by `lmforge run`")
        return cls(fd, st.st_size, TYPES.get(path.suffix, "application/octet-stream"))

    def send(self, out, chunk: int = 1 << 20) -> None:
        """The file's bytes as they were opened (pread: no shared offset between threads)."""
        done = 0
        while done < self.size:
            data = os.pread(self.fd, min(chunk, self.size - done), done)
            if not data:
                break
            out.write(data)
            done += len(data)


def ort_dist() -> Path:
    missing = [f for f in ORT_FILES if not (ORT_DIST / f).is_file()]
    if missing:
        raise LmforgeError(f"onnxruntime-web is not installed beside the page ({ORT_DIST} lacks {missing[0]})",
                           hint=f"npm ci --prefix {WEB}")
    return ORT_DIST


def model_files(model_dir: str | Path) -> dict[str, Path]:
    """URL path under /model/ -> file, for every file the page may fetch from the directory."""
    from lmforge.runtime.modeldir import MANIFEST, ModelDirError, read_model_dir

    path = Path(model_dir)
    if not path.is_dir():
        raise LmforgeError(f"{model_dir} is not a directory", hint="lmforge web artifacts/runs/<run>/model")
    if not (path / MANIFEST).is_file():
        raise LmforgeError(f"{model_dir} is not an lmforge model directory (no {MANIFEST})",
                           hint="point `lmforge web` at a directory written by `lmforge run` (its model/) or "
                                "lmforge.export.modeldir")
    try:
        md = read_model_dir(path)
        files = {MANIFEST: path.resolve() / MANIFEST, md.manifest["tokenizer"]["file"]: md.tokenizer_path}
        for variant in md.variants():
            files[md.manifest["files"][variant]] = md.onnx_path(variant)
    except ModelDirError as exc:  # the runtime's own hint names the fix (re-export, the file to put back)
        raise LmforgeError(exc.message, hint=exc.hint or "point `lmforge web` at a directory written by `lmforge run` "
                                                         "or lmforge.export.modeldir") from None
    return {f"/model/{name}": file for name, file in files.items()}


def routes(model_dir: str | Path) -> dict[str, Path]:
    dist = ort_dist()
    table = {url: WEB / name for url, name in PAGE.items()}
    table.update({f"/ort/{name}": dist / name for name in ORT_FILES})
    table.update(model_files(model_dir))
    return table


def open_routes(table: dict[str, Path]) -> dict[str, Served]:
    """Every route's file opened now, once (symlinks the model directory's checks allowed are followed here,
    at start, and never again)."""
    try:
        return {url: Served.open(path.resolve()) for url, path in table.items()}
    except OSError as exc:
        raise LmforgeError(f"cannot open {exc.filename}: {exc.strerror}",
                           hint="point `lmforge web` at a directory written by `lmforge run`") from None


class Handler(BaseHTTPRequestHandler):
    server_version = "lmforge-web"
    timeout = READ_TIMEOUT  # StreamRequestHandler: the socket's timeout for every read and write
    routes: ClassVar[dict[str, Served]] = {}  # set per server by make_server
    hosts: ClassVar[set[str]] = set()

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(CONNECTION_SECONDS, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # wakes the handler's blocked read or write
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args):
        pass

    def _send(self, body: bool) -> None:
        if self.headers.get("Host", "") not in self.hosts:
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header")
            return
        file = self.routes.get(self.path.split("?", 1)[0])
        if file is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", file.content_type)
        self.send_header("Content-Length", str(file.size))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            file.send(self.wfile)

    def do_GET(self):
        self._send(True)

    def do_HEAD(self):
        self._send(False)


class CappedServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once: one more is answered 503 and closed at once."""
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        for file in getattr(self.RequestHandlerClass, "routes", {}).values():
            try:
                os.close(file.fd)
            except OSError:
                pass


def make_server(model_dir: str | Path, port: int = 8765) -> ThreadingHTTPServer:
    """The server on 127.0.0.1:port (0: any free port), not yet serving; every file it serves is open already."""
    if not 0 <= port <= 65535:
        raise LmforgeError(f"port {port} is not a TCP port", hint="--port 0..65535 (0 picks a free one)")
    table = open_routes(routes(model_dir))
    try:
        server = CappedServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LmforgeError(f"port {port} on 127.0.0.1 is in use",
                               hint="lmforge web DIR --port 0 picks a free one") from None
        raise LmforgeError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                           hint="pick another --port, or 0 for a free one") from None
    bound = server.server_address[1]
    handler = type("BoundHandler", (Handler,), {"routes": table,
                                                "hosts": {f"127.0.0.1:{bound}", f"localhost:{bound}"}})
    server.RequestHandlerClass = handler
    return server


def serve(model_dir: str | Path, port: int = 8765) -> None:
    """Serve until Ctrl-C; prints the page's address first (one line on stdout)."""
    server = make_server(model_dir, port)
    print(f"serving {model_dir} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()

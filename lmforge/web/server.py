"""The static server behind `lmforge web DIR`: 127.0.0.1 only, GET/HEAD only, and only these files: the page
(index.html, app.js, decode.js, tokenizer.js), onnxruntime-web's wasm build (from node_modules/onnxruntime-web, put
there by `npm ci` in this directory), and the model directory's lmforge.json, tokenizer file and ONNX files named by
its manifest. Cross-origin isolation headers let onnxruntime-web use wasm threads; a Host other than the loopback
address is refused (DNS rebinding)."""
from __future__ import annotations

import errno
import shutil
import sys
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
    try:
        md = read_model_dir(path)
        files = {MANIFEST: path.resolve() / MANIFEST, md.manifest["tokenizer"]["file"]: md.tokenizer_path}
        for variant in md.variants():
            files[md.manifest["files"][variant]] = md.onnx_path(variant)
    except ModelDirError as exc:
        raise LmforgeError(str(exc), hint="point `lmforge web` at a directory written by `lmforge run` or "
                                          "lmforge.export.modeldir") from None
    return {f"/model/{name}": file for name, file in files.items()}


def routes(model_dir: str | Path) -> dict[str, Path]:
    dist = ort_dist()
    table = {url: WEB / name for url, name in PAGE.items()}
    table.update({f"/ort/{name}": dist / name for name in ORT_FILES})
    table.update(model_files(model_dir))
    return table


class Handler(BaseHTTPRequestHandler):
    server_version = "lmforge-web"
    routes: ClassVar[dict[str, Path]] = {}  # set per server by make_server
    hosts: ClassVar[set[str]] = set()

    def log_message(self, format, *args):
        pass

    def _send(self, body: bool) -> None:
        if self.headers.get("Host", "") not in self.hosts:
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "unexpected Host header")
            return
        file = self.routes.get(self.path.split("?", 1)[0])
        if file is None or not file.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", TYPES.get(file.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(file.stat().st_size))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            with open(file, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)

    def do_GET(self):
        self._send(True)

    def do_HEAD(self):
        self._send(False)


def make_server(model_dir: str | Path, port: int = 8765) -> ThreadingHTTPServer:
    """The server on 127.0.0.1:port (0: any free port), not yet serving."""
    if not 0 <= port <= 65535:
        raise LmforgeError(f"port {port} is not a TCP port", hint="--port 0..65535 (0 picks a free one)")
    table = routes(model_dir)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LmforgeError(f"port {port} on 127.0.0.1 is in use",
                               hint="lmforge web DIR --port 0 picks a free one") from None
        raise LmforgeError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                           hint="pick another --port, or 0 for a free one") from None
    server.daemon_threads = True
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

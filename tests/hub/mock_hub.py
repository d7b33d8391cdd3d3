"""A tiny Hugging Face Hub stand-in on 127.0.0.1, for tests that drive huggingface_hub's real HTTP code.

It implements exactly what ``hf_hub_download`` and ``HfApi.create_repo`` / ``create_commit`` (regular, non-LFS
uploads) call: ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{file}``, ``POST /api/repos/create``,
``POST /api/validate-yaml``, ``POST /api/models/{repo}/preupload/{rev}`` and ``POST /api/models/{repo}/commit/{rev}``.
Repositories live as plain folders under ``root/{org}/{name}/``. Faults for error tests: ``short_body`` (answer a
GET with the first half of the file while HEAD announced all of it).
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from pathlib import Path


class MockHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log: list[str] = []
        self.commits: dict[str, str] = {}
        self.short_body: set[tuple[str, str]] = set()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _resolve(self, body: bool):
                path = self.path.split("?")[0]
                hub.log.append(f"{self.command} {path}")
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                f = hub.root / m.group(1) / m.group(3) if m else None
                if f is None or not f.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if m and (hub.root / m.group(1)).is_dir()
                                     else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = f.read_bytes()
                if body and (m.group(1), m.group(3)) in hub.short_body:
                    data = data[: len(data) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(f.read_bytes()).hexdigest()}"')
                self.send_header("X-Repo-Commit", hub.commits.get(m.group(1), "b" * 40))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._resolve(False)

            def do_GET(self):
                self._resolve(True)

            def do_POST(self):
                path = self.path.split("?")[0]
                hub.log.append(f"POST {path}")
                body = self._body()
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}"
                    (hub.root / repo).mkdir(parents=True, exist_ok=True)
                    return self._json({"url": f"http://{self.headers['Host']}/{repo}"})
                if path == "/api/validate-yaml":
                    return self._json({})
                m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$", path)
                if not m or not (hub.root / m.group(1)).is_dir():
                    return self._json({"error": "Repository not found"}, 404)
                repo = m.group(1)
                if m.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in files]})
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        (hub.root / repo / value["path"]).write_bytes(base64.b64decode(value["content"]))
                sha = hashlib.sha1(body).hexdigest()
                hub.commits[repo] = sha
                return self._json({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}",
                                   "commitOid": sha})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MockHub:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

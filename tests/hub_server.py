"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for testing with the real client.

It implements the endpoints ``huggingface_hub.HfApi`` and ``snapshot_download`` really call for
model repos: create_repo, create_branch, preupload + commit (files sent inline, "regular" upload
mode, so neither LFS nor Xet storage is needed), repo info by revision, the tree listing, and
resolve/download (HEAD and GET, with ETag, X-Repo-Commit, Content-Length and Range, suffix ranges too). Repos are
kept in memory as git-like commits: a commit is a full {path: bytes} snapshot with a sha1 id.

``cut_off`` makes downloads of a path stop halfway through the body, as a dropped connection does.
``rate`` (bytes per second, None for unlimited) caps how fast downloads are sent, all of them together,
as a link would: concurrent downloads (a repo of several files) share it. ``latency`` (seconds) delays
the answer to every request, as a round trip to a distant server does.
Any request it does not know is answered 404 and recorded in ``unknown`` so a test can show it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_DIGESTS: dict[tuple[int, str], tuple[bytes, str]] = {}


def digest(data: bytes, algorithm: str) -> str:
    """The hex digest of a stored file, computed once per file, when it is committed: hashed on a request,
    a GB file cost the server seconds of the CPU that the benchmarks' client shares with it (the first
    listing of a repo's tree, which names each file's sha1, still paid ~0.5 s inside a timed pull)."""
    key = (id(data), algorithm)
    hit = _DIGESTS.get(key)
    if hit is None or hit[0] is not data:
        hit = _DIGESTS[key] = (data, hashlib.new(algorithm, data).hexdigest())
    return hit[1]


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], branch: str, message: str) -> str:
        for data in files.values():  # hashed now, as the Hub does on upload, not by the first listing of the tree
            digest(data, "sha1")
        commit_id = hashlib.sha1(message.encode() + json.dumps(sorted((p, digest(d, "sha256"))
                                                                   for p, d in files.items())).encode())
        sha = commit_id.hexdigest()
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """The server and its state; use as a context manager to run it in a background thread."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.cut_off: set[str] = set()
        self.rate: float | None = None
        self.latency = 0.0
        self.requests = 0  # how many requests were answered (or refused)
        self.unknown: list[str] = []
        self.lock = threading.Lock()
        self.link_free_at = 0.0  # when the link has sent every piece handed to it so far (perf_counter time)
        self.link_lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    repo_id = r"(?P<repo>[^/]+(?:/[^/]+)?)"
    rev = r"(?P<rev>[^/]+)"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        # -------------------------------------------------------------- plumbing
        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: object, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(),
                       {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message})

        def _repo(self, name: str) -> Repo | None:
            repo = hub.repos.get(unquote(name))
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _route(self, routes: list[tuple[str, object]]) -> None:
            path = urlparse(self.path).path
            if hub.latency:
                time.sleep(hub.latency)
            with hub.lock:
                hub.requests += 1
            for pattern, func in routes:
                m = re.fullmatch(pattern, path)
                if m:
                    self.deferred = None
                    with hub.lock:
                        try:
                            func(**m.groupdict())
                        except Exception as exc:  # a server bug must show up as a 500, not a hang
                            hub.unknown.append(f"500 {self.command} {self.path}: {exc!r}")
                            self._error(500, "ServerError", repr(exc))
                    if self.deferred is not None:  # a download's body: sent without holding the lock,
                        self.deferred()  # so that downloads run side by side, as on the real Hub
                    return
            hub.unknown.append(f"{self.command} {self.path}")
            self._error(404, "EntryNotFound", f"unknown endpoint {self.command} {path}")

        # -------------------------------------------------------------- endpoints
        def create_repo(self) -> None:
            body = json.loads(self._body() or b"{}")
            name = body["name"] if not body.get("organization") else f"{body['organization']}/{body['name']}"
            if name in hub.repos:
                self._json({"error": "You already created this model repo", "url": f"{hub.url}/{name}"}, 409)
                return
            repo = hub.repos[name] = Repo(private=bool(body.get("private")))
            repo.commit({".gitattributes": b"*.wpk filter=lfs diff=lfs merge=lfs -text\n"}, "main", "initial")
            self._json({"url": f"{hub.url}/{name}", "name": name, "id": name})

        def create_branch(self, repo: str, branch: str) -> None:
            r = self._repo(repo)
            if r is None:
                return
            body = json.loads(self._body() or b"{}")
            start = r.resolve(body.get("startingPoint") or "main")
            if unquote(branch) in r.branches:
                self._error(409, "BranchExists", "Branch already exists")
                return
            r.branches[unquote(branch)] = start
            self._json({})

        def _commit(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
            """The commit a revision names, or None once a 404 has been sent."""
            r = self._repo(repo)
            if r is None:
                return None
            sha = r.resolve(rev)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
                return None
            return sha, r.commits[sha]

        def info(self, repo: str, rev: str = "main") -> None:
            found = self._commit(repo, rev)
            if found is None:
                return
            sha, files = found
            r = hub.repos[unquote(repo)]
            self._json({"id": unquote(repo), "modelId": unquote(repo), "sha": sha, "private": r.private,
                        "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())],
                        "tags": [], "downloads": 0, "likes": 0, "lastModified": "2026-11-23T00:00:00.000Z"})

        def tree(self, repo: str, rev: str, sub: str | None = None) -> None:
            found = self._commit(repo, rev)
            if found is None:
                return
            entries = [{"type": "file", "path": p, "size": len(d), "oid": digest(d, "sha1")}
                       for p, d in sorted(found[1].items()) if p.startswith(unquote(sub or ""))]
            self._json(entries)

        def preupload(self, repo: str, rev: str) -> None:
            if self._repo(repo) is None:
                return
            files = json.loads(self._body())["files"]
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                  for f in files], "commitOid": None})

        def commit(self, repo: str, rev: str) -> None:
            r = self._repo(repo)
            if r is None:
                return
            branch = unquote(rev)
            if branch not in r.branches:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
                return
            files = dict(r.commits[r.branches[branch]])
            summary = "commit"
            for line in self._body().splitlines():
                item = json.loads(line)
                value = item.get("value", {})
                if item["key"] == "header":
                    summary = value.get("summary", summary)
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    files = {p: d for p, d in files.items() if p != value["path"]
                             and not p.startswith(value["path"].rstrip("/") + "/")}
                else:
                    self._error(400, "BadRequest", f"unsupported commit operation {item['key']}")
                    return
            sha = r.commit(files, branch, summary)
            self._json({"commitUrl": f"{hub.url}/{unquote(repo)}/commit/{sha}", "commitOid": sha,
                        "commitMessage": summary, "success": True, "pullRequestUrl": None})

        def resolve(self, repo: str, rev: str, path: str) -> None:
            found = self._commit(repo, rev)
            if found is None:
                return
            sha, files = found
            path = unquote(path)
            if path not in files:
                self._error(404, "EntryNotFound", f"{path} does not exist at {sha}")
                return
            data = files[path]
            headers = {"ETag": f'"{digest(data, "sha256")}"', "X-Repo-Commit": sha,
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            status, body = 200, data
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
            if match and (match.group(1) or match.group(2)):
                if match.group(1):  # bytes=START- or bytes=START-LAST
                    start = int(match.group(1))
                    end = min(int(match.group(2)) + 1, len(data)) if match.group(2) else len(data)
                else:  # bytes=-N: the last N bytes
                    start, end = max(len(data) - int(match.group(2)), 0), len(data)
                status, body = 206, data[start:end]
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            if self.command == "GET" and path in hub.cut_off:
                self._send(status, body[: len(body) // 2], headers, length=len(body))
                self.close_connection = True
                return
            if self.command == "GET":
                rate = hub.rate
                self.deferred = lambda: (self._send_paced(status, body, headers, rate) if rate
                                         else self._send(status, body, headers))
                return
            self._send(status, body, headers)

        def _send_paced(self, status: int, body: bytes, headers: dict[str, str], rate: float) -> None:
            """Send the body a piece at a time, each piece taking its turn on the shared link (``rate``
            bytes per second for all downloads together)."""
            self._send(status, b"", headers, length=len(body))
            piece, view = 1 << 18, memoryview(body)
            for offset in range(0, len(body), piece):
                chunk = view[offset:offset + piece]
                with hub.link_lock:  # the link carries this piece after the pieces handed to it before
                    hub.link_free_at = max(hub.link_free_at, time.perf_counter()) + len(chunk) / rate
                    done_at = hub.link_free_at
                self.wfile.write(chunk)
                ahead = done_at - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)

        def validate_yaml(self) -> None:  # called before uploading a README.md model card
            self._body()
            self._json({"errors": [], "warnings": []})

        def no_registry(self) -> None:  # the client fetches an optional registry; it copes with a 404
            self._error(404, "EntryNotFound", "no agent registry on this server")

        # -------------------------------------------------------------- dispatch
        def do_GET(self) -> None:
            self._route([
                (r"/api/agent-harnesses", self.no_registry),
                (rf"/api/models/{repo_id}/revision/{rev}", self.info),
                (rf"/api/models/{repo_id}/tree/{rev}(?:/(?P<sub>.*))?", self.tree),
                (rf"/api/models/{repo_id}", self.info),
                (rf"/{repo_id}/resolve/{rev}/(?P<path>.+)", self.resolve),
            ])

        do_HEAD = do_GET

        def do_POST(self) -> None:
            self._route([
                (r"/api/repos/create", self.create_repo),
                (r"/api/validate-yaml", self.validate_yaml),
                (rf"/api/models/{repo_id}/preupload/{rev}", self.preupload),
                (rf"/api/models/{repo_id}/commit/{rev}", self.commit),
                (rf"/api/models/{repo_id}/branch/(?P<branch>[^/]+)", self.create_branch),
            ])

    return Handler

"""A small Hugging Face Hub-compatible HTTP server for tests: stdlib ``http.server`` + PyYAML, in memory.

It speaks the part of the Hub protocol that ``huggingface_hub`` 2.x uses to create a repository, upload a folder
and download files (so ``hf_hub_download``, ``file_exists`` and ``PeftModel.from_pretrained`` work against it):

=====================================================  =============================================================
``POST /api/repos/create``                              ``create_repo`` (409 when it exists, namespace from the token)
``DELETE /api/repos/delete``                            ``delete_repo``
``GET /api/whoami-v2``                                  ``whoami``
``GET /api/agent-harnesses``                            registry for the user agent (empty)
``POST /api/validate-yaml``                             README metadata check done by ``upload_folder``/``upload_file``
``GET /api/{type}s/{repo}[/revision/{rev}]``            ``model_info`` / ``repo_info`` (``siblings``, ``cardData``, ...)
``GET /api/{type}s/{repo}/refs``                        ``list_repo_refs``
``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``         ``list_repo_tree`` / ``list_repo_files`` (one page)
``POST /api/{type}s/{repo}/branch/{branch}``            ``create_branch``
``POST /api/{type}s/{repo}/preupload/{rev}``            upload modes: always ``"regular"`` (content inline, base64)
``POST /api/{type}s/{repo}/commit/{rev}``               NDJSON commit: ``header``, ``file``, ``deletedFile``,
                                                        ``deletedFolder``; ``create_pr=1``; ``parentCommit`` (412)
``HEAD|GET /[{type}s/]{repo}/resolve/{rev}/{path}``     downloads: ``ETag`` (git blob sha1), ``X-Repo-Commit``,
                                                        ``Content-Length``, ``Range`` (206); 404 with ``X-Error-Code``
                                                        ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``
=====================================================  =============================================================

Every file is a regular git blob: preupload never answers ``"lfs"``, so ``huggingface_hub`` never starts an LFS or
Xet transfer, and no ``X-Xet-*`` header or ``xet-auth`` link is ever sent (``hf_xet`` stays idle even when
installed). An ``lfsFile`` commit line is rejected with 400. Repositories must be namespaced (``user/name``).
Commits are snapshots (path -> bytes) with sha1 ids; ``main`` gets an initial ``.gitattributes`` commit, as on the
Hub. Requests that match no route get a 404 and are recorded in ``server.state.unhandled`` so tests can assert that
the client used nothing this server fakes.

Use it as a context manager (``with HubServer() as hub: ...``; ``hub.url`` is ``http://127.0.0.1:<port>``) and
point clients at it with ``HF_ENDPOINT`` set before ``huggingface_hub`` is imported (huggingface_hub reads it at
import time) or, in-process, with ``patch_endpoint(monkeypatch, hub.url)``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

DEFAULT_TOKENS = {"hf_test": "test-user"}
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_COMMIT_OID = re.compile(r"^[0-9a-f]{40}$")
_API_ACTIONS = {"revision", "refs", "tree", "branch", "preupload", "commit"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub returns as the ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_valid_repo_id(repo_id: object) -> bool:
    if not isinstance(repo_id, str) or "--" in repo_id or ".." in repo_id or repo_id.count("/") > 1:
        return False
    return all(_REPO_NAME.match(part) and not part.endswith((".", "-")) for part in repo_id.split("/"))


def split_front_matter(content: str) -> tuple[dict | None, str | None]:
    """(metadata dict or None, error message or None) of a README's YAML front matter."""
    if not content.startswith("---"):
        return None, None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if match is None:
        return None, "README.md metadata block is not closed by '---'"
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return None, f"Invalid YAML in README.md metadata: {err}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, "README.md metadata must be a YAML mapping"
    return data, None


def validate_card_metadata(content: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a README.md, mimicking the Hub's ``/api/validate-yaml`` checks that matter here."""
    data, error = split_front_matter(content)
    if error:
        return [error], []
    if not data:
        return [], ["empty or missing yaml metadata in repo card"]
    errors = []
    base = data.get("base_model")
    for i, value in enumerate(base if isinstance(base, list) else [] if base is None else [base]):
        if not is_valid_repo_id(value):
            where = f"base_model[{i}]" if isinstance(base, list) else "base_model"
            errors.append(f'"{where}" with value "{value}" is not valid. Use a model id from https://hf.co/models.')
    datasets = data.get("datasets")
    if datasets is not None and not isinstance(datasets, list):
        datasets = [datasets]
    for i, value in enumerate(datasets or []):
        if not is_valid_repo_id(value):
            errors.append(
                f'"datasets[{i}]" with value "{value}" is not valid. If possible, use a dataset id from '
                "https://hf.co/datasets."
            )
    tags = data.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        errors.append('"tags" must be an array of strings')
    model_index = data.get("model-index")
    if model_index is not None:
        ok = isinstance(model_index, list) and all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("results"), list)
            for entry in model_index
        )
        if not ok:
            errors.append('"model-index" must be an array of {name, results}')
    return errors, []


# ------------------------------------------------------------------------------------------------------ state


@dataclass
class Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # branch (or refs/pr/N) -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    num_prs: int = 0

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if _COMMIT_OID.match(revision) and revision in self.commits:
            return self.commits[revision]
        return None


class HubState:
    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._counter = 0

    def new_commit(
        self, repo: Repo, parent: Commit | None, title: str, message: str, files: dict[str, bytes]
    ) -> Commit:
        self._counter += 1
        tree = "".join(f"{path}\0{git_blob_sha1(data)}\n" for path, data in sorted(files.items()))
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parent.oid if parent else ''}\n{tree}\n{title}\n{self._counter}"
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parents=[parent.oid] if parent else [],
            title=title,
            message=message,
            date=_now(),
            files=dict(files),
        )
        repo.commits[commit.oid] = commit
        return commit


class HubError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body: Any
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body  # extra JSON fields next to "error"


# ---------------------------------------------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing -------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def endpoint(self) -> str:
        return self.server.url

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None):
        self.send_response(status)
        self.send_header("X-Request-Id", f"test-{id(self):x}-{len(self.state.requests)}")
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers, "application/json; charset=utf-8")

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message, **err.body}, err.status, headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        with self.state.lock:
            self.state.requests.append((method, self.path))
        try:
            self.body = self._read_body()
            handler = self._route(method)
            if handler is None:
                with self.state.lock:
                    self.state.unhandled.append((method, self.path))
                raise HubError(404, f"Not implemented by the test Hub: {method} {url.path}")
            with self.state.lock:
                handler()
        except HubError as err:
            self._send_error(err)
        except Exception as err:  # pragma: no cover - a server bug: report it to the client
            self._send_json({"error": f"test Hub internal error: {err!r}"}, 500)

    def _route(self, method: str):
        seg = self.segments
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if method == "POST" and rest == ["repos", "create"]:
                return self._create_repo
            if method == "DELETE" and rest == ["repos", "delete"]:
                return self._delete_repo
            if method == "GET" and rest == ["whoami-v2"]:
                return self._whoami
            if method == "GET" and rest == ["agent-harnesses"]:
                return self._agent_harnesses
            if method == "POST" and rest == ["validate-yaml"]:
                return self._validate_yaml
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                self.repo_type = REPO_TYPES[rest[0]]
                self.repo_id = f"{rest[1]}/{rest[2]}"
                action, args = (rest[3], rest[4:]) if len(rest) > 3 else (None, [])
                if action is not None and action not in _API_ACTIONS:
                    return None
                routes = {
                    ("GET", None): self._repo_info,
                    ("GET", "revision"): self._repo_info,
                    ("GET", "refs"): self._refs,
                    ("GET", "tree"): self._tree,
                    ("POST", "branch"): self._create_branch,
                    ("POST", "preupload"): self._preupload,
                    ("POST", "commit"): self._commit,
                }
                self.args = args
                return routes.get((method, action))
            return None
        # /[datasets/|spaces/]{namespace}/{name}/resolve/{revision}/{path...}
        if method in ("GET", "HEAD"):
            repo_type, rest = "model", seg
            if seg and seg[0] in REPO_TYPES and seg[0] != "models":
                repo_type, rest = REPO_TYPES[seg[0]], seg[1:]
            if len(rest) >= 5 and rest[2] == "resolve":
                self.repo_type, self.repo_id = repo_type, f"{rest[0]}/{rest[1]}"
                self.args = [rest[3], "/".join(rest[4:])]
                return self._resolve
        return None

    # -- auth and lookup ------------------------------------------------------------------------------------

    def _user(self, required: bool = False) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            if required:
                raise HubError(401, "You must be authenticated to access this resource.")
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, write: bool = False) -> Repo:
        user = self._user(required=write)
        repo = self.state.repos.get((self.repo_type, self.repo_id))
        namespace = self.repo_id.split("/")[0]
        if repo is None or (repo.private and user != namespace):
            status = 404 if user else 401
            raise HubError(status, "Repository not found", "RepoNotFound")
        if write and user != namespace:
            raise HubError(403, f"You don't have the rights to write to {self.repo_id}")
        return repo

    def _commit_for(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # -- account and repository management ------------------------------------------------------------------

    def _whoami(self) -> None:
        user = self._user(required=True)
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _agent_harnesses(self) -> None:
        # Registry huggingface_hub fetches (once a day) to fill its user agent; empty: no agent detected.
        self._send_json({"standardEnvVars": [], "harnesses": {}})

    def _create_repo(self) -> None:
        user = self._user(required=True)
        payload = self._json_body()
        name, namespace = payload.get("name"), payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{name}"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        if not is_valid_repo_id(repo_id):
            raise HubError(400, f"Invalid repo name: {repo_id}")
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)  # create_repo reads "url"
        repo = Repo(repo_type, repo_id, payload.get("visibility", "public") != "public", _now())
        initial = self.state.new_commit(repo, None, "initial commit", "", {".gitattributes": GITATTRIBUTES})
        repo.refs["main"] = initial.oid
        self.state.repos[(repo_type, repo_id)] = repo
        self._send_json({"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        payload = self._json_body()
        self.repo_type = payload.get("type") or "model"
        self.repo_id = f"{payload.get('organization') or self._user(required=True)}/{payload.get('name')}"
        self._repo(write=True)
        del self.state.repos[(self.repo_type, self.repo_id)]
        self._send_json({})

    def _create_branch(self) -> None:
        repo = self._repo(write=True)
        branch = "/".join(self.args)
        if not branch:
            raise HubError(400, "Missing branch name")
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._json_body().get("startingPoint") or "main"
        repo.refs[branch] = self._commit_for(repo, start).oid
        self._send_json({})

    # -- metadata ---------------------------------------------------------------------------------------------

    def _validate_yaml(self) -> None:
        payload = self._json_body()
        errors, warnings = validate_card_metadata(str(payload.get("content", "")))
        body = {"errors": [{"message": m} for m in errors], "warnings": [{"message": m} for m in warnings]}
        self._send_json(body, 400 if errors else 200)

    def _repo_info(self) -> None:
        repo = self._repo()
        revision = "/".join(self.args) if self.args else "main"
        commit = self._commit_for(repo, revision)
        card, _ = split_front_matter(commit.files.get("README.md", b"").decode("utf-8", "replace"))
        card = card or {}
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=len(data), blobId=git_blob_sha1(data))
            siblings.append(sibling)
        tags = list(card.get("tags") or [])
        if card.get("library_name"):
            tags.insert(0, card["library_name"])
        namespace = repo.repo_id.split("/")[0]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "cardData": card,
            "siblings": siblings,
            "usedStorage": sum(len(d) for d in commit.files.values()),
        }
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, library_name=card.get("library_name"), spaces=[])
            if card.get("pipeline_tag"):
                info["pipeline_tag"] = card["pipeline_tag"]
            if card.get("model-index"):
                info["model-index"] = card["model-index"]
        elif repo.repo_type == "space":
            info.update(sdk=card.get("sdk"), runtime={"stage": "NO_APP_FILE", "hardware": {"current": None}})
        self._send_json(info)

    def _refs(self) -> None:
        repo = self._repo()
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.refs.items()]
        body: dict[str, Any] = {
            "branches": [b for b in branches if not b["name"].startswith("refs/pr/")],
            "converts": [],
            "tags": [],
        }
        if self.query.get("include_prs", "").lower() in ("1", "true"):
            body["pullRequests"] = [
                {"name": n, "ref": n, "targetCommit": c} for n, c in repo.refs.items() if n.startswith("refs/pr/")
            ]
        self._send_json(body)

    def _tree(self) -> None:
        repo = self._repo()
        if not self.args:
            raise HubError(400, "Missing revision")
        commit = self._commit_for(repo, self.args[0])
        prefix = "/".join(self.args[1:]).strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        expand = self.query.get("expand", "").lower() in ("1", "true")
        last_commit = {"id": commit.oid, "title": commit.title, "date": commit.date}
        entries: dict[str, dict] = {}
        for path, data in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            relative = path[len(prefix) + 1 :] if prefix else path
            parts = relative.split("/")
            depth = len(parts) if recursive else 1
            for level in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
                folder = "/".join(([prefix] if prefix else []) + parts[:level])
                entries.setdefault(
                    folder,
                    {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder},
                )
            if recursive or len(parts) == 1:
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
                entries[path] = entry
        if prefix and not entries:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        listing = list(entries.values())
        if expand:
            for entry in listing:
                entry["lastCommit"] = last_commit
        self._send_json(listing)

    # -- upload -----------------------------------------------------------------------------------------------

    def _preupload(self) -> None:
        repo = self._repo(write=True)
        revision = "main" if self.query.get("create_pr") == "1" else "/".join(self.args)
        commit = self._commit_for(repo, revision)
        files = self._json_body().get("files")
        if not isinstance(files, list):
            raise HubError(400, "Invalid preupload payload: 'files' must be a list")
        answer = []
        for item in files:
            path = item.get("path")
            if not isinstance(path, str) or "sample" not in item or "size" not in item:
                raise HubError(400, "Invalid preupload payload: each file needs path, sample and size")
            existing = commit.files.get(path)
            answer.append(
                {
                    "path": path,
                    "uploadMode": "regular",  # never "lfs": keeps huggingface_hub away from LFS/Xet transfers
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._send_json({"files": answer, "commitOid": commit.oid})

    def _commit(self) -> None:
        repo = self._repo(write=True)
        revision = "/".join(self.args)
        create_pr = self.query.get("create_pr") == "1"
        parent = self._commit_for(repo, revision)
        if not create_pr and revision not in repo.refs:
            raise HubError(400, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be its header")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            _check_path(path)
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                files[path] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                raise HubError(
                    400, f"{path}: LFS/Xet objects are not supported by the test Hub (preupload answers 'regular')"
                )
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"File not found: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(folder)]
                if not gone:
                    raise HubError(404, f"Folder not found: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        if "README.md" in files and files["README.md"] != parent.files.get("README.md"):
            errors, _ = validate_card_metadata(files["README.md"].decode("utf-8", "replace"))
            if errors:
                raise HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
        commit = self.state.new_commit(repo, parent, header.get("summary") or "", header.get("description"), files)
        pr_url = None
        if create_pr:
            repo.num_prs += 1
            repo.refs[f"refs/pr/{repo.num_prs}"] = commit.oid
            pr_url = f"{self._repo_url(repo)}/discussions/{repo.num_prs}"
        else:
            repo.refs[revision] = commit.oid
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    # -- download ---------------------------------------------------------------------------------------------

    def _resolve(self) -> None:
        repo = self._repo()
        revision, path = self.args
        commit = self._commit_for(repo, revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}",
        }
        status, body = 200, data
        requested = self.headers.get("Range")
        if requested:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", requested.strip())
            if not match or (not match.group(1) and not match.group(2)):
                raise HubError(416, f"Unsupported Range header: {requested}")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
            else:  # suffix range: the last N bytes
                start, end = max(len(data) - int(match.group(2)), 0), len(data) - 1
            if start >= len(data) or start > end:
                raise HubError(
                    416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"}
                )
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, headers, _content_type(path))


def _check_path(path: str) -> None:
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if path == ".git" or path.startswith(".git/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")


def _content_type(path: str) -> str:
    if path.endswith((".md", ".txt", ".gitattributes", ".py")) or path == ".gitattributes":
        return "text/plain; charset=utf-8"
    if path.endswith(".json"):
        return "application/json; charset=utf-8"
    return "application/octet-stream"


# ----------------------------------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    url: str


class HubServer:
    """The test Hub on ``127.0.0.1`` (ephemeral port), served from a background thread.

    ``tokens`` maps access tokens to user names (default ``{"hf_test": "test-user"}``); a user may write to repos
    in their own namespace.
    """

    def __init__(self, tokens: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = HubState(tokens or DEFAULT_TOKENS)
        self._server = _Server((host, port), _Handler)
        self._server.state = self.state
        self.host, self.port = self._server.server_address[:2]
        self.url = self._server.url = f"http://{self.host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Snapshot of a repository's files at ``revision`` (for assertions)."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return dict(commit.files)


def patch_endpoint(monkeypatch, url: str) -> None:
    """Point an already-imported huggingface_hub at ``url`` for one test (``HF_ENDPOINT`` is read at import).

    Covers ``HfApi()`` instances created afterwards and ``hf_hub_download``/``hf_hub_url``; the module-level
    helpers (``huggingface_hub.file_exists``, ``model_info``, ...) are bound to an ``HfApi`` created at import and
    keep the old endpoint, so code that uses them (``PeftModel.from_pretrained``) must run in a subprocess started
    with ``HF_ENDPOINT`` set. Paths huggingface_hub also fixed at import (cache, token, agent registry) still point
    at the real ``HF_HOME``: pass ``cache_dir=`` to downloads, ``token=`` to calls, and see ``isolate_hf_home``.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def isolate_hf_home(monkeypatch, hf_home) -> None:
    """Send the files an already-imported huggingface_hub writes (caches, agent registry) to ``hf_home``."""
    import os

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    for name, relative in (
        ("HF_HUB_CACHE", "hub"),
        ("HUGGINGFACE_HUB_CACHE", "hub"),
        ("HF_XET_CACHE", "xet"),
        ("AGENT_HARNESSES_PATH", ".agent_harnesses.json"),
    ):
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, os.path.join(str(hf_home), relative))

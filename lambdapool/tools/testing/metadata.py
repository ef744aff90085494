"""A Google metadata-server emulator over real HTTP: what a Cloud Run function reads its identity from.

``with MetadataServer(email="fn@my-project.iam.gserviceaccount.com") as server:`` serves on a
thread of its own; put :attr:`~MetadataServer.host` in ``GCE_METADATA_HOST`` (google-auth and
lambdapool's Cloud SQL credentials both honour it) and the function fetches its access token and
email from here. :class:`~lambdapool.tools.proxy.LocalProxy` in ``auth="cloud-sql-iam"`` mode
asks the same object whether a token it is given was issued here and is still good.

What it mimics, checked against Google's documentation:

* the endpoints and the header rule, from "About VM metadata" / "Query VM metadata"
  (https://cloud.google.com/compute/docs/metadata/overview,
  https://cloud.google.com/compute/docs/metadata/querying-metadata): everything lives under
  ``/computeMetadata/v1/``; a request without ``Metadata-Flavor: Google`` is refused, and so is
  one carrying ``X-Forwarded-For`` (a request relayed by a proxy, the SSRF guard); answers carry
  ``Metadata-Flavor: Google`` (google-auth's ping looks for it on ``/``);
* the token, from "Authenticate workloads using service accounts"
  (https://cloud.google.com/compute/docs/access/authenticate-workloads#applications):
  ``.../service-accounts/default/token`` answers ``{"access_token", "expires_in", "token_type":
  "Bearer"}``, and the server hands out the same cached token until it has 5 minutes left, then
  a new one; ``expires_in`` counts down meanwhile;
* the status codes, from "Troubleshoot metadata server access issues"
  (https://cloud.google.com/compute/docs/troubleshooting/troubleshoot-metadata-server):
  403 for a request that fails the security checks, 404 for an unknown path, 503 while the
  server is unavailable (what :meth:`MetadataServer.fail` injects by default);
* the database user, from Cloud SQL's "IAM database authentication" (PostgreSQL): the service
  account's email without ``.gserviceaccount.com`` (:attr:`MetadataServer.db_user`).

Tokens look like Google's (``ya29.`` and random text) and never appear in a log, a message or a
repr. Standard library only.
"""

from __future__ import annotations

import http.server
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lambdapool.errors import ConfigError

ROOT = "/computeMetadata/v1/"
SA_SUFFIX = ".gserviceaccount.com"
IAM_SUFFIX = ".iam" + SA_SUFFIX
GOOGLE_REFRESH_MARGIN = 300.0  # Google's server caches a token until it has 5 minutes left
TOKEN_STATUSES = ("valid", "expired", "revoked", "unknown")


@dataclass
class _Token:
    expires_at: float  # time.monotonic()
    revoked: bool = False


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen: expected HOST:PORT (port 0 picks a free one), got {listen!r}")
    return host.strip("[]"), int(port)


class MetadataServer:
    """Google's metadata server for one service account, on ``listen`` (a context manager).

    Parameters:
        email: the service account (``NAME@PROJECT.iam.gserviceaccount.com``).
        token_ttl: seconds a new access token lives (Google's: about an hour).
        listen: ``HOST:PORT``; port 0 picks a free one (read :attr:`host` once started).
        project_id: served at ``project/project-id``; default: the PROJECT of the email.
        refresh_margin: a fetch returns the cached token while it has more than this left, else
            a new one. Default: Google's 5 minutes, or a quarter of ``token_ttl`` if that is
            shorter (so a short ttl in a test still caches).

    Controls (thread-safe): :meth:`fail` / :meth:`recover`, :meth:`revoke`, :meth:`expire_all`,
    :meth:`token_status`; counters :attr:`token_requests`, :attr:`email_requests`,
    :attr:`tokens_issued`.
    """

    def __init__(
        self,
        email: str = "lambdapool-fn@lambdapool-local.iam.gserviceaccount.com",
        token_ttl: float = 3600,
        *,
        listen: str = "127.0.0.1:0",
        project_id: str | None = None,
        refresh_margin: float | None = None,
    ) -> None:
        name, at, domain = email.partition("@")
        if not name or not at or not domain.endswith(SA_SUFFIX):
            raise ConfigError(
                f"email: expected a service account's email (NAME@PROJECT.iam.gserviceaccount.com), got {email!r}"
            )
        if not token_ttl > 0:
            raise ConfigError(f"token_ttl: must be > 0 seconds, got {token_ttl!r}")
        if project_id is None:
            project_id = domain.removesuffix(IAM_SUFFIX) if domain.endswith(IAM_SUFFIX) else "lambdapool-local"
        if refresh_margin is None:
            refresh_margin = min(GOOGLE_REFRESH_MARGIN, token_ttl / 4)
        if not 0 <= refresh_margin < token_ttl:
            raise ConfigError(f"refresh_margin: must be in [0, token_ttl={token_ttl}), got {refresh_margin!r}")
        self.email = email
        self.token_ttl = float(token_ttl)
        self.project_id = project_id
        self.refresh_margin = float(refresh_margin)
        self._listen = _parse_listen(listen)
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._current: str | None = None
        self._fail_status = 0
        self._fail_left: int | None = 0  # 0: healthy; None: failing until recover()
        self.token_requests = 0
        self.email_requests = 0
        self.tokens_issued = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.host if self._httpd else "stopped"
        return f"<MetadataServer {where} email={self.email} tokens_issued={self.tokens_issued}>"

    # -- addresses -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``HOST:PORT``, the value for ``GCE_METADATA_HOST``."""
        if self._httpd is None:
            raise ConfigError("MetadataServer.host: the server is not started; use start() or `with`")
        host, port = str(self._httpd.server_address[0]), int(self._httpd.server_address[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def environ(self) -> dict[str, str]:
        """The environment that sends a function's metadata requests here: ``GCE_METADATA_HOST``,
        and ``GCE_METADATA_IP`` (google-auth pings that one to tell it runs on Google Cloud)."""
        return {"GCE_METADATA_HOST": self.host, "GCE_METADATA_IP": self.host}

    @property
    def db_user(self) -> str:
        """The Cloud SQL IAM database user: the email without ``.gserviceaccount.com``."""
        return self.email.removesuffix(SA_SUFFIX)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> MetadataServer:
        if self._httpd is not None:
            return self
        host, port = self._listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        httpd = _HTTPServer((host, port), _Handler, self, family)
        # a short poll: stop() waits for serve_forever to notice, 0.5 s by default
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="lambdapool-metadata", daemon=True
        )
        self._httpd = httpd
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()  # keep-alive clients would hold their handler threads
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> MetadataServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controls --------------------------------------------------------------------------
    def fail(self, status: int = 503, times: int | None = None) -> None:
        """Answer the next ``times`` token and email fetches with ``status`` (None: until :meth:`recover`)."""
        if not 400 <= status <= 599:
            raise ConfigError(f"fail: status must be an HTTP error (400-599), got {status!r}")
        if times is not None and times < 0:
            raise ConfigError(f"fail: times must be >= 0 (or None for until recover()), got {times!r}")
        with self._lock:
            self._fail_status, self._fail_left = status, times

    def recover(self) -> None:
        """Stop failing (see :meth:`fail`)."""
        with self._lock:
            self._fail_left = 0

    def revoke(self, token: str | None = None) -> None:
        """Revoke one token this server issued, or (None) every token issued so far; the next fetch
        gets a new one."""
        with self._lock:
            if token is None:
                targets = list(self._tokens.values())
            elif token in self._tokens:
                targets = [self._tokens[token]]
            else:
                raise ConfigError("revoke: not a token this metadata server issued")
            for entry in targets:
                entry.revoked = True

    def expire_all(self) -> None:
        """Make every token issued so far expired now, as if its lifetime had run out; the next
        fetch gets a new one."""
        now = time.monotonic()
        with self._lock:
            for entry in self._tokens.values():
                entry.expires_at = min(entry.expires_at, now)

    def token_status(self, token: str) -> str:
        """``"valid"``, ``"expired"``, ``"revoked"`` or ``"unknown"`` (never issued here)."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return "unknown"
            if entry.revoked:
                return "revoked"
            return "valid" if time.monotonic() < entry.expires_at else "expired"

    # -- what the handler serves -----------------------------------------------------------
    def _injected_failure(self) -> int:
        """The status to fail this fetch with (0: none), counting down ``fail(times=n)``."""
        with self._lock:
            if self._fail_left == 0:
                return 0
            if self._fail_left is not None:
                self._fail_left -= 1
            return self._fail_status

    def _token(self) -> tuple[str, int]:
        """The cached token and its seconds left, or a new one when it is near its end or gone."""
        now = time.monotonic()
        with self._lock:
            self.token_requests += 1
            current = self._current
            entry = self._tokens.get(current) if current else None
            if current is None or entry is None or entry.revoked or entry.expires_at - now <= self.refresh_margin:
                current = self._current = "ya29.c." + secrets.token_urlsafe(96)
                entry = self._tokens[current] = _Token(now + self.token_ttl)
                self.tokens_issued += 1
            return current, int(entry.expires_at - now)

    def _answer(self, path: str, query: str) -> tuple[int, str, str]:
        """(status, content type, body) for a GET of ``path`` that passed the header checks."""
        if path == "/":
            return 200, "application/text", "computeMetadata/\n"
        if not path.startswith(ROOT):
            return 404, "text/plain", "Not Found\n"
        key = path[len(ROOT) :]
        accounts = "instance/service-accounts/"
        if key == "project/project-id":
            return 200, "application/text", self.project_id
        if not key.startswith(accounts):
            return 404, "text/plain", "Not Found\n"
        account, _, item = key[len(accounts) :].partition("/")
        if account not in ("default", self.email):
            return 404, "text/plain", "Not Found\n"
        if item in ("token", "email"):
            if item == "email":
                with self._lock:
                    self.email_requests += 1
            status = self._injected_failure()
            if status:
                return status, "text/plain", f"{http.server.BaseHTTPRequestHandler.responses[status][0]}\n"
            if item == "email":
                return 200, "application/text", self.email
            token, left = self._token()
            body = {"access_token": token, "expires_in": left, "token_type": "Bearer"}
            return 200, "application/json", json.dumps(body)
        if item == "" and "recursive=true" in query:  # google-auth reads the account this way first
            body_: dict[str, Any] = {
                "aliases": ["default"],
                "email": self.email,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
            return 200, "application/json", json.dumps(body_)
        if item == "":
            return 200, "application/text", "aliases\nemail\nidentity\nscopes\ntoken\n"
        return 404, "text/plain", "Not Found\n"


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, metadata: MetadataServer, family: int) -> None:
        self.address_family = family
        self.metadata = metadata
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as google-auth's pooled transport expects
    disable_nagle_algorithm = True  # otherwise each answer waits ~40 ms for a delayed ACK
    server_version = "Metadata Server for VM"
    sys_version = ""
    timeout = 60
    server: _HTTPServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if self.headers.get("X-Forwarded-For") is not None:
            # Google's server refuses requests relayed by a proxy (its guard against SSRF)
            self._send(403, "text/plain", "Forbidden: requests with X-Forwarded-For are refused\n")
        elif self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, "text/plain", "Forbidden: missing the header Metadata-Flavor: Google\n")
        else:
            self._send(*self.server.metadata._answer(parts.path, parts.query))

    def _not_allowed(self) -> None:
        self._send(405, "text/plain", "Method Not Allowed\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a test's output is not the place for request lines

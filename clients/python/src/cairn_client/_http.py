"""JSON over HTTP with the standard library: an API key, problem+json errors."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any, Mapping, Optional


class CairnError(Exception):
    """A refusal or failure the server answered (RFC 9457 problem+json).

    ``code`` is the stable problem code (docs/errors.md), ``status`` the
    HTTP status, ``detail`` what the server said, ``errors`` the field
    problems of a 422.
    """

    def __init__(self, status: int, code: str, detail: str, errors: Optional[list] = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []


class Transport:
    """Requests to one Cairn server with one API key, over keep-alive
    connections (one per thread)."""

    def __init__(self, url: str, key: Optional[str] = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"`{url}` is not an http(s) URL of a Cairn server")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self.key = key
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            c = cls(self._host, self._port, timeout=timeout)
            self._local.conn = c
        c.timeout = timeout
        if c.sock is not None:
            c.sock.settimeout(timeout)
        return c

    def _drop(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        raw: Optional[bytes] = None,
        content_type: str = "application/json",
    ) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"accept": "application/json"}
        if data is not None:
            h["content-type"] = content_type
        if self.key:
            h["authorization"] = f"Bearer {self.key}"
        h.update(headers or {})
        for attempt in (1, 2):
            conn = self._connection(timeout or self.timeout)
            reused = conn.sock is not None
            try:
                conn.request(method, self._base + path, body=data, headers=h)
                r = conn.getresponse()
                status, text = r.status, r.read()
                if r.getheader("connection", "").lower() == "close":
                    self._drop()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                # A kept-alive connection the server closed meanwhile: once more on a new one.
                if reused and attempt == 1:
                    continue
                raise ConnectionError(f"cannot reach Cairn at {self.url}: {e}") from e
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise ConnectionError(f"cannot reach Cairn at {self.url}: {e}") from e
        if status >= 400:
            try:
                p = json.loads(text or b"{}")
            except ValueError:
                p = {}
            raise CairnError(
                status, p.get("code", "http-error"), p.get("detail", text.decode(errors="replace")), p.get("errors")
            )
        return json.loads(text) if text else None

"""A Python client for meshkv, the replicated key-value store (standard library only).

    >>> import meshkv
    >>> kv = meshkv.Client(["http://127.0.0.1:8000", "http://127.0.0.1:8001"])
    >>> kv.put("color", "blue")          # the previous value, or None
    >>> kv.get("color")
    b'blue'

What it does, in short (the server's API is in docs/http.md):

* **Failover.** Each request goes to the endpoint that answered last, then to the
  others in the order given. An endpoint that cannot be reached, that answers ``503``
  (``ERR_NOT_READY`` while it catches up after a start, ``ERR_UNAVAILABLE`` when it
  cannot reach a majority of the key's acceptors) or ``412 ERR_DEP`` (it has not
  caught up with this session) is skipped for the next. When every endpoint is
  catching up, the round is tried again for a while. A request that broke after it
  was sent may have been applied: retried elsewhere, a put is then applied twice
  (with the same value).
* **Consistency levels.** ``consistency="linearizable"`` names that level on every
  request; ``"session"`` names the session level and sends, per key, the newest
  version this client has seen (``X-Meshkv-After``) so that the client reads its own
  writes and never goes back in time, whichever server answers (a lagging server
  waits up to ``wait_ms`` for replication). ``None`` (the default) uses the servers'
  default level and follows what the answers say they were served at: once one says
  ``session`` the client behaves as a session client from then on.
* **Compare-and-set** (``if_version=`` / ``if_absent=True``) is always linearizable.
* **Expiry**: ``put(..., ttl=SECONDS)`` writes a value that every server drops
  ``SECONDS`` after the write's timestamp; a watch reports it as an ``expire`` event.
* **Keys** are ``str`` (UTF-8) or ``bytes``, any bytes; **values** are ``bytes`` or
  ``str``; reads return ``bytes``.
* **Listing** (:meth:`Client.list`) and **watching** (:meth:`Client.watch`) follow
  pagination and reconnect by themselves.

A client is safe to share between threads; each thread keeps its own keep-alive
connections. :meth:`Client.with_endpoints` makes a client for other endpoints that
shares this one's session tokens.
"""

from __future__ import annotations

import http.client
import json
import operator
import socket
import ssl
import threading
import time
import urllib.parse
from collections import namedtuple
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "Client",
    "Session",
    "Watch",
    "Item",
    "Page",
    "Event",
    "MeshkvError",
    "PreconditionFailed",
    "DependencyNotMet",
    "Unavailable",
    "encode_key",
    "decode_key",
    "parse_version",
]

__version__ = "0.1.0"

Key = Union[str, bytes, bytearray, memoryview]
Value = Union[str, bytes, bytearray, memoryview]

AFTER = "X-Meshkv-After"
WAIT = "X-Meshkv-Wait-Ms"
LEVEL = "X-Meshkv-Consistency"
VERSION = "X-Meshkv-Version"
TTL = "X-Meshkv-Ttl"
WATCH_ID = "X-Meshkv-Watch-Id"

LEVELS = ("session", "linearizable")

# The longest TTL the servers accept, in seconds (ten years).
MAX_TTL = 10 * 365 * 24 * 3600

# How long a request keeps retrying while every endpoint answers 503 ERR_NOT_READY.
NOT_READY_PATIENCE = 10.0


Item = namedtuple("Item", "key value version")
Item.__doc__ = """One key of a listing: ``key`` (bytes), ``value`` (bytes, or None with
``keys_only``) and ``version`` (``"<ts>.<origin>.<counter>"``)."""

Page = namedtuple("Page", "items more next watch_id endpoint")
Page.__doc__ = """One answer of a listing: ``items`` (a list of :class:`Item`), ``more``
(whether keys follow), ``next`` (bytes: the key to continue from, or None),
``watch_id`` (the server's ``X-Meshkv-Watch-Id``: watching that server from this id
misses no change made after the snapshot; None when the server sends none) and
``endpoint`` (the URL of the server that answered)."""

Event = namedtuple("Event", "kind key value version id")
Event.__doc__ = """One change from :meth:`Client.watch`: ``kind`` is ``"put"``,
``"delete"``, ``"expire"`` (a value written with a TTL ran out) or ``"reset"``;
``key`` and ``value`` are bytes (``value`` is None for a delete and an expiry, both
are None for a reset); ``version`` is the change's version string (for an expiry, the
version of the write that expired); ``id`` is the event id to resume after (None when
the event carried none). A ``reset`` means the changes since the id asked for cannot
be replayed: list the keys again."""


class MeshkvError(Exception):
    """An answer the client cannot turn into a result.

    ``status`` is the HTTP status (None when no server answered), ``message`` the
    server's one-line reason (e.g. ``"ERR_PRECONDITION"``), ``endpoint`` the server
    that answered.
    """

    def __init__(self, status: Optional[int], message: str, endpoint: Optional[str] = None):
        self.status = status
        self.message = message
        self.endpoint = endpoint
        where = f"{endpoint}: " if endpoint else ""
        code = f"{status} " if status is not None else ""
        super().__init__(f"{where}{code}{message}")


class PreconditionFailed(MeshkvError):
    """A compare-and-set's condition did not hold (``412 ERR_PRECONDITION``).

    ``version`` is the key's current version, or None when it has no value.
    """

    def __init__(self, status, message, endpoint=None, version: Optional[str] = None):
        super().__init__(status, message, endpoint)
        self.version = version


class DependencyNotMet(MeshkvError):
    """No endpoint has caught up with this session's version of the key
    (``412 ERR_DEP``), even after waiting ``wait_ms``."""


class Unavailable(MeshkvError):
    """No endpoint could serve the request: each was unreachable or answered ``503``.

    ``errors`` lists what each endpoint said.
    """

    def __init__(self, message: str, errors: Sequence[str] = ()):
        super().__init__(None, message)
        self.errors = list(errors)


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"a meshkv key is str or bytes, not {type(key).__name__}")


def _value_bytes(value: Value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a meshkv value is bytes or str, not {type(value).__name__}")


def encode_key(key: Key) -> str:
    """Percent-encode a key (or any bytes): every byte but ASCII letters, digits and
    ``-._~`` becomes ``%XX``. ``str`` is encoded as UTF-8 first."""
    return urllib.parse.quote(_key_bytes(key), safe="")


def decode_key(text: str) -> bytes:
    """The bytes a percent-encoded string stands for (the inverse of :func:`encode_key`)."""
    return urllib.parse.unquote_to_bytes(text)


def parse_version(version: str) -> Tuple[int, int, int]:
    """``"<ts>.<origin>.<counter>"`` as a tuple of ints, which orders versions."""
    parts = version.strip().split(".")
    if len(parts) != 3:
        raise ValueError(f"version {version!r}: want <ts>.<origin>.<counter>")
    try:
        ts, origin, counter = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"version {version!r}: want three decimal numbers") from None
    return ts, origin, counter


def _ttl_header(ttl: Optional[int]) -> Dict[str, str]:
    """The ``X-Meshkv-Ttl`` header for ``ttl`` (none for None); ValueError unless it is
    a whole number of seconds from 1 to :data:`MAX_TTL`."""
    if ttl is None:
        return {}
    try:
        if isinstance(ttl, bool):
            raise TypeError
        secs = operator.index(ttl)  # ints (and int-like types), not floats or strings
    except TypeError:
        raise ValueError(f"ttl {ttl!r}: want whole seconds (an int), 1 to {MAX_TTL}") from None
    if not 1 <= secs <= MAX_TTL:
        raise ValueError(f"ttl {secs}: want 1 to {MAX_TTL} seconds")
    return {TTL: str(secs)}


def _newer(a: Optional[str], b: str) -> bool:
    """Whether version ``b`` is newer than ``a`` (None, or unparsable, is oldest)."""
    if a is None:
        return True
    try:
        return parse_version(b) > parse_version(a)
    except ValueError:
        return False


class Session:
    """What a client remembers between requests, shareable between clients and threads.

    Per key (bytes), the newest version seen (the session token sent as
    ``X-Meshkv-After``); and whether an answer to a request without a named level
    said it was served at the ``session`` level (then the clients using this session
    behave as session clients).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens: Dict[bytes, str] = {}
        self._session_level = False

    def token(self, key: Key) -> Optional[str]:
        """The newest version of ``key`` seen in this session, or None."""
        with self._lock:
            return self._tokens.get(_key_bytes(key))

    def observe(self, key: Key, version: Optional[str]) -> None:
        """Remember ``version`` for ``key`` if it is newer than what is known."""
        if not version:
            return
        try:
            parse_version(version)
        except ValueError:
            return
        k = _key_bytes(key)
        with self._lock:
            if _newer(self._tokens.get(k), version):
                self._tokens[k] = version

    def tokens(self) -> Dict[bytes, str]:
        """A copy of the whole token table (key bytes -> version)."""
        with self._lock:
            return dict(self._tokens)

    def clear(self) -> None:
        """Forget every token (start a new session)."""
        with self._lock:
            self._tokens.clear()
            self._session_level = False

    @property
    def session_level(self) -> bool:
        """Whether a server's answer has said it serves this client at the session level."""
        with self._lock:
            return self._session_level

    def _learn_session_level(self) -> None:
        with self._lock:
            self._session_level = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


class _Endpoint:
    """One server: scheme, host, port and path prefix."""

    def __init__(self, text: str):
        text = text.strip()
        if "://" not in text:
            text = "http://" + text
        u = urllib.parse.urlsplit(text)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"endpoint {text!r}: want http:// or https://")
        if not u.hostname:
            raise ValueError(f"endpoint {text!r}: no host")
        self.scheme = u.scheme
        self.host = u.hostname
        try:
            self.port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"endpoint {text!r}: bad port") from None
        self.base = u.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{self.scheme}://{host}:{self.port}{self.base}"

    def __repr__(self):
        return self.url


class _Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes, endpoint: str):
        self.status = status
        self.headers = headers
        self.body = body
        self.endpoint = endpoint

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)

    def line(self) -> str:
        text = self.body.decode("utf-8", "replace").strip()
        return text.splitlines()[0] if text else ""


class _Closed(Exception):
    """The watch was closed."""


class Client:
    """A meshkv client over HTTP.

    ``endpoints``: server URLs (``http://host:port``, ``https://...`` or ``host:port``)
    or one comma-separated string. ``consistency``: ``"session"``,
    ``"linearizable"`` or None (the servers' default, see the module doc).
    ``token``: a bearer token for servers that require one. ``timeout``: seconds per
    endpoint attempt (on top of ``wait_ms`` when the request may wait). ``wait_ms``:
    how long a lagging server may wait for replication before answering ``ERR_DEP``.
    ``session``: a :class:`Session` to share tokens with other clients (default: a new
    one). ``ssl_context``: for ``https://`` endpoints (default: the system's trust
    store; pass one that trusts the cluster CA).
    """

    def __init__(
        self,
        endpoints: Union[str, Iterable[str]],
        consistency: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 5.0,
        wait_ms: int = 2000,
        session: Optional[Session] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
    ):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        self._endpoints = [_Endpoint(e) for e in endpoints]
        if not self._endpoints:
            raise ValueError("no endpoints")
        if consistency is not None and consistency not in LEVELS:
            raise ValueError(f"consistency {consistency!r}: want session, linearizable or None")
        self.consistency = consistency
        self.token = token
        self.timeout = float(timeout)
        self.wait_ms = int(wait_ms)
        self.session = session if session is not None else Session()
        self.ssl_context = ssl_context
        self._preferred = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all_conns: List[http.client.HTTPConnection] = []
        #: The level the last ``/kv/{key}`` answer said it was served at (None when the
        #: server does not say).
        self.last_level: Optional[str] = None

    # -- sharing -----------------------------------------------------------------

    def with_endpoints(self, endpoints: Union[str, Iterable[str]]) -> "Client":
        """A client for other endpoints with the same settings, sharing this client's
        :class:`Session` (its tokens): what one wrote the other reads."""
        return Client(
            endpoints,
            consistency=self.consistency,
            token=self.token,
            timeout=self.timeout,
            wait_ms=self.wait_ms,
            session=self.session,
            ssl_context=self.ssl_context,
        )

    @property
    def endpoints(self) -> List[str]:
        """The endpoint URLs, in the order given."""
        return [e.url for e in self._endpoints]

    def session_token(self, key: Key) -> Optional[str]:
        """The newest version of ``key`` this client's session has seen, or None."""
        return self.session.token(key)

    @property
    def effective_consistency(self) -> Optional[str]:
        """The level this client asks for: its ``consistency``, else ``"session"``
        once a server said so, else None (the servers' default)."""
        if self.consistency is not None:
            return self.consistency
        return "session" if self.session.session_level else None

    def close(self) -> None:
        """Close the keep-alive connections this client opened."""
        with self._lock:
            conns, self._all_conns = self._all_conns, []
        for c in conns:
            try:
                c.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- transport ---------------------------------------------------------------

    def _order(self) -> List[_Endpoint]:
        with self._lock:
            first = self._preferred
        return [self._endpoints[first]] + [e for i, e in enumerate(self._endpoints) if i != first]

    def _worked(self, ep: _Endpoint) -> None:
        with self._lock:
            self._preferred = self._endpoints.index(ep)

    def _new_conn(self, ep: _Endpoint, timeout: float) -> http.client.HTTPConnection:
        if ep.scheme == "https":
            ctx = self.ssl_context or ssl.create_default_context()
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _conn(self, ep: _Endpoint, timeout: float) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        c = conns.get(ep.url)
        if c is None:
            c = self._new_conn(ep, timeout)
            conns[ep.url] = c
            with self._lock:
                self._all_conns.append(c)
        c.timeout = timeout
        if c.sock is not None:
            c.sock.settimeout(timeout)
        return c

    def _drop_conn(self, ep: _Endpoint) -> None:
        conns = getattr(self._local, "conns", {})
        c = conns.pop(ep.url, None)
        if c is not None:
            c.close()
            with self._lock:
                if c in self._all_conns:
                    self._all_conns.remove(c)

    def _headers(self, extra: Dict[str, str]) -> Dict[str, str]:
        h = {"User-Agent": f"meshkv-python/{__version__}"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra)
        return h

    def _once(self, ep: _Endpoint, method: str, path: str, headers: Dict[str, str],
              body: Optional[bytes], timeout: float) -> _Reply:
        """One request to one endpoint over a kept-alive connection; a connection the
        server closed while idle is retried once on a new one."""
        for attempt in (0, 1):
            c = self._conn(ep, timeout)
            reused = c.sock is not None
            try:
                c.request(method, ep.base + path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                if r.will_close:
                    self._drop_conn(ep)
                return _Reply(r.status, r.headers, data, ep.url)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop_conn(ep)
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                self._drop_conn(ep)
                raise
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, headers: Dict[str, str],
                 body: Optional[bytes] = None, waits: bool = False) -> _Reply:
        """Send to the endpoints in turn; return the first answer that is not a reason
        to try the next one (unreachable, 503, 412 ERR_DEP)."""
        headers = self._headers(headers)
        timeout = self.timeout + (self.wait_ms / 1000.0 if waits else 0.0)
        give_up = time.monotonic() + NOT_READY_PATIENCE
        while True:
            errors: List[str] = []
            dep: Optional[_Reply] = None
            not_ready = 0
            for ep in self._order():
                try:
                    r = self._once(ep, method, path, headers, body, timeout)
                except (OSError, http.client.HTTPException) as e:
                    errors.append(f"{ep.url}: {type(e).__name__}: {e}")
                    continue
                if r.status == 503:
                    if r.line().startswith("ERR_NOT_READY"):
                        not_ready += 1
                    errors.append(f"{ep.url}: 503 {r.line()}")
                    continue
                if r.status == 412 and r.line().startswith("ERR_DEP"):
                    dep = dep or r
                    errors.append(f"{ep.url}: 412 {r.line()}")
                    continue
                self._worked(ep)
                return r
            if dep is not None:
                raise DependencyNotMet(
                    412, f"ERR_DEP: no endpoint has caught up with this session ({'; '.join(errors)})",
                    dep.endpoint)
            if not_ready == 0 or time.monotonic() >= give_up:
                raise Unavailable("no endpoint could serve the request: " + "; ".join(errors), errors)
            time.sleep(0.1)

    # -- single keys -------------------------------------------------------------

    def _level_headers(self, key: bytes, conditional: bool) -> Tuple[Dict[str, str], bool]:
        """Headers naming the level (and the token) of a request on ``key``; the
        second item says whether the request may wait for replication."""
        if conditional:
            return {LEVEL: "linearizable"}, False
        level = self.effective_consistency
        if level == "linearizable":
            return {LEVEL: "linearizable"}, False
        if level == "session":
            h = {LEVEL: "session", WAIT: str(self.wait_ms)}
            tok = self.session.token(key)
            if tok:
                h[AFTER] = tok
            return h, True
        return {}, False

    def _kv(self, method: str, key: Key, body: Optional[bytes] = None,
            extra: Optional[Dict[str, str]] = None) -> Tuple[bytes, _Reply]:
        k = _key_bytes(key)
        if not k:
            raise ValueError("empty key")
        extra = extra or {}
        conditional = "If-Match" in extra or "If-None-Match" in extra
        headers, waits = self._level_headers(k, conditional)
        headers.update(extra)
        r = self._request(method, "/kv/" + encode_key(k), headers, body, waits)
        served = r.header(LEVEL)
        if served:
            served = served.strip().lower()
            self.last_level = served
            if LEVEL not in headers and served == "session":
                self.session._learn_session_level()
        return k, r

    def _error(self, r: _Reply) -> MeshkvError:
        line = r.line()
        if r.status == 412 and line.startswith("ERR_PRECONDITION"):
            return PreconditionFailed(r.status, line, r.endpoint, r.header(VERSION))
        if r.status == 412 and line.startswith("ERR_DEP"):
            return DependencyNotMet(r.status, line, r.endpoint)
        return MeshkvError(r.status, line or http.client.responses.get(r.status, ""), r.endpoint)

    def get_versioned(self, key: Key) -> Tuple[Optional[bytes], Optional[str]]:
        """``(value, version)`` of ``key``: the value is None when the key has no value
        (never written, or deleted); the version is None when the server knows none
        (a deleted key may still show its tombstone's version)."""
        k, r = self._kv("GET", key)
        version = r.header(VERSION)
        if r.status == 200:
            self.session.observe(k, version)
            return r.body, version
        if r.status == 404 and r.line().startswith("ERR_KEY"):
            self.session.observe(k, version)
            return None, version
        raise self._error(r)

    def get(self, key: Key) -> Optional[bytes]:
        """The value of ``key``, or None when it has none."""
        return self.get_versioned(key)[0]

    def put(self, key: Key, value: Value, if_version: Optional[str] = None,
            if_absent: bool = False, ttl: Optional[int] = None) -> Optional[bytes]:
        """Write ``value`` under ``key``; return the previous value (None when there
        was none).

        With ``if_version`` the write happens only if the key's current version is
        that one; with ``if_absent=True`` only if the key has no value. Otherwise
        :class:`PreconditionFailed` is raised, carrying the current version.

        With ``ttl`` (whole seconds, 1 to ten years; ValueError otherwise) the value
        expires ``ttl`` seconds after the write's timestamp (the ``<ts>`` of its
        version), on every server: from then on the key reads as absent and watchers
        get an ``expire`` event. The TTL belongs to this write only: a later put
        replaces it (a put without ``ttl`` makes the key permanent again).
        """
        return self._put(key, value, if_version, if_absent, ttl)[0]

    def _put(self, key, value, if_version, if_absent, ttl=None):
        if if_version is not None and if_absent:
            raise ValueError("if_version and if_absent together")
        extra = _ttl_header(ttl)
        if if_version is not None:
            extra["If-Match"] = if_version
        elif if_absent:
            extra["If-None-Match"] = "*"
        k, r = self._kv("PUT", key, _value_bytes(value), extra)
        if r.status in (200, 201):
            version = r.header(VERSION)
            self.session.observe(k, version)
            return (r.body if r.status == 200 else None), version
        err = self._error(r)
        if isinstance(err, PreconditionFailed):
            self.session.observe(k, err.version)
        raise err

    def put_versioned(self, key: Key, value: Value, if_version: Optional[str] = None,
                      if_absent: bool = False,
                      ttl: Optional[int] = None) -> Tuple[Optional[bytes], Optional[str]]:
        """Like :meth:`put`, but return ``(previous value, version of the new value)``.
        With ``ttl`` the value expires at ``parse_version(version)[0] + ttl * 1_000_000``
        (microseconds since the Unix epoch)."""
        return self._put(key, value, if_version, if_absent, ttl)

    def delete(self, key: Key, if_version: Optional[str] = None) -> Optional[bytes]:
        """Delete ``key`` (a replicated tombstone); return the previous value (None when
        there was none). With ``if_version``, only if that is the current version
        (else :class:`PreconditionFailed`)."""
        extra = {"If-Match": if_version} if if_version is not None else {}
        k, r = self._kv("DELETE", key, None, extra)
        if r.status in (200, 204):
            self.session.observe(k, r.header(VERSION))
            return r.body if r.status == 200 else None
        err = self._error(r)
        if isinstance(err, PreconditionFailed):
            self.session.observe(k, err.version)
        raise err

    # -- listing -----------------------------------------------------------------

    def list_pages(self, prefix: Optional[Key] = None, start: Optional[Key] = None,
                   end: Optional[Key] = None, limit: Optional[int] = None,
                   keys_only: bool = False) -> Iterator[Page]:
        """The pages of a listing, one :class:`Page` per server answer (see :meth:`list`)."""
        params: List[Tuple[str, str]] = []
        if prefix is not None:
            params.append(("prefix", encode_key(prefix)))
        if end is not None:
            params.append(("end", encode_key(end)))
        if limit is not None:
            params.append(("limit", str(int(limit))))
        if keys_only:
            params.append(("keys_only", "true"))
        cursor = _key_bytes(start) if start is not None else None
        while True:
            q = list(params)
            if cursor is not None:
                q.append(("start", encode_key(cursor)))
            path = "/kv" + ("?" + "&".join(f"{n}={v}" for n, v in q) if q else "")
            r = self._request("GET", path, {"Accept": "application/json"})
            if r.status != 200:
                raise self._error(r)
            try:
                doc = json.loads(r.body)
                items = []
                for it in doc["items"]:
                    key = decode_key(it["key"])
                    value = None if keys_only or it.get("value") is None else decode_key(it["value"])
                    version = it.get("version")
                    self.session.observe(key, version)
                    items.append(Item(key, value, version))
                more = bool(doc.get("more"))
                nxt = doc.get("next")
                nxt = decode_key(nxt) if nxt is not None else None
            except (ValueError, KeyError, TypeError) as e:
                raise MeshkvError(r.status, f"malformed listing: {e}", r.endpoint) from None
            yield Page(items, more, nxt, r.header(WATCH_ID), r.endpoint)
            if not more:
                return
            if nxt is None or (cursor is not None and nxt <= cursor):
                raise MeshkvError(r.status, f"listing does not advance (next={nxt!r})", r.endpoint)
            cursor = nxt

    def list(self, prefix: Optional[Key] = None, start: Optional[Key] = None,
             end: Optional[Key] = None, limit: Optional[int] = None,
             keys_only: bool = False) -> Iterator[Item]:
        """Every key (with its value and version) in byte order, as :class:`Item`.

        ``prefix``: only keys starting with it; ``start``/``end``: the half-open byte
        range ``[start, end)``; ``limit``: keys per server answer (the server's default
        is 1000, its maximum 10000) — the generator follows the pages to the end;
        ``keys_only``: items carry no value. Each page is a snapshot of one server's
        store (the session level). Listed versions update the session's tokens.
        """
        for page in self.list_pages(prefix, start, end, limit, keys_only):
            yield from page.items

    # -- watching ----------------------------------------------------------------

    def watch(self, prefix: Optional[Key] = None, after: Optional[str] = None,
              idle_timeout: float = 60.0, reconnect_for: float = 30.0) -> "Watch":
        """Follow changes: an iterator of :class:`Event` (put, delete, expire, reset).

        ``prefix``: only keys starting with it; ``after``: an event id to resume after
        (changes after it are replayed, or a ``reset`` event says they cannot be).
        A dropped connection (or ``idle_timeout`` seconds without a byte, keep-alives
        included) is reopened through the endpoints, resuming after the last event id
        seen; :class:`Unavailable` is raised when no endpoint answers for
        ``reconnect_for`` seconds. Stop it with :meth:`Watch.close` (from any thread)
        or by leaving a ``with`` block.
        """
        return Watch(self, prefix, after, idle_timeout, reconnect_for)


class Watch:
    """An iterator of :class:`Event` from ``GET /watch`` (Server-Sent Events); made by
    :meth:`Client.watch`."""

    def __init__(self, client: Client, prefix: Optional[Key], after: Optional[str],
                 idle_timeout: float, reconnect_for: float):
        self._client = client
        self._prefix = _key_bytes(prefix) if prefix is not None else None
        #: The id of the last event seen: where a reconnect resumes.
        self.last_id: Optional[str] = after
        self._idle_timeout = idle_timeout
        self._reconnect_for = reconnect_for
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._retry = 0.2
        #: Set while a stream is open (the server has answered ``200``).
        self.connected = threading.Event()
        #: How many times the stream was (re)opened.
        self.connects = 0
        #: The URL of the server of the current (or last) stream; event ids are that
        #: server's.
        self.endpoint: Optional[str] = None
        self._gen = self._events()

    def __iter__(self):
        return self

    def __next__(self) -> Event:
        return next(self._gen)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until the stream is open (the server has subscribed this watch)."""
        return self.connected.wait(timeout)

    def close(self) -> None:
        """Stop watching; a thread blocked in ``next()`` gets ``StopIteration``."""
        self._closed.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _path(self) -> str:
        q = []
        if self._prefix is not None:
            q.append("prefix=" + encode_key(self._prefix))
        if self.last_id:
            q.append("after=" + urllib.parse.quote(self.last_id, safe=":"))
        return "/watch" + ("?" + "&".join(q) if q else "")

    def _open(self) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Open a stream on the first endpoint that answers; retry rounds until
        ``reconnect_for`` passes."""
        cl = self._client
        give_up = time.monotonic() + self._reconnect_for
        while True:
            errors = []
            for ep in cl._order():
                if self._closed.is_set():
                    raise _Closed
                c = cl._new_conn(ep, cl.timeout)
                try:
                    c.request("GET", ep.base + self._path(),
                              headers=cl._headers({"Accept": "text/event-stream",
                                                   "Cache-Control": "no-cache"}))
                    # The response keeps the socket when the connection lets go of it
                    # (a stream is "Connection: close"): hold it for the timeout and close().
                    sock = c.sock
                    with self._lock:
                        self._sock = sock
                    if self._closed.is_set():
                        c.close()
                        raise _Closed
                    r = c.getresponse()
                except (OSError, http.client.HTTPException) as e:
                    c.close()
                    errors.append(f"{ep.url}: {type(e).__name__}: {e}")
                    continue
                if r.status == 200:
                    sock.settimeout(self._idle_timeout)
                    cl._worked(ep)
                    self.endpoint = ep.url
                    return c, r
                reply = _Reply(r.status, r.headers, r.read(), ep.url)
                c.close()
                if r.status == 503:
                    errors.append(f"{ep.url}: 503 {reply.line()}")
                    continue
                raise cl._error(reply)
            if self._closed.is_set():
                raise _Closed
            if time.monotonic() >= give_up:
                raise Unavailable("no endpoint could serve the watch: " + "; ".join(errors), errors)
            self._closed.wait(self._retry)

    def _events(self) -> Iterator[Event]:
        first = True
        while not self._closed.is_set():
            if not first:
                # The reconnection delay (the stream's `retry:` field, else 200 ms).
                self._closed.wait(self._retry)
            first = False
            try:
                conn, resp = self._open()
            except _Closed:
                return
            self.connects += 1
            self.connected.set()
            try:
                yield from self._read(resp)
            except (OSError, http.client.HTTPException, ValueError):
                pass  # dropped: reconnect below
            finally:
                self.connected.clear()
                resp.close()
                conn.close()
                with self._lock:
                    self._sock = None

    def _read(self, resp: http.client.HTTPResponse) -> Iterator[Event]:
        """Parse the event stream (the WHATWG Server-Sent Events rules: fields
        ``event``, ``data`` (joined with newlines), ``id``, ``retry``; comment lines
        start with ``:``; a blank line dispatches)."""
        event, data, block_id = "", [], None
        id_buffer = self.last_id  # the spec's "last event ID buffer"
        pending = b""
        while not self._closed.is_set():
            raw = resp.readline(1 << 20)
            if not raw:
                return  # EOF: the server closed the stream
            pending += raw
            if not pending.endswith(b"\n") and len(raw) == (1 << 20):
                continue  # an over-long line: keep reading it
            chunk, pending = pending, b""
            # CRLF, LF and a lone CR all end a line.
            text = chunk.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()
            for line in lines:
                if line == "":
                    # Dispatch: the id counts once its event is complete (an event
                    # cut short by a dropped connection is sent again).
                    self.last_id = id_buffer
                    if data:
                        ev = self._dispatch(event or "message", "\n".join(data), block_id)
                        if ev is not None:
                            yield ev
                    event, data, block_id = "", [], None
                    continue
                if line.startswith(":"):
                    continue  # a comment (keep-alive)
                name, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    if "\0" not in value:
                        id_buffer = value or None
                        block_id = value or None
                elif name == "retry":
                    if value.isdigit():
                        self._retry = int(value) / 1000.0

    def _dispatch(self, kind: str, data: str, event_id: Optional[str]) -> Optional[Event]:
        if kind not in ("put", "delete", "expire", "reset"):
            return None  # an event this client does not know
        if kind == "reset":
            return Event("reset", None, None, None, event_id)
        try:
            doc = json.loads(data)
            key = decode_key(doc["key"])
            version = doc.get("version")
            value = decode_key(doc["value"]) if kind == "put" and doc.get("value") is not None else None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise MeshkvError(200, f"malformed {kind} event {data!r}: {e}", self.endpoint) from None
        self._client.session.observe(key, version)
        return Event(kind, key, value, version, event_id)


# -- command line ----------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python3 -m meshkv [--endpoints URL,...] get|put|del|ls|watch ...``"""
    import argparse
    import os
    import sys

    def ttl_arg(text: str) -> int:
        try:
            ttl = int(text)
            _ttl_header(ttl)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want whole seconds, 1 to {MAX_TTL}") from None
        return ttl

    p = argparse.ArgumentParser(prog="python3 -m meshkv", description="A meshkv client.")
    p.add_argument("--endpoints", default=os.environ.get("MESHKV_ENDPOINTS", "http://127.0.0.1:8000"),
                   help="comma-separated server URLs (default: $MESHKV_ENDPOINTS)")
    p.add_argument("--consistency", choices=LEVELS, default=None)
    p.add_argument("--token", default=os.environ.get("MESHKV_TOKEN"), help="bearer token ($MESHKV_TOKEN)")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get", help="print a value (exit 1: not found)")
    g.add_argument("key")
    w = sub.add_parser("put", help="write a value (omitted: stdin)")
    w.add_argument("key")
    w.add_argument("value", nargs="?")
    w.add_argument("--if-version")
    w.add_argument("--if-absent", action="store_true")
    w.add_argument("--ttl", type=ttl_arg, help="expire the value TTL seconds after the write")
    d = sub.add_parser("del", help="delete a key")
    d.add_argument("key")
    d.add_argument("--if-version")
    ls = sub.add_parser("ls", help="list keys (key TAB value per line)")
    ls.add_argument("prefix", nargs="?")
    ls.add_argument("--keys-only", action="store_true")
    wa = sub.add_parser("watch", help="print changes as they happen")
    wa.add_argument("prefix", nargs="?")
    wa.add_argument("--after")
    a = p.parse_args(argv)

    def show(b: Optional[bytes]) -> str:
        return "" if b is None else b.decode("utf-8", "backslashreplace")

    kv = Client(a.endpoints, consistency=a.consistency, token=a.token)
    try:
        if a.cmd == "get":
            v = kv.get(a.key)
            if v is None:
                print(f"meshkv: key {a.key!r} not found", file=sys.stderr)
                return 1
            sys.stdout.buffer.write(v + b"\n")
        elif a.cmd == "put":
            value = a.value.encode() if a.value is not None else sys.stdin.buffer.read()
            kv.put(a.key, value, if_version=a.if_version, if_absent=a.if_absent, ttl=a.ttl)
            print(kv.session_token(a.key))
        elif a.cmd == "del":
            kv.delete(a.key, if_version=a.if_version)
        elif a.cmd == "ls":
            for it in kv.list(prefix=a.prefix, keys_only=a.keys_only):
                print(show(it.key) if a.keys_only else f"{show(it.key)}\t{show(it.value)}")
        elif a.cmd == "watch":
            with kv.watch(prefix=a.prefix, after=a.after) as events:
                for ev in events:
                    print(ev.kind, show(ev.key), show(ev.value), ev.version or "", ev.id or "", sep="\t",
                          flush=True)
    except PreconditionFailed as e:
        print(f"meshkv: {e} (current version {e.version})", file=sys.stderr)
        return 7
    except DependencyNotMet as e:
        print(f"meshkv: {e}", file=sys.stderr)
        return 3
    except Unavailable as e:
        print(f"meshkv: {e}", file=sys.stderr)
        return 4
    except MeshkvError as e:
        print(f"meshkv: {e}", file=sys.stderr)
        return 5
    except KeyboardInterrupt:
        return 130
    finally:
        kv.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

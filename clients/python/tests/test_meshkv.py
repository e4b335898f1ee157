"""Tests of the meshkv Python client (unittest, standard library only).

Two parts:

* ``FakeServerTests`` run the client against small in-process HTTP servers that
  answer like meshkv and record what they were sent: the headers of each level, the
  session tokens, failover, pagination, the Server-Sent Events parser and the
  watch's reconnection. They always run.
* ``ClusterTests`` run against a real 3-server cluster whose endpoints are in
  ``MESHKV_TEST_ENDPOINTS`` (comma-separated http URLs); skipped when it is unset.
  ``MESHKV_TEST_DEFAULT_CONSISTENCY`` names the servers' ``[http]
  default_consistency`` (``linearizable`` when unset). ``node/tests/python_client.rs``
  starts such a cluster and runs this file.

    PYTHONPATH=clients/python MESHKV_TEST_ENDPOINTS=http://127.0.0.1:8000,... \\
        python3 -m unittest discover -s clients/python/tests -v
"""

import http.client
import http.server
import json
import os
import queue
import socket
import sys
import threading
import unittest
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import meshkv  # noqa: E402
from meshkv import (  # noqa: E402
    Client,
    DependencyNotMet,
    MeshkvError,
    PreconditionFailed,
    Unavailable,
    parse_version,
)

# How long a test waits for an event it expects (a bound, not a pause).
EVENT_TIMEOUT = 20.0


def dead_endpoint() -> str:
    """An http URL nobody listens on: a port the OS gave us, then released."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


# -- fake servers ------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _serve(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        req = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        self.server.fake.requests.append(req)
        self.server.fake.app(self, req)

    do_GET = do_PUT = do_DELETE = _serve

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeServer:
    """An HTTP server on 127.0.0.1 calling ``app(handler, request)`` per request."""

    def __init__(self, app):
        self.app = app
        self.requests = []
        self.stop = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeServerTests(unittest.TestCase):
    def fake(self, app):
        f = FakeServer(app)
        self.addCleanup(f.close)
        return f

    def test_levels_tokens_and_learning_the_session_level(self):
        state = {"default": "linearizable", "n": 0}

        def app(h, req):
            state["n"] += 1
            level = req["headers"].get("x-meshkv-consistency") or state["default"]
            version = "100.7.%d" % state["n"]
            hdrs = [("X-Meshkv-Version", version), ("X-Meshkv-Consistency", level)]
            if req["method"] == "PUT":
                h.answer(201, b"", hdrs)
            else:
                h.answer(200, b"v", hdrs)

        f = self.fake(app)
        c = Client([f.url])
        c.put("k", b"v")
        c.get("k")
        for r in f.requests:
            self.assertNotIn("x-meshkv-consistency", r["headers"])
            self.assertNotIn("x-meshkv-after", r["headers"])
        self.assertEqual(c.last_level, "linearizable")
        self.assertIsNone(c.effective_consistency)
        self.assertEqual(c.session_token("k"), "100.7.2")
        # Compare-and-set names the linearizable level and sends no token.
        c.put("k", b"w", if_version="100.7.2")
        r = f.requests[-1]["headers"]
        self.assertEqual(r["x-meshkv-consistency"], "linearizable")
        self.assertEqual(r["if-match"], "100.7.2")
        self.assertNotIn("x-meshkv-after", r)
        # The servers' default becomes session: the first answer says so, the client
        # sends tokens with an explicit level from then on.
        state["default"] = "session"
        c.get("k")
        self.assertNotIn("x-meshkv-after", f.requests[-1]["headers"])
        self.assertEqual(c.effective_consistency, "session")
        c.get("k")
        r = f.requests[-1]["headers"]
        self.assertEqual(r["x-meshkv-consistency"], "session")
        self.assertEqual(r["x-meshkv-after"], "100.7.4")
        self.assertEqual(r["x-meshkv-wait-ms"], "2000")
        # A client sharing the session shares the tokens and the learned level.
        c2 = c.with_endpoints([f.url])
        c2.get("k")
        self.assertEqual(f.requests[-1]["headers"]["x-meshkv-after"], "100.7.5")
        # An explicit linearizable client never sends a token.
        lin = Client([f.url], consistency="linearizable", session=c.session, token="s3cret")
        lin.get("k")
        r = f.requests[-1]["headers"]
        self.assertEqual(r["x-meshkv-consistency"], "linearizable")
        self.assertNotIn("x-meshkv-after", r)
        self.assertEqual(r["authorization"], "Bearer s3cret")
        # Tokens only move forward (numeric order, not string order).
        c.session.observe("k", "99.7.1000")
        self.assertEqual(c.session_token("k"), "100.7.7")
        c.session.observe("k", "1000.7.1")
        self.assertEqual(c.session_token("k"), "1000.7.1")

    def test_ttl_is_sent_as_a_header_and_checked_locally(self):
        def app(h, req):
            h.answer(201, b"", [("X-Meshkv-Version", "100.7.1"), ("X-Meshkv-Consistency", "session")])

        f = self.fake(app)
        c = Client([f.url], consistency="session")
        self.assertIsNone(c.put("k", b"v", ttl=30))
        r = f.requests[-1]
        self.assertEqual((r["method"], r["path"]), ("PUT", "/kv/k"))  # a header, no ?ttl=
        self.assertEqual(r["headers"]["x-meshkv-ttl"], "30")
        self.assertEqual(r["headers"]["x-meshkv-consistency"], "session")
        self.assertEqual(c.put_versioned("k", b"v", ttl=315360000), (None, "100.7.1"))
        self.assertEqual(f.requests[-1]["headers"]["x-meshkv-ttl"], "315360000")
        # With compare-and-set too (still linearizable).
        c.put("k", b"w", if_absent=True, ttl=1)
        r = f.requests[-1]["headers"]
        self.assertEqual((r["x-meshkv-ttl"], r["if-none-match"], r["x-meshkv-consistency"]),
                         ("1", "*", "linearizable"))
        # No ttl, no header.
        c.put("k", b"v")
        c.put_versioned("k", b"v", ttl=None)
        for r in f.requests[-2:]:
            self.assertNotIn("x-meshkv-ttl", r["headers"])
        # Not whole seconds from 1 to ten years: refused before anything is sent.
        sent = len(f.requests)
        for bad in (0, -1, 315360001, 1.5, 2.0, "5", True, b"5"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                c.put("k", b"v", ttl=bad)
            with self.assertRaises(ValueError, msg=repr(bad)):
                c.put_versioned("k", b"v", ttl=bad)
        self.assertEqual(len(f.requests), sent)

    def test_keys_are_percent_encoded_bytes(self):
        def app(h, req):
            h.answer(404, b"ERR_KEY\n")

        f = self.fake(app)
        c = Client(f.url.replace("http://", ""))  # host:port works too
        self.assertIsNone(c.get(b"a/b c%\xff\x00~-._Z9"))
        self.assertEqual(f.requests[-1]["path"], "/kv/a%2Fb%20c%25%FF%00~-._Z9")
        c.get("ü")
        self.assertEqual(f.requests[-1]["path"], "/kv/%C3%BC")
        with self.assertRaises(ValueError):
            c.get("")

    def test_failover_on_503_and_err_dep_and_sticking_to_what_worked(self):
        def unavailable(h, req):
            h.answer(503, b"ERR_UNAVAILABLE: cannot reach a majority\n", [("Retry-After", "1")])

        def behind(h, req):
            h.answer(412, b"ERR_DEP\n")

        def good(h, req):
            h.answer(200, b"yes", [("X-Meshkv-Version", "5.5.5")])

        a, b, g = self.fake(unavailable), self.fake(behind), self.fake(good)
        c = Client([dead_endpoint(), a.url, b.url, g.url])
        self.assertEqual(c.get("k"), b"yes")
        self.assertEqual((len(a.requests), len(b.requests), len(g.requests)), (1, 1, 1))
        self.assertEqual(c.get("k"), b"yes")  # starts at the one that worked
        self.assertEqual((len(a.requests), len(b.requests), len(g.requests)), (1, 1, 2))
        # Only ERR_DEP and 503 answers: DependencyNotMet; nobody answers: Unavailable.
        with self.assertRaises(DependencyNotMet) as e:
            Client([a.url, b.url]).get("k")
        self.assertEqual(e.exception.status, 412)
        with self.assertRaises(Unavailable) as e:
            Client([dead_endpoint(), a.url]).get("k")
        self.assertEqual(len(e.exception.errors), 2)

    def test_other_errors_are_raised_with_the_servers_line(self):
        def app(h, req):
            h.answer(413, b"value exceeds the 10-byte limit\n")

        c = Client([self.fake(app).url])
        with self.assertRaises(MeshkvError) as e:
            c.put("k", b"x" * 11)
        self.assertEqual(e.exception.status, 413)
        self.assertEqual(e.exception.message, "value exceeds the 10-byte limit")

    def test_listing_follows_pages(self):
        keys = [b"p/" + bytes([i]) for i in range(1, 8)]

        def app(h, req):
            u = urllib.parse.urlsplit(req["path"])
            q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
            self.assertEqual(u.path, "/kv")
            self.assertEqual(q["prefix"], "p/")  # parse_qsl decodes %2F
            start = urllib.parse.unquote_to_bytes(q["start"]) if "start" in q else b""
            limit = int(q["limit"])
            rest = [k for k in keys if k >= start]
            page, more = rest[:limit], len(rest) > limit
            items = [
                {"key": meshkv.encode_key(k), "version": "9.1.%d" % k[-1]}
                for k in page
            ]
            if q.get("keys_only") != "true":
                for k, item in zip(page, items):
                    item["value"] = "v%25" + str(k[-1])
            doc = {"items": items, "more": more, "next": meshkv.encode_key(rest[limit]) if more else None}
            h.answer(200, json.dumps(doc).encode(), [("Content-Type", "application/json"),
                                                      ("X-Meshkv-Consistency", "session")])

        f = self.fake(app)
        c = Client([f.url])
        pages = list(c.list_pages(prefix="p/", limit=3))
        self.assertEqual([len(p.items) for p in pages], [3, 3, 1])
        self.assertEqual([p.more for p in pages], [True, True, False])
        items = list(c.list(prefix=b"p/", limit=3))
        self.assertEqual([i.key for i in items], keys)
        self.assertEqual(items[0].value, b"v%1")
        self.assertEqual(c.session_token(keys[3]), "9.1.4")
        self.assertIsNone(c.effective_consistency)  # a listing teaches no level
        ko = list(c.list(prefix="p/", limit=5, keys_only=True))
        self.assertEqual([i.key for i in ko], keys)
        self.assertTrue(all(i.value is None for i in ko))
        self.assertIn("keys_only=true", f.requests[-1]["path"])

    def test_event_stream_parsing_and_reconnecting_after_the_last_id(self):
        conns = []

        def app(h, req):
            conns.append(req["path"])
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            if len(conns) == 1:
                h.wfile.write(
                    b": keepalive\n\n"
                    b"retry: 10\n"
                    b"id: ab:1\nevent: put\n"
                    b'data: {"key":"a%2Fb",\n'
                    b'data: "value":"%FF%00","version":"1.2.3"}\n\n'
                    b"event: other\ndata: ignored\nid: ab:2\n\n"
                    b"event: delete\r\nid: ab:3\r\n"
                    b'data:{"key":"a%2Fb","version":"1.2.4"}\r\n\r\n'
                    b"event: put\nid: ab:4\n"  # cut short: never dispatched
                )
                h.wfile.flush()
                return  # drop the connection: the client comes back after ab:3
            h.wfile.write(
                b'event: reset\ndata: {"reason":"gone"}\n\n'
                b"id: cd:9\nevent: put\n"
                b'data: {"key":"z","value":"","version":"2.2.2"}\n\n'
                b"id: cd:10\nevent: expire\n"
                b'data: {"key":"z%2Ft","version":"2.2.1"}\n\n'
            )
            h.wfile.flush()
            h.server.fake.stop.wait(EVENT_TIMEOUT)  # hold the stream open

        f = self.fake(app)
        c = Client([dead_endpoint(), f.url])
        got = []
        with c.watch(prefix="a/", after="00:0") as w:
            for ev in w:
                got.append(ev)
                if len(got) == 5:
                    break
        self.assertEqual(
            got,
            [
                meshkv.Event("put", b"a/b", b"\xff\x00", "1.2.3", "ab:1"),
                meshkv.Event("delete", b"a/b", None, "1.2.4", "ab:3"),
                meshkv.Event("reset", None, None, None, None),
                meshkv.Event("put", b"z", b"", "2.2.2", "cd:9"),
                meshkv.Event("expire", b"z/t", None, "2.2.1", "cd:10"),
            ],
        )
        self.assertEqual(conns[0], "/watch?prefix=a%2F&after=00:0")
        self.assertEqual(conns[1], "/watch?prefix=a%2F&after=ab:3")
        self.assertEqual(w.last_id, "cd:10")
        self.assertEqual(w.endpoint, f.url)
        self.assertEqual(c.session_token("a/b"), "1.2.4")

    def test_a_watch_closed_from_another_thread_stops(self):
        def app(h, req):
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.end_headers()
            h.close_connection = True
            h.wfile.write(b": keepalive\n\n")
            h.wfile.flush()
            h.server.fake.stop.wait(EVENT_TIMEOUT)

        f = self.fake(app)
        w = Client([f.url]).watch()
        done = threading.Event()
        seen = []

        def consume():
            for ev in w:
                seen.append(ev)
            done.set()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        self.assertTrue(w.wait_connected(EVENT_TIMEOUT))
        w.close()
        self.assertTrue(done.wait(EVENT_TIMEOUT))
        self.assertEqual(seen, [])
        self.assertEqual(w.connects, 1)


# -- a real cluster ----------------------------------------------------------------------

ENDPOINTS = [e.strip() for e in os.environ.get("MESHKV_TEST_ENDPOINTS", "").split(",") if e.strip()]
DEFAULT_LEVEL = os.environ.get("MESHKV_TEST_DEFAULT_CONSISTENCY", "linearizable")


def raw_get(url, path):
    """``(status, body)`` of one plain GET, no client logic."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class ClusterTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not ENDPOINTS:
            raise unittest.SkipTest("MESHKV_TEST_ENDPOINTS is not set (comma-separated URLs of a running cluster)")
        if len(ENDPOINTS) < 2:
            raise unittest.SkipTest("MESHKV_TEST_ENDPOINTS needs at least two servers")

    def setUp(self):
        # Every test writes under its own prefix: runs never see each other's keys.
        self.ns = "pytest-%s-%s/" % (self._testMethodName, uuid.uuid4().hex[:8])
        self.kv = Client(ENDPOINTS)
        self.addCleanup(self.kv.close)

    def consume(self, w):
        """Read watch ``w`` on a thread into a queue (an exception ends up there too);
        the watch is closed at cleanup. Returns the queue and the thread."""
        self.addCleanup(w.close)
        events = queue.Queue()

        def run():
            try:
                for ev in w:
                    events.put(ev)
            except Exception as e:  # reported by the main thread
                events.put(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return events, t

    def key(self, name):
        return self.ns + name

    def require_listing(self):
        """Skip when the servers do not list keys yet (``GET /kv?prefix=`` is a 400)."""
        status, body = raw_get(ENDPOINTS[0], "/kv?prefix=" + meshkv.encode_key(self.ns) + "&limit=1")
        text = body.decode("utf-8", "replace")
        if status == 400 and ("unknown" in text and "parameter" in text or "empty key" in text):
            self.skipTest("the servers do not list keys yet: GET /kv?prefix= answers 400 %r" % text.strip())

    def require_watch(self):
        """Skip when the servers do not serve ``/watch`` yet (an unknown path)."""
        self.require_listing()
        status, body = raw_get(ENDPOINTS[0], "/watch?after=bogus")
        text = body.decode("utf-8", "replace")
        if status == 404 and "unknown path" in text:
            self.skipTest("the servers do not serve /watch yet: 404 %r" % text.strip())

    def test_put_get_delete_round_trip(self):
        k = self.key("round")
        self.assertIsNone(self.kv.get(k))
        self.assertIsNone(self.kv.put(k, b"one"))
        self.assertEqual(self.kv.get(k), b"one")
        self.assertEqual(self.kv.put(k, "two"), b"one")
        value, version = self.kv.get_versioned(k)
        self.assertEqual(value, b"two")
        self.assertEqual(version, self.kv.session_token(k))
        parse_version(version)
        self.assertEqual(self.kv.delete(k), b"two")
        self.assertIsNone(self.kv.get(k))
        self.assertIsNone(self.kv.delete(k))
        self.assertIsNone(self.kv.put(k, b"three"))  # no previous value after a delete

    def test_bytes_keys_and_values(self):
        keys = [
            self.key("a/b"),
            self.key("a%2Fb"),
            self.key("with space"),
            self.key("100%"),
            self.key("ünïcødé"),
            self.key("").encode() + b"\xff\xfe\x00\x80",
            self.key("").encode() + b"?#&=+",
        ]
        for i, k in enumerate(keys):
            value = bytes([i, 0, 255, 0x80]) + b"\r\n\x00"
            self.assertIsNone(self.kv.put(k, value), k)
        for i, k in enumerate(keys):
            self.assertEqual(self.kv.get(k), bytes([i, 0, 255, 0x80]) + b"\r\n\x00", k)
        # a/b and a%2Fb are different keys: the client encodes the % itself.
        self.assertEqual(self.kv.get(self.key("a/b"))[0], 0)
        self.assertEqual(self.kv.get(self.key("a%2Fb"))[0], 1)
        # str and its UTF-8 bytes are one key.
        self.assertEqual(self.kv.get(self.key("ünïcødé").encode()), self.kv.get(self.key("ünïcødé")))
        self.assertEqual(self.kv.put(keys[0], b""), bytes([0, 0, 255, 0x80]) + b"\r\n\x00")
        self.assertEqual(self.kv.get(keys[0]), b"")  # an empty value is a value

    def test_compare_and_set(self):
        k = self.key("lock")
        self.assertIsNone(self.kv.put(k, b"first", if_absent=True))
        v1 = self.kv.session_token(k)
        with self.assertRaises(PreconditionFailed) as e:
            self.kv.put(k, b"second", if_absent=True)
        self.assertEqual(e.exception.status, 412)
        self.assertTrue(e.exception.message.startswith("ERR_PRECONDITION"))
        self.assertEqual(e.exception.version, v1)
        self.assertEqual(self.kv.get(k), b"first")
        # The right version wins, a stale one fails and names the current one.
        prev, v2 = self.kv.put_versioned(k, b"third", if_version=v1)
        self.assertEqual(prev, b"first")
        self.assertGreater(parse_version(v2), parse_version(v1))
        with self.assertRaises(PreconditionFailed) as e:
            self.kv.put(k, b"stale", if_version=v1)
        self.assertEqual(e.exception.version, v2)
        with self.assertRaises(PreconditionFailed):
            self.kv.delete(k, if_version=v1)
        self.assertEqual(self.kv.delete(k, if_version=v2), b"third")
        self.assertIsNone(self.kv.get(k))
        # Through another server, with a session client: still linearizable.
        other = Client(ENDPOINTS[1:], consistency="session")
        self.assertIsNone(other.put(k, b"again", if_absent=True))
        with self.assertRaises(PreconditionFailed):
            self.kv.put(k, b"no", if_absent=True)

    def test_session_read_your_writes_through_another_server(self):
        writer = Client([ENDPOINTS[0]], consistency="session")
        readers = [writer.with_endpoints([e]) for e in ENDPOINTS[1:]]
        for i in range(20):
            k = self.key("ryw%d" % (i % 5))
            value = ("v%d" % i).encode()
            writer.put(k, value)
            token = writer.session_token(k)
            for r in readers:
                got, version = r.get_versioned(k)
                self.assertEqual(got, value, r.endpoints)
                self.assertGreaterEqual(parse_version(version), parse_version(token))
        # The readers share the writer's session: their reads moved its tokens too.
        self.assertIs(readers[0].session, writer.session)
        # A delete is a write the session must see as well.
        k = self.key("ryw0")
        writer.delete(k)
        for r in readers:
            self.assertIsNone(r.get(k))

    def test_session_token_ahead_of_every_server_is_err_dep(self):
        c = Client(ENDPOINTS, consistency="session", wait_ms=100)
        k = self.key("ahead")
        c.put(k, b"x")
        ts, origin, counter = parse_version(c.session_token(k))
        c.session.observe(k, "%d.%d.%d" % (ts, origin, counter + 1000000))
        with self.assertRaises(DependencyNotMet) as e:
            c.get(k)
        self.assertEqual(e.exception.status, 412)
        # A new session reads it.
        self.assertEqual(Client(ENDPOINTS, consistency="session").get(k), b"x")

    def test_session_level_by_default_follows_the_servers(self):
        """With no level the client follows the servers' default: it sends no level
        and no token while answers say linearizable, and turns into a session client
        once one says session."""
        k = self.key("default")
        self.kv.put(k, b"a")
        if self.kv.last_level is None:
            self.skipTest("the servers do not echo X-Meshkv-Consistency")
        self.assertEqual(self.kv.last_level, DEFAULT_LEVEL)
        if DEFAULT_LEVEL == "linearizable":
            self.assertIsNone(self.kv.effective_consistency)
        else:
            self.assertEqual(self.kv.effective_consistency, "session")
        for i in range(10):
            self.kv.put(k, b"v%d" % i)
            for e in ENDPOINTS:
                self.assertEqual(self.kv.with_endpoints([e]).get(k), b"v%d" % i)
        self.assertEqual(self.kv.last_level, DEFAULT_LEVEL)

    def test_linearizable_level(self):
        c = Client(ENDPOINTS, consistency="linearizable")
        k = self.key("lin")
        for i in range(5):
            c.with_endpoints([ENDPOINTS[i % len(ENDPOINTS)]]).put(k, b"%d" % i)
            for e in ENDPOINTS:
                self.assertEqual(c.with_endpoints([e]).get(k), b"%d" % i)
        if c.last_level is not None:
            self.assertEqual(c.last_level, "linearizable")

    def test_failover_past_a_dead_endpoint(self):
        for level in (None, "session", "linearizable"):
            c = Client([dead_endpoint()] + ENDPOINTS, consistency=level, timeout=2.0)
            k = self.key("failover-%s" % level)
            self.assertIsNone(c.put(k, b"x"))
            self.assertEqual(c.get(k), b"x")
            self.assertEqual(c.delete(k), b"x")
        with self.assertRaises(Unavailable):
            Client([dead_endpoint(), dead_endpoint()], timeout=2.0).get(self.key("nowhere"))

    def test_listing_pages_prefix_and_keys_only(self):
        self.require_listing()
        # One server, session level: the listing (a snapshot of that server) has every
        # write it acknowledged.
        c = Client([ENDPOINTS[0]], consistency="session")
        prefix = self.ns.encode() + b"list/"
        keys = [prefix + b"%05d" % i for i in range(2500)]
        keys += [prefix + b"\xff\xfe", prefix + b" space", prefix + b"%/x"]
        outside = [self.ns.encode() + b"lis", self.ns.encode() + b"list0", self.ns.encode() + b"list.",
                   prefix[:-1] + b"\x00"]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: c.put(k, b"v:" + k), keys + outside))
        want = sorted(keys)
        pages = list(c.list_pages(prefix=prefix, limit=1000))
        self.assertEqual([len(p.items) for p in pages], [1000, 1000, 503])
        items = [i for p in pages for i in p.items]
        self.assertEqual([i.key for i in items], want)  # each once, in byte order
        for i in items:
            self.assertEqual(i.value, b"v:" + i.key)
            parse_version(i.version)
        self.assertEqual(c.session_token(want[7]), items[7].version)
        self.assertTrue(all(p.endpoint == c.endpoints[0] for p in pages))
        # The whole listing through the generator, default page size, keys only.
        ko = list(c.list(prefix=prefix, keys_only=True))
        self.assertEqual([i.key for i in ko], want)
        self.assertTrue(all(i.value is None for i in ko))
        # A half-open range.
        rng = list(c.list(start=prefix + b"00100", end=prefix + b"00200", limit=30))
        self.assertEqual([i.key for i in rng], [prefix + b"%05d" % i for i in range(100, 200)])
        # A deleted key is not listed.
        c.delete(keys[0])
        self.assertEqual([i.key for i in c.list(start=keys[0], end=keys[3], limit=1)], keys[1:3])

    def test_watch_sees_changes_in_order(self):
        self.require_watch()
        c = Client(ENDPOINTS, consistency="session")
        prefix = self.key("w/")
        w = c.watch(prefix=prefix)
        events, t = self.consume(w)
        self.assertTrue(w.wait_connected(EVENT_TIMEOUT), "the watch did not connect")
        v1 = c.put_versioned(prefix + "a", b"1\xff")[1]
        c.put(self.key("w"), b"outside the prefix")
        v2 = c.put_versioned(prefix + "b", b"2")[1]
        c.delete(prefix + "a")
        v3 = c.session_token(prefix + "a")
        want = [
            ("put", (prefix + "a").encode(), b"1\xff", v1),
            ("put", (prefix + "b").encode(), b"2", v2),
            ("delete", (prefix + "a").encode(), None, v3),
        ]
        got = []
        for _ in want:
            ev = events.get(timeout=EVENT_TIMEOUT)
            if isinstance(ev, Exception):
                raise ev
            got.append(ev)
        self.assertEqual([(e.kind, e.key, e.value, e.version) for e in got], want)
        self.assertTrue(all(e.id for e in got))
        w.close()
        t.join(EVENT_TIMEOUT)
        self.assertFalse(t.is_alive(), "the watch did not stop when closed")
        self.assertTrue(events.empty(), list(events.queue))
        # Resuming after the first event (on the server that gave the id) replays the
        # two after it.
        with c.with_endpoints([w.endpoint]).watch(prefix=prefix, after=got[0].id) as again:
            replay = [next(again), next(again)]
        self.assertEqual([(e.kind, e.key, e.version) for e in replay],
                         [(e.kind, e.key, e.version) for e in got[1:]])

    def test_watch_from_a_listing_misses_nothing(self):
        self.require_watch()
        c = Client(ENDPOINTS, consistency="session")
        prefix = self.key("lw/")
        c.put(prefix + "before", b"0")
        page = next(c.list_pages(prefix=prefix))
        self.assertEqual([i.key for i in page.items], [(prefix + "before").encode()])
        self.assertTrue(page.watch_id, "the listing carries no X-Meshkv-Watch-Id")
        # Written after the snapshot, before the watch starts: still seen.
        version = c.put_versioned(prefix + "after", b"1")[1]
        same = c.with_endpoints([page.endpoint])
        with same.watch(prefix=prefix, after=page.watch_id) as w:
            ev = next(w)
        self.assertEqual((ev.kind, ev.key, ev.value, ev.version),
                         ("put", (prefix + "after").encode(), b"1", version))

    def test_a_put_with_a_ttl_expires_and_its_watchers_are_told(self):
        self.require_watch()
        k = self.key("ttl")
        # The watch is open before the put, so the expiry cannot slip past it.
        w = self.kv.watch(prefix=k)
        events, _ = self.consume(w)
        self.assertTrue(w.wait_connected(EVENT_TIMEOUT), "the watch did not connect")
        prev, version = self.kv.put_versioned(k, b"short-lived", ttl=1)
        self.assertIsNone(prev)
        self.assertEqual(self.kv.get(k), b"short-lived")
        # No sleeping: block on the watch until the server says the value expired.
        while True:
            ev = events.get(timeout=EVENT_TIMEOUT)
            if isinstance(ev, Exception):
                raise ev
            self.assertNotEqual(ev.kind, "reset")
            self.assertEqual(ev.key, k.encode())
            if ev.kind == "expire":
                break
            self.assertEqual((ev.kind, ev.value, ev.version), ("put", b"short-lived", version))
        self.assertEqual((ev.value, ev.version), (None, version))  # the expired write's version
        self.assertIsNone(self.kv.get(k))
        for e in ENDPOINTS:
            self.assertIsNone(self.kv.with_endpoints([e]).get(k), e)
        self.assertEqual([i.key for i in Client([ENDPOINTS[0]]).list(prefix=k)], [])

    def test_watch_reset_on_an_unknown_id(self):
        self.require_watch()
        c = Client(ENDPOINTS)
        with c.watch(prefix=self.key(""), after="00000000deadbeef:12345") as w:
            ev = next(w)
        self.assertEqual(ev.kind, "reset")
        self.assertIsNone(ev.key)


if __name__ == "__main__":
    unittest.main()

"""The app around the API: its pages and static files (only from the static folder, whatever the
path says, encoded `..` too, over a real socket as a browser sends it), the runs it is started
with, and the seed's router."""

import http.client
import json
import socket
import threading

import pytest
from fastapi.testclient import TestClient

from saescope.errors import ConfigError
from saescope.explore import create_app
from saescope.explore.app import MAX_BODY, STATIC, LimitBody, allowed_hosts
from saescope.explore.state import load_runs
from tests.explore.browser import served
from tests.explore.common import LOCAL, random_run
from tests.runs.test_peer import sparsify_run

SVG_NS = "http://www.w3.org/2000/svg"
PAGES = ["index.html", "prompt.html", "steer.html"]
TRAVERSALS = [
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/%2E%2E/%2E%2E/explore/app.py",
    "/static/..%2Fapp.py",
    "/static/%2e%2e%2fapp.py",
    "/static/%2e%2e%5capp.py",
    "/static/....//app.py",
    "/static//etc/passwd",
    "/static/%2Fetc%2Fpasswd",
    "/static/%252e%252e/app.py",
    "/%2e%2e/%2e%2e/pyproject.toml",
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app([random_run(tmp_path_factory.mktemp("app") / "glass")])


@pytest.fixture(scope="module")
def address(app):
    """(host, port) of the app served on a real socket."""
    with served(app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def raw_get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str]:
    """GET the path exactly as written (no client normalisation of `..` or escapes)."""
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace")


def test_the_pages_and_their_files_are_served(app):
    with TestClient(app, base_url=LOCAL) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"] == "/static/index.html"
        for page in PAGES:
            html = c.get(f"/static/{page}")
            assert html.status_code == 200 and "text/html" in html.headers["content-type"]
            assert "nav.js" in html.text and "http" not in html.text.replace("http-equiv", "")
        for f in ["dashboard.js", "dashboard.css", "common.css", "nav.js"]:
            assert c.get(f"/static/{f}").text == (STATIC / f).read_text()
        assert c.get("/static/nope.html").status_code == 404


def test_no_page_or_script_fetches_anything_from_elsewhere():
    for f in STATIC.iterdir():
        text = f.read_text().replace(SVG_NS, "")  # a name, not an address fetched
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f


def test_the_dashboard_script_fetches_nothing_itself():
    """The export inlines it into a page with no server: clicks go through its callback."""
    js = (STATIC / "dashboard.js").read_text()
    assert "renderFeature" in js and "onFeature" in js
    for call in ("fetch(", "XMLHttpRequest", "import(", "location"):
        assert call not in js


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_reaches_no_file_outside_static(address, path):
    source = (STATIC.parent / "app.py").read_text()
    conn = http.client.HTTPConnection(*address, timeout=10)
    status, body = raw_get(conn, path)
    conn.close()
    assert 400 <= status < 500, (path, status)
    assert "def create_app" not in body and "root:" not in body and "[project]" not in body
    assert source not in body


def test_the_server_serves_on_after_traversals(address):
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        for path in TRAVERSALS:
            assert 400 <= raw_get(conn, path)[0] < 500, path
        for path in ["/api/features/%2e%2e%2f", "/api/features/..%2F..%2Fx"]:
            assert 300 <= raw_get(conn, path)[0] < 500, path  # a redirect or refused
        status, body = raw_get(conn, "/static/index.html")
        assert status == 200 and "Feature browser" in body
    finally:
        conn.close()


def test_runs_get_unique_names_and_a_folder_without_an_sae_is_refused(tmp_path):
    a = random_run(tmp_path / "a" / "glass")
    b = random_run(tmp_path / "b" / "glass")
    assert list(load_runs([a, b, a])) == ["glass", "glass-2", "glass-3"]
    (tmp_path / "empty").mkdir()
    for bad in [tmp_path / "empty", tmp_path / "missing"]:
        with pytest.raises(ConfigError, match="holds no saved SAE"):
            create_app([bad])
    with pytest.raises(ConfigError, match="at least one run"):
        create_app([])


def test_a_peer_run_folder_is_served_as_the_sae_its_hook_picks(tmp_path):
    """A sparsify run folder holds one SAE per hook point: --hook picks the one served, and
    its own folder (where its index is) is the run's."""
    root = sparsify_run(tmp_path / "run")
    for hook in ("layers.1", "layers.2"):
        state = load_runs([root], hook=hook)[hook]
        assert (state.path, state.saes) == (root / hook, [hook])


def test_the_seed_router_and_demo_path_are_wired(tmp_path):
    app = create_app([random_run(tmp_path / "glass")], demo=tmp_path / "demo.json")
    assert app.state.demo == tmp_path / "demo.json"
    with TestClient(app, base_url=LOCAL) as c:
        r = c.get("/api/seed/disentangler")  # the file is missing: a 404 saying how to make it
        assert r.status_code == 404 and "demo.json" in r.json()["detail"]
        assert c.get("/static/disentangler.html").status_code == 200


def post_chunked(address: tuple[str, int], size: int, chunk: int = 1 << 16) -> tuple[int, str]:
    """POST /api/prompt with a chunked body (no Content-Length) of `size` bytes over a raw
    socket; the status and body of the reply, read while the body is sent (the server may
    answer, and close, before the body ends)."""
    reply = bytearray()

    def read(sock: socket.socket) -> None:
        try:
            while block := sock.recv(1 << 16):
                reply.extend(block)
        except OSError:  # reset: closed with the rest of the body unread
            pass

    with socket.create_connection(address, timeout=30) as sock:
        reader = threading.Thread(target=read, args=(sock,))
        reader.start()
        data = b'{"text": "' + b"a" * (size - 12) + b'"}'
        try:
            sock.sendall(
                b"POST /api/prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for at in range(0, len(data), chunk):
                part = data[at : at + chunk]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed before the body ended
            pass
        reader.join(30)
    head, _, body = bytes(reply).partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"chunked" in head.lower():  # one chunk: its size line, then the data
        body = body.split(b"\r\n")[1]
    return status, body.decode()


def test_a_chunked_body_over_the_limit_is_413_and_the_server_serves_on(address):
    status, body = post_chunked(address, 4 * MAX_BODY)
    assert status == 413, body
    assert str(MAX_BODY) in json.loads(body)["detail"]
    conn = http.client.HTTPConnection(*address, timeout=10)
    assert raw_get(conn, "/api/runs")[0] == 200
    conn.close()
    status, body = post_chunked(address, 100, chunk=16)  # under the limit: read, answered
    assert status == 200 and json.loads(body)["tokens"], body


def test_a_content_length_over_the_limit_is_413_before_the_body(address):
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(
            b"POST /api/prompt HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (MAX_BODY + 1)
        )
        reply = sock.recv(1 << 16)  # no byte of the body sent: the answer comes anyway
    assert reply.startswith(b"HTTP/1.1 413"), reply


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_a_request_for_another_host_is_400(app, host):
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/runs", headers={"host": host}).status_code == 400
        assert c.post("/api/prompt", json={"text": "a"}, headers={"host": host}).status_code == 400


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost:8000", "[::1]:8000"])
def test_this_machines_loopback_names_are_served(app, host):
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/runs", headers={"host": host}).status_code == 200


def test_the_host_the_server_listens_on_is_served(tmp_path):
    app = create_app([random_run(tmp_path / "glass")], hosts=["10.1.2.3", "fe80::1"])
    with TestClient(app, base_url="http://10.1.2.3:8000") as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"host": "[fe80::1]:8000"}).status_code == 200
        assert c.get("/api/runs", headers={"host": "evil.example"}).status_code == 400
    assert {"127.0.0.1", "localhost", "[::1]", "10.1.2.3", "[fe80::1]"} <= set(
        allowed_hosts(["10.1.2.3", "fe80::1"])
    )
    assert socket.gethostname().lower() in allowed_hosts(["0.0.0.0"])


async def _echo_length(scope, receive, send):
    """A bare ASGI app that reads the whole body and answers its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_limit_body_answers_413_around_any_app():
    """Outside FastAPI's routes (no handler turns the error into a reply) LimitBody answers."""
    c = TestClient(LimitBody(_echo_length, limit=10))  # no `with`: the app has no lifespan
    assert c.post("/", content=b"x" * 10).text == "10"
    chunks = iter([b"x" * 6, b"x" * 6])  # sent chunked: no Content-Length
    r = c.post("/", content=chunks)
    assert r.status_code == 413 and "over 10 bytes" in r.json()["detail"]
    assert c.post("/", content=b"x" * 11).status_code == 413

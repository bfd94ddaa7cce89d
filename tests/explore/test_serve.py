"""explore.serve: the socket `saescope explore` listens on."""

import socket

import pytest

from saescope.errors import InputError
from saescope.explore.serve import bind, url


def test_bind_listens_without_nagle_and_names_its_url():
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        port = sock.getsockname()[1]
        assert url(sock) == f"http://127.0.0.1:{port}/"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening already: a browser opening the printed URL waits, not fails
    finally:
        sock.close()


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_port_out_of_range_is_one_line(port):
    with pytest.raises(InputError, match="not a port"):
        bind("127.0.0.1", port)

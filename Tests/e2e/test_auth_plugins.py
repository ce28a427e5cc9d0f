"""Authentication exchanges MariaDB cannot play, relayed to a fake server that checks the password
for real: caching_sha2_password (fast path, and full authentication with the RSA key request over a
plain connection) and an auth switch to mysql_clear_password. PyMySQL is the client."""
import pymysql
import pytest

from authserver import AuthServer


@pytest.mark.parametrize("mode, expected", [
    ("sha2-fast", ["fast"]),
    ("sha2-full", ["key requested", "full"]),
    ("clear", ["clear"]),
    ("sha256", ["key requested", "sha256"]),
])
def test_authentication_is_relayed(start_proxy, mode, expected):
    server = AuthServer(mode)
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{server.port}", backend=False)
    c = pymysql.connect(host="127.0.0.1", port=p.port, user="u", password="secret",
                        server_public_key=None, connect_timeout=10)
    c.ping(reconnect=False)
    c.close()
    assert server.steps == expected


@pytest.mark.parametrize("mode", ["sha2-fast", "sha2-full", "clear", "sha256"])
def test_wrong_password_is_refused_by_the_server(start_proxy, mode):
    server = AuthServer(mode)
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{server.port}", backend=False)
    with pytest.raises(pymysql.err.OperationalError) as e:
        pymysql.connect(host="127.0.0.1", port=p.port, user="u", password="wrong", connect_timeout=10)
    assert e.value.args[0] == 1045

"""The PROXY protocol: a load balancer in front of MoonProxy says whom each connection carries
(--proxy-protocol-networks), and MoonProxy tells the server the same (--proxy-backend-proxy-protocol),
checked against MariaDB's own PROXY protocol support."""
import socket
import struct

import pymysql
import pytest

from conftest import ExtraMariaDB
from test_scripting import script

WHO = """
function read_query(packet)
    if packet:sub(2) == "SELECT who" then
        local c = proxy.connection.client
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
            fields = { { name = "src" }, { name = "dst" } }, rows = { { c.src.name, c.dst.name } } } }
        return proxy.PROXY_SEND_RESULT
    end
end
"""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_tcp4(src, sport, dst, dport, tlvs=b""):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body


def connect_with_header(port, header, **kw):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(header)
    c = pymysql.connect(host="127.0.0.1", port=port, user=kw.pop("user", "root"), password=kw.pop("password", ""),
                        defer_connect=True, **kw)
    c.connect(s)
    return c


def who(c):
    with c.cursor() as cur:
        cur.execute("SELECT who")
        return cur.fetchone()


def closed_without_greeting(port, header):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(header)
    try:
        return s.recv(4096) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_headers_from_trusted_networks(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(WHO, 'who')}", "--proxy-protocol-networks=10.0.0.0/8, 127.0.0.0/8")
    c = connect_with_header(proxy.port, b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 3306\r\n")
    assert who(c) == ("192.0.2.7:40001", "198.51.100.1:3306")
    c.close()
    c = connect_with_header(proxy.port, v2_tcp4("203.0.113.9", 5555, "198.51.100.2", 4040, tlvs=b"\x04\x00\x02ab"))
    assert who(c) == ("203.0.113.9:5555", "198.51.100.2:4040")
    c.close()
    c = connect_with_header(proxy.port, b"PROXY TCP6 2001:db8::1 2001:db8::2 7 8\r\n")
    assert who(c)[0] in ("[2001:db8::1]:7", "2001:db8::1:7")
    c.close()
    # LOCAL and UNKNOWN: the connection's own addresses stand
    c = connect_with_header(proxy.port, V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00]))
    assert who(c)[0].startswith("127.0.0.1:")
    c.close()
    c = connect_with_header(proxy.port, b"PROXY UNKNOWN\r\n")
    assert who(c)[0].startswith("127.0.0.1:")
    c.close()
    # broken or missing headers end only their own connection, with a log line
    for bad in [b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                b"PROXY TCP9 a b c d\r\n", b"GET / HTTP/1.0\r\n\r\n", b"PROXY " + b"x" * 200,
                V2_SIGNATURE + bytes([0x31, 0x11, 0x00, 0x0C]) + b"\0" * 12,      # version 3
                V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]),                    # oversize
                V2_SIGNATURE + bytes([0x21, 0x11, 0x00, 0x04]) + b"\0" * 4]:       # too short for TCP4
        assert closed_without_greeting(proxy.port, bad), bad
    assert "PROXY" in proxy.log() and "--proxy-protocol-networks" in proxy.log()
    c = connect_with_header(proxy.port, b"PROXY TCP4 192.0.2.8 198.51.100.1 40002 3306\r\n")
    assert who(c)[0] == "192.0.2.8:40002"
    c.close()


def test_clients_outside_the_trusted_networks_send_no_header(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(WHO, 'who')}", "--proxy-protocol-networks=10.0.0.0/8")
    c = proxy.connect()
    assert who(c)[0].startswith("127.0.0.1:")
    c.close()
    # a header from elsewhere is not believed: it is taken for the client's login, a bad one
    assert closed_or_refused(proxy.port, b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 3306\r\n")


def closed_or_refused(port, header):
    """After the greeting, the header's bytes read as the start of a login packet of some 5 MB
    ("PRO" as its length): the proxy waits for the rest, as the server would, until the login
    timeout; it never takes the addresses for the client's."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.recv(4096)  # the greeting
    s.sendall(header)
    s.settimeout(2)
    try:
        data = s.recv(4096)
    except TimeoutError:
        return True
    finally:
        s.close()
    return data == b"" or data[4] == 0xFF


@pytest.fixture
def proxy_protocol_mariadb():
    server = ExtraMariaDB("mariadb-proxy-protocol", "proxy_protocol_networks=127.0.0.0/8,localhost")
    server.sql("CREATE USER IF NOT EXISTS 'pp'@'%' IDENTIFIED BY 'pppass'; GRANT PROCESS ON *.* TO 'pp'@'%'")
    yield server.port
    server.stop()


def test_the_server_sees_the_real_client(start_proxy, proxy_protocol_mariadb):
    port = proxy_protocol_mariadb
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{port}", "--proxy-backend-proxy-protocol",
                        "--proxy-protocol-networks=127.0.0.0/8", backend=False)
    c = connect_with_header(proxy.port, b"PROXY TCP4 192.0.2.44 198.51.100.1 41234 3306\r\n", user="pp", password="pppass")
    with c.cursor() as cur:
        cur.execute("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        assert cur.fetchone() == ("192.0.2.44:41234",)
    c.close()
    # a client without a header: the server sees that client, not the proxy's own connection
    direct_proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{port}", "--proxy-backend-proxy-protocol", backend=False)
    c = pymysql.connect(host="127.0.0.1", port=direct_proxy.port, user="pp", password="pppass")
    client_port = c._sock.getsockname()[1]
    with c.cursor() as cur:
        cur.execute("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        host = cur.fetchone()[0]
    c.close()
    assert host == f"127.0.0.1:{client_port}"  # the client's own port, not the proxy's

"""Connection limits (--max-connections, --max-connections-per-address): a client past a limit is
refused as the server refuses one past max_connections, with ERR 1040 where the greeting would be,
and the clients already in are not disturbed."""
import socket
import struct
import subprocess

import pymysql
import pytest

from conftest import MARIADB_PORT


def refused_with_1040(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    length = int.from_bytes(data[:3], "little")
    payload = data[4:4 + length]
    # one packet, sequence id 0, then the close
    return data[3] == 0 and len(data) == 4 + length and payload[0] == 0xFF \
        and struct.unpack_from("<H", payload, 1)[0] == 1040 and payload[3:9] == b"#08004" \
        and payload[9:] == b"Too many connections"


def test_max_connections(start_proxy):
    proxy = start_proxy("--max-connections=2")
    a, b = proxy.connect(), proxy.connect()
    assert refused_with_1040(proxy.port)
    r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{proxy.port}", "-uroot", "--skip-ssl", "-e", "SELECT 1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "ERROR 1040 (08004): Too many connections" in r.stderr, r.stderr
    # a client that insists on TLS reports it as it would from the server, before any TLS
    r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{proxy.port}", "-uroot", "-e", "SELECT 1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "1040 - Too many connections" in r.stderr, r.stderr
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect()
    assert e.value.args[0] == 1040
    # those in are served; one leaving makes room
    with a.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchall() == ((1,),)
    b.close()
    c = proxy.connect()
    c.ping(reconnect=False)
    assert "--max-connections is 2" in proxy.log()
    a.close()
    c.close()


def test_max_connections_per_address(start_proxy):
    proxy = start_proxy("--max-connections-per-address=1")
    a = proxy.connect()
    assert refused_with_1040(proxy.port)
    assert "127.0.0.1 has 1 connections already" in proxy.log()
    a.close()
    # the slot is given back with the connection
    for _ in range(3):
        c = proxy.connect()
        c.ping(reconnect=False)
        c.close()
    bad = subprocess.run([proxy.args[0], "--max-connections=-1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--max-connections must not be negative" in bad.stderr

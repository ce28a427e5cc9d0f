"""Closed connections in the metrics, by whose doing they ended (the error source), and Lua hook
metrics: each cause made happen for real against MariaDB, then read from /metrics."""
import os
import socket
import struct
import time

import pymysql
import pytest

from conftest import MARIADB_PORT, direct, free_port
from fakeserver import read_packet
from test_metrics import promtool_check, samples, scrape


def closed(port):
    return {k.split('"')[1]: v for k, v in samples(scrape(port)).items()
            if k.startswith("moonproxy_client_connections_closed_total{")}


def wait_closed(port, source, at_least, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if closed(port).get(source, 0) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{source}: {closed(port)}")  # noqa


def test_each_error_source_is_counted(start_proxy):
    mport = free_port()
    proxy = start_proxy(f"--metrics-address=127.0.0.1:{mport}")

    # none: an ordinary session
    c = proxy.connect()
    c.cursor().execute("SELECT 1")
    c.close()
    wait_closed(mport, "none", 1)

    # auth_failed: the server refuses the password
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect(user="nat", password="wrong")
    assert e.value.args[0] == 1045
    wait_closed(mport, "auth_failed", 1)

    # client_handshake: a client that reads the greeting and leaves
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    assert read_packet(s)[1]
    s.close()
    wait_closed(mport, "client_handshake", 1)

    # malformed: an empty packet where a command belongs gets an ERR and the close
    c = proxy.connect()
    c._sock.sendall(b"\x00\x00\x00\x00")
    _, reply = read_packet(c._sock)
    assert reply[0] == 0xFF
    wait_closed(mport, "malformed", 1)

    # client_network: a client that resets its connection while its query runs
    c = proxy.connect()
    c._sock.sendall(struct.pack("<I", 1 + len(b"SELECT SLEEP(2)"))[:3] + b"\x00\x03SELECT SLEEP(2)")
    time.sleep(0.2)
    c._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c._rfile.close()  # the file object holds the socket open too
    c._sock.close()
    wait_closed(mport, "client_network", 1)

    # backend_network: the server's connection is killed between commands
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        server_id = cur.fetchone()[0]
    d = direct()
    d.cursor().execute(f"KILL {server_id}")
    d.close()
    wait_closed(mport, "backend_network", 1)
    with pytest.raises(pymysql.err.OperationalError):
        c.cursor().execute("SELECT 1")

    # no_backend: nothing listens where the backend should be
    dead = free_port()
    mport2 = free_port()
    nobody = start_proxy(f"--metrics-address=127.0.0.1:{mport2}", f"--proxy-backend-addresses=127.0.0.1:{dead}", backend=False)
    with pytest.raises(pymysql.err.OperationalError):
        nobody.connect()
    wait_closed(mport2, "no_backend", 1)

    # timeout: a client idle past --proxy-read-timeout
    mport3 = free_port()
    strict = start_proxy(f"--metrics-address=127.0.0.1:{mport3}", "--proxy-read-timeout=1")
    idle = strict.connect()
    wait_closed(mport3, "timeout", 1)
    idle.close()

    counts = closed(mport)
    assert counts.get("none", 0) >= 1 and counts.get("proxy_shutdown", 0) == 0, counts
    promtool_check(scrape(mport))


def test_lua_hook_metrics(start_proxy, tmp_path):
    script = tmp_path / "hooks.lua"
    script.write_text("""
function read_query(packet)
  if packet:find("boom", 1, true) then error("boom asked for") end
end
""")
    mport = free_port()
    proxy = start_proxy(f"--metrics-address=127.0.0.1:{mport}", f"--proxy-lua-script={script}")
    c = proxy.connect()
    with c.cursor() as cur:
        for i in range(3):
            cur.execute("SELECT %s", (i,))
        cur.execute("SELECT 'boom'")  # the hook fails; the query goes on as if it returned nothing
    m = samples(scrape(mport))
    calls = m['moonproxy_lua_hook_calls_total{hook="read_query"}']
    assert calls >= 4
    assert m['moonproxy_lua_hook_errors_total{hook="read_query"}'] == 1
    assert m['moonproxy_lua_hook_duration_seconds_count{hook="read_query"}'] == calls
    assert m['moonproxy_lua_hook_calls_total{hook="read_auth"}'] == 0  # not defined: never called
    assert m["moonproxy_lua_memory_bytes"] > 0
    assert m['moonproxy_lua_reloads_total{result="loaded"}'] == 0

    # an edit is picked up by the next connection, a broken one is counted and left alone
    time.sleep(1.1)  # a new modification time
    script.write_text("function read_query(packet) end\n")
    os.utime(script)
    proxy.connect().close()
    time.sleep(1.1)
    script.write_text("function read_query(packet\n")
    proxy.connect().close()
    m = samples(scrape(mport))
    assert m['moonproxy_lua_reloads_total{result="loaded"}'] == 1
    assert m['moonproxy_lua_reloads_total{result="failed"}'] == 1
    c.close()
    promtool_check(scrape(mport))

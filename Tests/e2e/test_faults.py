"""Bad input and broken peers: each costs one connection at most, with a clear MySQL error where
the protocol allows and a log line, while every other connection keeps working."""
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pymysql
import pymysql.cursors
import pytest

from conftest import MARIADB_PORT, ROOT, WORKDIR, free_port, mariadb_cli
from fakeserver import FakeServer
from rawclient import RawClient


def assert_still_serving(proxy):
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 'alive'")
        assert cur.fetchone() == ("alive",)
    c.close()


def proxy_fd_count(proxy):
    return len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))


# --- backends that are down or unreachable ---------------------------------------------------

def test_no_backend_gives_a_clear_error(start_proxy):
    dead = free_port()
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{dead}", backend=False)
    r = mariadb_cli(p.port, "SELECT 1", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("ERROR 1105 (HY000): No backend server is available"), r.stderr
    with pytest.raises(pymysql.err.OperationalError) as e:
        p.connect()
    assert e.value.args[0] == 1105
    log = p.log()
    assert "cannot connect to backend" in log and "no backend available" in log


def test_two_backends_one_down(start_proxy):
    dead = free_port()
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{dead},127.0.0.1:{MARIADB_PORT}",
                    "--proxy-backend-retry-interval=600", backend=False)
    for _ in range(10):
        assert_still_serving(p)
    # The dead one was tried once, marked down, and then left alone.
    assert p.log().count("cannot connect to backend") == 1


def test_down_backend_is_retried_after_the_interval(start_proxy):
    port, metrics_port = free_port(), free_port()
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{port},127.0.0.1:{MARIADB_PORT}",
                    "--proxy-backend-retry-interval=0.5", f"--metrics-address=127.0.0.1:{metrics_port}", backend=False)
    # two clients at a time: the backends take turns being tried first, and the dead one's turn
    # may be the second client's (the one after it finds it down)
    assert_still_serving(p)
    assert_still_serving(p)
    time.sleep(0.7)
    assert_still_serving(p)
    assert_still_serving(p)
    # counted each time; logged once per interval (the second is summed up later)
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert "moonproxy_backend_connect_failures_total 2" in text
    assert p.log().count("cannot connect to backend") == 1


def test_connect_timeout(start_proxy):
    # A listener whose backlog is full: SYNs are dropped, so connects hang until the timeout.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{port}", "--proxy-connect-timeout=0.5", backend=False)
    started = time.time()
    r = mariadb_cli(p.port, "SELECT 1", check=False, timeout=20)
    assert r.returncode == 1 and "ERROR 1105" in r.stderr, r.stderr
    assert time.time() - started < 10
    s.close()
    for f in fillers:
        f.close()


# --- a backend that dies or is killed ---------------------------------------------------------

@pytest.fixture(scope="module")
def second_mariadb():
    """Another throwaway MariaDB, to be killed."""
    port = free_port()
    directory = WORKDIR / "mariadb-second"
    start = f"source {ROOT}/scripts/lib/common.sh; start_mariadb {directory} {port}"
    subprocess.run(["bash", "-c", start], check=True, timeout=120)
    yield port, directory, start
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib/common.sh; stop_mariadb {directory}"], timeout=60)


def test_backend_killed_mid_result(start_proxy, second_mariadb):
    port, directory, start = second_mariadb
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{port}", backend=False)
    bystander = start_proxy()  # another proxy on the main server is not our concern; this one is:
    other = p.connect()
    c = p.connect(cursorclass=pymysql.cursors.SSCursor, read_timeout=30, database="mysql")
    cur = c.cursor()
    cur.execute("SELECT seq, REPEAT('x', 1000) FROM seq_1_to_2000000")
    for _ in range(10):
        cur.fetchone()
    pid = int((directory / "mysqld.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    started = time.time()
    with pytest.raises(pymysql.err.OperationalError) as e:
        while cur.fetchone() is not None:
            pass
    assert e.value.args[0] == 2013, e.value.args  # lost, as a direct client sees it
    assert time.time() - started < 20
    assert "backend closed the connection while a response was pending" in p.log()  # a warning, seen at the default level
    # The proxy itself is fine: its other client gets an error on its next query, not a hang,
    # and the proxy in front of the healthy server never noticed.
    with pytest.raises(pymysql.err.OperationalError):
        other.cursor().execute("SELECT 1")
    assert_still_serving(bystander)
    assert p.proc.poll() is None
    subprocess.run(["bash", "-c", start], check=True, timeout=120)  # for later tests
    assert_still_serving(p)


def start_big_result(proxy):
    """A connection in the middle of a large streamed result, and its server thread id."""
    c = proxy.connect(cursorclass=pymysql.cursors.SSCursor, database="moon")
    cur = c.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    thread = cur.fetchone()[0]
    cur.execute("SELECT seq, REPEAT('x', 1000) FROM seq_1_to_2000000")
    cur.fetchone()
    return c, cur, thread


def outcome(port, query, **kw):
    """What a PyMySQL client sees of `query`: its result, or the error's class and code (PyMySQL
    raises other exceptions on packets it cannot read)."""
    c = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=10, read_timeout=30, **kw)
    try:
        with c.cursor() as cur:
            cur.execute(query)
            return ("rows", cur.fetchall())
    except pymysql.err.MySQLError as e:
        return (type(e).__name__, e.args[0])
    except Exception as e:
        return (type(e).__name__,)
    finally:
        try:
            c.close()
        except Exception:
            pass


@pytest.mark.parametrize("through", [False, True])
def test_server_side_kill_mid_result(proxy, through):
    """KILL of a connection in the middle of a result: the client sees the server's own words and
    the close, exactly as it does directly (main.lock_kill accepts 2013 and ER_CONNECTION_KILLED,
    and pools decide whether to reconnect from these codes)."""
    port = proxy.port if through else MARIADB_PORT
    c = pymysql.connect(host="127.0.0.1", port=port, user="root", cursorclass=pymysql.cursors.SSCursor, database="moon")
    cur = c.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    thread = cur.fetchone()[0]
    cur.execute("SELECT seq, REPEAT('x', 1000) FROM seq_1_to_2000000")
    cur.fetchone()
    killer = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root")
    killer.cursor().execute(f"KILL CONNECTION {thread}")
    with pytest.raises(pymysql.err.OperationalError) as e:
        while cur.fetchone() is not None:
            pass
    assert e.value.args[0] in (1927, 2013), e.value.args
    assert_still_serving(proxy)


def test_killed_while_waiting_gets_the_same_error_as_directly(proxy):
    """A connection killed while its query runs: ER_CONNECTION_KILLED (or the close) from the
    server itself, the same code through the proxy as directly, never one the proxy made up."""
    seen = {}
    for name, port in (("direct", MARIADB_PORT), ("proxy", proxy.port)):
        c = pymysql.connect(host="127.0.0.1", port=port, user="root", read_timeout=30)
        cur = c.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        thread = cur.fetchone()[0]
        threading.Timer(0.5, lambda t=thread: pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root")
                        .cursor().execute(f"KILL CONNECTION {t}")).start()
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute("SELECT SLEEP(20)")
        seen[name] = e.value.args[0]
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute("SELECT 1")
        seen[name + " after"] = (type(e.value).__name__, e.value.args[0])
    assert seen["proxy"] == seen["direct"] and seen["proxy after"] == seen["direct after"], seen
    assert "1158" not in proxy.log()


def test_backend_dies_mid_result_fake(start_proxy):
    fake = FakeServer()
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{fake.port}", backend=False)
    got = {}
    for name, port in (("direct", fake.port), ("proxy", p.port)):
        rc = RawClient("127.0.0.1", port)
        rc.command(0x03, b"SELECT die")
        packets = []
        while True:
            try:
                packets.append(rc.read_packet())
            except ConnectionError:
                break
        got[name] = packets
    # column count, definition, EOF, one row, then the close: no ERR the server did not send
    assert got["proxy"] == got["direct"] and len(got["proxy"]) == 4
    r = mariadb_cli(p.port, "SELECT die", check=False)
    assert "ERROR 2013" in r.stderr and "Lost connection" in r.stderr, r.stderr
    assert "the backend closed the connection while a response was pending" in p.log()
    fake.close()


# --- malformed packets from a server -----------------------------------------------------------

@pytest.mark.parametrize("query", ["SELECT lying-count", "SELECT truncated-ok", "SELECT eof-missing"])
def test_unexpected_server_packet_is_relayed_as_it_is(start_proxy, query):
    """No hook on the path: a server packet the tracker cannot place is the client's to judge, as
    it would be directly; the proxy logs what it could not follow, and the connection is not cut."""
    fake = FakeServer()
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{fake.port}", backend=False)
    healthy = RawClient("127.0.0.1", p.port)
    direct = RawClient("127.0.0.1", fake.port)
    through = RawClient("127.0.0.1", p.port)
    for rc in (direct, through):
        rc.command(0x03, query.encode())
    assert through.read_all() == direct.read_all()
    assert "cannot follow the server's response to COM_QUERY" in p.log()
    assert outcome(p.port, query) == outcome(fake.port, query)
    # The other connection to the same (broken) server still works for a good query.
    healthy.command(0x03, b"SELECT fine")
    assert healthy.read_all()[-1][0] == 0xFE
    fake.close()


def test_unexpected_server_packet_with_a_hook_gives_error_1835(start_proxy):
    """With read_query on the path the proxy must understand the response: it ends that
    connection with ER_MALFORMED_PACKET and a log line."""
    fake = FakeServer()
    script = WORKDIR / "passthrough-for-malformed.lua"
    script.write_text("function read_query(packet) end\n")
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{fake.port}", f"--proxy-lua-script={script}", backend=False)
    assert outcome(p.port, "SELECT lying-count") == ("OperationalError", 1835)
    assert "malformed packet from the backend" in p.log()
    fake.close()


def test_malformed_greeting(start_proxy):
    fake = FakeServer(greeting="garbage")
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{fake.port}", backend=False)
    r = mariadb_cli(p.port, "SELECT 1", check=False)
    assert r.returncode == 1 and "ERROR 1835" in r.stderr, r.stderr
    assert "malformed greeting" in p.log()
    fake.close()


def test_absurd_server_version_with_a_script(start_proxy, tmp_path):
    # A script makes the proxy read the version as a number (proxy.connection.server.mysqld_version);
    # a 19-digit version once overflowed there and killed the process.
    script = tmp_path / "version.lua"
    script.write_text("function read_handshake() print('version', proxy.connection.server.mysqld_version) end\n")
    fake = FakeServer(greeting="absurd-version")
    p = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{fake.port}", f"--proxy-lua-script={script}", backend=False)
    for _ in range(2):
        assert mariadb_cli(p.port, "SELECT ok", check=False).returncode == 0
    assert p.proc.poll() is None
    fake.close()


# --- malformed packets and odd behaviour from clients -----------------------------------------

def test_empty_command_packet(proxy):
    rc = RawClient("127.0.0.1", proxy.port)
    rc.write_packet(b"", seq=0)
    reply = rc.read_packet()
    assert reply[0] == 0xFF and struct.unpack_from("<H", reply, 1)[0] == 1047
    assert_still_serving(proxy)


def test_garbage_instead_of_handshake_response(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.recv(4096)  # greeting
    s.sendall(struct.pack("<I", 5)[:3] + b"\x01" + b"junk!")
    data = s.recv(4096)
    assert data[4] == 0xFF and struct.unpack_from("<H", data, 5)[0] == 1043
    s.close()
    assert_still_serving(proxy)


def test_ssl_request_the_greeting_did_not_invite_is_refused(start_proxy):
    proxy = start_proxy("--skip-ssl")
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.recv(4096)
    caps = (1 << 9) | (1 << 11) | (1 << 15)
    s.sendall(struct.pack("<I", 32)[:3] + b"\x01" + struct.pack("<IIB", caps, 1 << 24, 33) + b"\0" * 23)
    data = s.recv(4096)
    assert data[4] == 0xFF and struct.unpack_from("<H", data, 5)[0] == 1043
    s.close()


def test_client_lying_about_length_then_vanishing(proxy):
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.recv(4096)
        s.sendall(b"\xff\xff\xff\x01" + b"x" * 100)  # announces 16 MiB, sends 100 bytes
        s.close()
    rc = RawClient("127.0.0.1", proxy.port)
    rc.write_packet(b"\x03SELECT 1", seq=0)
    # a command packet that lies about its length: the proxy relays what comes, the server waits
    rc.sock.sendall(b"\x10\x00\x00\x00\x03SELE")
    rc.sock.close()
    assert_still_serving(proxy)


def test_client_vanishing_mid_result_closes_its_backend(proxy):
    c, cur, thread = start_big_result(proxy)
    c._sock.shutdown(socket.SHUT_RDWR)
    c._sock.close()
    watcher = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root")
    deadline = time.time() + 15
    while time.time() < deadline:
        with watcher.cursor() as w:
            w.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread,))
            if w.fetchone()[0] == 0:
                break
        time.sleep(0.1)
    else:
        pytest.fail("the backend connection stayed open after its client vanished")
    assert_still_serving(proxy)


def test_nothing_leaks_after_many_connections(proxy):
    def storm(n):
        for i in range(n):
            c = proxy.connect()
            if i % 3 == 0:
                c.cursor().execute("SELECT 1")
            if i % 2 == 0:
                c.close()
            else:
                c._sock.close()  # abrupt

    storm(20)  # warm up: lazily created threads and descriptors are not leaks
    time.sleep(0.5)
    before = proxy_fd_count(proxy)
    rss_before = proxy.rss_kib()
    storm(300)
    deadline = time.time() + 10
    while time.time() < deadline and proxy_fd_count(proxy) > before:
        time.sleep(0.1)
    assert proxy_fd_count(proxy) <= before
    assert proxy.rss_kib() < rss_before + 8 * 1024


def test_memory_does_not_grow_with_the_number_of_connections(proxy):
    """Every connection's state must be freed: a leak of one handler per connection (about 1.3 KiB)
    shows as megabytes after a few thousand connections."""
    from concurrent.futures import ThreadPoolExecutor

    def connect_and_query(_):
        c = RawClient("127.0.0.1", proxy.port)  # PyMySQL spends 20 ms in each connect
        c.command(0x03, b"SELECT 1")
        c.read_packet()
        c.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(connect_and_query, range(1000)))
        time.sleep(0.5)
        settled = proxy.rss_kib()
        list(pool.map(connect_and_query, range(3000)))
    time.sleep(0.5)
    growth = proxy.rss_kib() - settled
    assert growth < 1024, f"RSS grew by {growth} KiB over 3000 connections"


def test_read_timeout_closes_idle_clients(start_proxy):
    p = start_proxy("--proxy-read-timeout=1", "--log-level=info")
    c = p.connect()
    c.cursor().execute("SELECT SLEEP(0.4)")
    time.sleep(2.5)
    with pytest.raises(pymysql.err.OperationalError):
        c.cursor().execute("SELECT 1")
    assert "client idle for longer than the read timeout" in p.log()
    assert_still_serving(p)


def test_read_timeout_on_a_silent_backend(start_proxy):
    p = start_proxy("--proxy-read-timeout=1")
    c = p.connect()
    started = time.time()
    with pytest.raises(pymysql.err.OperationalError) as e:
        c.cursor().execute("SELECT SLEEP(5)")
    assert e.value.args[0] == 1159
    assert time.time() - started < 4
    assert_still_serving(p)

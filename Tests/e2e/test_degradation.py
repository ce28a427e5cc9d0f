"""Graceful degradation (issue 26), with real MariaDB servers that are frozen (SIGSTOP), stopped and
restarted: a server that accepts but never greets is given up on and its clients served elsewhere
within their login timeout; a storm of refused clients writes a handful of log lines; a restarted
server takes clients again within a second, without health checks."""
import os
import signal
import socket
import struct
import threading
import time
import urllib.request

import pymysql
import pytest

from conftest import MARIADB_PORT, ExtraMariaDB, free_port


def mariadb_pid(server):
    return int((server.directory / "mysqld.pid").read_text().strip())


def metric(port, line_start):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def frozen_mariadb():
    server = ExtraMariaDB("mariadb-frozen")
    pid = mariadb_pid(server)
    os.kill(pid, signal.SIGSTOP)
    yield server
    os.kill(pid, signal.SIGCONT)
    server.stop()


def test_clients_of_a_frozen_server_are_served_by_the_healthy_one(start_proxy, frozen_mariadb):
    """The frozen server's kernel still accepts connections; it never greets. Every client is
    served by the other backend within its login timeout, and the frozen one is marked down with
    the reason, naming the server."""
    metrics_port = free_port()
    frozen = f"127.0.0.1:{frozen_mariadb.port}"
    proxy = start_proxy(f"--proxy-backend-addresses={frozen},127.0.0.1:{MARIADB_PORT}", f"--metrics-address=127.0.0.1:{metrics_port}",
                        "--proxy-backend-greeting-timeout=2", backend=False)
    times, errors = [], []

    def client():
        started = time.time()
        try:
            c = proxy.connect(connect_timeout=15)
            with c.cursor() as cur:
                cur.execute("SELECT @@port")
                assert cur.fetchone()[0] == MARIADB_PORT
            c.close()
            times.append(time.time() - started)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(times) == 10 and max(times) < 10, times   # within the login timeout
    log = proxy.log()
    assert f"backend {frozen} sent no greeting within --proxy-backend-greeting-timeout" in log
    assert "the client did not log in" not in log
    assert metric(metrics_port, f'moonproxy_backend_up{{backend="{frozen}"') == 0
    # new clients go straight to the healthy one
    started = time.time()
    proxy.connect().close()
    assert time.time() - started < 1


def test_a_refusal_storm_writes_a_handful_of_log_lines(start_proxy):
    dead = free_port()
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{dead}", backend=False)
    refused = 0
    started = time.time()
    for _ in range(5000):
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        if data[4:5] == b"\xff" and struct.unpack_from("<H", data, 5)[0] == 1105:
            refused += 1
    took = time.time() - started
    time.sleep(5.5)  # the last interval's summary
    lines = proxy.log().count("\n")
    assert refused == 5000
    assert lines <= 20, f"{lines} lines for 5000 refusals in {took:.1f} s:\n{proxy.log()}"
    assert "more like this in the last 5 s" in proxy.log()


@pytest.fixture
def restartable_mariadb():
    server = ExtraMariaDB("mariadb-restarted")
    yield server
    server.stop()


def test_a_restarted_server_takes_clients_again_within_a_second(start_proxy, restartable_mariadb):
    server = restartable_mariadb
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{server.port}", backend=False)
    proxy.connect().close()
    server.stop()
    with pytest.raises(pymysql.err.OperationalError):
        proxy.connect()
    stop = threading.Event()
    back_at = []

    def watch_direct():
        # when the server itself takes logins again
        while not stop.is_set():
            try:
                pymysql.connect(host="127.0.0.1", port=server.port, user="root", password="", connect_timeout=1).close()
                back_at.append(time.time())
                return
            except pymysql.err.OperationalError:
                time.sleep(0.01)

    clients = []

    def keep_connecting():
        # clients keep coming while it is down, as they would
        while not stop.is_set():
            try:
                proxy.connect(connect_timeout=5).close()
                clients.append(time.time())
                return
            except pymysql.err.OperationalError:
                time.sleep(0.02)

    threads = [threading.Thread(target=keep_connecting), threading.Thread(target=watch_direct)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # down for a while: marked down, probed
    server.start()
    for t in threads:
        t.join(60)
    stop.set()
    assert back_at and clients
    recovery = clients[0] - back_at[0]
    assert recovery <= 1.0, f"served through the proxy {recovery:.2f} s after the server was back"

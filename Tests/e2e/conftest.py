"""Fixtures for the end-to-end tests: the throwaway MariaDB that scripts/test started, and
MoonProxy processes started per test on free loopback ports."""
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[2]
MARIADB_PORT = int(os.environ.get("MOON_TEST_MARIADB_PORT", "0"))
MARIADB_SOCKET = os.environ.get("MOON_TEST_MARIADB_SOCKET", "")
WORKDIR = Path(os.environ.get("MOON_TEST_WORKDIR", "/tmp"))
BINARY = os.environ.get("MOON_TEST_BINARY", str(ROOT / ".build/debug/moonproxy"))

if not MARIADB_PORT:
    pytest.exit("run the end-to-end tests through scripts/test (it starts MariaDB)", returncode=2)


def free_port():
    for _ in range(500):
        port = random.randint(20000, 32000)
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def wait_for_port(port, timeout=15, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moonproxy exited with {proc.returncode}: {proc.stderr_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Proxy:
    """A moonproxy process; its log goes to a file the test can read."""

    def __init__(self, args, port=None, wait=True, env=None):
        self.port = port or free_port()
        self.log_path = WORKDIR / f"moonproxy-{self.port}-{int(time.time() * 1000)}.log"
        self.log_file = open(self.log_path, "w")
        self.args = [BINARY, f"--proxy-address=127.0.0.1:{self.port}"] + list(args)
        self.proc = subprocess.Popen(self.args, stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.proc.stderr_text = self.log
        if wait:
            wait_for_port(self.port, proc=self.proc)

    def log(self):
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def connect(self, **kw):
        kw.setdefault("user", "root")
        kw.setdefault("password", "")
        kw.setdefault("connect_timeout", 10)
        kw.setdefault("read_timeout", 60)
        return pymysql.connect(host="127.0.0.1", port=self.port, **kw)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@pytest.fixture
def start_proxy():
    started = []

    def start(*args, backend=True, **kw):
        extra = [f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}"] if backend else []
        p = Proxy(extra + list(args), **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop(signal.SIGKILL if p.proc.poll() is None else signal.SIGTERM)


@pytest.fixture
def proxy(start_proxy):
    return start_proxy()


def direct(**kw):
    kw.setdefault("user", "root")
    kw.setdefault("password", "")
    return pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, **kw)


def mariadb_cli(port, sql, user="root", password="", database=None, extra=(), check=True, timeout=60):
    args = ["mariadb", "-h127.0.0.1", f"-P{port}", f"-u{user}", "--batch", "--skip-ssl"]
    if password:
        args.append(f"-p{password}")
    if database:
        args.append(database)
    args += list(extra)
    args += ["-e", sql]
    r = subprocess.run(args, capture_output=True, text=True, errors="backslashreplace", timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"mariadb failed ({r.returncode}): {r.stderr}")
    return r


@pytest.fixture(scope="session", autouse=True)
def test_database():
    """A database and users shared by the tests."""
    c = direct()
    with c.cursor() as cur:
        for stmt in [
            "CREATE DATABASE IF NOT EXISTS moon",
            "CREATE TABLE IF NOT EXISTS moon.t (id INT PRIMARY KEY, name VARCHAR(50), b LONGBLOB)",
            "CREATE USER IF NOT EXISTS 'nat'@'%' IDENTIFIED BY 'natpass'",
            "GRANT ALL ON *.* TO 'nat'@'%'",
            "CREATE USER IF NOT EXISTS 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpass')",
            "GRANT ALL ON *.* TO 'ed'@'%'",
            "CREATE OR REPLACE PROCEDURE moon.two_results() BEGIN SELECT 1 AS x; SELECT 2 AS y, 'two' AS z; END",
        ]:
            cur.execute(stmt)
    c.commit()
    c.close()
    yield


class ExtraMariaDB:
    """One more throwaway MariaDB (stopped, restarted or configured differently by a test), on a
    port of its own; `sql` runs statements as root over its Unix socket."""

    def __init__(self, name, config=""):
        self.port = free_port()
        self.directory = WORKDIR / name
        quoted = config.replace("'", "'\\''")
        self.start_command = f"source {ROOT}/scripts/lib/common.sh; start_mariadb {self.directory} {self.port} '{quoted}'"
        self.start()

    def start(self):
        subprocess.run(["bash", "-c", self.start_command], check=True, timeout=180)

    def stop(self):
        subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib/common.sh; stop_mariadb {self.directory}"], timeout=60)

    def sql(self, statement):
        r = subprocess.run(["mariadb", f"--socket={self.directory}/mysqld.sock", "-uroot", "-N", "-e", statement],
                           capture_output=True, text=True, timeout=60, check=True)
        return r.stdout.strip()

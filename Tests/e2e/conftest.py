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


_handed_out = set()


def free_port():
    """A loopback port below the ephemeral range that nothing listens on now, and that no earlier
    call handed out (two listeners of one proxy once drew the same port)."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            continue
        finally:
            s.close()
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def listening_inodes(port):
    """The inodes of the TCP sockets listening on `port` (state 0A in /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in open(table).read().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def owns_listener(pid, port):
    """Whether process `pid` holds a socket listening on `port` (a connection to the port could
    reach another process that took it first)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    mine = {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    return bool(mine & listening_inodes(port))


def wait_for_port(port, timeout=15, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moonproxy exited with {proc.returncode}: {proc.stderr_text()}")
        if proc is not None:
            if owns_listener(proc.pid, port):
                return
            time.sleep(0.05)
            continue
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Proxy:
    """A moonproxy process; its log goes to a file the test can read."""

    def __init__(self, args, port=None, wait=True, env=None):
        # A port free when drawn can be taken before the proxy binds it (by a process outside the
        # tests): a port the harness drew is drawn again, up to three times.
        for attempt in range(3):
            self._start(args, port or free_port(), env)
            if not wait:
                return
            try:
                wait_for_port(self.port, proc=self.proc)
                return
            except RuntimeError:
                taken = f"cannot listen on 127.0.0.1:{self.port} for the proxy: Address already in use"
                if port is not None or attempt == 2 or taken not in self.log():
                    raise
                self.log_file.close()

    def _start(self, args, port, env):
        self.port = port
        self.log_path = WORKDIR / f"moonproxy-{self.port}-{int(time.time() * 1000)}.log"
        self.log_file = open(self.log_path, "w")
        self.args = [BINARY, f"--proxy-address=127.0.0.1:{self.port}"] + list(args)
        self.proc = subprocess.Popen(self.args, stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.proc.stderr_text = self.log

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

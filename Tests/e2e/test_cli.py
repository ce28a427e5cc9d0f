"""MySQL Proxy's command line: names, short forms, defaults, --defaults-file, exit statuses, and
the daemon chores (pid file, --daemon, --keepalive, --log-file, --user)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pymysql
import pytest

from conftest import BINARY, MARIADB_PORT, free_port, mariadb_cli, wait_for_port


def run(*args, timeout=20):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=timeout)


def test_version():
    for flag in ("--version", "-V"):
        r = run(flag)
        assert r.returncode == 0
        assert r.stdout.startswith("moonproxy ")
        assert "Lua 5.4" in r.stdout
        # SwiftNIO has no version at run time: the one MoonProxy names must be the one it is built with
        resolved = Path(__file__).resolve().parents[2] / "Package.resolved"
        if resolved.exists():
            pins = {p["identity"]: p["state"].get("version") for p in json.loads(resolved.read_text())["pins"]}
            assert f"SwiftNIO: {pins['swift-nio']}" in r.stdout


def test_help_lists_mysql_proxy_options():
    r = run("--help")
    assert r.returncode == 0
    for option in ["--proxy-address", "-P", "--proxy-backend-addresses", "-b", "--proxy-read-only-backend-addresses",
                   "-r", "--proxy-lua-script", "-s", "--proxy-skip-profiling", "--proxy-fix-bug-25371", "--no-proxy",
                   "--proxy-pool-no-change-user", "--proxy-connect-timeout", "--proxy-read-timeout",
                   "--proxy-write-timeout", "--defaults-file", "--verbose-shutdown", "--daemon", "--user", "--basedir",
                   "--pid-file", "--plugin-dir", "--plugins", "--log-level", "--log-file", "--log-use-syslog",
                   "--log-backtrace-on-crash", "--keepalive", "--max-open-files", "--event-threads", "--lua-path",
                   "--lua-cpath", "--admin-address", "--admin-username", "--admin-password", "--admin-lua-script"]:
        assert option in r.stdout, option
    assert "USAGE: moonproxy <options>" in r.stdout and r.stdout.startswith("OVERVIEW: MySQL/MariaDB protocol proxy")
    # grouped, in this order
    headings = ["PROXY:", "TLS AND COMPRESSION:", "ADMIN INTERFACE:", "METRICS AND QUERY LOG:", "LOGGING:", "PROCESS:"]
    positions = [r.stdout.index("\n" + h + "\n") for h in headings]
    assert positions == sorted(positions)
    metrics = r.stdout[positions[3]:positions[4]]
    for option in ["--metrics-address", "--query-log", "--query-log-normalize", "--query-log-max-query-length"]:
        assert option in metrics, option
    assert run("--help-all").returncode == 0


@pytest.mark.parametrize("args, complaint", [
    (["--no-such-option"], "--no-such-option"),
    (["--event-threads=abc"], "event-threads"),
    (["--event-threads=0"], "event-threads"),
    (["--proxy-connect-timeout=-1"], "proxy-connect-timeout"),
    (["--log-level=loud"], "log-level"),
    (["--proxy-address=127.0.0.1:99999"], "99999"),
    (["--proxy-backend-addresses=[::1"], "::1"),
    (["--plugins=proxy,bogus"], "bogus"),
    (["--max-open-files=x"], "max-open-files"),
])
def test_bad_options_exit_with_status_2(args, complaint):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert complaint in r.stderr, r.stderr


def test_short_options_with_joined_and_separate_values(tmp_path):
    port = free_port()
    p = subprocess.Popen([BINARY, f"-P127.0.0.1:{port}", "-b", f"127.0.0.1:{MARIADB_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        assert "7" in mariadb_cli(port, "SELECT 7").stdout
    finally:
        p.terminate()
        assert p.wait(20) == 0


def test_defaults_file(tmp_path):
    port = free_port()
    log = tmp_path / "proxy.log"
    conf = tmp_path / "moonproxy.cnf"
    conf.write_text(f"""
# a MySQL Proxy configuration file
[mysqld]
port = 1
[mysql-proxy]
proxy-address = 127.0.0.1:{port}
proxy-backend-addresses = 127.0.0.1:{MARIADB_PORT}
log-level = debug
log-file = {log}
proxy-skip-profiling = true
daemon = false
event-threads = 2
""")
    conf.chmod(0o640)   # readable by the group, as MySQL Proxy allowed; not by others
    p = subprocess.Popen([BINARY, f"--defaults-file={conf}"])
    try:
        wait_for_port(port)
        assert "8" in mariadb_cli(port, "SELECT 8").stdout
        time.sleep(0.2)
        text = log.read_text()
        assert "client connected" in text  # debug level came from the file
        assert "--proxy-skip-profiling" in text
    finally:
        p.terminate()
        p.wait(20)


def test_command_line_overrides_the_defaults_file(tmp_path):
    port = free_port()
    conf = tmp_path / "moonproxy.cnf"
    conf.write_text(f"[mysql-proxy]\nproxy-address = 127.0.0.1:{free_port()}\nproxy-backend-addresses = 127.0.0.1:1\n")
    conf.chmod(0o600)
    p = subprocess.Popen([BINARY, f"--defaults-file={conf}", f"-P127.0.0.1:{port}", f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        assert "9" in mariadb_cli(port, "SELECT 9").stdout
    finally:
        p.terminate()
        p.wait(20)


@pytest.mark.parametrize("content, complaint", [
    ("[mysql-proxy]\nno-such-key = 1\n", "unknown option 'no-such-key'"),
    ("[mysql-proxy]\nproxy-skip-profiling\n", "expected 'option = value'"),
    ("[mysql-proxy]\ndaemon = maybe\n", "true or false"),
])
def test_bad_defaults_file(tmp_path, content, complaint):
    conf = tmp_path / "bad.cnf"
    conf.write_text(content)
    conf.chmod(0o600)
    r = run(f"--defaults-file={conf}")
    assert r.returncode == 2
    assert complaint in r.stderr


def test_missing_defaults_file():
    r = run("--defaults-file=/nonexistent/moonproxy.cnf")
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_pid_file_basedir_and_verbose_shutdown(tmp_path):
    port = free_port()
    log = tmp_path / "p.log"
    p = subprocess.Popen([BINARY, f"-P127.0.0.1:{port}", f"-b127.0.0.1:{MARIADB_PORT}", f"--basedir={tmp_path}",
                          "--pid-file=moon.pid", "--log-file=p.log", "--verbose-shutdown", "--log-level=message"])
    wait_for_port(port)
    pid_file = tmp_path / "moon.pid"
    assert int(pid_file.read_text()) == p.pid
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0
    assert not pid_file.exists()
    assert "exit code is: 0" in log.read_text()


def test_daemon_mode(tmp_path):
    port = free_port()
    pid_file = tmp_path / "d.pid"
    r = run(f"-P127.0.0.1:{port}", f"-b127.0.0.1:{MARIADB_PORT}", "--daemon", f"--pid-file={pid_file}",
            f"--log-file={tmp_path / 'd.log'}")
    assert r.returncode == 0  # the foreground process returns at once
    wait_for_port(port)
    pid = int(pid_file.read_text())
    assert "10" in mariadb_cli(port, "SELECT 10").stdout
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the daemon did not stop")


def test_keepalive_restarts_a_crashed_proxy(tmp_path):
    port = free_port()
    log = tmp_path / "k.log"
    p = subprocess.Popen([BINARY, f"-P127.0.0.1:{port}", f"-b127.0.0.1:{MARIADB_PORT}", "--keepalive", f"--log-file={log}"])
    try:
        wait_for_port(port)
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)
        time.sleep(0.3)
        wait_for_port(port, timeout=20)
        assert "11" in mariadb_cli(port, "SELECT 11").stdout
        assert "restarting" in log.read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_no_proxy_does_not_listen(tmp_path):
    port = free_port()
    p = subprocess.Popen([BINARY, f"-P127.0.0.1:{port}", "--no-proxy"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    assert p.poll() is None
    with pytest.raises(OSError):
        import socket
        socket.create_connection(("127.0.0.1", port), timeout=1)
    p.terminate()
    assert p.wait(20) == 0


def test_compatibility_options_are_accepted_and_noted(tmp_path):
    port = free_port()
    log = tmp_path / "c.log"
    p = subprocess.Popen([BINARY, f"-P127.0.0.1:{port}", f"-b127.0.0.1:{MARIADB_PORT}", "--proxy-fix-bug-25371",
                          "--plugin-dir=/usr/lib/mysql-proxy/plugins", "--plugins=proxy", "--log-backtrace-on-crash",
                          "--proxy-pool-no-change-user", "--max-open-files=4096", "--event-threads=2",
                          "--proxy-read-timeout=3600", "--proxy-write-timeout=3600", "--proxy-connect-timeout=1.5",
                          f"--log-file={log}", "--log-level=info"])
    try:
        wait_for_port(port)
        text = log.read_text()
        for note in ["--proxy-fix-bug-25371", "--plugin-dir", "--log-backtrace-on-crash"]:
            assert note in text, note
        limits = open(f"/proc/{p.pid}/limits").read()
        assert any("Max open files" in line and "4096" in line for line in limits.splitlines())
        assert "12" in mariadb_cli(port, "SELECT 12").stdout
    finally:
        p.terminate()
        p.wait(20)


def test_address_already_in_use_fails_cleanly():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    r = run(f"-P127.0.0.1:{port}")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for the proxy: Address already in use" in r.stderr
    # the error names which of the listeners it was
    r = run("-P127.0.0.1:0", f"--metrics-address=127.0.0.1:{port}")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for the metrics: Address already in use" in r.stderr
    s.close()


def listening_sockets(port):
    """TCP sockets listening on `port`, from /proc (state 0A is LISTEN), without needing iproute2."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                count += 1
    return count


def test_event_threads_listen_on_one_port_each_and_refuse_a_taken_port(start_proxy):
    """With several event threads every thread has a listener of its own on the proxy's port
    (SO_REUSEPORT): connections are served on both, and a second proxy started on the same port
    is refused as it would be with one listener, instead of quietly sharing the port."""
    p = start_proxy("--event-threads=2")
    assert listening_sockets(p.port) == 2
    ids = set()
    for _ in range(16):
        out = mariadb_cli(p.port, "SELECT CONNECTION_ID()").stdout.split()
        ids.add(out[-1])
    assert len(ids) == 16
    r = run(f"-P127.0.0.1:{p.port}", f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}", "--event-threads=2")
    assert r.returncode == 1
    assert "in use" in r.stderr.lower()
    assert "5" in mariadb_cli(p.port, "SELECT 5").stdout  # the first proxy still serves
    assert p.stop(signal.SIGTERM) == 0
    assert listening_sockets(p.port) == 0  # every listener closed


def test_log_lines_carry_connection_metadata(start_proxy):
    p = start_proxy("--log-level=debug")
    mariadb_cli(p.port, "SELECT 1")
    time.sleep(0.2)
    line = next(l for l in p.log().splitlines() if "connected to backend" in l)
    assert "conn=" in line and "client=127.0.0.1:" in line and f"backend=127.0.0.1:{MARIADB_PORT}" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_user_switch_after_binding(tmp_path):
    port = free_port()
    p = subprocess.Popen([BINARY, f"-P127.0.0.1:{port}", f"-b127.0.0.1:{MARIADB_PORT}", "--user=nobody"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        import pwd
        # the switch follows the bind at once (a loaded machine may take a moment)
        for _ in range(100):
            uid_line = next(l for l in open(f"/proc/{p.pid}/status") if l.startswith("Uid:"))
            if int(uid_line.split()[1]) == pwd.getpwnam("nobody").pw_uid:
                break
            time.sleep(0.05)
        assert int(uid_line.split()[1]) == pwd.getpwnam("nobody").pw_uid
        assert "13" in mariadb_cli(port, "SELECT 13").stdout
    finally:
        p.terminate()
        p.wait(20)

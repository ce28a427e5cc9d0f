"""Active health checks against a second, real MariaDB that is stopped, restarted and made
read-only: the proxy's view of the backend follows within a few check intervals, clients are
told at once when every backend is down, and the checks never leave a handshake unfinished
(the server's Aborted_connects stays where it was)."""
import os
import time
from pathlib import Path

import pymysql
import pytest

from conftest import ExtraMariaDB, free_port



@pytest.fixture
def checked_mariadb():
    server = ExtraMariaDB("mariadb-checked")
    server.sql("CREATE USER IF NOT EXISTS 'moon_check'@'%' IDENTIFIED BY 'checkpass'")
    yield server
    server.stop()


def aborted_connects(server):
    return int(server.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'").split()[1])


def admin_backends(admin_port):
    """The admin interface's `SELECT * FROM backends`: index, address, state, type, ..."""
    c = pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="pw")
    with c.cursor() as cur:
        cur.execute("SELECT * FROM backends")
        rows = cur.fetchall()
    c.close()
    return rows


def wait_for(predicate, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def test_checks_follow_a_real_server(start_proxy, checked_mariadb):
    server = checked_mariadb
    port = server.port
    admin_port = free_port()
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{port}", "--plugins=proxy,admin",
                        f"--admin-address=127.0.0.1:{admin_port}", "--admin-username=boss", "--admin-password=pw",
                        "--proxy-backend-check-interval=0.3", "--proxy-backend-check-user=moon_check",
                        "--proxy-backend-check-password=checkpass", backend=False)
    address = f"127.0.0.1:{port}"

    def view():
        return tuple((r[1], r[2], r[3]) for r in admin_backends(admin_port))

    before = aborted_connects(server)
    assert wait_for(lambda: view() == ((address, "up", "rw"),)), view()
    time.sleep(1.5)  # five checks or so
    assert aborted_connects(server) == before  # every probe finished its login and quit
    # made read-only, the server serves as ro; writable again, as rw
    server.sql("SET GLOBAL read_only = 1")
    assert wait_for(lambda: view() == ((address, "up", "ro"),)), view()
    server.sql("SET GLOBAL read_only = 0")
    assert wait_for(lambda: view() == ((address, "up", "rw"),)), view()
    # stopped: down within a few intervals, and a new client is told at once
    server.stop()
    assert wait_for(lambda: view()[0][1] == "down"), view()
    started = time.time()
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect(user="moon_check", password="checkpass")
    assert time.time() - started < 1.0
    assert "all backends are down" in str(e.value)
    assert "is down (health check)" in proxy.log()
    # restarted: up again, and clients get through
    server.start()
    assert wait_for(lambda: view()[0][1] == "up", timeout=20), view()
    other = proxy.connect(user="moon_check", password="checkpass")
    with other.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("moon_check@%",)
    other.close()


def test_a_wrong_check_password_marks_the_backend_down(start_proxy, checked_mariadb):
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{checked_mariadb.port}", "--proxy-backend-check-interval=0.3",
                        "--proxy-backend-check-user=moon_check", "--proxy-backend-check-password=wrong", backend=False)
    assert wait_for(lambda: "1045" in proxy.log() and "is down (health check)" in proxy.log())


def test_broken_and_silent_servers_are_down_and_cost_nothing_else(start_proxy):
    from fakeserver import FakeServer
    import socket
    garbage = FakeServer(greeting="garbage")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts, never speaks
    admin_port = free_port()
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{garbage.port},127.0.0.1:{silent.getsockname()[1]}",
                        "--plugins=proxy,admin", f"--admin-address=127.0.0.1:{admin_port}", "--admin-username=boss",
                        "--admin-password=pw", "--proxy-connect-timeout=0.5", "--proxy-backend-check-interval=0.2",
                        "--proxy-backend-check-user=moon_check", "--proxy-backend-check-password=x", backend=False)

    def states():
        return [r[2] for r in admin_backends(admin_port)]

    assert wait_for(lambda: states() == ["down", "down"], timeout=10), states()
    log = proxy.log()
    assert "malformed answer" in log and "no answer within" in log, log
    # the checks go on without piling up connections or failing the proxy
    time.sleep(1.5)
    assert states() == ["down", "down"]
    assert proxy.proc.poll() is None
    silent.close()


def test_checks_go_over_tls_to_a_server_that_requires_it(start_proxy):
    """A MariaDB with require_secure_transport refuses plaintext logins: the checks log in over TLS
    (verified against the CA under verify-ca), the backend is up and serves; with TLS to backends
    off, the same checks are refused (1045: the account requires SSL) and the backend is down, as
    it is when the server's certificate does not chain to the CA."""
    certs = Path(os.environ["MOON_TEST_CERTS"])
    server = ExtraMariaDB("mariadb-tls-only", "\n".join([
        f"ssl-ca={certs / 'ca.pem'}", f"ssl-cert={certs / 'server.pem'}", f"ssl-key={certs / 'server-key.pem'}",
        "require_secure_transport=ON"]))
    try:
        server.sql("CREATE USER IF NOT EXISTS 'moon_check'@'%' IDENTIFIED BY 'checkpass' REQUIRE SSL")
        admin_port = free_port()
        common = [f"--proxy-backend-addresses=127.0.0.1:{server.port}", "--proxy-backend-check-interval=0.3",
                  "--proxy-backend-check-user=moon_check", "--proxy-backend-check-password=checkpass"]
        proxy = start_proxy(*common, "--proxy-backend-ssl=verify-ca", f"--proxy-backend-ssl-ca={certs / 'ca.pem'}",
                            "--plugins=proxy,admin", f"--admin-address=127.0.0.1:{admin_port}",
                            "--admin-username=boss", "--admin-password=pw", backend=False)
        address = f"127.0.0.1:{server.port}"
        assert wait_for(lambda: tuple((r[1], r[2], r[3]) for r in admin_backends(admin_port)) == ((address, "up", "rw"),))
        before = aborted_connects(server)  # (start_proxy's readiness probe, a connect and close, counts once)
        c = proxy.connect(user="moon_check", password="checkpass")
        with c.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_version'")
            assert cur.fetchone()[1].startswith("TLSv1.")
        c.close()
        time.sleep(1)  # a few more checks
        assert "is down" not in proxy.log()
        assert aborted_connects(server) == before

        plain = start_proxy(*common, "--proxy-backend-ssl=off", backend=False)
        assert wait_for(lambda: "is down (health check): 1045" in plain.log()), plain.log()
        # a server certificate that does not chain to the configured CA: down, and the log says why
        other = start_proxy(*common, "--proxy-backend-ssl=verify-ca", f"--proxy-backend-ssl-ca={certs / 'other-ca.pem'}", backend=False)
        assert wait_for(lambda: "is down (health check): TLS with the backend failed: CERTIFICATE_VERIFY_FAILED" in other.log()), other.log()
    finally:
        server.stop()

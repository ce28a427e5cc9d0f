"""--proxy-auth=proxy and the core pool against the real server: the proxy verifies logins
itself (the server's error codes, SQLSTATEs and words; no server connection for a wrong
password), logs clients into the server with what their right answer revealed, follows account
changes, hands one server connection from client to client, and nothing of one client's session
reaches the next (the server itself is the judge: each state is read back from it)."""
import os
import signal
import struct
import subprocess
import time

import mariadb
import mysql.connector
import pymysql
import pytest

from conftest import MARIADB_PORT, MARIADB_SOCKET, WORKDIR, free_port, wait_for_port
from test_admin import admin_args, table
from test_health_checks import wait_for
from test_metrics import promtool_check, samples, scrape

SERVICE = ("moon_pa_svc", "svc pw")


def root():
    return pymysql.connect(unix_socket=MARIADB_SOCKET, user="root", autocommit=True)


def status(name):
    with root() as r, r.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
        return int(cur.fetchone()[1])


@pytest.fixture(scope="module", autouse=True)
def accounts():
    with root() as r, r.cursor() as cur:
        for stmt in [
            "CREATE OR REPLACE USER 'moon_pa_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'",
            "GRANT SELECT ON mysql.global_priv TO 'moon_pa_svc'@'127.0.0.1'",
            "CREATE OR REPLACE USER 'pa'@'%' IDENTIFIED BY 'pa pw'",
            "GRANT ALL ON moon.* TO 'pa'@'%'",
            "CREATE OR REPLACE USER 'pa_locked'@'%' IDENTIFIED BY 'pw' ACCOUNT LOCK",
            "CREATE OR REPLACE USER 'pa_ssl'@'%' IDENTIFIED BY 'pw' REQUIRE SSL",
            "CREATE OR REPLACE USER 'pa_far'@'10.9.9.9' IDENTIFIED BY 'pw'",
            "CREATE OR REPLACE USER 'pa_nopw'@'%'",
            "CREATE OR REPLACE USER 'pa_ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed pw')",
            "CREATE TABLE IF NOT EXISTS moon.pa_auto (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        ]:
            cur.execute(stmt)
    yield


def start(start_proxy, *extra, refresh=60, pool=1):
    proxy = start_proxy("--proxy-auth=proxy", f"--proxy-pool-max={pool}", f"--proxy-users-user={SERVICE[0]}",
                        f"--proxy-users-refresh-interval={refresh}", "--log-level=info", *extra,
                        env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    return proxy


def cli_error(port, user, password, ssl=False):
    args = ["mariadb", "-h127.0.0.1", f"-P{port}", f"-u{user}", "--batch", "-e", "SELECT 1"]
    args.append("--ssl" if ssl else "--skip-ssl")
    if password:
        args.append(f"-p{password}")
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stderr.strip()


def test_refusals_are_the_servers(start_proxy):
    proxy = start(start_proxy)
    cases = [("pa", "wrong"), ("pa", ""), ("nobody", "x"), ("pa_locked", "pw"), ("pa_locked", "wrong"), ("pa_ssl", "pw"),
             ("pa_far", "pw"), ("pa_nopw", "x")]
    denied, connections = status("Access_denied_errors"), status("Connections")
    for user, password in cases:
        through = cli_error(proxy.port, user, password)
        assert through[0] == 1 and through[1].startswith("ERROR"), (user, through)
    # no login of theirs reached the server, and no connection either: before refusing, the proxy
    # read the accounts again on the service account's connection kept from the last reading
    assert status("Access_denied_errors") == denied
    assert status("Connections") - connections == 2  # the two status queries' own
    for user, password in cases:
        assert cli_error(proxy.port, user, password) == cli_error(MARIADB_PORT, user, password), (user, password)
    # and what the server lets in, the proxy lets in
    assert cli_error(proxy.port, "pa_ssl", "pw", ssl=True)[0] == 0
    assert cli_error(proxy.port, "pa_nopw", "")[0] == 0
    assert cli_error(proxy.port, "pa", "pa pw")[0] == 0


def test_clients_log_in(start_proxy):
    proxy = start(start_proxy, pool=4)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon")
    with c.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == ("pa@%", "moon")
    c.close()
    c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon")
    cur = c.cursor(prepared=True)
    cur.execute("SELECT ? + 1", (41,))
    assert cur.fetchone()[0] == 42
    c.close()
    c = mariadb.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon")
    cur = c.cursor()
    cur.execute("SELECT CURRENT_USER()")
    assert cur.fetchone() == ("pa@%",)
    c.close()
    # a client that answers first with another plugin is switched to mysql_native_password once;
    # a clear password over TLS is verified as it is
    c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", auth_plugin="caching_sha2_password")
    c.close()
    c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", auth_plugin="mysql_clear_password",
                                ssl_disabled=False)
    c.close()
    r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{proxy.port}", "-upa", "-ppa pw", "--ssl", "--default-auth=mysql_clear_password",
                        "-e", "SELECT CURRENT_USER()"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "pa@%" in r.stdout, r.stderr
    # PHP's mysqlnd (mysqli), its own implementation of the protocol
    php = ("mysqli_report(MYSQLI_REPORT_OFF); $m = @new mysqli('127.0.0.1', $argv[2], $argv[3], '', (int)$argv[1]);"
           "if ($m->connect_errno) { echo 'ERR ', $m->connect_errno, ' ', $m->connect_error; exit(1); }"
           "echo $m->query('SELECT CURRENT_USER()')->fetch_row()[0];")
    def mysqlnd(port, password):
        return subprocess.run(["php", "-r", php, "--", str(port), "pa", password], capture_output=True, text=True, timeout=30).stdout
    assert mysqlnd(proxy.port, "pa pw") == "pa@%"
    assert mysqlnd(proxy.port, "wrong") == mysqlnd(MARIADB_PORT, "wrong")
    # TLS, and an account the proxy cannot log in with (ed25519): relayed to the server
    assert cli_error(proxy.port, "pa", "pa pw", ssl=True) == (0, "")
    assert cli_error(proxy.port, "pa_ed", "ed pw") == (0, "")
    assert cli_error(proxy.port, "pa_ed", "nope")[1] == cli_error(MARIADB_PORT, "pa_ed", "nope")[1]


def test_account_changes_show_at_the_next_failed_login(start_proxy):
    proxy = start(start_proxy)
    with root() as r, r.cursor() as cur:
        cur.execute("CREATE OR REPLACE USER 'pa_new'@'%' IDENTIFIED BY 'one'")
    # unknown to the proxy as it last read the accounts (a minute ago): before refusing, it reads
    # them again, so the very first login works, as on the server
    assert cli_error(proxy.port, "pa_new", "one") == (0, "")
    with root() as r, r.cursor() as cur:
        cur.execute("ALTER USER 'pa_new'@'%' IDENTIFIED BY 'two'")
    assert cli_error(proxy.port, "pa_new", "two") == (0, "")
    assert "1045" in cli_error(proxy.port, "pa_new", "one")[1]
    # a dropped account still lets its password in until the proxy reads the accounts again:
    # within --proxy-users-refresh-interval, or at the next refusal (readings start at most
    # once a second)
    with root() as r, r.cursor() as cur:
        cur.execute("DROP USER 'pa_new'@'%'")
    time.sleep(1.1)
    cli_error(proxy.port, "pa_new", "wrong")
    assert "1045" in cli_error(proxy.port, "pa_new", "two")[1]


def test_one_server_connection_serves_client_after_client(start_proxy):
    proxy = start(start_proxy, pool=1)
    before = status("Connections")
    ids = set()
    for i in range(300):
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw")
        if i % 3 == 0:
            c.close()  # quits before its first command (the pooled session's reset still on its way)
            continue
        with c.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            ids.add(cur.fetchone()[0])
        c.close()
    grown = status("Connections") - before
    assert grown <= 1 + 1 + 1, grown  # the pool's one, the status query, a refresh at most
    assert len(ids) == 1, ids


def test_a_quit_sent_behind_the_login_gets_the_logins_ok_first(start_proxy):
    """A client that writes COM_QUIT in the same write as its handshake response gets the login's
    OK, then the close; its server connection goes back to the pool."""
    from rawclient import RawClient

    class QuitBehindLogin(RawClient):
        def write_packet(self, payload, seq=None):
            if seq != 1:
                return super().write_packet(payload, seq)
            self.sock.sendall(struct.pack("<I", len(payload))[:3] + b"\x01" + payload + b"\x01\x00\x00\x00\x01")
            self.seq = 2

    proxy = start(start_proxy, pool=1)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw")
    with c.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        server_id = cur.fetchone()[0]
    c.close()
    for _ in range(3):
        quitter = QuitBehindLogin("127.0.0.1", proxy.port, user="pa", password="pa pw")
        assert quitter.auth_ok[0] == 0x00
        assert quitter.sock.recv(64) == b""  # then the close
        quitter.close()
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw")
    with c.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] == server_id  # still the one pooled connection
    c.close()


def session_view(cur):
    cur.execute("SELECT @@sql_mode, @@time_zone, @@character_set_client, @@character_set_results, @@collation_connection, "
                "@leak, @@in_transaction, LAST_INSERT_ID(), DATABASE(), IS_USED_LOCK('moon_leak') IS NULL, "
                "ABS(UNIX_TIMESTAMP() - UNIX_TIMESTAMP(SYSDATE())) < 5, @@autocommit, @@session.wait_timeout")
    return cur.fetchone()


def test_nothing_of_a_session_reaches_the_next(start_proxy):
    """The leak suite: a pool of one connection shared by client A, then B."""
    proxy = start(start_proxy, pool=1)

    def connect():
        return mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon",
                                       autocommit=True)

    # what a fresh session looks like, directly
    d = mysql.connector.connect(host="127.0.0.1", port=MARIADB_PORT, user="pa", password="pa pw", database="moon", autocommit=True)
    fresh = session_view(d.cursor())
    d.close()
    prepared_before = status("Prepared_stmt_count")

    a = connect()
    cur = a.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    server_id = cur.fetchone()[0]
    for stmt in ["SET sql_mode = 'ANSI'", "SET time_zone = '+05:00'", "SET NAMES latin1", "SET TIMESTAMP = 1000000000",
                 "SET @leak = 42", "SET SESSION wait_timeout = 12345", "CREATE TEMPORARY TABLE pa_tmp (a INT)",
                 "PREPARE pa_stmt FROM 'SELECT 1'", "INSERT INTO pa_auto (v) VALUES (1)", "SELECT GET_LOCK('moon_leak', 0)"]:
        cur.execute(stmt)
        cur.fetchall() if cur.with_rows else None
    binary = a.cursor(prepared=True)
    binary.execute("SELECT ?", (1,))
    binary.fetchall()
    cur.execute("SELECT 1/0")  # a warning
    cur.fetchall()
    cur.execute("SET autocommit = 0")
    cur.execute("INSERT INTO pa_auto (v) VALUES (99)")  # in an open transaction
    assert status("Prepared_stmt_count") > prepared_before
    a.close()

    b = connect()
    cur = b.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    assert cur.fetchone()[0] == server_id  # the same server connection
    assert session_view(cur) == fresh
    cur.execute("SHOW WARNINGS")
    assert cur.fetchall() == []
    with pytest.raises(mysql.connector.errors.ProgrammingError):
        cur.execute("SELECT * FROM pa_tmp")
    with pytest.raises(mysql.connector.errors.DatabaseError):
        cur.execute("EXECUTE pa_stmt")
    cur.execute("SELECT COUNT(*) FROM pa_auto WHERE v = 99")
    assert cur.fetchone()[0] == 0  # A's open transaction was rolled back
    assert status("Prepared_stmt_count") == prepared_before
    b.close()

    # a session that changes user (verified by the proxy) becomes a login of that user on a
    # connection of its own; the one it leaves is reset for the pool's login before B gets it
    # (a change the server verifies: test_change_user)
    a = connect()
    cur = a.cursor()
    cur.execute("SET @leak = 1")
    a.cmd_change_user(username="nat", password="natpass", database="moon")
    cur = a.cursor()
    cur.execute("SELECT CURRENT_USER(), CONNECTION_ID() <> %s, @leak", (server_id,))
    assert cur.fetchone() == ("nat@%", 1, None)
    a.close()
    b = connect()
    cur = b.cursor()
    cur.execute("SELECT CURRENT_USER(), CONNECTION_ID(), DATABASE()")
    assert cur.fetchone() == ("pa@%", server_id, "moon")
    b.close()

    # LOCK TABLES: B (on the same server connection) and everyone else can write
    a = connect()
    cur = a.cursor()
    cur.execute("LOCK TABLES pa_auto READ")
    a.close()
    b = connect()
    cur = b.cursor()
    cur.execute("INSERT INTO pa_auto (v) VALUES (2)")
    with root() as r, r.cursor() as rc:
        rc.execute("INSERT INTO moon.pa_auto (v) VALUES (3)")
    b.close()


def test_start_and_stop_leave_aborted_connects_alone(start_proxy):
    before = status("Aborted_connects")
    for _ in range(3):
        proxy = start(start_proxy)
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw")
        c.close()
        proxy.stop()
    assert status("Aborted_connects") == before


def test_metrics_and_admin_show_logins_and_the_pool(start_proxy):
    metrics_port, admin_port = free_port(), free_port()
    proxy = start(start_proxy, f"--metrics-address=127.0.0.1:{metrics_port}", *admin_args(admin_port), pool=2)
    wait_for_port(admin_port)
    for _ in range(3):
        pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw").close()
    cli_error(proxy.port, "pa", "wrong")
    text = scrape(metrics_port)
    promtool_check(text)
    s = samples(text)
    assert s['moonproxy_logins_total{plugin="mysql_native_password",result="verified"}'] == 3
    assert s['moonproxy_logins_total{plugin="mysql_native_password",result="refused"}'] == 1
    backend = f"127.0.0.1:{MARIADB_PORT}"
    assert s[f'moonproxy_core_pool_connections{{backend="{backend}"}}'] == 1
    hits = s.get(f'moonproxy_core_pool_events_total{{backend="{backend}",event="checkout_hit"}}', 0)
    waited = s.get(f'moonproxy_core_pool_events_total{{backend="{backend}",event="checkout_waited"}}', 0)
    assert hits + waited == 2  # the second and third logins took the first one's connection
    assert s.get(f'moonproxy_core_pool_wait_seconds_count{{backend="{backend}"}}', 0) == waited
    result = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{admin_port}", "-uboss", "-ps3cret pass", "--batch", "--skip-ssl",
                             "-e", "SELECT * FROM pool"], capture_output=True, text=True, timeout=30)
    rows, header = table(result)
    assert header == ["backend_ndx", "user", "db", "idle", "resetting"]
    assert ["1", "pa", "", "1", "0"] in rows


def pooled_ids(user="pa"):
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND COMMAND = 'Sleep'", (user,))
        return sorted(row[0] for row in cur.fetchall())


def test_pooled_connections_age_out_and_survive_being_killed(start_proxy):
    """Time passing: the idle timeout closes pooled connections (the server sees them quit); a
    pooled connection the server killed while idle is dropped, and the next client is served."""
    proxy = start(start_proxy, "--proxy-pool-idle-timeout=1", pool=2)
    def once():
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw")
        with c.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (server_id,) = cur.fetchone()
        c.close()
        return server_id
    first = once()
    assert wait_for(lambda: pooled_ids() == [first], timeout=2)
    # killed by the server while idle in the pool
    with root() as r, r.cursor() as cur:
        cur.execute(f"KILL {first}")
    time.sleep(0.3)
    second = once()
    assert second != first
    # past the idle timeout the pool lets its connection go, with COM_QUIT (not an abort)
    aborted = status("Aborted_clients")
    assert wait_for(lambda: pooled_ids() == [], timeout=5)
    assert status("Aborted_clients") == aborted
    assert once() not in (first, second)


def test_scripts_keep_their_login_hooks(start_proxy):
    """MoonProxy's audit example (read_auth, read_auth_result, read_query_result) in proxy mode:
    the logins the proxy accepted and refused reach the script as the server's verdicts would."""
    from pathlib import Path
    audit = WORKDIR / f"moon-audit-pa-{time.time_ns()}.log"
    examples = Path(__file__).resolve().parents[2] / "examples"
    proxy = start_proxy("--proxy-auth=proxy", "--proxy-pool-max=2", f"--proxy-users-user={SERVICE[0]}", "--log-level=info",
                        f"--proxy-lua-script={examples / 'audit.lua'}",
                        env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1], MOON_AUDIT_FILE=str(audit)))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon", autocommit=True)
    with c.cursor() as cur:
        cur.execute("DELETE FROM pa_auto WHERE v = 7")
        cur.execute("INSERT INTO pa_auto (v) VALUES (7)")
    c.close()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="wrong")
    assert refused.value.args[0] == 1045
    assert wait_for(lambda: "refused" in audit.read_text(), timeout=5)
    events = [line.split("\t") for line in audit.read_text().splitlines()]
    assert [e[3:5] for e in events if e[3] == "LOGIN"] == [["LOGIN", "ok"], ["LOGIN", "refused 1045 Access denied for user 'pa'@'127.0.0.1' (using password: YES)"]]
    assert any(e[3] == "OK 1" and e[4] == "INSERT INTO pa_auto (v) VALUES (7)" for e in events)


def test_host_patterns_match_the_proxy_protocol_client(start_proxy):
    """Behind a load balancer that sends PROXY protocol headers, an account's host pattern is
    matched against the client the header names, and with --proxy-backend-proxy-protocol the
    server (proxy_protocol_networks) knows the session by that client too: host patterns work as
    directly, with no account for the proxy's own address. A pooled connection serves only clients
    the proxy matched to the same account."""
    from conftest import ExtraMariaDB
    from test_proxy_protocol import connect_with_header, v2_tcp4
    server = ExtraMariaDB("mariadb-pa-proxy-protocol", "proxy_protocol_networks=127.0.0.0/8,localhost\nskip-name-resolve")
    try:
        server.sql("CREATE OR REPLACE USER 'moon_pa_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw';"
                   "GRANT SELECT ON mysql.global_priv TO 'moon_pa_svc'@'127.0.0.1'; DROP USER IF EXISTS 'lan'@'10.1.9.%';"
                   "CREATE OR REPLACE USER 'lan'@'10.1.2.%' IDENTIFIED BY 'lan pw'; CREATE OR REPLACE USER 'lan'@'10.1.3.%' IDENTIFIED BY 'lan pw'")
        proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{server.port}", "--proxy-backend-proxy-protocol",
                            "--proxy-protocol-networks=127.0.0.1", "--proxy-auth=proxy", "--proxy-pool-max=2",
                            f"--proxy-users-user={SERVICE[0]}", "--log-level=info", backend=False,
                            env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
        assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()

        def login(address):
            c = connect_with_header(proxy.port, v2_tcp4(address, 40000, "127.0.0.1", proxy.port), user="lan", password="lan pw")
            with c.cursor() as cur:
                cur.execute("SELECT CURRENT_USER(), CONNECTION_ID()")
                row = cur.fetchone()
            c.close()
            return row
        first = login("10.1.2.3")
        assert first[0] == "lan@10.1.2.%"
        again = login("10.1.2.4")
        assert again == first  # the same account: the pooled connection
        other = login("10.1.3.7")
        assert other[0] == "lan@10.1.3.%" and other[1] != first[1]  # another account: not that connection
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect_with_header(proxy.port, v2_tcp4("10.1.9.9", 40000, "127.0.0.1", proxy.port), user="lan", password="lan pw")
        # no account names that host: 1130 in place of the greeting, as from the server
        assert refused.value.args == (1130, "Host '10.1.9.9' is not allowed to connect to this MariaDB server")
        server.sql("CREATE USER 'lan'@'10.1.9.%' IDENTIFIED BY 'other pw'")
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect_with_header(proxy.port, v2_tcp4("10.1.9.9", 40000, "127.0.0.1", proxy.port), user="lan", password="lan pw")
        assert refused.value.args == (1045, "Access denied for user 'lan'@'10.1.9.9' (using password: YES)")
    finally:
        server.stop()


def test_the_pool_keeps_idle_connections_ready(start_proxy):
    """--proxy-pool-min-idle: once a client proved a login, taking one of its idle connections
    makes the proxy log another one in, in the background, before the next client comes."""
    proxy = start(start_proxy, "--proxy-pool-min-idle=2", pool=4)

    def sleeping():
        with root() as r, r.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'pa' AND COMMAND = 'Sleep'")
            return cur.fetchone()[0]
    pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon").close()
    assert wait_for(lambda: sleeping() == 1)  # the first client's, back in the pool
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon")
    # it took the idle one; two more are made ready for the next clients
    assert wait_for(lambda: sleeping() == 3), sleeping()
    ready = set(pooled_ids())
    others = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="pa", password="pa pw", database="moon") for _ in range(2)]
    for o in others:
        with o.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE(), CONNECTION_ID()")
            user, db, connection = cur.fetchone()
            assert (user, db) == ("pa@%", "moon") and connection in ready  # served by a connection made ready before
    for o in others + [c]:
        o.close()

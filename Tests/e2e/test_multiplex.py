"""--proxy-multiplex against the real server: a login's sessions share a few server
connections; each session's state (as the server reported it in its OK packets, plus the user
variables it set) is brought to whichever connection serves its next command, and what cannot be
moved pins the session to its connection. The server is the judge: every state is read back
from it, through the proxy, next to what the same statements give directly."""
import os
import threading
import time

import mariadb
import mysql.connector
import pymysql
import pytest

import subprocess

from conftest import MARIADB_PORT, MARIADB_SOCKET, free_port, wait_for_port
from test_admin import admin_args, table
from test_health_checks import wait_for
from test_metrics import promtool_check, samples, scrape  # noqa: F401

SERVICE = ("moon_mx_svc", "svc pw")


def root():
    return pymysql.connect(unix_socket=MARIADB_SOCKET, user="root", autocommit=True)


def server_connections(user="mx"):
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT ID, HOST, DB, COMMAND, TIME FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        rows = cur.fetchall()
        print("server connections:", rows)
        return len(rows)


@pytest.fixture(scope="module", autouse=True)
def accounts():
    with root() as r, r.cursor() as cur:
        for stmt in [
            "CREATE OR REPLACE USER 'moon_mx_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'",
            "GRANT SELECT ON mysql.global_priv TO 'moon_mx_svc'@'127.0.0.1'",
            "CREATE OR REPLACE USER 'mx'@'%' IDENTIFIED BY 'mx pw'",
            "CREATE DATABASE IF NOT EXISTS moon",
            "CREATE DATABASE IF NOT EXISTS moon_mx2",
            "GRANT ALL ON moon.* TO 'mx'@'%'",
            "GRANT ALL ON moon_mx2.* TO 'mx'@'%'",
            "CREATE TABLE IF NOT EXISTS moon.mx_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
            "CREATE OR REPLACE PROCEDURE moon.mx_set_zone() SET SESSION time_zone = '+03:00'",
        ]:
            cur.execute(stmt)
    yield


def start(start_proxy, pool, *extra):
    proxy = start_proxy("--proxy-auth=proxy", f"--proxy-pool-max={pool}", "--proxy-multiplex", f"--proxy-users-user={SERVICE[0]}",
                        "--log-level=info", *extra, env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    return proxy


def view(cur):
    cur.execute("SELECT @@sql_mode, @@time_zone, @@character_set_client, @@collation_connection, @@autocommit, "
                "@@session.wait_timeout, DATABASE(), @x, @y, @@tx_isolation")
    return cur.fetchone()


def test_sessions_share_connections_and_keep_their_own_state(start_proxy):
    proxy = start(start_proxy, 2)
    sessions = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                for _ in range(12)]
    direct = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="mx", password="mx pw", database="moon", autocommit=True)
    expected = []
    for i, c in enumerate(sessions):
        stmts = [f"SET sql_mode = '{['ANSI', 'TRADITIONAL', ''][i % 3]}'", f"SET time_zone = '+0{i % 10}:00'",
                 "SET NAMES latin1" if i % 2 else "SET NAMES utf8mb4 COLLATE utf8mb4_bin", f"SET @x = {i}, @y = 'it''s {i}'",
                 f"SET SESSION wait_timeout = {1000 + i}", "USE moon_mx2" if i % 4 == 0 else "DO 1",
                 "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED" if i % 5 == 0 else "DO 2"]
        if i % 3 == 1:
            stmts.append("SET autocommit = 0")
        with c.cursor() as cur:
            for stmt in stmts:
                cur.execute(stmt)
        fresh = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="mx", password="mx pw", database="moon", autocommit=True)
        with fresh.cursor() as cur:
            for stmt in stmts:
                cur.execute(stmt)
            expected.append(view(cur))
        fresh.close()
    direct.close()
    ids = [set() for _ in sessions]
    for _ in range(3):
        for i, c in enumerate(sessions):
            with c.cursor() as cur:
                assert view(cur) == expected[i], i
                cur.execute("SELECT CONNECTION_ID()")
                ids[i].add(cur.fetchone()[0])
                if i % 3 == 1:
                    cur.execute("COMMIT")  # (autocommit off: each read opened a transaction, which pins until it ends)
    assert wait_for(lambda: server_connections() <= 2)  # (the direct ones above take a moment to go)
    assert len(set().union(*ids)) <= 2  # twelve sessions, two server connections
    for c in sessions:
        c.close()


def test_nothing_leaks_between_interleaved_sessions(start_proxy):
    """The leak suite with one server connection shared by interleaved sessions."""
    proxy = start(start_proxy, 1)

    def connect(**kw):
        return mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon",
                                       autocommit=True, **kw)

    d = mysql.connector.connect(host="127.0.0.1", port=MARIADB_PORT, user="mx", password="mx pw", database="moon", autocommit=True)
    fresh = view(d.cursor())
    d.close()
    a, b = connect(), connect()
    ca, cb = a.cursor(), b.cursor()
    # movable state: set by A, B (on the same server connection) sees none of it, A keeps all of it
    d = mysql.connector.connect(host="127.0.0.1", port=MARIADB_PORT, user="mx", password="mx pw", database="moon", autocommit=True)
    cd = d.cursor()
    statements = ["SET sql_mode = 'ANSI'", "SET NAMES latin1", "SET @x = 42", "SET SESSION wait_timeout = 12345",
                  "CALL moon.mx_set_zone()",  # a SET inside a procedure
                  "SET sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')"]  # a connector-style SET
    for stmt in statements:
        ca.execute(stmt)
        cd.execute(stmt)
        assert view(cb) == fresh, stmt
    for c in (a, d):
        ps = c.cursor(prepared=True)
        ps.execute("SET time_zone = '+07:00'")  # a SET sent as a prepared statement
        ps.close()
    assert view(cb) == fresh
    mine = view(ca)
    assert mine == view(cd) and mine[1] == "+07:00" and mine[7] == 42 and "STRICT_TRANS_TABLES" in mine[0]
    d.close()
    assert view(cb) == fresh and view(ca) == mine
    # LAST_INSERT_ID() is the session's own, wherever it runs
    ca.execute("INSERT INTO moon.mx_t (v) VALUES (1)")
    inserted = ca.lastrowid
    cb.execute("SELECT LAST_INSERT_ID()")
    assert cb.fetchone() == (0,)
    ca.execute("SELECT LAST_INSERT_ID()")
    assert ca.fetchone() == (inserted,)
    # a statement's warnings are for the next statement to read: B waits for A's SHOW WARNINGS
    ca.execute("SELECT CAST('x' AS SIGNED)")
    ca.fetchall()
    got = []
    t = threading.Thread(target=lambda: got.append(view(b.cursor())))
    t.start()
    time.sleep(0.5)
    assert not got
    ca.execute("SHOW WARNINGS")
    assert [row[1] for row in ca.fetchall()] == [1292]
    t.join(10)
    assert got == [fresh]
    # state that cannot move pins A: B's command waits until A lets go
    for pin, clear in [("SET autocommit = 0", "COMMIT"), ("LOCK TABLES moon.mx_t READ", "UNLOCK TABLES"),
                       ("BEGIN", "ROLLBACK")]:
        ca.execute(pin)
        if pin == "SET autocommit = 0":
            ca.execute("INSERT INTO moon.mx_t (v) VALUES (7)")
        got = []
        t = threading.Thread(target=lambda: got.append(view(b.cursor())))
        t.start()
        time.sleep(0.5)
        assert not got, pin  # waiting for the one connection
        ca.execute(clear)
        if pin == "SET autocommit = 0":
            ca.execute("SET autocommit = 1")
        t.join(10)
        assert got == [fresh], pin
    # pinned for the session: a temporary table, GET_LOCK, PREPARE, a binary prepared statement
    c = connect()
    cc = c.cursor()
    cc.execute("CREATE TEMPORARY TABLE mx_tmp (a INT)")
    got = []
    t = threading.Thread(target=lambda: got.append(view(b.cursor())))
    t.start()
    time.sleep(0.5)
    assert not got
    c.close()  # the session's end releases its connection (reset: the table is gone)
    t.join(10)
    assert got == [fresh]
    with pytest.raises(mysql.connector.errors.ProgrammingError):
        cb.execute("SELECT * FROM mx_tmp")
    for c in (a, b):
        c.close()


def connections(admin_port):
    result = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{admin_port}", "-uboss", "-ps3cret pass", "--batch", "--skip-ssl",
                             "-e", "SELECT * FROM connections"], capture_output=True, text=True, timeout=30)
    rows, header = table(result)
    return [dict(zip(header, row)) for row in rows]


def test_an_orm_opening_sequence_does_not_pin(start_proxy):
    admin_port = free_port()
    proxy = start(start_proxy, 2, *admin_args(admin_port))
    wait_for_port(admin_port)
    c = mariadb.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=False)
    cur = c.cursor()
    for stmt in ["SET NAMES utf8mb4", "SET sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')", "SET autocommit = 1",
                 "SELECT @@tx_isolation, @@version", "SET @x = 1"]:
        cur.execute(stmt)
        if cur.description:
            cur.fetchall()
    mine = [r for r in connections(admin_port) if r.get("user") == "mx"]
    assert mine and mine[0]["pinned"] == "none", mine
    cur.execute("CREATE TEMPORARY TABLE mx_t2 (a INT)")
    cur.execute("SELECT GET_LOCK('mx', 0)")
    cur.fetchall()
    assert wait_for(lambda: [r for r in connections(admin_port) if r.get("user") == "mx"][0]["pinned"]
                    == "temporary_table,get_lock")
    c.close()


def states_set(sessions):
    """Gives each session its own time_zone and @x; what each then reads back."""
    expected = []
    for i, c in enumerate(sessions):
        with c.cursor() as cur:
            cur.execute(f"SET time_zone = '+0{i + 1}:00'")
            cur.execute(f"SET @x = {i}")
            expected.append(view(cur))
    return expected


def test_parked_sessions_outlive_their_server_connection(start_proxy):
    """The server kills the login's only connection between commands: every session, the one that
    held it too, gets a new one at its next command, which the proxy logs in itself and brings to
    the session's state; a session pinned to its connection loses it, as a direct client would."""
    proxy = start(start_proxy, 1)
    sessions = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                for _ in range(3)]
    expected = states_set(sessions)
    # the last one holds the connection; the others gave it up
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'mx'")
        ids = [row[0] for row in cur.fetchall()]
        assert len(ids) == 1
        cur.execute(f"KILL {ids[0]}")
    time.sleep(0.3)
    for i, c in enumerate(sessions):
        with c.cursor() as cur:
            assert view(cur) == expected[i], i
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'mx'")
        assert cur.fetchone()[0] == 1
    # pinned (a temporary table): its session goes with its connection
    with sessions[0].cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE mx_tmp3 (a INT)")
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'mx'")
        cur.execute(f"KILL {cur.fetchone()[0]}")
    time.sleep(0.3)
    with pytest.raises(pymysql.err.OperationalError):
        with sessions[0].cursor() as cur:
            view(cur)
    for i, c in enumerate(sessions[1:], 1):
        with c.cursor() as cur:
            assert view(cur) == expected[i], i
        c.close()


def second_server(name):
    """Another MariaDB with the service account and user mx, to be the proxy's first backend."""
    from conftest import ExtraMariaDB
    second = ExtraMariaDB(name)
    second.sql("CREATE OR REPLACE USER 'moon_mx_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw';"
               "GRANT SELECT ON mysql.global_priv TO 'moon_mx_svc'@'127.0.0.1';"
               "CREATE OR REPLACE USER 'mx'@'%' IDENTIFIED BY 'mx pw'; CREATE DATABASE IF NOT EXISTS moon;"
               "GRANT ALL ON moon.* TO 'mx'@'%'")
    return second


def start_two(start_proxy, second, *extra):
    """Multiplexing over `second` (backend 1) and the usual server (backend 2), four connections each."""
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{second.port},127.0.0.1:{MARIADB_PORT}", "--proxy-auth=proxy",
                        "--proxy-pool-max=4", "--proxy-multiplex", f"--proxy-users-user={SERVICE[0]}", "--log-level=info",
                        *extra, backend=False, env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    return proxy


def test_sessions_move_off_a_backend_that_goes_away(start_proxy):
    """A second server stops: its sessions, between commands, carry on on the first one, each in
    its own state; no client sees an error."""
    second = second_server("mariadb-mx-second")
    try:
        proxy = start_two(start_proxy, second)
        sessions = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                    for _ in range(6)]
        expected, ports = [], []
        for i, c in enumerate(sessions):
            with c.cursor() as cur:
                cur.execute(f"SET time_zone = '+0{i + 1}:00'")
                cur.execute(f"SET @x = {i}, @y = 'moved {i}'")
                cur.execute("SET sql_mode = 'ANSI'" if i % 2 else "SET NAMES latin1")
                expected.append(view(cur))
                cur.execute("SELECT @@port")
                ports.append(cur.fetchone()[0])
        assert second.port in ports and MARIADB_PORT in ports, ports  # spread over both
        second.stop()
        for i, c in enumerate(sessions):
            with c.cursor() as cur:
                assert view(cur) == expected[i], i
                cur.execute("SELECT @@port")
                assert cur.fetchone()[0] == MARIADB_PORT
        assert "moves from backend 1 to backend 2" in proxy.log()
        for c in sessions:
            c.close()
    finally:
        second.stop()


def admin(admin_port, statement):
    return subprocess.run(["mariadb", "-h127.0.0.1", f"-P{admin_port}", "-uboss", "-ps3cret pass", "--batch", "--skip-ssl",
                           "-e", statement], capture_output=True, text=True, timeout=30)


def test_draining_a_backend_moves_its_sessions_between_commands(start_proxy):
    """DRAIN BACKEND: sessions move off between commands in their state; a session pinned past
    the deadline is closed with a named error; new logins avoid the backend."""
    second = second_server("mariadb-mx-drain")
    try:
        admin_port = free_port()
        proxy = start_two(start_proxy, second, *admin_args(admin_port))
        wait_for_port(admin_port)
        sessions = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                    for _ in range(8)]
        expected, ports = [], []
        for i, c in enumerate(sessions):
            with c.cursor() as cur:
                cur.execute(f"SET time_zone = '+0{i + 1}:00'")
                cur.execute(f"SET @x = {i}")
                expected.append(view(cur))
                cur.execute("SELECT @@port")
                ports.append(cur.fetchone()[0])
        on_second = [i for i, p in enumerate(ports) if p == second.port]
        assert on_second, ports
        pinned = on_second[0]
        with sessions[pinned].cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE mx_pin (a INT)")  # cannot move
        r = admin(admin_port, "DRAIN BACKEND 1 WITHIN 2")
        assert r.returncode == 0, r.stderr
        time.sleep(1.5)  # the pool's sweep asks the idle sessions to let go
        for i, c in enumerate(sessions):
            if i == pinned:
                continue
            with c.cursor() as cur:
                assert view(cur) == expected[i], i
                cur.execute("SELECT @@port")
                assert cur.fetchone()[0] == MARIADB_PORT, i
        # new logins avoid the draining backend
        fresh = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon")
        with fresh.cursor() as cur:
            cur.execute("SELECT @@port")
            assert cur.fetchone()[0] == MARIADB_PORT
        fresh.close()
        # the pinned one is closed at the deadline, with the error a killed connection gets
        time.sleep(2)
        with pytest.raises(pymysql.err.OperationalError) as closed:
            with sessions[pinned].cursor() as cur:
                cur.execute("SELECT 1")
        assert closed.value.args[0] in (1927, 2013), closed.value.args
        assert "could not move off it in time" in proxy.log()
        assert second.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'mx'") == "0"
        assert admin(admin_port, "UNDRAIN BACKEND 1").returncode == 0
        for i, c in enumerate(sessions):
            if i != pinned:
                c.close()
    finally:
        second.stop()


def test_a_command_that_waits_past_the_limit_gets_an_error(start_proxy):
    """Time passing: one connection, held by a session in a transaction; another session's command
    waits 10 s for it, then gets the proxy's error and its session ends; the holder is untouched."""
    proxy = start(start_proxy, 1)
    holder = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
    other = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
    with holder.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
    started = time.time()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        with other.cursor() as cur:
            cur.execute("SELECT 1")
    waited = time.time() - started
    assert 9 <= waited <= 15, waited
    assert refused.value.args[0] == 1105 and "came free within 10 s" in refused.value.args[1]
    with holder.cursor() as cur:
        cur.execute("COMMIT")
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()
    assert "no server connection of the login came free in time" in proxy.log()
    holder.close()


def test_compressed_server_links_are_not_multiplexed(start_proxy):
    """With compression towards the server the sessions keep a connection each (not multiplexed
    yet), and work as with the pool alone."""
    proxy = start(start_proxy, 1, "--proxy-backend-compression=zlib")
    sessions = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                for _ in range(3)]
    ids = set()
    for i, c in enumerate(sessions):
        with c.cursor() as cur:
            cur.execute(f"SET time_zone = '+0{i}:00'")
    for i, c in enumerate(sessions):
        with c.cursor() as cur:
            cur.execute("SELECT @@time_zone, CONNECTION_ID(), LENGTH(REPEAT('x', 3000))")
            zone, connection, length = cur.fetchone()
            assert (zone, length) == (f"+0{i}:00", 3000)
            ids.add(connection)
    assert len(ids) == 3
    for c in sessions:
        c.close()


def test_pins_and_hand_overs_are_in_the_metrics(start_proxy):
    """moonproxy_sessions_pinned counts the sessions held by each reason now; the pool's events
    count the hand-overs; Prometheus' own linter accepts the page."""
    metrics_port = free_port()
    proxy = start(start_proxy, 1, f"--metrics-address=127.0.0.1:{metrics_port}")
    a = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
    b = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
    for _ in range(3):
        for c in (a, b):
            with c.cursor() as cur:
                cur.execute("SELECT 1")
    with a.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE mx_metrics (a INT)")
        cur.execute("SELECT GET_LOCK('mx_metrics', 0)")
    text = scrape(metrics_port)
    promtool_check(text)
    s = samples(text)
    assert s['moonproxy_sessions_pinned{reason="temporary_table"}'] == 1
    assert s['moonproxy_sessions_pinned{reason="get_lock"}'] == 1
    backend = f"127.0.0.1:{MARIADB_PORT}"
    assert s[f'moonproxy_core_pool_events_total{{backend="{backend}",event="multiplex_park"}}'] >= 5
    # every waiting session was served when it asked or when a response ended, none by the sweep
    assert s.get(f'moonproxy_core_pool_events_total{{backend="{backend}",event="multiplex_swept"}}', 0) == 0
    a.close()
    assert wait_for(lambda: samples(scrape(metrics_port)).get('moonproxy_sessions_pinned{reason="temporary_table"}') == 0)
    b.close()


def sessions_on_backend_2(start_proxy, second, admin_port, n):
    """Multiplexing over `second` and the usual server, with `n` sessions all logged in to the
    usual one (backend 1 drains meanwhile, and still does: the caller undrains it)."""
    proxy = start_two(start_proxy, second, *admin_args(admin_port))
    wait_for_port(admin_port)
    assert admin(admin_port, "DRAIN BACKEND 1 WITHIN 60").returncode == 0
    return proxy, [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                   for _ in range(n)]


def test_sessions_spread_again_over_a_backend_that_comes_back(start_proxy):
    """UNDRAIN BACKEND: the sessions that all went to the other backend spread over both again
    (the pool's sweep moves idle ones, between commands, in their state), without an error."""
    second = second_server("mariadb-mx-rebalance")
    try:
        admin_port = free_port()
        proxy, sessions = sessions_on_backend_2(start_proxy, second, admin_port, 8)
        expected = states_set(sessions)
        for c in sessions:
            with c.cursor() as cur:
                cur.execute("SELECT @@port")
                assert cur.fetchone()[0] == MARIADB_PORT
        assert admin(admin_port, "UNDRAIN BACKEND 1").returncode == 0
        time.sleep(2.5)  # two sweeps
        ports = []
        for i, c in enumerate(sessions):
            with c.cursor() as cur:
                assert view(cur) == expected[i], i
                cur.execute("SELECT @@port")
                ports.append(cur.fetchone()[0])
        assert 3 <= ports.count(second.port) <= 5, ports
        assert "rebalances the login's sessions" in proxy.log()
        for c in sessions:
            c.close()
    finally:
        second.stop()


def test_a_drain_deadline_closes_sessions_that_cannot_move(start_proxy):
    """Without multiplexing nothing moves: a session still on the drained backend at the deadline
    gets the named error at its next command; a session on the other backend goes on."""
    second = second_server("mariadb-mx-drain-relay")
    try:
        admin_port = free_port()
        proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{second.port},127.0.0.1:{MARIADB_PORT}", "--log-level=info",
                            *admin_args(admin_port), backend=False)
        wait_for_port(admin_port)
        sessions = [pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
                    for _ in range(4)]
        ports = []
        for c in sessions:
            with c.cursor() as cur:
                cur.execute("SELECT @@port")
                ports.append(cur.fetchone()[0])
        assert second.port in ports and MARIADB_PORT in ports, ports
        assert admin(admin_port, "DRAIN BACKEND 1 WITHIN 1").returncode == 0
        time.sleep(3)
        for c, port in zip(sessions, ports):
            if port == second.port:
                with pytest.raises(pymysql.err.OperationalError) as closed:
                    with c.cursor() as cur:
                        cur.execute("SELECT 1")
                assert closed.value.args[0] in (1927, 2013), closed.value.args
            else:
                with c.cursor() as cur:
                    cur.execute("SELECT @@port")
                    assert cur.fetchone()[0] == MARIADB_PORT
                c.close()
        assert "could not move off it in time" in proxy.log()
    finally:
        second.stop()


def test_a_login_on_a_connection_another_session_gave_up_starts_fresh(start_proxy):
    """A new login takes the connection a session gave up, in that session's state: the reset
    clears it, and gives back the login's own database (COM_RESET_CONNECTION keeps the schema)."""
    proxy = start(start_proxy, 1)
    a = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
    with a.cursor() as cur:
        cur.execute("USE moon_mx2")
        cur.execute("SET @x = 5, sql_mode = 'ANSI'")
    b = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)
    with b.cursor() as cur:
        cur.execute("SELECT DATABASE(), @x, @@sql_mode = @@global.sql_mode")
        assert cur.fetchone() == ("moon", None, 1)
    with a.cursor() as cur:
        cur.execute("SELECT DATABASE(), @x, @@sql_mode")
        assert cur.fetchone() == ("moon_mx2", 5, "REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI")
    a.close()
    b.close()


def test_migrate_moves_one_session_and_it_stays(start_proxy):
    """MIGRATE CONNECTION id TO BACKEND n: the session's next command runs on backend n, in its
    state, and the pool's rebalancing leaves it there; a backend that takes no sessions, or an
    id that is no multiplexed session, is refused."""
    second = second_server("mariadb-mx-migrate")
    try:
        admin_port = free_port()
        proxy, sessions = sessions_on_backend_2(start_proxy, second, admin_port, 3)
        assert admin(admin_port, "UNDRAIN BACKEND 1").returncode == 0
        c = sessions[0]
        with c.cursor() as cur:
            cur.execute("SET time_zone = '+05:00'")
            cur.execute("SET @x = 'moving'")
            before = view(cur)
            cur.execute("SELECT @@port")
            assert cur.fetchone()[0] == MARIADB_PORT
        port = c._sock.getsockname()[1]
        row = [r for r in connections(admin_port) if r["client"].endswith(f":{port}")][0]
        r = admin(admin_port, f"MIGRATE CONNECTION {row['id']} TO BACKEND 1")
        assert r.returncode == 0, r.stderr
        for _ in range(3):
            with c.cursor() as cur:
                assert view(cur) == before
                cur.execute("SELECT @@port")
                assert cur.fetchone()[0] == second.port
            time.sleep(1.2)  # sweeps: the rebalancing would have moved one of the three by now
        assert "the admin interface migrates it" in proxy.log()
        refused = admin(admin_port, f"MIGRATE CONNECTION {row['id']} TO BACKEND 7")
        assert refused.returncode != 0 and "takes no sessions" in refused.stderr
        refused = admin(admin_port, "MIGRATE CONNECTION 999999 TO BACKEND 1")
        assert refused.returncode != 0 and "no multiplexed session" in refused.stderr
        for s in sessions:
            s.close()
    finally:
        second.stop()


def test_what_a_waiting_session_sends_waits_its_turn_in_order(start_proxy):
    """A session waiting for the one server connection (another holds it in a transaction) gets
    commands pipelined behind its first one and more sent while it waits: all are answered, in
    order, once the connection comes (the proxy stops reading such a client only when bytes come
    while it waits, and holds them)."""
    import struct
    from rawclient import RawClient
    proxy = start(start_proxy, 1)
    b = RawClient("127.0.0.1", proxy.port, user="mx", password="mx pw")
    assert [r[0] for r in b.query_rows("SELECT 'warm'")] == [b"warm"]
    a = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", autocommit=True)
    with a.cursor() as cur:
        cur.execute("BEGIN")  # a holds the one connection now
        cur.execute("SELECT 0")

    def query(sql):
        body = b"\x03" + sql.encode()
        return struct.pack("<I", len(body))[:3] + b"\x00" + body
    b.sock.sendall(query("SELECT 1") + query("SELECT 2"))
    time.sleep(0.4)
    b.sock.sendall(query("SELECT 3"))
    time.sleep(0.4)
    b.sock.sendall(query("SELECT 4") + query("SELECT 5"))
    time.sleep(0.2)
    with a.cursor() as cur:
        cur.execute("COMMIT")  # the connection goes to b
    values = []
    for _ in range(5):
        count = b.read_packet()
        assert count == b"\x01", count
        b.read_packet()  # the column
        assert b.read_packet()[0] == 0xFE  # EOF
        values.append(b.read_packet()[1:].decode())
        assert b.read_packet()[0] == 0xFE  # EOF
    assert values == ["1", "2", "3", "4", "5"]
    assert [r[0] for r in b.query_rows("SELECT 6")] == [b"6"]
    b.close()
    a.close()

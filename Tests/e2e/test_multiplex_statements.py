"""Binary prepared statements under --proxy-multiplex: a session's statements go with it to
whichever server connection serves its next command (prepared again there, in the same flush),
their ids keep working, and no session reaches another's. Real connectors drive the binary
protocol (mysql-connector-python's and MariaDB Connector/Python's prepared cursors); the raw
tests speak it byte by byte through PyMySQL's socket."""
import struct
import threading
import subprocess
import time

import mariadb
import mysql.connector
import pymysql
import pytest

from conftest import MARIADB_PORT, free_port, wait_for_port
from test_admin import admin_args
from test_health_checks import wait_for
from test_metrics import samples, scrape
from test_multiplex import accounts, admin, connections, root, second_server, start, start_two  # noqa: F401

USER = dict(user="mx", password="mx pw", database="moon", autocommit=True)


@pytest.fixture(scope="module", autouse=True)
def table(accounts):  # noqa: F811
    with root() as r, r.cursor() as cur:
        cur.execute("CREATE OR REPLACE TABLE moon.mx_ps (session INT, v INT)")
    yield


def test_prepared_statements_move_with_their_sessions(start_proxy):
    """Six sessions, two connectors, one server connection: every session keeps its statements
    (a SELECT with parameters, an INSERT) across hand-overs; none is pinned, or the others
    would wait for the one connection and fail."""
    metrics_port = free_port()
    proxy = start(start_proxy, 1, f"--metrics-address=127.0.0.1:{metrics_port}")
    sessions = []
    for i in range(6):
        if i % 2:
            # (without TLS, as MariaDB's connector: a login over TLS has server connections of its own)
            c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, ssl_disabled=True, **USER)
            sessions.append((c, c.cursor(prepared=True), c.cursor(prepared=True)))
        else:
            c = mariadb.connect(host="127.0.0.1", port=proxy.port, **USER)
            sessions.append((c, c.cursor(prepared=True), c.cursor(prepared=True)))
    for i, (c, _, _) in enumerate(sessions):
        c.cursor().execute(f"SET time_zone = '+0{i}:00'")
    ids = set()
    for rnd in range(4):
        for i, (c, select, insert) in enumerate(sessions):
            select.execute("SELECT ? + 1, ?, @@time_zone, CONNECTION_ID()", (i * 100 + rnd, f"s{i}"))
            row = select.fetchone()
            assert row[:3] == (i * 100 + rnd + 1, f"s{i}", f"+0{i}:00"), (i, rnd, row)
            ids.add(row[3])
            insert.execute("INSERT INTO moon.mx_ps (session, v) VALUES (?, ?)", (i, rnd))
    assert len(ids) <= 2, ids  # one server connection per connector (they log in with different capabilities)
    again = samples(scrape(metrics_port))["moonproxy_statements_prepared_again_total"]
    assert again >= 12, again  # the statements did move
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT session, COUNT(*), SUM(v) FROM moon.mx_ps GROUP BY session ORDER BY session")
        assert cur.fetchall() == tuple((i, 4, 6) for i in range(6))
    for c, select, insert in sessions:
        select.close()
        insert.close()
        c.close()


# -- the binary protocol by hand (PyMySQL logs in; the packets are ours) --

def raw(proxy):
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon", autocommit=True)


def command(c, payload):
    c._next_seq_id = 0
    c._write_bytes(struct.pack("<I", len(payload))[:3] + b"\0" + payload)
    c._next_seq_id = 1


def packet(c):
    p = c._read_packet()
    c._next_seq_id = (c._next_seq_id) % 256
    return p._data


def prepare(c, sql):
    command(c, b"\x16" + sql.encode())
    ok = packet(c)
    stmt, columns, params = struct.unpack("<IHH", ok[1:9])
    for n in (params, columns):
        if n:
            for _ in range(n + 1):
                packet(c)
    return stmt


def execute(c, stmt, *ints):
    """Executes `stmt` with BIGINT parameters (types sent); the rows' raw payloads, or the ERR's code."""
    payload = b"\x17" + struct.pack("<IBI", stmt, 0, 1)
    if ints:
        payload += bytes((len(ints) + 7) // 8) + b"\x01" + b"\x08\x00" * len(ints) + b"".join(struct.pack("<q", v) for v in ints)
    try:
        command(c, payload)
        first = packet(c)
    except pymysql.err.MySQLError as e:
        return e.args[0]
    if first[0] == 0:
        return []
    for _ in range(first[0]):
        packet(c)
    packet(c)  # EOF after the definitions
    rows = []
    while True:
        p = packet(c)
        if p[0] == 0xFE and len(p) < 9:
            return rows
        rows.append(p)


def test_a_session_cannot_reach_another_sessions_statements(start_proxy):
    """B shares A's server connection, where A's statements live: every id B never got is
    unknown to it, A's included; A's own ids keep working on whichever connection it gets."""
    proxy = start(start_proxy, 1)
    a, b = raw(proxy), raw(proxy)
    secret = prepare(a, "SELECT 'secret of A', ?")
    assert b"secret of A" in execute(a, secret, 7)[0]
    for stmt in list(range(0, 40)) + [secret, 0xFFFFFFFF, 0x40000000]:
        assert execute(b, stmt) == 1243, stmt  # ER_UNKNOWN_STMT_HANDLER
    mine = prepare(b, "SELECT 'of B'")
    for _ in range(3):
        assert b"of B" in execute(b, mine)[0]
        assert b"secret of A" in execute(a, secret, 8)[0]
    # closed is gone, for the session that closed it
    command(a, b"\x19" + struct.pack("<I", secret))
    assert execute(a, secret, 9) == 1243
    assert b"of B" in execute(b, mine)[0]
    a.close()
    b.close()


def test_ids_stay_the_sessions_when_the_servers_collide(start_proxy):
    """Two connections give out the same statement ids; a session that prepared on one and
    prepares again on the other gets two ids that never mix up."""
    proxy = start(start_proxy, 2)
    a, b = raw(proxy), raw(proxy)
    # A and B each hold a connection; A's first statement has the same server id as B's
    s1 = prepare(a, "SELECT 'one'")
    s2 = prepare(b, "SELECT 'two'")
    # A's next commands may land on B's connection (where id s1 is B's 'two') and back
    for _ in range(4):
        assert b"one" in execute(a, s1)[0]
        assert b"two" in execute(b, s2)[0]
    t = prepare(a, "SELECT 'three'")
    assert t != s1
    for _ in range(3):
        assert b"one" in execute(a, s1)[0] and b"three" in execute(a, t)[0] and b"two" in execute(b, s2)[0]
    a.close()
    b.close()


def test_prepared_statements_outlive_a_killed_connection(start_proxy):
    """The server connection dies between commands: the session's statements are prepared
    again on the next one, and a statement whose table went meanwhile fails as it would directly."""
    proxy = start(start_proxy, 1)
    c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, **USER)
    ps = c.cursor(prepared=True)
    ps.execute("SELECT ? * 2, CONNECTION_ID()", (21,))
    first = ps.fetchone()
    assert first[0] == 42
    with root() as r, r.cursor() as cur:
        cur.execute(f"KILL {first[1]}")
    time.sleep(0.3)
    ps.execute("SELECT ? * 2, CONNECTION_ID()", (50,))
    again = ps.fetchone()
    assert again[0] == 100 and again[1] != first[1]
    # a statement whose table goes while the session moves: the server's reason, as directly
    c.cursor().execute("CREATE OR REPLACE TABLE moon.mx_gone (a INT)")
    gone = c.cursor(prepared=True)
    gone.execute("SELECT COUNT(*) FROM moon.mx_gone WHERE a > ?", (0,))
    assert gone.fetchone() == (0,)
    with root() as r, r.cursor() as cur:
        cur.execute(f"KILL {again[1]}")
        cur.execute("DROP TABLE moon.mx_gone")
    time.sleep(0.3)
    with pytest.raises(mysql.connector.errors.ProgrammingError) as failed:
        gone.execute("SELECT COUNT(*) FROM moon.mx_gone WHERE a > ?", (0,))
    assert failed.value.errno == 1146 and "mx_gone" in failed.value.msg, failed.value
    ps.execute("SELECT ? * 2, CONNECTION_ID()", (7,))
    assert ps.fetchone()[0] == 14
    ps.close()
    c.close()


def test_draining_moves_prepared_statements(start_proxy):
    """DRAIN BACKEND with sessions holding prepared statements: they move between commands,
    their ids keep working on the other backend, no client sees an error."""
    second = second_server("mariadb-mx-ps-drain")
    try:
        admin_port = free_port()
        proxy = start_two(start_proxy, second, *admin_args(admin_port))
        wait_for_port(admin_port)
        sessions = []
        for i in range(8):
            connect = mysql.connector.connect if i % 2 else mariadb.connect
            c = connect(host="127.0.0.1", port=proxy.port, **USER)
            sessions.append((c, c.cursor(prepared=True)))
        ports = []
        for i, (c, ps) in enumerate(sessions):
            c.cursor().execute(f"SET @x = {i}")
            ps.execute("SELECT ?, @x, @@port", (i,))
            row = ps.fetchone()
            assert row[:2] == (i, i)
            ports.append(row[2])
        assert second.port in ports, ports
        assert admin(admin_port, "DRAIN BACKEND 1 WITHIN 5").returncode == 0
        time.sleep(1.5)
        for rnd in range(2):
            for i, (c, ps) in enumerate(sessions):
                ps.execute("SELECT ?, @x, @@port", (i + rnd,))
                assert ps.fetchone() == (i + rnd, i, MARIADB_PORT), i
        assert second.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'mx'") == "0"
        for c, ps in sessions:
            ps.close()
            c.close()
    finally:
        second.stop()


def test_what_cannot_move_pins(start_proxy):
    """A statement prepared in another schema than the session's current one, and an open
    cursor, pin the session until they clear (shown in the admin interface)."""
    admin_port = free_port()
    proxy = start(start_proxy, 2, *admin_args(admin_port))
    wait_for_port(admin_port)
    c = raw(proxy)

    def pinned():
        return [r for r in connections(admin_port) if r.get("user") == "mx"][0]["pinned"]

    s = prepare(c, "SELECT COUNT(*) FROM mx_ps")
    assert execute(c, s)
    assert wait_for(lambda: pinned() == "none")
    assert [r for r in connections(admin_port) if r.get("user") == "mx"][0]["statements"] == "1"  # held, not pinning
    c.select_db("moon_mx2")
    assert wait_for(lambda: pinned() == "prepared_statement")
    c.select_db("moon")
    assert wait_for(lambda: pinned() == "none")
    # a cursor: EXECUTE asking for one (flags 1), open until the statement is reset
    command(c, b"\x17" + struct.pack("<IBI", s, 1, 1))
    first = packet(c)
    for _ in range(first[0] + 1):
        packet(c)
    assert wait_for(lambda: pinned() == "cursor")
    command(c, b"\x1a" + struct.pack("<I", s))  # COM_STMT_RESET
    assert packet(c)[0] == 0
    assert wait_for(lambda: pinned() == "none")
    c.close()


def global_status(name):
    with root() as r, r.cursor() as cur:
        cur.execute(f"SHOW GLOBAL STATUS LIKE '{name}'")
        return int(cur.fetchone()[1])


def test_sessions_share_a_connections_statements(start_proxy):
    """Sessions in the same state hand one connection round without a reset, and find the
    statements they prepared (the same texts) on it: nothing is prepared again, and the server
    holds one statement per text however many sessions prepared it."""
    metrics_port = free_port()
    proxy = start(start_proxy, 1, f"--metrics-address=127.0.0.1:{metrics_port}")
    sessions = []
    for i in range(6):
        c = mariadb.connect(host="127.0.0.1", port=proxy.port, **USER)
        sessions.append((c, c.cursor(prepared=True)))
    prepares = global_status("Com_stmt_prepare")
    for rnd in range(5):
        for i, (c, ps) in enumerate(sessions):
            ps.execute("SELECT ? * 3, ?", (i + rnd, f"s{i}"))
            assert ps.fetchone() == ((i + rnd) * 3, f"s{i}")
    # each session's own prepare, nothing more (the proxy's trackers use text statements)
    assert global_status("Com_stmt_prepare") - prepares <= 6
    assert samples(scrape(metrics_port))["moonproxy_statements_prepared_again_total"] == 0
    assert global_status("Prepared_stmt_count") <= 2  # one per text on the login's connection (and slack)
    for c, ps in sessions:
        ps.close()
        c.close()


def test_draining_a_backend_with_a_hundred_sessions(start_proxy):
    """The issue's drain: a backend holds 100 sessions with every movable state item set (and
    prepared statements); DRAIN BACKEND moves them all between commands, every state query
    answers as before, statement ids keep working, no client sees an error; a streaming SELECT
    under way finishes on its original server."""
    second = second_server("mariadb-mx-drain-100")
    try:
        admin_port = free_port()
        proxy = start_two(start_proxy, second, *admin_args(admin_port))
        wait_for_port(admin_port)
        # every new login goes to backend 1 (the other one drains meanwhile)
        assert admin(admin_port, "DRAIN BACKEND 2 WITHIN 600").returncode == 0
        second.sql("CREATE DATABASE IF NOT EXISTS moon_mx2; GRANT ALL ON moon_mx2.* TO 'mx'@'%';"
                   "CREATE TABLE IF NOT EXISTS moon.mx_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        with root() as r, r.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS moon.mx_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        sessions, expected = [], []
        for i in range(100):
            c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, ssl_disabled=True, **USER)
            cur = c.cursor()
            for stmt in [f"SET sql_mode = '{['ANSI', 'TRADITIONAL', 'NO_ZERO_DATE'][i % 3]}'", f"SET time_zone = '+0{i % 10}:00'",
                         "SET NAMES latin1" if i % 2 else "SET NAMES utf8mb4 COLLATE utf8mb4_bin", f"SET @x = {i}, @y = 'it''s {i}'",
                         f"SET SESSION wait_timeout = {1000 + i}", "USE moon_mx2" if i % 4 == 0 else "DO 1",
                         "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED" if i % 5 == 0 else "DO 2",
                         f"INSERT INTO moon.mx_t (v) VALUES ({i})"]:
                cur.execute(stmt)
            ps = c.cursor(prepared=True)
            ps.execute("SELECT ? + 1, @@port", (i,))
            row = ps.fetchone()
            assert row[0] == i + 1 and row[1] == second.port
            cur.execute("SELECT @@sql_mode, @@time_zone, @@character_set_client, @@collation_connection, @@session.wait_timeout, "
                        "DATABASE(), @x, @y, @@tx_isolation, LAST_INSERT_ID()")
            expected.append(cur.fetchone())
            sessions.append((c, cur, ps))
        streamer = pymysql.connect(host="127.0.0.1", port=proxy.port, user="mx", password="mx pw", database="moon",
                                   autocommit=True, cursorclass=pymysql.cursors.SSCursor)
        rows = []

        def stream():
            with streamer.cursor() as cur:
                cur.execute("SELECT seq, @@port, SLEEP(0.01) FROM seq_1_to_300")
                rows.extend(cur.fetchall_unbuffered())

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(0.5)
        assert admin(admin_port, "UNDRAIN BACKEND 2").returncode == 0
        assert admin(admin_port, "DRAIN BACKEND 1 WITHIN 20").returncode == 0
        time.sleep(1.5)
        for i, (c, cur, ps) in enumerate(sessions):
            cur.execute("SELECT @@sql_mode, @@time_zone, @@character_set_client, @@collation_connection, @@session.wait_timeout, "
                        "DATABASE(), @x, @y, @@tx_isolation, LAST_INSERT_ID()")
            assert cur.fetchone() == expected[i], i
            ps.execute("SELECT ? + 1, @@port", (i + 1,))
            assert ps.fetchone() == (i + 2, MARIADB_PORT), i
        t.join(30)
        assert len(rows) == 300 and {r[1] for r in rows} == {second.port}  # finished where it began
        time.sleep(1.5)  # the next sweep asks it to let go
        with streamer.cursor() as cur:
            cur.execute("SELECT @@port")
            assert cur.fetchone()[0] == MARIADB_PORT  # and moved behind it
        assert second.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'mx'") == "0"
        streamer.close()
        for c, cur, ps in sessions:
            ps.close()
            c.close()
    finally:
        second.stop()

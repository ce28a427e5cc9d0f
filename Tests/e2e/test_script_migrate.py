"""A script's view of its session's state and its own migrations (--proxy-auth=proxy with
--proxy-multiplex): proxy.connection.session_state says what the server reported, and
proxy.connection:migrate(n) moves the session to backend n between commands with its state, which
the proxy restores on the new connection from its own model (the old server need not help). The
judges are MariaDB's: CONNECTION_ID(), the processlist (TCP or unix socket), the session's own
answers to its state queries, and the Connections counter."""
import os
import socket
import time
from pathlib import Path

import pymysql
import pytest

from conftest import MARIADB_PORT, MARIADB_SOCKET
from test_health_checks import wait_for
from test_proxy_auth import root, status

SERVICE = ("moon_mg_svc", "svc pw")
SCRIPT = Path(__file__).resolve().parent / "lua" / "migrate.lua"
LOGIN = dict(user="mg", password="mg pw", database="moon", autocommit=True)
TCP, UNIX = f"127.0.0.1:{MARIADB_PORT}", MARIADB_SOCKET


@pytest.fixture(scope="module", autouse=True)
def accounts():
    with root() as r, r.cursor() as cur:
        for stmt in [
            "CREATE OR REPLACE USER 'moon_mg_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'",
            "GRANT SELECT ON mysql.global_priv TO 'moon_mg_svc'@'127.0.0.1'",
            "CREATE DATABASE IF NOT EXISTS moon",
            "CREATE DATABASE IF NOT EXISTS moon_other",
            "CREATE OR REPLACE USER 'mg'@'%' IDENTIFIED BY 'mg pw'",
            "GRANT ALL ON moon.* TO 'mg'@'%'",
            "GRANT ALL ON moon_other.* TO 'mg'@'%'",
        ]:
            cur.execute(stmt)
    yield
    with root() as r, r.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'mg'@'%', 'moon_mg_svc'@'127.0.0.1'")


def start(start_proxy, *backends, extra=(), script=SCRIPT):
    args = ["--proxy-auth=proxy", "--proxy-multiplex", "--proxy-pool-max=32", f"--proxy-users-user={SERVICE[0]}", "--log-level=info"]
    args += [f"--proxy-lua-script={script}"] if script else []
    args += [f"--proxy-backend-addresses={b}" for b in backends]
    proxy = start_proxy(*args, *extra, backend=False, env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    return proxy


def rows(c, sql):
    with c.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def one(c, sql):
    return rows(c, sql)[0]


def sessions_on(proxy, backend, count):
    """`count` sessions moved to `backend`, session i with @i = i and its own time zone."""
    sessions = []
    for i in range(count):
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
        one(c, f"/*migrate {backend}*/ SELECT 1")
        rows(c, f"SET @i = {i}, time_zone = '+0{i % 10}:00'")
        sessions.append(c)
    return sessions


def state(c):
    """The script's row of proxy.connection.session_state, as a dict."""
    with c.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("/*state*/ SELECT 1")
        return cur.fetchone()


def link(c):
    """How the session's server connection reaches MariaDB: 'tcp' or 'unix'."""
    host = one(c, "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")[0]
    return "unix" if host == "localhost" else "tcp"


SET_EVERYTHING = [
    "SET NAMES latin1 COLLATE latin1_german1_ci",
    "SET time_zone = '+03:00', sql_mode = 'ANSI_QUOTES,NO_ZERO_DATE', autocommit = 0",
    "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET @x = 42, @s = 'it''s'",
    "USE moon_other",
    "CREATE OR REPLACE TABLE moon_other.ai (id INT AUTO_INCREMENT PRIMARY KEY)",
    "INSERT INTO moon_other.ai VALUES (NULL), (NULL), (NULL)",
    "COMMIT",
]
STATE_QUERY = ("SELECT @@character_set_client, @@collation_connection, @@time_zone, @@sql_mode, @@autocommit,"
               " @@tx_isolation, @x, @s, DATABASE(), LAST_INSERT_ID()")


def test_a_script_sees_what_the_server_reported(start_proxy):
    proxy = start(start_proxy, TCP)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    s = state(c)
    assert s["schema"] == "moon" and s["in_transaction"] == "false" and s["movable"] == "true", s
    rows(c, "SET time_zone = '+02:00', @x = 1")
    rows(c, "USE moon_other")
    s = state(c)
    assert s["schema"] == "moon_other" and "time_zone=+02:00" in s["variables"] and s["user_variables"] == "x=1", s
    # what cannot move shows as a pin, and clears with what set it where the proxy can tell
    rows(c, "BEGIN")
    assert state(c)["in_transaction"] == "true" and state(c)["pins"] == "transaction"
    rows(c, "ROLLBACK")
    assert state(c)["movable"] == "true"
    rows(c, "CREATE TEMPORARY TABLE moon_other.tmp (a INT)")
    assert state(c)["pins"] == "temporary_table" and state(c)["movable"] == "false"
    rows(c, "DROP TEMPORARY TABLE moon_other.tmp")
    assert state(c)["pins"] == "temporary_table"  # (until the session ends or resets: README)
    c.close()


def test_migrate_moves_a_session_with_all_its_state(start_proxy):
    """Every movable item set, then the session moves between two backends and back: each state
    query answers as before, on another server connection each time."""
    proxy = start(start_proxy, TCP, UNIX)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    one(c, "/*migrate 1*/ SELECT 1")  # (wherever it started)
    for stmt in SET_EVERYTHING:
        rows(c, stmt)
    before = one(c, STATE_QUERY)
    assert before[6:] == (42, "it's", "moon_other", 1), before  # (a multi-row INSERT: its first id)
    first = one(c, "SELECT CONNECTION_ID()")[0]
    assert link(c) == "tcp" and state(c)["movable"] == "true", state(c)
    last = first
    for target, expected in [(2, "unix"), (1, "tcp"), (2, "unix")]:
        moved = one(c, f"/*migrate {target}*/ SELECT CONNECTION_ID()")[0]
        assert moved != last, (target, moved)
        last = moved
        assert link(c) == expected
        assert one(c, STATE_QUERY) == before
        assert state(c)["backend"] == str(target)
    # the session's work goes on where it is now
    rows(c, "INSERT INTO moon_other.ai VALUES (NULL)")
    rows(c, "COMMIT")
    assert one(c, "SELECT COUNT(*), LAST_INSERT_ID() FROM moon_other.ai") == (4, 4)
    assert "the script moves the session from backend 1 to backend 2" in proxy.log()
    c.close()


def test_what_cannot_move_keeps_the_session_where_it_is(start_proxy):
    proxy = start(start_proxy, TCP, UNIX)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    one(c, "/*migrate 1*/ SELECT 1")
    here = one(c, "SELECT CONNECTION_ID()")[0]
    for setup, undo, pin in [
        ("BEGIN", "ROLLBACK", "transaction"),
        ("LOCK TABLES moon_other.ai READ", "UNLOCK TABLES", "lock_tables"),
        ("CREATE TEMPORARY TABLE tmp (a INT)", None, "temporary_table"),
        ("DO GET_LOCK('moon_mg', 1)", None, "get_lock"),
        ("PREPARE s FROM 'SELECT 1'", None, "prepare"),
    ]:
        if undo is None:  # pins the session for good: a session of its own
            c.close()
            c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
            one(c, "/*migrate 1*/ SELECT 1")
            here = one(c, "SELECT CONNECTION_ID()")[0]
        rows(c, setup)
        with pytest.raises(pymysql.err.OperationalError) as refused:
            one(c, "/*migrate 2*/ SELECT 1")
        assert pin in str(refused.value), (pin, refused.value)
        assert one(c, "SELECT CONNECTION_ID()")[0] == here  # the session and its connection carry on
        if undo:
            rows(c, undo)
            assert one(c, "/*migrate 2*/ SELECT CONNECTION_ID()")[0] != here
            one(c, "/*migrate 1*/ SELECT 1")
            here = one(c, "SELECT CONNECTION_ID()")[0]
    with pytest.raises(pymysql.err.OperationalError) as refused:
        one(c, "/*migrate 7*/ SELECT 1")
    assert "there are 2 backends" in str(refused.value)
    c.close()


def test_a_migration_logs_in_where_the_pool_has_nothing_and_many_sessions_move(start_proxy):
    """Twenty sessions, each with its own state, move to a backend where the pool holds nothing:
    the proxy logs connections in there with the credential each login proved (no error, the
    client waits a round trip); then they move back, taking what the pool kept."""
    proxy = start(start_proxy, TCP, UNIX)
    clients = sessions_on(proxy, 1, 20)
    for i, c in enumerate(clients):
        assert one(c, "/*migrate 2*/ SELECT @i, @@time_zone") == (i, f"+0{i % 10}:00")
        assert link(c) == "unix"
    logins = status("Connections")
    for i, c in enumerate(clients):
        assert one(c, "/*migrate 1*/ SELECT @i, @@time_zone") == (i, f"+0{i % 10}:00")
        assert link(c) == "tcp"
    # back where they came from: the connections they left there served them again
    assert status("Connections") - logins <= 2, status("Connections") - logins
    for c in clients:
        c.close()


def test_a_backend_that_cannot_be_reached_leaves_the_session_where_it_is(start_proxy):
    """migrate() to a backend nothing listens on: the connect fails, the backend is marked down,
    and the statement runs where the session is; the next migrate() there is refused at once."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]  # bound, never listening: connects are refused
    try:
        proxy = start(start_proxy, TCP, f"127.0.0.1:{port}")
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
        assert state(c)["backend"] == "1"  # (the other is refused: marked down, the client went on)
        rows(c, "SET @kept = 'yes'")
        here = one(c, "SELECT CONNECTION_ID()")[0]
        for _ in range(2):
            # refused at once once the proxy knows the backend is down; else tried, and the
            # statement runs where the session is
            try:
                assert one(c, "/*migrate 2*/ SELECT CONNECTION_ID(), @kept") == (here, "yes")
                assert wait_for(lambda: "no server connection to backend 2 could be made; the session stays on backend 1" in proxy.log())
            except pymysql.err.OperationalError as refused:
                assert "backend 2 is down" in str(refused)
        assert one(c, "SELECT CONNECTION_ID(), @kept") == (here, "yes")
        c.close()
    finally:
        dead.close()


def test_time_passing_past_the_pools_timers(start_proxy):
    """The connection a migration left goes idle in the pool past its idle timeout and is closed;
    a session idle past it too moves back all the same (a fresh login), and the server killing
    the session's connection between commands ends only that session's connection."""
    proxy = start(start_proxy, TCP, UNIX, extra=["--proxy-pool-idle-timeout=1"])
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    one(c, "/*migrate 1*/ SELECT 1")
    rows(c, "SET @t = 'kept', sql_mode = 'ANSI'")
    first = one(c, "SELECT CONNECTION_ID()")[0]
    assert one(c, "/*migrate 2*/ SELECT @t")[0] == "kept"
    time.sleep(2.5)  # past the pool's idle timeout: the connection left on backend 1 is closed
    assert wait_for(lambda: one(root(), f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {first}")[0] == 0)
    assert one(c, "/*migrate 1*/ SELECT @t, @@sql_mode") == ("kept", "REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI")
    # the server ends the session's connection: this client sees it, as it would directly
    here = one(c, "SELECT CONNECTION_ID()")[0]
    with root() as r, r.cursor() as cur:
        cur.execute(f"KILL {here}")
    with pytest.raises(pymysql.err.OperationalError):
        one(c, "SELECT 1")
    other = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    assert one(other, "SELECT 1") == (1,)
    other.close()


def test_mysql_proxys_rw_splitting_runs_as_before_with_the_sessions_followed(start_proxy):
    """backend_ndx keeps MySQL Proxy's meaning under --proxy-multiplex: rw-splitting.lua pools its
    connections by hand (backend_ndx = 0 after each statement), its sessions' OKs are still written
    for each client, and nothing of one client reaches the next."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    args = ["--proxy-auth=proxy", "--proxy-multiplex", "--proxy-pool-max=4", f"--proxy-users-user={SERVICE[0]}",
            f"--proxy-lua-script={examples / 'rw-splitting.lua'}", f"--proxy-backend-addresses={TCP}",
            f"--proxy-read-only-backend-addresses={UNIX}", "--log-level=info"]
    proxy = start_proxy(*args, backend=False, env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    with root() as r, r.cursor() as cur:
        cur.execute("CREATE OR REPLACE TABLE moon.mg_rw (id INT PRIMARY KEY, v INT)")
    for i in range(30):
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
        assert one(c, "SELECT @mine") == (None,)
        rows(c, f"REPLACE INTO mg_rw VALUES (1, {i})")
        assert one(c, "SELECT v FROM mg_rw WHERE id = 1") == (i,)
        one(c, "SELECT @mine := 1")
        c.close()
    assert "Traceback" not in proxy.log() and " error " not in proxy.log(), proxy.log()[-3000:]


def test_draining_a_backend_moves_a_scripts_sessions_between_commands(start_proxy):
    """DRAIN BACKEND with a script's sessions on it (the default timeouts: the sweep that moves
    them runs every second while a backend drains, whatever the timeouts' own tick): the idle
    unpinned ones move to the other backend in their state without an error; a pinned one gets
    1927 at the deadline; new logins avoid the drained backend."""
    from conftest import free_port, wait_for_port
    from test_admin import admin_args
    from test_multiplex import admin
    admin_port = free_port()
    proxy = start(start_proxy, TCP, UNIX, extra=admin_args(admin_port))
    wait_for_port(admin_port)
    sessions = sessions_on(proxy, 2, 6)
    pinned = sessions[0]
    rows(pinned, "CREATE TEMPORARY TABLE tmp (a INT)")
    r = admin(admin_port, "DRAIN BACKEND 2 WITHIN 4")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: proxy.log().count("its backend drains: the session moves from backend 2 to backend 1") == 5, timeout=8), proxy.log()[-2000:]
    for i, c in enumerate(sessions[1:], start=1):
        assert one(c, "SELECT @i, @@time_zone") == (i, f"+0{i}:00")
        assert link(c) == "tcp" and state(c)["backend"] == "1"
    fresh = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    assert link(fresh) == "tcp"
    fresh.close()
    time.sleep(4)  # past the deadline
    with pytest.raises(pymysql.err.OperationalError) as closed:
        one(pinned, "SELECT 1")
    assert closed.value.args[0] in (1927, 2013), closed.value.args
    assert admin(admin_port, "UNDRAIN BACKEND 2").returncode == 0
    for c in sessions[1:]:
        assert one(c, "SELECT 1") == (1,)
        c.close()


@pytest.mark.parametrize("script", [SCRIPT, None], ids=["script", "relay"])
def test_a_clients_own_trackers_see_what_they_would_see_directly(start_proxy, script):
    """The OKs a followed session's client gets (a script's, and a multiplexed relay's) are those
    MariaDB writes for the client's own trackers (with CLIENT_SESSION_TRACK and without; only the
    order of the items within one OK may differ), though the proxy turned every tracker on on its
    connection: also after the client narrowed its own, which no tracker reports."""
    import rawclient as rc
    proxy = start(start_proxy, TCP, script=script)
    statements = ["SET NAMES latin1", "USE moon_other", "SET time_zone = '+01:00'", "SET @x = 1", "SELECT @@time_zone, @x",
                  "SET SESSION session_track_system_variables = 'time_zone,sql_mode'", "SET sql_mode = 'ANSI', time_zone = '+02:00'",
                  "BEGIN", "SELECT 1", "COMMIT"]
    for track in (0, rc.CLIENT_SESSION_TRACK):
        caps = rc.DEFAULT_CAPS | rc.CLIENT_DEPRECATE_EOF | track
        seen = []
        for port in (MARIADB_PORT, proxy.port):
            c = rc.RawClient("127.0.0.1", port, user="mg", password="mg pw", database="moon", caps=caps)
            answers = []
            for sql in statements:
                c.command(0x03, sql.encode())
                answers.append(c.read_all(quiet=0.2))
            c.close()
            seen.append(answers)
        for sql, direct, proxied in zip(statements, *seen):
            assert [ok_items_sorted(p, track) for p in proxied] == [ok_items_sorted(p, track) for p in direct], (track, sql, direct, proxied)


def ok_items_sorted(packet, track):
    """An OK packet with its session-state items in a canonical order (the one thing that may
    differ from the server's own: README), anything else as it is."""
    import rawclient as rc
    if not track or not packet or packet[0] not in (0x00, 0xFE) or len(packet) < 7:
        return packet
    pos = 1
    for _ in range(2):  # affected rows, last insert id
        _, pos = rc.read_lenenc(packet, pos)
    status = int.from_bytes(packet[pos:pos + 2], "little")
    pos += 4  # status, warnings
    if pos >= len(packet) or not status & 0x4000:  # SERVER_SESSION_STATE_CHANGED
        return packet
    n, pos = rc.read_lenenc(packet, pos)  # info
    head = packet[:pos + n]
    total, pos = rc.read_lenenc(packet, pos + n)
    items, end = [], pos + total
    while pos < end:
        start = pos
        length, pos = rc.read_lenenc(packet, pos + 1)
        pos += length
        items.append(packet[start:pos])
    return head, sorted(items), packet[end:]


def test_a_script_passing_the_smallest_integer_costs_nothing(start_proxy, tmp_path):
    """backend_ndx and migrate() with math.mininteger (1 less than it does not fit): refused with
    a reason, the session goes on, and so does the proxy."""
    script = tmp_path / "edge.lua"
    script.write_text("""
function read_query(packet)
  if packet:sub(2) == "SELECT 'edge'" then
    proxy.connection.backend_ndx = math.mininteger
    local ok, why = proxy.connection:migrate(math.mininteger)
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = tostring(ok) .. ": " .. tostring(why) }
    return proxy.PROXY_SEND_RESULT
  end
end
""")
    proxy = start(start_proxy, TCP, UNIX, script=script)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        one(c, "SELECT 'edge'")
    assert "false: there are 2 backends" in str(refused.value)
    assert one(c, "SELECT 1") == (1,)
    other = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    assert one(other, "SELECT 2") == (2,)
    other.close()
    c.close()

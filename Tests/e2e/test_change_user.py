"""COM_CHANGE_USER under --proxy-auth=proxy: the proxy verifies it as it verifies a login (no
wrong password reaches the server), an accepted one makes the session a login of the new user
(with its own pooled server connections, and, multiplexed, not pinned), a refused one leaves the
session as MariaDB leaves it: the same user, its session reset. The server is the judge of
every state; each refusal is compared with what the server itself answers."""
import os
import subprocess

import mariadb
import mysql.connector
import pytest

from conftest import MARIADB_PORT, free_port, wait_for_port
from test_health_checks import wait_for
from test_metrics import samples, scrape
from test_multiplex import connections
from test_admin import admin_args
from test_proxy_auth import root, status

SERVICE = ("moon_cu_svc", "svc pw")


def counters():
    """Access_denied_errors and Connections, read on one connection (which counts in the latter)."""
    with root() as r, r.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Access_denied_errors', 'Connections')")
        values = dict(cur.fetchall())
        return int(values["Access_denied_errors"]), int(values["Connections"])


@pytest.fixture(scope="module", autouse=True)
def accounts():
    with root() as r, r.cursor() as cur:
        for stmt in [
            "CREATE OR REPLACE USER 'moon_cu_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'",
            "GRANT SELECT ON mysql.global_priv TO 'moon_cu_svc'@'127.0.0.1'",
            "CREATE DATABASE IF NOT EXISTS moon",
            "CREATE OR REPLACE USER 'cu_a'@'%' IDENTIFIED BY 'a pw'",
            "CREATE OR REPLACE USER 'cu_b'@'%' IDENTIFIED BY 'b pw'",
            "CREATE OR REPLACE USER 'cu_locked'@'%' IDENTIFIED BY 'pw' ACCOUNT LOCK",
            "CREATE OR REPLACE USER 'cu_ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed pw')",
            "GRANT ALL ON moon.* TO 'cu_a'@'%'",
            "GRANT ALL ON moon.* TO 'cu_b'@'%'",
            "GRANT ALL ON moon.* TO 'cu_ed'@'%'",
        ]:
            cur.execute(stmt)
    yield
    with root() as r, r.cursor() as cur:
        # (an ed25519 account changes which plugin MariaDB pretends an unknown user has, and so
        # the words of its refusals: test_proxy_auth compares them)
        cur.execute("DROP USER IF EXISTS 'cu_a'@'%', 'cu_b'@'%', 'cu_locked'@'%', 'cu_ed'@'%', 'moon_cu_svc'@'127.0.0.1'")


def start(start_proxy, *extra, pool=2):
    proxy = start_proxy("--proxy-auth=proxy", f"--proxy-pool-max={pool}", f"--proxy-users-user={SERVICE[0]}",
                        "--log-level=info", *extra, env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    return proxy


def connect(port, user="cu_a", password="a pw"):
    return mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=password, database="moon",
                                   autocommit=True, ssl_disabled=True)


def query(c, sql):
    cur = c.cursor()
    cur.execute(sql)
    rows = cur.fetchall() if cur.description else None
    cur.close()
    return rows


def refusal(port, user, password):
    """What a COM_CHANGE_USER to user/password gets, and what the session is afterwards."""
    c = connect(port)
    query(c, "SET @x = 5, time_zone = '+03:00'")
    query(c, "CREATE TEMPORARY TABLE cu_tmp (a INT)")
    with pytest.raises(mysql.connector.Error) as failure:
        c.cmd_change_user(username=user, password=password, database="moon")
    after = query(c, "SELECT CURRENT_USER(), @x, @@time_zone, DATABASE()")
    with pytest.raises(mysql.connector.Error) as missing:
        query(c, "SELECT * FROM cu_tmp")
    c.close()
    err = failure.value
    return (err.errno, err.sqlstate, err.msg), after, missing.value.errno


def test_the_proxy_verifies_change_user_and_refuses_as_the_server(start_proxy):
    proxy = start(start_proxy)
    cases = [("cu_b", "wrong"), ("cu_b", ""), ("nobody", "x"), ("cu_locked", "pw")]
    for user, password in cases:
        direct = refusal(MARIADB_PORT, user, password)
        denied, connections_before = counters()
        through = refusal(proxy.port, user, password)
        assert through == direct, (user, password)
        # refused by the proxy: the server saw no login (the client's own, from the pool, and
        # the reading of the counters)
        denied_after, connections_after = counters()
        assert denied_after == denied
        assert connections_after - connections_before <= 2
    assert "COM_CHANGE_USER to 'cu_b': login refused: wrong password" in proxy.log()


def test_an_accepted_change_user_is_a_login_of_the_new_user(start_proxy):
    proxy = start(start_proxy)
    a = connect(proxy.port)
    first = query(a, "SELECT CONNECTION_ID()")[0][0]
    query(a, "SET @x = 1")
    query(a, "CREATE TEMPORARY TABLE cu_tmp (a INT)")
    denied = status("Access_denied_errors")
    a.cmd_change_user(username="cu_b", password="b pw", database="moon")
    user, x, db, server_id = query(a, "SELECT CURRENT_USER(), @x, DATABASE(), CONNECTION_ID()")[0]
    assert (user, x, db) == ("cu_b@%", None, "moon")
    with pytest.raises(mysql.connector.Error):
        query(a, "SELECT * FROM cu_tmp")
    # and back again, to a database of its choice
    a.cmd_change_user(username="cu_a", password="a pw", database="")
    assert query(a, "SELECT CURRENT_USER(), DATABASE()")[0] == ("cu_a@%", None)
    a.close()
    assert status("Access_denied_errors") == denied
    # the connections went to the pool as their logins: the next client of each takes one
    b = connect(proxy.port, "cu_b", "b pw")
    assert query(b, "SELECT CONNECTION_ID(), @x, CURRENT_USER()")[0] == (server_id, None, "cu_b@%")
    c = connect(proxy.port)
    assert query(c, "SELECT CONNECTION_ID(), @x")[0][1] is None
    assert query(c, "SELECT CONNECTION_ID()")[0][0] == first
    b.close()
    c.close()


def test_an_account_the_proxy_cannot_log_in_with_is_left_to_the_server(start_proxy):
    proxy = start(start_proxy)
    c = mariadb.connect(host="127.0.0.1", port=proxy.port, user="cu_a", password="a pw", database="moon")
    cur = c.cursor()
    c.change_user("cu_ed", "ed pw", "moon")
    cur = c.cursor()
    cur.execute("SELECT CURRENT_USER()")
    assert cur.fetchone()[0] == "cu_ed@%"
    with pytest.raises(mariadb.Error):
        c.change_user("cu_ed", "wrong", "moon")
    cur = c.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    server_id = cur.fetchone()[0]
    c.close()
    # that connection goes to the pool logged in as cu_ed: it is logged in again as its login
    # (COM_CHANGE_USER of the proxy's) before the next session of that login takes it
    d = mariadb.connect(host="127.0.0.1", port=proxy.port, user="cu_a", password="a pw", database="moon")
    cur = d.cursor()
    cur.execute("SELECT CURRENT_USER(), CONNECTION_ID()")
    assert cur.fetchone() == ("cu_a@%", server_id)
    d.close()


def test_a_multiplexed_session_that_changed_user_is_not_pinned(start_proxy):
    admin_port, metrics_port = free_port(), free_port()
    proxy = start(start_proxy, "--proxy-multiplex", f"--metrics-address=127.0.0.1:{metrics_port}", *admin_args(admin_port), pool=1)
    wait_for_port(admin_port)
    a = connect(proxy.port)
    b = connect(proxy.port)
    query(a, "SET @x = 1")
    query(b, "SET @x = 2")
    a.cmd_change_user(username="cu_b", password="b pw", database="moon")
    b.cmd_change_user(username="cu_b", password="b pw", database="moon")
    # two sessions of cu_b over its one connection, each with its own state
    for round in range(3):
        for i, c in enumerate((a, b)):
            query(c, f"SET @y = {10 * round + i}")
        for i, c in enumerate((a, b)):
            assert query(c, "SELECT @y, @x, CURRENT_USER()")[0] == (10 * round + i, None, "cu_b@%")
    mine = [r for r in connections(admin_port) if r.get("user") == "cu_b"]
    assert len(mine) == 2 and all(r["pinned"] == "none" for r in mine), mine
    s = samples(scrape(metrics_port))
    assert s.get('moonproxy_sessions_pinned{reason="change_user"}', 0) == 0
    assert s['moonproxy_logins_total{plugin="mysql_native_password",result="verified"}'] >= 4
    with root() as r, r.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'cu_b'")
        assert cur.fetchone()[0] == 1
    # a refusal resets the session as on the server, and the session can leave its connection
    query(a, "SET @z = 3")
    denied = status("Access_denied_errors")
    with pytest.raises(mysql.connector.Error):
        a.cmd_change_user(username="cu_b", password="wrong", database="moon")
    assert status("Access_denied_errors") == denied
    assert query(a, "SELECT @z, @y, CURRENT_USER()")[0] == (None, None, "cu_b@%")
    assert query(b, "SELECT @y")[0][0] == 21
    # the same while the session has no server connection (b took it): the one it left still
    # holds @w, the session does not
    query(a, "SET @w = 4")
    query(b, "SELECT 1")
    with pytest.raises(mysql.connector.Error):
        a.cmd_change_user(username="cu_b", password="wrong", database="moon")
    assert query(a, "SELECT @w, CURRENT_USER()")[0] == (None, "cu_b@%")
    assert status("Access_denied_errors") == denied
    a.close()
    b.close()


def test_php_mysqlnd_changes_user_through_the_proxy(start_proxy):
    """PHP's mysqli::change_user (mysqlnd writes its own COM_CHANGE_USER)."""
    proxy = start(start_proxy)
    php = ("mysqli_report(MYSQLI_REPORT_OFF); $m = new mysqli('127.0.0.1', 'cu_a', 'a pw', 'moon', (int)$argv[1]);"
           "$m->query('SET @x = 1');"
           "echo $m->change_user('cu_b', $argv[2], 'moon') ? 'ok' : 'refused ' . $m->errno . ' ' . $m->sqlstate, \"\\n\";"
           "$r = $m->query('SELECT CURRENT_USER(), IFNULL(@x, \"null\")'); echo implode(' ', $r->fetch_row()), \"\\n\";")
    denied = status("Access_denied_errors")
    for password, expected in [("b pw", ["ok", "cu_b@% null"]), ("wrong", ["refused 1045 28000", "cu_a@% null"])]:
        out = subprocess.run(["php", "-r", php, "--", str(proxy.port), password], capture_output=True, text=True, timeout=30)
        assert out.stdout.split("\n")[:2] == expected, out
    assert status("Access_denied_errors") == denied

"""Every script under examples/ run through real clients against the real MariaDB (or, for the
mock server, no database at all)."""
import os
import re
import time
from pathlib import Path

import pymysql
import pytest

from conftest import MARIADB_PORT, MARIADB_SOCKET, WORKDIR, mariadb_cli
from test_scripting import rows, wait_for_log

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name):
    return f"--proxy-lua-script={EXAMPLES / name}"


def test_every_example_has_a_header_and_a_test():
    tested = set(re.findall(r'"([\w.-]+\.lua)"', Path(__file__).read_text()))
    for path in EXAMPLES.glob("*.lua"):
        head = path.read_text().split("\n", 1)[0]
        assert head.startswith(f"--[[ {path.name}:"), f"{path.name} lacks its header comment"
        assert "Run:" in path.read_text(), f"{path.name} does not say how to run it"
        assert path.name in tested, f"{path.name} has no test"


def test_query_log(start_proxy):
    log = WORKDIR / f"moon-querylog-{time.time_ns()}.log"
    proxy = start_proxy(example("query-log.lua"), env=dict(os.environ, MOON_QUERY_LOG=str(log)))
    c = proxy.connect(database="moon")
    assert rows(c, "SELECT 40 + 2") == ((42,),)
    with pytest.raises(pymysql.err.ProgrammingError):
        rows(c, "SELECT * FROM no_such_table")
    c.close()
    lines = log.read_text().splitlines()
    assert re.search(r"root@127\.0\.0\.1 \[moon\] \d+\.\d{3} ms OK \[COM_QUERY\] SELECT 40 \+ 2$", lines[-2]), lines
    assert re.search(r" ms ERR \[COM_QUERY\] SELECT \* FROM no_such_table$", lines[-1]), lines


def test_rewrite(start_proxy):
    d = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", password="", database="moon", autocommit=True)
    with d.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS moon.users (id INT PRIMARY KEY, name VARCHAR(20))")
        cur.execute("REPLACE INTO moon.users VALUES (1, 'ada'), (2, 'o''brien')")
        cur.execute("CREATE OR REPLACE TABLE moon.events (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO moon.events SELECT seq FROM seq_1_to_1500")
    d.close()
    proxy = start_proxy(example("rewrite.lua"))
    c = proxy.connect(database="moon")
    assert rows(c, "SELECT name FROM legacy_users WHERE id = 1") == (("ada",),)
    assert rows(c, "SELECT id FROM moon.legacy_users WHERE name = 'o''brien'") == ((2,),)
    assert rows(c, "SELECT name FROM users WHERE name = 'legacy_users'") == ()   # strings are not names
    assert len(rows(c, "SELECT * FROM events")) == 1000
    assert len(rows(c, "SELECT * FROM events LIMIT 1200")) == 1200
    c.close()
    assert "(rewrite) SELECT name FROM legacy_users WHERE id = 1  =>  SELECT name FROM users WHERE id = 1" in proxy.log()


def test_inject_hidden(start_proxy):
    proxy = start_proxy(example("inject-hidden.lua"))
    c = proxy.connect()
    own = rows(c, "SELECT CONNECTION_ID()")[0][0]
    assert rows(c, "SELECT 'only mine'") == (("only mine",),)     # one result: the injected one is hidden
    c.close()
    wait_for_log(proxy, rf"\(inject\) server connection {own} at \d{{4}}-\d\d-\d\d ")


def test_querycounter(start_proxy):
    proxy = start_proxy(example("querycounter.lua"))
    a, b = proxy.connect(), proxy.connect()
    before = rows(a, "SHOW querycounter")[0][0]    # PyMySQL's own queries at connect count too
    for conn in (a, b, a):
        rows(conn, "SELECT 1")
    assert rows(b, "SHOW querycounter") == ((before + 3,),)
    r = mariadb_cli(proxy.port, "SHOW querycounter;")
    assert r.stdout == f"query_count\n{before + 3}\n"
    a.close()
    b.close()


def test_firewall(start_proxy):
    proxy = start_proxy(example("firewall.lua"))
    c = proxy.connect(database="moon", autocommit=True)
    with c.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS fw (id INT PRIMARY KEY, note VARCHAR(20))")
        cur.execute("REPLACE INTO fw VALUES (1, 'where'), (2, 'b')")
        for sql, why in [("DELETE FROM fw", "DELETE without WHERE"),
                         ("UPDATE fw SET note = 'where'", "UPDATE without WHERE"),
                         ("/* WHERE */ DELETE FROM fw -- where", "DELETE without WHERE"),
                         ("DROP TABLE fw", "DROP is not allowed"),
                         ("truncate fw", "TRUNCATE is not allowed")]:
            with pytest.raises(pymysql.err.OperationalError) as e:
                cur.execute(sql)
            assert e.value.args == (1142, f"statement refused by the proxy firewall: {why}")
        assert cur.execute("DELETE FROM fw WHERE id = 2") == 1
        cur.execute("SELECT COUNT(*) FROM fw")
        assert cur.fetchall() == ((1,),)
    c.close()
    r = mariadb_cli(proxy.port, "DROP TABLE moon.fw", check=False)
    assert "ERROR 1142 (42000)" in r.stderr
    assert "(firewall) refused for root@127.0.0.1: DROP is not allowed" in proxy.log()


def split_proxy(start_proxy, name):
    # The read-only backend is the same MariaDB through its unix socket, so USER() tells the
    # two apart: 'nat'@'localhost' there, 'nat'@'127.0.0.1' over TCP.
    return start_proxy(example(name), f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}",
                       f"--proxy-read-only-backend-addresses={MARIADB_SOCKET}", backend=False)


def test_rw_splitting(start_proxy):
    proxy = split_proxy(start_proxy, "rw-splitting.lua")
    a = proxy.connect(user="nat", password="natpass", database="moon", autocommit=True)
    b = proxy.connect(user="nat", password="natpass", database="moon", autocommit=True)
    # a logged in on the read-write backend, b on the read-only one; both connections are pooled
    assert rows(a, "SELECT USER()") == (("nat@localhost",),)     # a read: the read-only backend
    with a.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rw (id INT PRIMARY KEY, who VARCHAR(40))")
        cur.execute("REPLACE INTO rw VALUES (1, USER())")          # a write: the read-write backend
        cur.execute("BEGIN")
        cur.execute("SELECT USER()")                                # in a transaction: stays on rw
        assert cur.fetchall() == (("nat@127.0.0.1",),)
        cur.execute("COMMIT")
    assert rows(b, "SELECT who FROM rw WHERE id = 1") == (("nat@127.0.0.1",),)
    assert rows(b, "SELECT USER()") == (("nat@localhost",),)
    # many clients, two server connections
    clients = [proxy.connect(user="nat", password="natpass", autocommit=True) for _ in range(6)]
    ids = {rows(x, "SELECT CONNECTION_ID()")[0][0] for x in clients + [a, b]}
    assert len(ids) <= 8
    for x in clients + [a, b]:
        x.close()


def test_rw_splitting_after_time_passes_with_connections_listed(start_proxy):
    """The script moves server connections through the pool on every statement. Past the
    sweeper's first ticks (the login is over for it then) and with the admin interface listing
    each connection, a move used to reach the connection's state while it changed: the proxy
    aborted on an exclusivity violation (672b912). Here time passes between statements, past
    every timer that ticks while a client is idle, and the session carries on."""
    from conftest import free_port, wait_for_port
    admin_port = free_port()
    proxy = start_proxy(example("rw-splitting.lua"), f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}",
                        f"--proxy-read-only-backend-addresses={MARIADB_SOCKET}", "--plugins=proxy,admin",
                        f"--admin-address=127.0.0.1:{admin_port}", "--admin-username=boss", "--admin-password=pw",
                        "--proxy-backend-greeting-timeout=1", "--proxy-login-timeout=2", backend=False)
    wait_for_port(admin_port)
    a = proxy.connect(user="nat", password="natpass", autocommit=True)
    b = proxy.connect(user="nat", password="natpass", autocommit=True)
    for _ in range(2):
        time.sleep(2.5)  # past the login and greeting timeouts, several sweeper ticks
        for c in (a, b):
            assert rows(c, "SELECT 1") == ((1,),)
            with c.cursor() as cur:
                cur.execute("DO 1")
        listed = mariadb_cli(admin_port, "SELECT * FROM connections", user="boss", password="pw").stdout
        assert listed.count("logged in") >= 2, listed
    assert proxy.proc.poll() is None
    a.close()
    b.close()


def test_route_by_hint(start_proxy):
    proxy = split_proxy(start_proxy, "route-by-hint.lua")
    a = proxy.connect(user="nat", password="natpass", autocommit=True)
    b = proxy.connect(user="nat", password="natpass", autocommit=True)
    assert rows(a, "SELECT /* @route replica */ USER()") == (("nat@localhost",),)
    assert rows(a, "SELECT /* @route primary */ USER()") == (("nat@127.0.0.1",),)
    assert rows(a, "SELECT USER()") == (("nat@127.0.0.1",),)
    assert rows(b, "SELECT /* @route replica @trace_id abc-123 */ USER()") == (("nat@localhost",),)
    with pytest.raises(pymysql.err.OperationalError) as e:
        rows(b, "SELECT /* @route nowhere */ 1")
    assert e.value.args[0] == 1105 and "unknown route 'nowhere'" in e.value.args[1]
    wait_for_log(proxy, r"\(trace abc-123\) SELECT /\* @route replica @trace_id abc-123 \*/ USER\(\)")
    a.close()
    b.close()


def test_audit(start_proxy):
    audit = WORKDIR / f"moon-audit-{time.time_ns()}.log"
    proxy = start_proxy(example("audit.lua"), env=dict(os.environ, MOON_AUDIT_FILE=str(audit)))
    c = proxy.connect(user="nat", password="natpass", database="moon", autocommit=True)
    with c.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS audited (id INT PRIMARY KEY)")
        cur.execute("DELETE FROM audited")
        cur.execute("INSERT INTO audited VALUES (1), (2)")
        cur.execute("SELECT * FROM audited")                 # not audited
        with pytest.raises(pymysql.err.IntegrityError):
            cur.execute("INSERT INTO audited VALUES (1)")
    c.close()
    with pytest.raises(pymysql.err.OperationalError):
        proxy.connect(user="nat", password="wrong")
    deadline = time.time() + 5
    while time.time() < deadline and "refused" not in audit.read_text():
        time.sleep(0.05)
    lines = [line.split("\t") for line in audit.read_text().splitlines()]
    events = [(l[1], l[3], l[4]) for l in lines]
    assert events[0] == ("nat@127.0.0.1", "LOGIN", "ok")
    assert ("nat@127.0.0.1", "OK 2", "INSERT INTO audited VALUES (1), (2)") in events
    assert ("nat@127.0.0.1", "ERR 1062", "INSERT INTO audited VALUES (1)") in events
    assert not any("SELECT" in e[2] for e in events)
    assert ("nat@127.0.0.1", "DISCONNECT", "") in events
    assert any(e[1] == "LOGIN" and e[2].startswith("refused 1045") for e in events)
    assert all(l[2] == "moon" for l in lines[:-1] if l[3] != "LOGIN" or l[4] == "ok")


def test_mock_server(start_proxy):
    proxy = start_proxy(example("mock-server.lua"), backend=False)
    r = mariadb_cli(proxy.port, "SELECT * FROM customers; SHOW TABLES", user="app", password="app-secret")
    assert r.stdout == ("id\tname\tcountry\n1\tAda Lovelace\tUK\n2\tGrace Hopper\tUS\n3\tKatherine Johnson\tNULL\n"
                        "Tables_in_mock\ncustomers\norders\n")
    c = proxy.connect(user="app", password="app-secret")
    assert rows(c, "SELECT * FROM orders") == ((10, 1, 99.5), (11, 2, 12.25), (12, 2, 7.0))
    with c.cursor() as cur:
        assert cur.execute("UPDATE orders SET total = 0") == 1
        with pytest.raises(pymysql.err.ProgrammingError) as e:
            cur.execute("SELECT * FROM nothing")
        assert e.value.args[0] == 1146
    c.close()
    for user, password in [("app", "wrong"), ("root", "")]:
        with pytest.raises(pymysql.err.OperationalError) as e:
            proxy.connect(user=user, password=password)
        assert e.value.args[0] == 1045

"""Scripts and the core pool under --proxy-auth=proxy: a script's session gives the server
connection the proxy logged in back to the core pool when its client quits; a login takes a
connection of its own login that a script pooled (backend_ndx = 0, MySQL Proxy's rw-splitting);
a script whose pool is empty for a backend takes a ready connection of its login from the core
pool. Either way no login reaches the server (its Connections counter is the judge) and nothing
of one client session reaches the next."""
import os
import time
from pathlib import Path

import pymysql
import pytest

from conftest import MARIADB_PORT, MARIADB_SOCKET, WORKDIR
from test_health_checks import wait_for
from test_proxy_auth import root, status

SERVICE = ("moon_sp_svc", "svc pw")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOGIN = dict(user="sp", password="sp pw", autocommit=True)


@pytest.fixture(scope="module", autouse=True)
def accounts():
    with root() as r, r.cursor() as cur:
        for stmt in [
            "CREATE OR REPLACE USER 'moon_sp_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'",
            "GRANT SELECT ON mysql.global_priv TO 'moon_sp_svc'@'127.0.0.1'",
            "CREATE DATABASE IF NOT EXISTS moon",
            "CREATE OR REPLACE USER 'sp'@'%' IDENTIFIED BY 'sp pw'",
            "GRANT ALL ON moon.* TO 'sp'@'%'",
        ]:
            cur.execute(stmt)
    yield
    with root() as r, r.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'sp'@'%', 'moon_sp_svc'@'127.0.0.1'")


def start(start_proxy, script, *extra, pool=2, backend=True):
    proxy = start_proxy("--proxy-auth=proxy", f"--proxy-pool-max={pool}", f"--proxy-users-user={SERVICE[0]}",
                        f"--proxy-lua-script={script}", "--log-level=info", *extra, backend=backend,
                        env=dict(os.environ, MOONPROXY_USERS_PASSWORD=SERVICE[1]))
    assert wait_for(lambda: "accounts from backend" in proxy.log()), proxy.log()
    return proxy


def one(c, sql):
    with c.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_a_scripts_sessions_share_the_connection_the_proxy_logged_in(start_proxy):
    """querycounter.lua (read_query, read_query_result: every command goes through the script):
    client after client, quitting with COM_QUIT or just closing, one server connection."""
    proxy = start(start_proxy, EXAMPLES / "querycounter.lua", pool=1)
    before = status("Connections")
    ids = set()
    for i in range(120):
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
        assert one(c, "SELECT @left") is None  # nothing of the client before
        ids.add(one(c, "SELECT CONNECTION_ID()"))
        one(c, "SELECT @left := 'client %d'" % i)
        if i % 3 == 0:
            c._force_close()  # gone between commands, without COM_QUIT
            time.sleep(0.01)
        else:
            c.close()
    grown = status("Connections") - before
    assert grown <= 1 + 1 + 1, grown  # the pool's one, the status query, a refresh at most
    assert len(ids) == 1, ids


def test_rw_splitting_logins_take_the_connections_its_pool_keeps(start_proxy):
    """MySQL Proxy's pooling script (backend_ndx = 0 after the login and each statement): a login
    takes a connection of its login from the script's pool instead of logging in on the server."""
    proxy = start(start_proxy, EXAMPLES / "rw-splitting.lua", f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}",
                  f"--proxy-read-only-backend-addresses={MARIADB_SOCKET}", backend=False)
    with root() as r, r.cursor() as cur:
        cur.execute("CREATE OR REPLACE TABLE moon.sp_rw (id INT PRIMARY KEY, v INT)")
    before = status("Connections")
    for i in range(100):
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, database="moon", **LOGIN)
        assert one(c, "SELECT @mine") is None
        with c.cursor() as cur:
            cur.execute("REPLACE INTO sp_rw VALUES (1, %s)", (i,))
        assert one(c, "SELECT v FROM sp_rw WHERE id = 1") == i
        one(c, "SELECT @mine := 1")
        c.close()
    grown = status("Connections") - before
    # a few per backend while clients overlap the pool's hand-overs; before, one per login
    assert grown <= 8, grown


def test_a_script_whose_pool_is_empty_takes_from_the_core_pool(start_proxy, tmp_path):
    script = tmp_path / "park.lua"
    script.write_text("""
function read_query(packet)
  if packet:sub(2) == "SELECT 'park'" then
    proxy.connection.backend_ndx = 0    -- the server connection goes to the script's pool
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return proxy.PROXY_SEND_RESULT
  end
  if proxy.connection.backend_ndx == 0 then proxy.connection.backend_ndx = 1 end
end
""")
    proxy = start(start_proxy, script, pool=1)
    before = status("Connections")
    s1 = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    first = one(s1, "SELECT CONNECTION_ID()")
    with s1.cursor() as cur:
        cur.execute("SELECT 'park'")  # s1 holds no server connection now
    # s2's login finds the core pool empty and takes s1's connection from the script's pool
    s2 = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
    assert one(s2, "SELECT CONNECTION_ID()") == first
    one(s2, "SELECT @s2 := 2")
    s2.close()  # the connection goes to the core pool, reset
    time.sleep(0.3)
    # s1's script finds its pool empty for backend 1: the core pool's connection serves it
    assert one(s1, "SELECT CONNECTION_ID()") == first
    assert one(s1, "SELECT @s2") is None
    s1.close()
    assert status("Connections") - before <= 1 + 1 + 1


def test_pools_of_both_kinds_across_pauses_past_their_timers(start_proxy):
    """Time passing: rw-splitting's sessions and fresh logins, pausing past the core pool's idle
    timeout and a pooled connection's lifetime, with the server killing the idle connections of
    both pools in one pause: every statement is answered, and the proxy lives on."""
    from test_time_passing import TIMERS, PAUSE
    proxy = start(start_proxy, EXAMPLES / "rw-splitting.lua", *TIMERS, "--proxy-pool-idle-timeout=1",
                  "--proxy-pool-max-lifetime=2", f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}",
                  f"--proxy-read-only-backend-addresses={MARIADB_SOCKET}", backend=False)
    clients = [pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN) for _ in range(3)]
    for round in range(4):
        # a fresh login first: after the kill it is what fills the script's pool again (a script's
        # backend_ndx takes idle connections only, as MySQL Proxy's does)
        fresh = pymysql.connect(host="127.0.0.1", port=proxy.port, **LOGIN)
        assert one(fresh, "SELECT @none") is None
        fresh.close()
        for i, c in enumerate(clients):
            assert one(c, f"SELECT {round * 10 + i}") == round * 10 + i
        if round == 1:
            with root() as r, r.cursor() as cur:
                cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'sp' AND COMMAND = 'Sleep'")
                for (victim,) in cur.fetchall():
                    cur.execute(f"KILL {victim}")
        time.sleep(PAUSE)
    assert proxy.proc.poll() is None, proxy.log()
    for c in clients:
        c.close()

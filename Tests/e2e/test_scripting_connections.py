"""Scripts and the connection itself, through real clients: the handshake hooks, backend choice,
the connection pool with read/write splitting, mock-server mode and chained proxies."""

import pymysql
import pytest

from conftest import MARIADB_PORT, free_port, mariadb_cli
from test_scripting import LUA, rows, script, wait_for_log
from test_scripting_injection import INJECT


# ---------------------------------------------------------------------------------------------
# the handshake hooks


def test_read_handshake_and_read_auth_can_refuse(start_proxy):
    p = script("""
        function read_handshake()
          if proxy.global.refuse_all then
            proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "closed for maintenance", errcode = 1040, sqlstate = "08004" }
            return proxy.PROXY_SEND_RESULT
          end
        end
        function read_auth()
          if proxy.connection.client.username == "nat" then
            proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "nat may not use this proxy", errcode = 1045, sqlstate = "28000" }
            return proxy.PROXY_SEND_RESULT
          end
        end
        function read_query(packet)
          if packet:sub(2) == "SET refuse_all" then
            proxy.global.refuse_all = true
            proxy.response = { type = proxy.MYSQLD_PACKET_OK }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect(user="nat", password="natpass")
    assert e.value.args == (1045, "nat may not use this proxy")
    c = proxy.connect()
    rows(c, "SET refuse_all")
    with pytest.raises(pymysql.err.MySQLError) as e:
        proxy.connect()
    assert e.value.args[0] == 1040 and "maintenance" in e.value.args[1]
    c.close()


def test_read_auth_result_can_replace_the_verdict(start_proxy):
    p = script("""
        function read_auth_result(auth)
          if auth.packet:byte() == proxy.MYSQLD_PACKET_ERR then
            proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "wrong password, says the proxy", errcode = 1045, sqlstate = "28000" }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect(user="nat", password="wrong")
    assert e.value.args == (1045, "wrong password, says the proxy")
    proxy.connect(user="nat", password="natpass").close()


def test_connect_server_picks_a_backend(start_proxy):
    dead = free_port()
    p = script("""
        function connect_server()
          proxy.connection.backend_ndx = proxy.global.choice or 2
        end
        function read_query(packet)
          local n = packet:sub(2):match("^USE BACKEND (%d)")
          if n then
            proxy.global.choice = tonumber(n)
            proxy.response = { type = proxy.MYSQLD_PACKET_OK }
            return proxy.PROXY_SEND_RESULT
          end
          if packet:sub(2) == "SELECT ndx" then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "ndx", type = proxy.MYSQL_TYPE_LONG }, { name = "state1", type = proxy.MYSQL_TYPE_LONG } },
              rows = { { proxy.connection.backend_ndx, proxy.global.backends[1].state } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}", f"--proxy-backend-addresses=127.0.0.1:{dead}",
                        f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}", backend=False)
    c = proxy.connect()
    assert rows(c, "SELECT ndx") == ((2, 0),)
    # a script that picks a dead backend: connect_server runs again and the proxy falls back
    rows(c, "USE BACKEND 1")
    c2 = proxy.connect()
    assert rows(c2, "SELECT ndx") == ((2, 2),)  # backend 1 is now marked down
    wait_for_log(proxy, r"marking it down")
    c.close()
    c2.close()


def test_backend_state_is_writable(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:sub(2) == "DOWN 1" then
            proxy.global.backends[1].state = proxy.BACKEND_STATE_DOWN
            proxy.response = { type = proxy.MYSQLD_PACKET_OK }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}", "--proxy-backend-retry-interval=60")
    c = proxy.connect()
    rows(c, "DOWN 1")
    with pytest.raises(pymysql.err.MySQLError) as e:
        proxy.connect()
    assert e.value.args[0] == 1105
    c.close()


# ---------------------------------------------------------------------------------------------
# the connection pool (backend_ndx = 0) and read/write splitting


POOL = """
    -- a small read/write splitter on MySQL Proxy's pool: log in, give the connection to the pool,
    -- and take one for each statement (reads from the read-only backend when it has one idle)
    local in_trans = false

    function connect_server()
      -- fill both pools: each client logs in on the backend with the fewest idle connections
      -- (the first of them on a tie)
      proxy.connection.backend_ndx = require("proxy.balance").fewest_idle()
    end

    function read_auth_result(auth)
      if auth.packet:byte() == proxy.MYSQLD_PACKET_OK then proxy.connection.backend_ndx = 0 end
    end

    local function pick(wanted)
      local user = proxy.connection.client.username
      if proxy.global.backends[wanted].pool.users[user].cur_idle_connections > 0 then return wanted end
      for i = 1, #proxy.global.backends do
        if proxy.global.backends[i].pool.users[user].cur_idle_connections > 0 then return i end
      end
      return 0
    end

    function read_query(packet)
      if packet:byte() == proxy.COM_QUIT then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK }
        return proxy.PROXY_SEND_RESULT
      end
      if packet:sub(2) == "SELECT idle" then
        local user = proxy.connection.client.username
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
          fields = { { name = "rw", type = proxy.MYSQL_TYPE_LONG }, { name = "ro", type = proxy.MYSQL_TYPE_LONG } },
          rows = { { proxy.global.backends[1].pool.users[user].cur_idle_connections,
                     proxy.global.backends[2].pool.users[user].cur_idle_connections } } } }
        return proxy.PROXY_SEND_RESULT
      end
      if packet:sub(2) == "SELECT where" then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
          fields = { { name = "ndx", type = proxy.MYSQL_TYPE_LONG } }, rows = { { proxy.connection.backend_ndx } } } }
        return proxy.PROXY_SEND_RESULT
      end
      if proxy.connection.backend_ndx == 0 then
        local is_read = packet:byte() == proxy.COM_QUERY and packet:sub(2, 7):upper() == "SELECT"
        proxy.connection.backend_ndx = pick(is_read and 2 or 1)
      end
      proxy.queries:append(1, packet, { resultset_is_needed = true })
      return proxy.PROXY_SEND_QUERY
    end

    function read_query_result(inj)
      in_trans = inj.resultset.flags.in_trans
      if not in_trans then proxy.connection.backend_ndx = 0 end
    end

    function disconnect_client()
      proxy.connection.backend_ndx = 0
    end
"""


def test_pooled_read_write_splitting(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(POOL)}", f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}",
                        f"--proxy-read-only-backend-addresses=127.0.0.1:{MARIADB_PORT}", backend=False)
    a = proxy.connect(user="nat", password="natpass", database="moon", autocommit=True)
    b = proxy.connect(user="nat", password="natpass", database="moon", autocommit=True)
    # logged in and parked: neither client holds a server connection between statements
    assert rows(a, "SELECT where") == ((0,),)
    assert rows(a, "SELECT idle") == ((1, 1),)
    server_ids = {rows(a, "SELECT CONNECTION_ID()")[0][0] for _ in range(6)}
    server_ids |= {rows(b, "SELECT CONNECTION_ID()")[0][0] for _ in range(6)}
    assert len(server_ids) == 1  # reads go to the one connection parked for the read-only backend
    # a transaction keeps its server connection
    with a.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS moon.pooled (id INT PRIMARY KEY)")
        cur.execute("DELETE FROM moon.pooled")
        cur.execute("BEGIN")
        cur.execute("SELECT CONNECTION_ID()")
        first = cur.fetchall()[0][0]
        assert first not in server_ids  # a write: backend 1
        cur.execute("INSERT INTO moon.pooled VALUES (1)")
        assert rows(a, "SELECT where") == ((1,),)
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchall()[0][0] == first
        cur.execute("COMMIT")
    assert rows(a, "SELECT where") == ((0,),)
    assert rows(b, "SELECT id FROM moon.pooled") == ((1,),)
    a.close()
    b.close()
    # a new client logs in (on backend 1 this time) and parks one more; the pool serves it
    c = proxy.connect(user="nat", password="natpass", autocommit=True)
    assert rows(c, "SELECT idle") == ((2, 1),)
    assert rows(c, "SELECT CONNECTION_ID()")[0][0] > 0
    c.close()


# ---------------------------------------------------------------------------------------------
# mock-server mode


def test_mock_server(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={LUA / 'mock_server.lua'}", f"--proxy-backend-addresses=127.0.0.1:{free_port()}",
                        backend=False)
    c = proxy.connect(user="anyone", password="whatever", database="shop")
    assert c.get_server_info() == "5.5.5-10.11.0-moonmock"
    assert rows(c, "SELECT * FROM users") == ((1, "ada", 9.5), (2, "brian", None), (3, "chen", 7.25))
    with c.cursor() as cur:
        assert cur.execute("INSERT INTO users VALUES (4)") == 3
        assert cur.lastrowid == 77
        with pytest.raises(pymysql.err.ProgrammingError) as e:
            cur.execute("SELECT * FROM nothing")
        assert e.value.args[0] == 1146
    assert rows(c, "SELECT /* @trace_id t-1 */ hint") == (("t-1",),)
    c.ping(reconnect=False)
    c.select_db("other")
    c.close()
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect(user="intruder")
    assert e.value.args[0] == 1045

    r = mariadb_cli(proxy.port, "SELECT * FROM users")
    assert r.stdout == "id\tname\tscore\n1\tada\t9.5\n2\tbrian\tNULL\n3\tchen\t7.25\n"
    # many clients at once, none of them touching a backend
    conns = [proxy.connect() for _ in range(20)]
    for c in conns:
        assert len(rows(c, "SELECT * FROM users")) == 3
        c.close()


def test_chained_proxies(start_proxy):
    """A proxy with an injecting script in front of another MoonProxy serving a mock script."""
    mock = start_proxy(f"--proxy-lua-script={LUA / 'mock_server.lua'}", backend=False)
    front = start_proxy(f"--proxy-lua-script={script(INJECT)}", f"--proxy-backend-addresses=127.0.0.1:{mock.port}",
                        backend=False)
    c = front.connect(user="chained", password="pw")
    assert rows(c, "SELECT * FROM users")[0] == (1, "ada", 9.5)
    notes = rows(c, "SELECT notes")
    # the injected query reached the mock, which refused it: hidden all the same
    assert ("2.query_status", "255") in notes
    assert ("1.query_status", "0") in notes
    r = mariadb_cli(front.port, "SELECT * FROM users", user="chained", password="pw")
    assert r.stdout.startswith("id\tname\tscore\n1\tada")
    c.close()

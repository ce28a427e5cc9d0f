"""Lua scripting through real clients: what hooks see (proxy.connection, proxy.global, hints)
and proxy.response, against the real MariaDB. Injections, the connection-level hooks and broken
scripts have files of their own (test_scripting_*.py); they share the helpers here."""
import re
import textwrap
import time
from pathlib import Path

import pymysql
import pytest

import rawclient
from conftest import MARIADB_PORT, WORKDIR, mariadb_cli

LUA = Path(__file__).resolve().parent / "lua"


def script(text, name="script"):
    """Writes a script to a fresh file and returns its path."""
    path = WORKDIR / f"moon-{name}-{time.time_ns()}.lua"
    path.write_text(textwrap.dedent(text))
    return path


def rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def seen(conn):
    """What inspect.lua recorded for this connection."""
    return {name: value for name, value in rows(conn, "SELECT moon_seen")}


def wait_for_log(proxy, pattern, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if re.search(pattern, proxy.log()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no log line matches {pattern!r}:\n{proxy.log()}")


def read_packets(client, count):
    """(sequence id, payload) of the next `count` packets from a raw client."""
    packets = []
    for _ in range(count):
        payload = client.read_packet()
        packets.append((client.seq - 1, payload))
    return packets


# ---------------------------------------------------------------------------------------------
# what hooks see: proxy.connection, proxy.global.backends, proxy.global.config, proxy.hints


def test_hooks_see_the_connection(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={LUA / 'inspect.lua'}")
    c = proxy.connect(user="nat", password="natpass", database="moon")
    s = seen(c)
    thread_id = rows(c, "SELECT CONNECTION_ID()")[0][0]
    version = rows(c, "SELECT VERSION()")[0][0]
    major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups())

    assert s["connect_server.backend_ndx"] == "0"
    assert s["backends.count"] == "1"
    assert s["backends.1.dst.name"] == f"127.0.0.1:{MARIADB_PORT}"
    assert s["backends.1.dst.port"] == str(MARIADB_PORT)
    assert s["backends.1.type"] == "1"  # BACKEND_TYPE_RW
    assert s["backends.1.uuid_len"] == "36"
    assert s["backends.1.max_idle"] == "20"
    assert s["config.proxy-address"] == f"127.0.0.1:{proxy.port}"

    assert s["server.thread_id"] == str(thread_id)
    assert s["server.mysqld_version"] == str(major * 10000 + minor * 100 + patch)
    assert s["server.scramble_len"] == "20"
    assert s["server.dst.name"] == f"127.0.0.1:{MARIADB_PORT}"
    assert s["server.dst.type"] == "2"
    assert s["server.src.address"] == "127.0.0.1"
    assert s["client.src.address"] == "127.0.0.1"
    assert int(s["client.src.port"]) == c._sock.getsockname()[1]
    assert s["client.dst.port"] == str(proxy.port)

    assert s["client.username"] == "nat"
    assert s["client.default_db"] == "moon"
    assert s["client.scrambled_password_len"] == "20"
    assert s["auth.first_byte"] == "0"
    assert s["server.default_db"] == "moon"
    assert s["read_query.backend_ndx"] == "1"
    c.close()


def test_read_auth_result_sees_a_refusal(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={LUA / 'inspect.lua'}")
    with pytest.raises(pymysql.err.OperationalError) as e:
        proxy.connect(user="nat", password="wrong")
    assert e.value.args[0] == 1045


def test_hints_and_queries(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={LUA / 'inspect.lua'}")
    c = proxy.connect()
    assert rows(c, "SELECT /* @trace_id abc-123 */ /* @route ro */ 1") == ((1,),)
    s = seen(c)
    assert s["last_query"] == "SELECT /* @trace_id abc-123 */ /* @route ro */ 1"
    assert s["hints"] == "route=ro,trace_id=abc-123"
    rows(c, "SELECT 2")
    assert seen(c)["hints"] == ""
    # COM_INIT_DB goes through read_query too, and updates the client's default_db
    c.select_db("moon")
    rows(c, "SELECT 3")
    assert seen(c)["client.default_db.now"] == "moon"
    c.close()


def test_disconnect_client_and_shared_globals(start_proxy):
    p = script("""
        proxy.global.count = proxy.global.count or 0
        function read_query(packet)
          if packet:byte() ~= proxy.COM_QUERY then return end
          local q = packet:sub(2)
          if q == "SELECT counters" then
            mine = (mine or 0) + 1   -- a global of this connection's environment
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "mine", type = proxy.MYSQL_TYPE_LONG }, { name = "shared", type = proxy.MYSQL_TYPE_LONG },
                         { name = "gone", type = proxy.MYSQL_TYPE_LONG } },
              rows = { { mine, proxy.global.count, proxy.global.gone or 0 } } } }
            return proxy.PROXY_SEND_RESULT
          end
          proxy.global.count = proxy.global.count + 1
        end
        function disconnect_client()
          proxy.global.gone = (proxy.global.gone or 0) + 1
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}", "--event-threads=2")
    conns = [proxy.connect() for _ in range(4)]
    _, shared, gone = rows(conns[0], "SELECT counters")[0]
    for c in conns:
        rows(c, "SELECT 1")
        rows(c, "SELECT 1")
    assert rows(conns[0], "SELECT counters") == ((2, shared + 8, gone),)
    assert rows(conns[1], "SELECT counters") == ((1, shared + 8, gone),)
    for c in conns[1:]:
        c.close()
    deadline = time.time() + 5
    while rows(conns[0], "SELECT counters")[0][2] != gone + 3:
        assert time.time() < deadline
        time.sleep(0.05)
    conns[0].close()


def test_constants(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:sub(2) ~= "SELECT constants" then return end
          local values = {
            { "PROXY_VERSION", proxy.PROXY_VERSION }, { "PROXY_SEND_QUERY", proxy.PROXY_SEND_QUERY },
            { "PROXY_SEND_RESULT", proxy.PROXY_SEND_RESULT }, { "PROXY_IGNORE_RESULT", proxy.PROXY_IGNORE_RESULT },
            { "MYSQLD_PACKET_OK", proxy.MYSQLD_PACKET_OK }, { "MYSQLD_PACKET_ERR", proxy.MYSQLD_PACKET_ERR },
            { "MYSQLD_PACKET_RAW", proxy.MYSQLD_PACKET_RAW }, { "MYSQLD_PACKET_EOF", proxy.MYSQLD_PACKET_EOF },
            { "MYSQLD_PACKET_NULL", proxy.MYSQLD_PACKET_NULL }, { "BACKEND_STATE_UP", proxy.BACKEND_STATE_UP },
            { "BACKEND_STATE_DOWN", proxy.BACKEND_STATE_DOWN }, { "BACKEND_TYPE_RO", proxy.BACKEND_TYPE_RO },
            { "COM_QUERY", proxy.COM_QUERY }, { "COM_STMT_EXECUTE", proxy.COM_STMT_EXECUTE },
            { "COM_RESET_CONNECTION", proxy.COM_RESET_CONNECTION }, { "MYSQL_TYPE_VAR_STRING", proxy.MYSQL_TYPE_VAR_STRING },
            { "MYSQL_TYPE_NEWDECIMAL", proxy.MYSQL_TYPE_NEWDECIMAL }, { "MYSQL_TYPE_GEOMETRY", proxy.MYSQL_TYPE_GEOMETRY },
            { "SERVER_STATUS_IN_TRANS", proxy.SERVER_STATUS_IN_TRANS }, { "SERVER_STATUS_AUTOCOMMIT", proxy.SERVER_STATUS_AUTOCOMMIT },
            { "SERVER_MORE_RESULTS_EXISTS", proxy.SERVER_MORE_RESULTS_EXISTS },
          }
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
            fields = { { name = "name" }, { name = "value", type = proxy.MYSQL_TYPE_LONGLONG } }, rows = values } }
          return proxy.PROXY_SEND_RESULT
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    values = dict(rows(c, "SELECT constants"))
    assert values == {
        "PROXY_VERSION": 0x00805, "PROXY_SEND_QUERY": 1, "PROXY_SEND_RESULT": 2, "PROXY_IGNORE_RESULT": 4,
        "MYSQLD_PACKET_OK": 0, "MYSQLD_PACKET_ERR": 255, "MYSQLD_PACKET_RAW": 250, "MYSQLD_PACKET_EOF": 254,
        "MYSQLD_PACKET_NULL": 251, "BACKEND_STATE_UP": 1, "BACKEND_STATE_DOWN": 2, "BACKEND_TYPE_RO": 2,
        "COM_QUERY": 3, "COM_STMT_EXECUTE": 23, "COM_RESET_CONNECTION": 31, "MYSQL_TYPE_VAR_STRING": 253,
        "MYSQL_TYPE_NEWDECIMAL": 246, "MYSQL_TYPE_GEOMETRY": 255, "SERVER_STATUS_IN_TRANS": 1,
        "SERVER_STATUS_AUTOCOMMIT": 2, "SERVER_MORE_RESULTS_EXISTS": 8,
    }
    c.close()


# ---------------------------------------------------------------------------------------------
# proxy.response


FAKE = """
    function read_query(packet)
      local cmd = packet:byte()
      local q = packet:sub(2)
      if cmd == proxy.COM_QUERY and q == "SELECT fake" then
        proxy.response.type = proxy.MYSQLD_PACKET_OK
        proxy.response.resultset = {
          fields = { { name = "id", type = proxy.MYSQL_TYPE_LONG }, { name = "name", type = proxy.MYSQL_TYPE_STRING },
                     { name = "price", type = proxy.MYSQL_TYPE_DOUBLE }, { name = "note" } },
          rows = { { 1, "apple", 0.5, nil }, { 2, "pear", nil, "ripe" }, { 3, "", 12.25, "x" } },
        }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_QUERY and q == "INSERT fake" then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = 5, insert_id = 99, warning_count = 2 }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_QUERY and q == "FAIL fake" then
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "refused by the script", errcode = 1142, sqlstate = "42000" }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_QUERY and q == "FAIL default" then
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "plain" }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_QUERY and q == "FAIL noerrmsg" then
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_QUERY and q == "FAIL badtype" then
        proxy.response = { type = 77 }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_QUERY and q == "RAW fake" then
        -- an OK packet by hand: 0x00, affected rows 7, insert id 0, status 2, warnings 0
        proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { "\\0\\7\\0\\2\\0\\0\\0" } }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_PING then
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "no ping today", errcode = 1227, sqlstate = "42000" }
        return proxy.PROXY_SEND_RESULT
      elseif cmd == proxy.COM_INIT_DB and q == "nowhere" then
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "Unknown database 'nowhere'", errcode = 1049, sqlstate = "42000" }
        return proxy.PROXY_SEND_RESULT
      end
    end
"""


def test_fake_results(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(FAKE)}")
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT fake")
        assert [d[0] for d in cur.description] == ["id", "name", "price", "note"]
        assert cur.fetchall() == ((1, "apple", 0.5, None), (2, "pear", None, "ripe"), (3, "", 12.25, "x"))
        assert cur.execute("INSERT fake") == 5
        assert cur.lastrowid == 99
        assert cur._result.warning_count == 2
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute("FAIL fake")
        assert e.value.args == (1142, "refused by the script")
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute("FAIL default")
        assert e.value.args == (1105, "plain")
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute("FAIL noerrmsg")
        assert e.value.args == (1105, "(lua) proxy.response.errmsg is nil")
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute("FAIL badtype")
        assert e.value.args == (1105, "(lua) handling proxy.response failed, check error-log")
        assert cur.execute("RAW fake") == 7
        with pytest.raises(pymysql.err.MySQLError) as e:
            c.select_db("nowhere")
        assert e.value.args[0] == 1049
        # the real server still answers everything else
        cur.execute("SELECT 40 + 2")
        assert cur.fetchall() == ((42,),)
    with pytest.raises(pymysql.err.MySQLError) as e:
        c.ping(reconnect=False)
    assert e.value.args[0] == 1227
    c.close()


def test_fake_results_with_the_mariadb_cli(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(FAKE)}")
    r = mariadb_cli(proxy.port, "SELECT fake")
    assert r.stdout == "id\tname\tprice\tnote\n1\tapple\t0.5\tNULL\n2\tpear\tNULL\tripe\n3\t\t12.25\tx\n"
    r = mariadb_cli(proxy.port, "FAIL fake", check=False)
    assert "ERROR 1142 (42000)" in r.stderr and "refused by the script" in r.stderr


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_fake_result_sets_with_and_without_deprecate_eof(start_proxy, deprecate_eof):
    proxy = start_proxy(f"--proxy-lua-script={script(FAKE)}")
    caps = rawclient.DEFAULT_CAPS | (rawclient.CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
    client = rawclient.RawClient("127.0.0.1", proxy.port, caps=caps)
    client.command(0x03, b"SELECT fake")
    packets = read_packets(client, 1 + 4 + (0 if deprecate_eof else 1) + 3 + 1)
    assert [seq for seq, _ in packets] == list(range(1, len(packets) + 1))
    assert packets[0][1] == b"\x04"
    last = packets[-1][1]
    assert last[0] == 0xFE
    if deprecate_eof:
        assert len(last) >= 7  # an OK packet with the EOF header
    else:
        assert len(last) == 5 and packets[5][1][0] == 0xFE
    # the next command works: nothing was left over
    client.command(0x03, b"INSERT fake")
    ok = client.read_packet()
    assert client.seq - 1 == 1 and ok[0] == 0 and ok[1] == 5
    client.close()


def test_fake_field_list(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_FIELD_LIST then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "a", type = proxy.MYSQL_TYPE_LONG }, { name = "b" } }, rows = {} } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    client = rawclient.RawClient("127.0.0.1", proxy.port)
    client.command(0x04, b"anytable\x00")
    packets = read_packets(client, 3)
    assert [seq for seq, _ in packets] == [1, 2, 3]
    assert packets[2][1][0] == 0xFE
    client.close()

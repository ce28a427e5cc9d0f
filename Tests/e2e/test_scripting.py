"""Lua scripting through real clients: every hook and every member of the proxy.* API, against
the real MariaDB and against a mock server made of Lua, plus the ways scripts go wrong (syntax
errors, runtime errors, edits while clients are connected, misuse of injections)."""
import os
import re
import textwrap
import time
from pathlib import Path

import pymysql
import pytest

import rawclient
from conftest import MARIADB_PORT, WORKDIR, free_port, mariadb_cli

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


# ---------------------------------------------------------------------------------------------
# proxy.queries and read_query_result


INJECT = """
    local notes = {}
    local function note(k, v) notes[#notes + 1] = { k, v == nil and "nil" or tostring(v) } end
    function read_query(packet)
      if packet:byte() ~= proxy.COM_QUERY then return end
      local q = packet:sub(2)
      if q == "SELECT notes" then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
          fields = { { name = "k" }, { name = "v" } }, rows = notes } }
        notes = {}
        return proxy.PROXY_SEND_RESULT
      end
      if q:match("^REWRITE ") then
        proxy.queries:append(1, string.char(proxy.COM_QUERY) .. q:sub(9))
        return proxy.PROXY_SEND_QUERY
      end
      proxy.queries:append(2, string.char(proxy.COM_QUERY) .. "SELECT 'hidden' AS h, NULL AS n, 42 AS i UNION SELECT 'more', 'x', 7", { resultset_is_needed = true })
      proxy.queries:append(1, packet, { resultset_is_needed = true })
      assert(#proxy.queries == 2 and proxy.queries:len() == 2)
      return proxy.PROXY_SEND_QUERY
    end
    function read_query_result(inj)
      local res = inj.resultset
      note(inj.id .. ".query", inj.query:sub(2))
      note(inj.id .. ".query_status", res.query_status)
      note(inj.id .. ".timing", inj.query_time >= 0 and inj.response_time >= inj.query_time)
      if inj.id == 2 and not res.fields then return proxy.PROXY_IGNORE_RESULT end  -- an error
      if inj.id == 2 then
        note("2.fields", #res.fields)
        note("2.field1", res.fields[1].name .. ":" .. res.fields[1].type)
        for row in res.rows do note("2.row", table.concat({ row[1], tostring(row[2]), row[3] }, "|")) end
        note("2.row_count", res.row_count)
        note("2.bytes>0", res.bytes > 0)
        note("2.auto_commit", res.flags.auto_commit)
        return proxy.PROXY_IGNORE_RESULT
      end
      note("1.affected_rows", res.affected_rows)
      note("1.insert_id", res.insert_id)
      note("1.warning_count", res.warning_count)
      note("1.in_trans", res.flags.in_trans)
    end
"""


def test_injected_query_is_hidden_and_seen(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(INJECT)}")
    c = proxy.connect(database="moon", autocommit=True)
    rows(c, "SELECT notes")  # forget what the connection's own setup did
    assert rows(c, "SELECT 'visible'") == (("visible",),)
    got = {}
    for k, v in rows(c, "SELECT notes"):
        got.setdefault(k, []).append(v)
    assert got["2.query"] == ["SELECT 'hidden' AS h, NULL AS n, 42 AS i UNION SELECT 'more', 'x', 7"]
    assert got["2.fields"] == ["3"]
    assert got["2.field1"] == ["h:253"]
    assert got["2.row"] == ["hidden|nil|42", "more|x|7"]
    assert got["2.row_count"] == ["2"]
    assert got["2.bytes>0"] == ["true"]
    assert got["2.auto_commit"] == ["true"]
    assert got["2.query_status"] == ["0"]
    assert got["1.query"] == ["SELECT 'visible'"]
    assert got["1.timing"] == ["true"]

    with c.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE tmp_inj (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        cur.execute("BEGIN")
        assert cur.execute("INSERT INTO tmp_inj (v) VALUES (1), (2), (3)") == 3
        got = dict(rows(c, "SELECT notes"))
        assert got["1.affected_rows"] == "3"
        assert got["1.insert_id"] == "1"
        assert got["1.in_trans"] == "true"
        cur.execute("COMMIT")
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM no_such_table")
        got = dict(rows(c, "SELECT notes"))
        assert got["1.query_status"] == "255"
    assert rows(c, "REWRITE SELECT 'rewritten'") == (("rewritten",),)
    c.close()


def test_result_replaced_in_read_query_result(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY then
            proxy.queries:append(1, packet, { resultset_is_needed = true })
            return proxy.PROXY_SEND_QUERY
          end
        end
        function read_query_result(inj)
          local n = 0
          for row in inj.resultset.rows do n = n + tonumber(row[1]) end
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
            fields = { { name = "sum", type = proxy.MYSQL_TYPE_LONGLONG } }, rows = { { n } } } }
          return proxy.PROXY_SEND_RESULT
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    assert rows(c, "SELECT 1 UNION SELECT 2 UNION SELECT 39") == ((42,),)
    c.close()


def test_streamed_injection_with_resultset_not_needed(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY then
            proxy.queries:append(1, packet)
            return proxy.PROXY_SEND_QUERY
          end
        end
        function read_query_result(inj)
          if inj.resultset.row_count == 3 then return proxy.PROXY_IGNORE_RESULT end  -- cannot work: logged
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect(database="moon")
    assert len(rows(c, "SELECT seq FROM seq_1_to_3")) == 3
    wait_for_log(proxy, r"not buffered")
    assert len(rows(c, "SELECT seq FROM seq_1_to_1000")) == 1000
    c.close()


def test_misuse_two_streamed_results_closes_the_client(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:sub(2, 7) == "SELECT" then
            proxy.queries:append(1, packet)
            proxy.queries:append(2, packet)
            return proxy.PROXY_SEND_QUERY
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    rows(c, "SELECT 1")  # the first result arrives
    with pytest.raises(pymysql.err.OperationalError):
        rows(c, "SELECT 2")
    wait_for_log(proxy, r"only one injected query without")
    # everyone else is fine
    other = proxy.connect()
    other.ping(reconnect=False)
    other.close()


def test_misuse_every_result_ignored_gives_an_error(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:sub(2, 7) == "SELECT" then
            proxy.queries:append(1, packet, { resultset_is_needed = true })
            return proxy.PROXY_SEND_QUERY
          end
        end
        function read_query_result(inj) return proxy.PROXY_IGNORE_RESULT end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    with pytest.raises(pymysql.err.MySQLError) as e:
        rows(c, "SELECT 1")
    assert e.value.args[0] == 1105
    c.ping(reconnect=False)
    c.close()


def test_append_without_send_query_is_discarded(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY then
            proxy.queries:append(1, string.char(proxy.COM_QUERY) .. "SELECT 'not me'")
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    assert rows(c, "SELECT 'me'") == (("me",),)
    wait_for_log(proxy, r"without 'return proxy.PROXY_SEND_QUERY'")
    c.close()


def test_buffer_limit(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY then
            proxy.queries:append(1, packet, { resultset_is_needed = true })
            return proxy.PROXY_SEND_QUERY
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}", "--proxy-resultset-buffer-limit=100000")
    c = proxy.connect(database="moon")
    assert rows(c, "SELECT LENGTH(REPEAT('x', 1000))") == ((1000,),)
    with pytest.raises(pymysql.err.MySQLError) as e:
        rows(c, "SELECT REPEAT('x', 1000) FROM seq_1_to_1000")
    assert e.value.args[0] == 1105 and "buffer limit" in e.value.args[1]
    assert rows(c, "SELECT 'still here'") == (("still here",),)
    wait_for_log(proxy, r"larger than the buffer limit")
    c.close()


def test_injected_local_infile_gets_an_empty_file(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY and packet:find("LOAD DATA", 1, true) then
            proxy.queries:append(1, packet, { resultset_is_needed = true })
            return proxy.PROXY_SEND_QUERY
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect(database="moon", local_infile=True)
    with c.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE tmp_li (a INT)")
        assert cur.execute("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE tmp_li") == 0
        cur.execute("SELECT COUNT(*) FROM tmp_li")
        assert cur.fetchall() == ((0,),)
    wait_for_log(proxy, r"empty file")
    c.close()


def test_connection_close(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY and packet:sub(2) == "SELECT 'last'" then
            proxy.connection.connection_close = true
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    assert rows(c, "SELECT 'last'") == (("last",),)
    with pytest.raises(pymysql.err.OperationalError):
        rows(c, "SELECT 1")


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
      -- fill both pools: odd clients log in on backend 2, even ones on backend 1
      proxy.global.n = (proxy.global.n or 0) + 1
      proxy.connection.backend_ndx = (proxy.global.n % 2) + 1
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


# ---------------------------------------------------------------------------------------------
# broken scripts


def test_script_with_a_syntax_error(start_proxy):
    path = script("function read_query(packet)\n  if then\nend\n", name="broken")
    proxy = start_proxy(f"--proxy-lua-script={path}")
    for _ in range(2):
        with pytest.raises(pymysql.err.MySQLError) as e:
            proxy.connect()
        assert e.value.args == (1105, "MySQL Proxy Lua script failed to load. Check the error log.")
    r = mariadb_cli(proxy.port, "SELECT 1", check=False)
    assert "1105" in r.stderr and "07000" in r.stderr and "failed to load" in r.stderr
    assert re.search(rf"{re.escape(path.name)}:2:", proxy.log())
    # fixed on disk: the next client is served
    path.write_text("function read_query(packet) end\n")
    c = proxy.connect()
    assert rows(c, "SELECT 1") == ((1,),)
    c.close()


def test_script_failing_at_its_top_level(start_proxy):
    path = script("error('not today')\n", name="toplevel")
    proxy = start_proxy(f"--proxy-lua-script={path}")
    with pytest.raises(pymysql.err.MySQLError) as e:
        proxy.connect()
    assert e.value.args == (1105, "MySQL Proxy Lua script failed to execute. Check the error log.")
    assert "not today" in proxy.log()


def test_script_with_a_runtime_error_forwards_the_query(start_proxy):
    p = script("""
        local function helper(q)
          return q.no_such_field.x
        end
        function read_query(packet)
          if packet:byte() == proxy.COM_QUERY then helper(packet) end
        end
        function read_query_result(inj) error("never called") end
    """, name="runtime")
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    assert rows(c, "SELECT 'forwarded'") == (("forwarded",),)
    assert rows(c, "SELECT 'again'") == (("again",),)
    log = proxy.log()
    assert "(read_query)" in log and "attempt to index" in log
    assert "stack traceback" in log and "helper" in log
    c.close()


def test_script_edited_while_clients_are_connected(start_proxy):
    version = """
        function read_query(packet)
          if packet:sub(2) == "SELECT version" then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "v" } }, rows = { { "%s" } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """
    path = script(version % "one", name="edited")
    proxy = start_proxy(f"--proxy-lua-script={path}", "--log-level=message")
    old = proxy.connect()
    assert rows(old, "SELECT version") == (("one",),)
    time.sleep(0.01)
    path.write_text(textwrap.dedent(version % "two"))
    new = proxy.connect()
    assert rows(new, "SELECT version") == (("two",),)
    assert rows(old, "SELECT version") == (("one",),)  # keeps the version it started with
    wait_for_log(proxy, r"reloaded the Lua script")
    # a broken edit: logged with file and line, the last good version keeps serving
    path.write_text("function read_query(\n")
    third = proxy.connect()
    assert rows(third, "SELECT version") == (("two",),)
    wait_for_log(proxy, r"still serving the previous version")
    assert re.search(rf"{re.escape(path.name)}:\d+:", proxy.log().split("still serving the previous version")[1])
    for c in (old, new, third):
        c.close()


def test_lua_path_and_modules(start_proxy):
    libdir = WORKDIR / f"moon-lib-{time.time_ns()}"
    libdir.mkdir()
    (libdir / "greeter.lua").write_text("local M = {}\nfunction M.hello(n) return 'hello ' .. n end\nreturn M\n")
    # a Lua 5.1 style module
    (libdir / "oldstyle.lua").write_text("module('oldstyle', package.seeall)\nfunction shout(s) return string.upper(s) end\n")
    p = script("""
        local greeter = require("greeter")
        local oldstyle = require("oldstyle")
        function read_query(packet)
          if packet:sub(2) == "SELECT greet" then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "g" } }, rows = { { greeter.hello(oldstyle.shout("moon")) } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}", f"--lua-path={libdir}/?.lua;;")
    c = proxy.connect()
    assert rows(c, "SELECT greet") == (("hello MOON",),)
    c.close()
    # LUA_PATH works as well
    proxy2 = start_proxy(f"--proxy-lua-script={p}", env=dict(os.environ, LUA_PATH=f"{libdir}/?.lua;;"))
    c = proxy2.connect()
    assert rows(c, "SELECT greet") == (("hello MOON",),)
    c.close()


def test_lua_51_habits(start_proxy):
    p = script("""
        function read_query(packet)
          if packet:sub(2) == "SELECT compat" then
            local t = { 1, 2, 3 }
            local f = loadstring("return 40 + 2")
            local a, b = unpack({ "x", "y" })
            local words = {}
            for w in string.gfind("a b c", "%a") do words[#words + 1] = w end
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "r" } },
              rows = { { table.getn(t) .. f() .. a .. b .. math.mod(7, 3) .. table.concat(words) } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    assert rows(c, "SELECT compat") == (("342xy1abc",),)
    c.close()

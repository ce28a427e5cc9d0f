"""Injected queries through real clients: proxy.queries, read_query_result, buffering and its
limit, and the ways scripts misuse injections (resolved as MySQL Proxy resolves them)."""

import pymysql
import pytest

from test_scripting import rows, script, wait_for_log


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
    # the first result went to the client; read_query_result queues another one for it
    p = script("""
        function read_query(packet)
          if packet:sub(2, 7) == "SELECT" then
            proxy.queries:append(1, packet)
            return proxy.PROXY_SEND_QUERY
          end
        end
        function read_query_result(inj)
          if inj.id == 1 and inj.query:sub(2) == "SELECT 2" then proxy.queries:append(2, inj.query) end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect()
    rows(c, "SELECT 1")  # the first result arrives
    with pytest.raises(pymysql.err.OperationalError):
        rows(c, "SELECT 2")
        rows(c, "SELECT 3")
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
    # a LOAD DATA LOCAL the client never sent: the client has no file for it, so none is sent;
    # the client's own one, whose result the script reads, uploads the client's file
    p = script("""
        function read_query(packet)
          if packet:sub(2) == "SELECT 'inject'" then
            proxy.queries:append(1, string.char(proxy.COM_QUERY) .. "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE tmp_li", { resultset_is_needed = true })
            return proxy.PROXY_SEND_QUERY
          end
          if packet:byte() == proxy.COM_QUERY and packet:find("LOAD DATA", 1, true) then
            proxy.queries:append(1, packet, { resultset_is_needed = true })
            return proxy.PROXY_SEND_QUERY
          end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}")
    c = proxy.connect(database="moon", local_infile=True)
    with c.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE tmp_li (a VARCHAR(200))")
        assert cur.execute("SELECT 'inject'") == 0
        cur.execute("SELECT COUNT(*) FROM tmp_li")
        assert cur.fetchall() == ((0,),)
        wait_for_log(proxy, r"empty file")
        assert cur.execute("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE tmp_li") == 1
        cur.execute("SELECT COUNT(*) FROM tmp_li")
        assert cur.fetchall() == ((1,),)
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

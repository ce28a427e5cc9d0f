"""What MySQL Proxy 0.8's regression suite (tests/suite/base of mysql/mysql-proxy) showed MoonProxy
doing differently, each behaviour checked on its own with real clients: how values from a script
become MySQL values, what an injected result counts, Lua 5.1 source, pre-4.1 clients, LOCAL
INFILE from a mock server behind a second proxy, load-multi and the connection pool."""
import subprocess

import pymysql
import pytest

from conftest import MARIADB_PORT
from test_scripting import script

# a mock server's greeting, and OK for what clients send on their own at connect (SET NAMES ...)
MOCK_GREETING = """
local proto = require("mysql.proto")
function connect_server()
    proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { proto.to_challenge_packet({}) } }
    return proxy.PROXY_SEND_RESULT
end
local function not_select(packet)
    if packet:byte() == proxy.COM_QUERY and packet:sub(2, 7):upper() == "SELECT" then return false end
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return true
end
"""


def mock(start_proxy, body, name="mock"):
    return start_proxy(f"--proxy-lua-script={script(MOCK_GREETING + body, name)}", backend=False)


def cli(port, sql, *extra, check=True):
    r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "--skip-ssl", "--batch", *extra, "-e", sql],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_cells_that_are_neither_strings_nor_numbers_are_null(start_proxy):
    proxy = mock(start_proxy, """
function read_query(packet)
    if not_select(packet) then return proxy.PROXY_SEND_RESULT end
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
        fields = { { name = "t" }, { name = "f" }, { name = "tab" }, { name = "n" }, { name = "s" }, { name = "fl" } },
        rows = { { true, false, {}, 42, "x", 1.5 } } } }
    return proxy.PROXY_SEND_RESULT
end
""")
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT anything")
        assert cur.fetchone() == (None, None, None, "42", "x", "1.5")
    c.close()


def test_numbers_from_a_script_may_be_numeric_strings(start_proxy):
    # as Lua's own coercion has it: errcode = "3306" (from string.match) is 3306
    proxy = mock(start_proxy, """
function read_query(packet)
    local code, state, msg = packet:sub(2):match('^SELECT error (%d+) (%w+) "(.*)"')
    if code then
        proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errcode = code, sqlstate = state, errmsg = msg }
    else
        proxy.response = { type = tostring(proxy.MYSQLD_PACKET_OK), affected_rows = "7", insert_id = "12" }
    end
    return proxy.PROXY_SEND_RESULT
end
""")
    c = proxy.connect()
    with c.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute('SELECT error 3306 42000 "the message"')
        assert e.value.args == (3306, "the message")
        assert cur.execute("DELETE FROM somewhere") == 7
        assert c.insert_id() == 12
    c.close()
    r = cli(proxy.port, 'SELECT error 3306 42000 "the message"', check=False)
    assert "ERROR 3306 (42000)" in r.stderr


def test_an_injected_results_bytes_count_its_rows(start_proxy):
    # MySQL Proxy counts the row packets with their headers, and nothing else of the response
    s = script("""
function read_query(packet)
    if packet:sub(2, 7) ~= "SELECT" then return end
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
    local res = inj.resultset
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
        fields = { { name = "row_count", type = proxy.MYSQL_TYPE_LONG }, { name = "bytes", type = proxy.MYSQL_TYPE_LONG } },
        rows = { { res.row_count, res.bytes } } } }
    return proxy.PROXY_SEND_RESULT
end
""")
    streamed = script("""
function read_query(packet)
    if packet:sub(2) == "SELECT 'seen'" then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "seen" } }, rows = { { proxy.global.seen } } } }
        return proxy.PROXY_SEND_RESULT
    end
    proxy.queries:append(1, packet)
    return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
    proxy.global.seen = ("%d %d"):format(inj.resultset.row_count, inj.resultset.bytes)
end
""")
    proxy = start_proxy(f"--proxy-lua-script={s}")
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 'a', 'b' UNION ALL SELECT 'c', 'd'")  # two rows of 2 + 2 payload bytes
        assert cur.fetchone() == (2, 16)
        cur.execute("SELECT NULL")
        assert cur.fetchone() == (1, 5)
        cur.execute("SELECT REPEAT('x', 300) FROM mysql.seq_1_to_3")  # 3 bytes of length + 300
        assert cur.fetchone() == (3, 3 * 307)
    c.close()
    # a result the script does not buffer passes through with the same counts
    proxy = start_proxy(f"--proxy-lua-script={streamed}", "--plugins=proxy")
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 'a', 'b' UNION ALL SELECT 'c', 'd'")
        assert cur.fetchall() == (("a", "b"), ("c", "d"))
        cur.execute("SELECT 'seen'")
        assert cur.fetchone() == ("2 16",)
    c.close()


def test_lua_51_escapes_in_a_script_and_a_required_module(start_proxy, tmp_path):
    # "\." is "." in Lua 5.1 and an error in 5.4: scripts and modules written for 5.1 load
    (tmp_path / "oldmod.lua").write_text('local M = {}\nfunction M.major(v) return v:match("^(%d+)\\.") end\nreturn M\n')
    body = MOCK_GREETING + """
local oldmod = require("oldmod")
function read_query(packet)
    if not_select(packet) then return proxy.PROXY_SEND_RESULT end
    local major, minor = ("5.1.73"):match("^(%d+)\\.(%d+)")
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
        fields = { { name = "major" }, { name = "minor" }, { name = "module" } },
        rows = { { major, minor, oldmod.major("8.0.1") } } } }
    return proxy.PROXY_SEND_RESULT
end
"""
    assert '"^(%d+)\\.(%d+)"' in body
    p = start_proxy(f"--proxy-lua-script={script(body, 'lua51')}", f"--lua-path={tmp_path}/?.lua", backend=False)
    c = p.connect()
    with c.cursor() as cur:
        cur.execute("SELECT versions")
        assert cur.fetchone() == ("5", "1", "8")
    c.close()


def test_a_pre_41_client_is_told_in_its_own_protocol(start_proxy):
    # a mock whose greeting is MySQL 4.0's (no CLIENT_PROTOCOL_41): libmariadb answers with the old
    # handshake response, and gets 1251 in the old ERR format (the client reports SQLSTATE HY000)
    proxy = start_proxy(f"--proxy-lua-script={script(OLD_GREETING, 'mysql40')}", backend=False)
    r = cli(proxy.port, "SELECT 1", check=False)
    assert r.returncode != 0 and "1251" in r.stderr and "(HY000)" in r.stderr, r.stderr
    assert "pre-4.1" in proxy.log()


OLD_GREETING = r"""
function connect_server()
    proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = {
        "\010" .. "4.0.28-log\000" .. "\005\000\000\000" .. "abcdefgh\000" .. "\044\032" .. "\008" .. "\002\000" .. ("\000"):rep(13) } }
    return proxy.PROXY_SEND_RESULT
end
"""

"""What MySQL Proxy 0.8's regression suite (tests/suite/base of mysql/mysql-proxy) showed MoonProxy
doing differently, each behaviour checked on its own with real clients: how values from a script
become MySQL values, what an injected result counts, Lua 5.1 source, pre-4.1 clients, LOCAL
INFILE from a mock server behind a second proxy, load-multi and the connection pool."""
import os
import subprocess

import pymysql
import pytest

from conftest import MARIADB_PORT, direct
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


# --- LOCAL INFILE: a mock server asks for a file; a proxy in front looks at the result ----------

INFILE_MOCK = r"""
function connect_server()
    -- CLIENT_LOCAL_FILES | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION, as a server that takes files
    proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = {
        require("mysql.proto").to_challenge_packet({ capabilities = 128 + 512 + 32768 }) } }
    return proxy.PROXY_SEND_RESULT
end
local file
function read_query(packet)
    if file then
        -- the file comes packet by packet, then an empty one; only the last gets an answer
        if #packet > 0 then file[#file + 1] = packet; return end
        local content = table.concat(file)
        file = nil
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = #content, message = "first line: " .. content:match("^[^\n]*") }
        return proxy.PROXY_SEND_RESULT
    end
    local name = packet:sub(2):match("^LOAD DATA LOCAL INFILE '([^']+)'")
    if packet:byte() == proxy.COM_QUERY and name then
        file = {}
        proxy.response = { type = proxy.MYSQLD_PACKET_RAW, packets = { "\251" .. name } }
    else
        proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    end
    return proxy.PROXY_SEND_RESULT
end
"""

# the client's statement goes on as an injection whose result the script reads
LOOKING_FRONT = """
function read_query(packet)
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
    print(("result of %d: %d affected rows"):format(inj.id, inj.resultset.affected_rows or -1))
end
"""


def test_local_infile_from_a_mock_server_and_through_a_second_proxy(start_proxy, tmp_path):
    data = tmp_path / "upload.txt"
    data.write_text("one,1\n" + "two,2\n" * 20000)  # several packets' worth
    size = data.stat().st_size
    mock_proxy = start_proxy(f"--proxy-lua-script={script(INFILE_MOCK, 'infile_mock')}", backend=False)
    front = start_proxy(f"--proxy-lua-script={script(LOOKING_FRONT, 'looking_front')}",
                        f"--proxy-backend-addresses=127.0.0.1:{mock_proxy.port}", backend=False)
    statement = f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE t; SELECT 'after'"
    for p in (mock_proxy, front):
        r = cli(p.port, statement, "--local-infile=1", "-vv")
        assert f"Query OK, {size} rows affected" in r.stdout, r.stdout
        assert "after" in r.stdout  # the session goes on in step
    assert f"result of 1: {size} affected rows" in front.log()
    # a client that does not allow LOCAL INFILE sends an empty file, and is told so by the mock
    r = cli(front.port, f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE t", "--local-infile=0", "-vv", check=False)
    assert "0 rows affected" in r.stdout or "ERROR" in r.stderr


def test_local_infile_through_a_script_that_reads_the_result_to_a_real_server(start_proxy, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},row {i}\n" for i in range(1, 3001)))
    front = start_proxy(f"--proxy-lua-script={script(LOOKING_FRONT, 'looking_front')}")
    c = front.connect(local_infile=True, autocommit=True)
    with c.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS moon.infile (id INT PRIMARY KEY, s VARCHAR(20))")
        cur.execute("DELETE FROM moon.infile")
        assert cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE moon.infile FIELDS TERMINATED BY ','") == 3000
        cur.execute("SELECT COUNT(*), MAX(s) FROM moon.infile")
        assert cur.fetchone() == (3000, "row 999")
        cur.execute("DROP TABLE moon.infile")
    c.close()
    assert "result of 1: 3000 affected rows" in front.log()


# --- the connection pool -----------------------------------------------------------------------

# As MySQL Proxy's ro-pooling: the login's connection goes to the pool, each statement takes an
# idle one of the client's user and gives it back after, and COM_QUIT never reaches the server.
POOLING = """
function read_auth_result(auth)
    if auth.packet:byte() == proxy.MYSQLD_PACKET_OK then proxy.connection.backend_ndx = 0 end
end
function read_query(packet)
    if packet:byte() == proxy.COM_QUIT then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK }
        return proxy.PROXY_SEND_RESULT
    end
    if proxy.connection.backend_ndx == 0 then
        local user = proxy.connection.client.username
        if proxy.global.backends[1].pool.users[user].cur_idle_connections > 0 then proxy.connection.backend_ndx = 1 end
    end
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
    if not inj.resultset.flags.in_trans then proxy.connection.backend_ndx = 0 end
end
"""


def test_a_pooling_script_serves_mysqltest_connecting_again_and_again(start_proxy, tmp_path):
    # mysqltest's disconnect sends COM_QUIT and waits for the close: a script that keeps the
    # COM_QUIT from the server must not leave it waiting
    proxy = start_proxy(f"--proxy-lua-script={script(POOLING, 'pooling')}")
    steps = "".join(f"connect (c{i},127.0.0.1,root,,,{proxy.port});\nSELECT {i} AS n;\ndisconnect c{i};\n" for i in range(1, 6))
    r = subprocess.run(["mariadb-test", "--host=127.0.0.1", f"--port={proxy.port}", "--user=root"],
                       input=steps, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line for line in r.stdout.splitlines() if line.isdigit()] == ["1", "2", "3", "4", "5"]


POOL_USERS = ["CREATE USER IF NOT EXISTS 'pool_low'@'%' IDENTIFIED BY 'lowpass'",
              "GRANT SELECT ON moon.* TO 'pool_low'@'%'",
              "CREATE USER IF NOT EXISTS 'pool_high'@'%' IDENTIFIED BY 'highpass'",
              "GRANT ALL ON moon.* TO 'pool_high'@'%'"]


def pooled_sessions(proxy):
    """Client A logs in as pool_low, changes to the more privileged pool_high and leaves session
    state behind on its server connection; then C logs in as pool_low and B as pool_high, and
    each runs every check twice: statements take turns on the idle connections of their user,
    so each check runs on both. Returns A's server connection id and what C and B saw."""
    import mysql.connector

    def connect(user, password):
        return mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=user, password=password,
                                       database="moon", ssl_disabled=True, use_pure=True, autocommit=True)

    def run(cur, sql):
        try:
            cur.execute(sql)
            return cur.fetchall()[0] if cur.with_rows else "done"
        except mysql.connector.Error as e:
            return e.errno

    a = connect("pool_low", "lowpass")
    a.cmd_change_user(username="pool_high", password="highpass", database="moon")
    cur = a.cursor()
    assert run(cur, "SELECT CURRENT_USER()") == ("pool_high@%",)
    a_id = run(cur, "SELECT CONNECTION_ID()")[0]
    for sql in ["SET @secret = 'from A'", "CREATE TEMPORARY TABLE moon.a_temp (x INT)",
                "PREPARE a_stmt FROM 'SELECT 1'", "SET SESSION sql_mode = 'ANSI_QUOTES'"]:
        assert run(cur, sql) == "done"
    assert run(cur, "SELECT CONNECTION_ID()") == (a_id,)  # A's own, the only one of pool_high
    cur.close()
    a.close()
    seen = {}
    c = connect("pool_low", "lowpass")
    cur = c.cursor()
    seen["c"] = [run(cur, "SELECT CONNECTION_ID(), CURRENT_USER()") for _ in range(2)]
    c.close()
    b = connect("pool_high", "highpass")
    cur = b.cursor()
    seen["b"] = [run(cur, "SELECT CONNECTION_ID(), CURRENT_USER(), @secret, @@SESSION.sql_mode = @@GLOBAL.sql_mode")
                 for _ in range(2)]
    seen["temp"] = [run(cur, "SELECT COUNT(*) FROM moon.a_temp") for _ in range(2)]
    seen["stmt"] = [run(cur, "EXECUTE a_stmt") for _ in range(2)]
    b.close()
    return a_id, seen


def test_the_pool_keeps_sessions_apart(start_proxy):
    d = direct(autocommit=True)
    with d.cursor() as cur:
        for sql in POOL_USERS:
            cur.execute(sql)
    d.close()
    proxy = start_proxy(f"--proxy-lua-script={script(POOLING, 'pooling')}")
    a_id, seen = pooled_sessions(proxy)
    # C, of A's first user, never gets A's connection, which belongs to pool_high now
    assert all(row[1] == "pool_low@%" and row[0] != a_id for row in seen["c"]), seen
    # B, of pool_high, gets it, reset: none of A's session is left, and B is who it logged in as
    assert a_id in [row[0] for row in seen["b"]], seen
    assert all(row[1:] == ("pool_high@%", None, 1) for row in seen["b"]), seen
    assert seen["temp"] == [1146, 1146] and seen["stmt"] == [1243, 1243], seen
    # without the reset, B finds A's session on A's connection as A left it
    proxy = start_proxy(f"--proxy-lua-script={script(POOLING, 'pooling')}", "--proxy-pool-no-change-user")
    a_id, seen = pooled_sessions(proxy)
    assert (a_id, "pool_high@%", "from A", 0) in seen["b"], seen
    assert (0,) in seen["temp"] and (1,) in seen["stmt"], seen


# --- load-multi: scripts loaded at run time into a running proxy --------------------------------

# The mechanisms MySQL Proxy's lib/load-multi.lua is built on, in a loader of our own: hooks made
# with loadstring, a script turned into a Lua 5.1 module (module(name, package.seeall)) written to
# a directory put on package.path at run time, and the handlers kept in proxy.global, loaded by
# one client and run for every other.
PLOAD = r"""
local dir = os.getenv("MOON_PLOAD_DIR")
local handlers = proxy.global.handlers or { read_query = {}, read_auth = {}, disconnect_client = {} }
proxy.global.handlers = handlers
for _, hook in ipairs({ "read_auth", "disconnect_client" }) do
    assert(loadstring(([[
        function %s(...)
            for _, h in ipairs(proxy.global.handlers.%s) do
                local r = h.fn(...)
                if r then return r end
            end
        end]]):format(hook, hook)))()
end
local counter = 0
local function pload(file)
    counter = counter + 1
    local name = "ploaded" .. counter
    if not package.path:find(dir, 1, true) then package.path = dir .. "/?.lua;" .. package.path end
    local out = assert(io.open(dir .. "/" .. name .. ".lua", "w"))
    out:write("module('" .. name .. "', package.seeall)\nfunction make()\n")
    local found = {}
    for line in io.lines(file) do
        out:write(line, "\n")
        for hook in pairs(handlers) do
            if line:match("^%s*function%s+" .. hook .. "%s*%(") then found[#found + 1] = hook end
        end
    end
    out:write("return { " .. table.concat((function() local t = {} for _, h in ipairs(found) do t[#t + 1] = h .. " = " .. h end return t end)(), ", ") .. " }\nend\n")
    out:close()
    local made = require(name).make()
    os.remove(dir .. "/" .. name .. ".lua")
    for hook, fn in pairs(made) do table.insert(handlers[hook], { name = file, fn = fn }) end
end
local function answer(text)
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "info" } }, rows = { { text } } } }
    return proxy.PROXY_SEND_RESULT
end
function read_query(packet)
    if packet:byte() ~= proxy.COM_QUERY then return end
    local query = packet:sub(2)
    local file = query:match("^pload%s+(%S+)")
    if file then pload(file) return answer("loaded " .. file) end
    file = query:match("^punload%s+(%S+)")
    if file then
        for _, list in pairs(handlers) do
            for i = #list, 1, -1 do if list[i].name == file then table.remove(list, i) end end
        end
        return answer("unloaded " .. file)
    end
    for _, h in ipairs(handlers.read_query) do
        local r = h.fn(packet)
        if r then return r end
    end
end
"""

COUNTING = """
proxy.global.hits = proxy.global.hits or {}
function read_auth() proxy.global.hits.read_auth = (proxy.global.hits.read_auth or 0) + 1 end
function disconnect_client() proxy.global.hits.disconnect_client = (proxy.global.hits.disconnect_client or 0) + 1 end
"""

REPORTING = """
function read_query(packet)
    if packet:sub(2) ~= "select pload status" then return end
    local rows = {}
    for hook, n in pairs(proxy.global.hits) do rows[#rows + 1] = { hook, n } end
    table.sort(rows, function(a, b) return a[1] < b[1] end)
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "hook" }, { name = "hits" } }, rows = rows } }
    return proxy.PROXY_SEND_RESULT
end
"""

ANSWERING_MOCK = """
function read_query(packet)
    if not_select(packet) then return proxy.PROXY_SEND_RESULT end
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "mock" } }, rows = { { (packet:sub(9):gsub("'", "")) } } } }
    return proxy.PROXY_SEND_RESULT
end
"""


def test_scripts_loaded_at_run_time_serve_every_client(start_proxy, tmp_path):
    (tmp_path / "counting.lua").write_text(COUNTING)
    (tmp_path / "reporting.lua").write_text(REPORTING)
    modules = tmp_path / "modules"
    modules.mkdir()
    mock_proxy = mock(start_proxy, ANSWERING_MOCK)
    front = start_proxy(f"--proxy-lua-script={script(PLOAD, 'pload')}", f"--proxy-backend-addresses=127.0.0.1:{mock_proxy.port}",
                        backend=False, env={**os.environ, "MOON_PLOAD_DIR": str(modules)})
    port = front.port
    # as MySQL Proxy's load_multi test: mysqltest's clients come and go (each disconnect is a
    # COM_QUIT the mock answers) while loaded hooks count them
    steps = f"""pload {tmp_path}/reporting.lua;
pload {tmp_path}/counting.lua;
connect (c1,127.0.0.1,root,,,{port});
select 'first';
disconnect c1;
connect (c2,127.0.0.1,root,,,{port});
select pload status;
disconnect c2;
connection default;
punload {tmp_path}/reporting.lua;
select pload status;
"""
    r = subprocess.run(["mariadb-test", "--host=127.0.0.1", f"--port={port}", "--user=root"],
                       input=steps, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert f"loaded {tmp_path}/counting.lua" in out and "first" in out, r.stdout
    # c1 and c2 logged in after counting.lua was loaded; c1 has left
    assert "read_auth\t2" in out and "disconnect_client\t1" in out, r.stdout
    assert f"unloaded {tmp_path}/reporting.lua" in out
    assert out[-2:] == ["pload status", "ok"]  # the mock answers once reporting.lua is gone
    assert list(modules.iterdir()) == []


def test_an_unbuffered_injection_before_another_is_read_by_the_script(start_proxy):
    # as MySQL Proxy's ro-balance: SHOW SLAVE STATUS, then the client's query, neither with
    # resultset_is_needed; the script reads the first's rows, the client gets the second's
    s = script("""
function read_query(packet)
    if packet:sub(2) == "SELECT 'seen'" then
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "seen" } }, rows = { { proxy.global.seen } } } }
        return proxy.PROXY_SEND_RESULT
    end
    proxy.queries:append(2, string.char(proxy.COM_QUERY) .. "SELECT @@server_id AS id")
    proxy.queries:append(1, packet)
    return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
    if inj.id ~= 2 then return end
    for row in inj.resultset.rows do proxy.global.seen = "server_id " .. row[1] end
    return proxy.PROXY_IGNORE_RESULT
end
""")
    proxy = start_proxy(f"--proxy-lua-script={s}")
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 'mine'")
        assert cur.fetchall() == (("mine",),)
        cur.execute("SELECT 'seen'")
        assert cur.fetchall() == (("server_id 1",),)
    c.close()


def test_a_login_replaced_by_a_script_keeps_the_clients_session_flags(start_proxy):
    # as MySQL Proxy's tutorial-scramble: read_auth checks the client's scramble against a
    # password it knows and logs in as another account with a packet from mysql.proto's
    # defaults; the client, which negotiated its own flags (no EOF packets, ...), reads the
    # server's answers all the same
    s = script("""
local password, proto = require("mysql.password"), require("mysql.proto")
function read_auth()
    local c, s = proxy.connection.client, proxy.connection.server
    if c.username == "alias" and password.check(s.scramble_buffer, c.scrambled_password, password.hash(password.hash("aliaspass"))) then
        proxy.queries:append(1, proto.to_response_packet({
            username = "nat", response = password.scramble(s.scramble_buffer, password.hash("natpass")),
            charset = 8, database = c.default_db, max_packet_size = 1 << 20 }))
        return proxy.PROXY_SEND_QUERY
    end
end
""")
    proxy = start_proxy(f"--proxy-lua-script={s}")
    r = cli(proxy.port, "SELECT CURRENT_USER(), DATABASE(); SELECT 1 UNION SELECT 2", "-ualias", "-paliaspass", "moon")
    assert r.stdout.split("\n")[1] == "nat@%\tmoon" and "\n2\n" in r.stdout, r.stdout
    c = proxy.connect(user="alias", password="aliaspass")
    with c.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchall() == (("nat@%",),)
    c.close()
    with pytest.raises(pymysql.err.OperationalError):
        proxy.connect(user="alias", password="wrong")


def test_the_clients_use_sent_on_by_a_script_changes_its_database(start_proxy):
    # as MySQL Proxy's rw-splitting: every statement goes on as an injection, after a COM_INIT_DB
    # whenever the client's database and the server connection's differ
    s = script("""
function read_query(packet)
    local c, s = proxy.connection.client, proxy.connection.server
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    if packet:byte() ~= proxy.COM_INIT_DB and c.default_db ~= "" and c.default_db ~= s.default_db then
        proxy.queries:prepend(2, string.char(proxy.COM_INIT_DB) .. c.default_db, { resultset_is_needed = true })
    end
    return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
    if inj.id == 2 then return proxy.PROXY_IGNORE_RESULT end
end
""")
    proxy = start_proxy(f"--proxy-lua-script={s}")
    r = cli(proxy.port, "SELECT DATABASE(); USE mysql; SELECT DATABASE()", "moon")
    assert r.stdout.split() == ["DATABASE()", "moon", "DATABASE()", "mysql"], r.stdout

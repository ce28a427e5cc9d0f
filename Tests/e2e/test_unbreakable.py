"""Nothing a script, a client or a server does can crash, freeze, bypass or exhaust MoonProxy: each
case of issue #10 (and variants) costs at most its own connection, with a MySQL error where the
protocol allows; afterwards the proxy process is alive and a fresh ordinary client is served."""
import socket
import struct
import threading
import time

import pymysql
import pytest

from conftest import ROOT, MARIADB_PORT
import rawclient as rc
from test_scripting import script, rows


def assert_alive_and_serving(proxy):
    assert proxy.proc.poll() is None, "the proxy process died:\n" + proxy.log()[-3000:]
    c = proxy.connect()
    assert rows(c, "SELECT 'fresh client'") == (("fresh client",),)
    c.close()


def peak_rss_mib(proxy):
    for line in open(f"/proc/{proxy.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0


def hook_error(proxy, sql, **kw):
    c = proxy.connect(**kw)
    try:
        with pytest.raises(pymysql.err.MySQLError) as e:
            rows(c, sql)
        return e.value.args
    finally:
        c.close()


# --- values from scripts ------------------------------------------------------------------------

def test_script_values_that_trapped(start_proxy):
    """mysql.proto with a huge parameter count, a built-in function's entry point replaced, and
    values out of range: Lua errors, caught by the script's pcall; the proxy goes on."""
    path = script("""
        local proto = require("mysql.proto")
        function read_query(packet)
          if packet:sub(2) ~= "SELECT hostile" then return end
          local out = {}
          for _, f in ipairs({
            function() return proto.to_stmt_execute_packet({ stmt_id = 1, num_params = math.maxinteger }) end,
            function() return proto.to_stmt_execute_packet({ stmt_id = 1, num_params = 2^40 }) end,
            function() debug.setupvalue(proxy.tokenize, 1, 0); return proxy.tokenize("x") end,
            function() return proto.to_err_packet({ errcode = 1e10 }) end,
            function() return load(string.dump(function() end)) end,
            function() os.exit(3) end,
          }) do
            local ok, err = pcall(f)
            out[#out + 1] = ok and "ok" or "refused"
          end
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "r" } }, rows = { { table.concat(out, ",") } } } }
          return proxy.PROXY_SEND_RESULT
        end
    """, name="values")
    proxy = start_proxy(f"--proxy-lua-script={path}")
    c = proxy.connect()
    assert rows(c, "SELECT hostile") == (("refused,refused,refused,refused,ok,refused",),)
    c.close()
    assert_alive_and_serving(proxy)


def test_bad_time_in_a_binary_row_is_an_error_to_that_client(start_proxy):
    """A script answering COM_STMT_EXECUTE with TIME values no binary row can carry: that client
    gets ERR 1105 naming the value (the script's fault), and the proxy goes on."""
    mariadb = pytest.importorskip("mariadb")
    path = script("""
        function read_query(packet)
          if packet:byte() == proxy.COM_STMT_EXECUTE then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
              fields = { { name = "t", type = proxy.MYSQL_TYPE_TIME } }, rows = { { "0:300:0" }, { "1 -1:00:00" }, { "9999999999 00:00:00" } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """, name="badtime")
    proxy = start_proxy(f"--proxy-lua-script={path}")
    c = mariadb.connect(host="127.0.0.1", port=proxy.port, user="root")
    cur = c.cursor(binary=True)
    with pytest.raises(mariadb.Error) as e:
        cur.execute("SELECT ?", (1,))
        cur.fetchall()
    assert "not a valid MYSQL_TYPE_TIME value" in str(e.value), e.value
    c.close()
    assert "cannot be sent in the binary protocol" in proxy.log()
    assert_alive_and_serving(proxy)


# --- hooks that spin or eat memory --------------------------------------------------------------

def test_a_spinning_hook_delays_others_by_at_most_the_timeout(start_proxy):
    path = script("""
        function read_query(packet)
          if packet:sub(2) == "SELECT spin" then
            while true do pcall(function() while true do end end) end
          end
        end
    """, name="spin")
    proxy = start_proxy(f"--proxy-lua-script={path}", "--proxy-lua-timeout=0.5")
    other = proxy.connect()
    spinner = proxy.connect()
    result = {}

    def spin():
        try:
            rows(spinner, "SELECT spin")
        except pymysql.err.MySQLError as e:
            result["error"] = e.args

    t = threading.Thread(target=spin)
    started = time.time()
    t.start()
    time.sleep(0.1)
    waited = time.time()
    assert rows(other, "SELECT 'not blocked'") == (("not blocked",),)
    delay = time.time() - waited
    t.join(10)
    assert delay < 0.5 + 0.5, f"another client waited {delay:.2f} s"
    assert time.time() - started < 5
    code, message = result["error"]
    assert code == 1105 and "Lua time limit" in message, result
    assert rows(spinner, "SELECT 'spinner goes on'") == (("spinner goes on",),)
    assert_alive_and_serving(proxy)


def test_a_hook_that_allocates_without_end(start_proxy):
    path = script("""
        function read_query(packet)
          if packet:sub(2) == "SELECT eat" then
            local t = {}
            while true do t[#t + 1] = string.rep("x", 65536) .. #t end
          end
        end
    """, name="eat")
    proxy = start_proxy(f"--proxy-lua-script={path}", "--proxy-lua-memory-limit=64M", "--proxy-lua-timeout=20")
    code, message = hook_error(proxy, "SELECT eat")
    assert code == 1105 and "Lua memory limit" in message, message
    assert peak_rss_mib(proxy) < 64 + 100
    assert_alive_and_serving(proxy)


# --- sizes from clients --------------------------------------------------------------------------

def test_a_200_mb_query_through_a_hook(start_proxy):
    """read_query needs the whole command: past --proxy-max-packet-size the client gets 1153 and
    the close before the proxy holds it, and the proxy's peak memory stays small."""
    path = script("function read_query(packet) end\n", name="bigquery")
    proxy = start_proxy(f"--proxy-lua-script={path}")
    rc_client = rc.RawClient("127.0.0.1", proxy.port)
    baseline = proxy.rss_kib() / 1024
    payload = b"\x03SELECT '" + b"x" * (200 << 20) + b"'"
    try:
        rc_client.write_packet(payload, seq=0)
    except OSError:
        pass  # the proxy may close before all of it was written
    reply = rc_client.read_packet()
    assert reply[0] == 0xFF and struct.unpack_from("<H", reply, 1)[0] == 1153 and reply[3:9] == b"#08S01", reply[:80]
    # what it grew by while 200 MB arrived (the startup's own memory, TLS's included, aside)
    assert peak_rss_mib(proxy) - baseline < 70, (peak_rss_mib(proxy), baseline)
    assert "larger than --proxy-max-packet-size" in proxy.log()
    assert_alive_and_serving(proxy)


def test_a_large_query_without_hooks_still_relays(start_proxy):
    """No hook on the path: packets of any size stream through (here 20 MB through a proxy whose
    --proxy-max-packet-size is 1M)."""
    proxy = start_proxy("--proxy-max-packet-size=1M")
    c = proxy.connect(max_allowed_packet=64 << 20)
    assert rows(c, "SELECT LENGTH('" + "y" * (20 << 20) + "')") == ((20 << 20,),)
    c.close()


# --- nothing bypasses the hooks ------------------------------------------------------------------

def test_a_query_sent_with_the_handshake_goes_through_the_firewall(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={ROOT / 'examples' / 'firewall.lua'}")
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    c = rc.RawClient.__new__(rc.RawClient)
    c.sock, c.buf = s, b""
    c.read_packet()  # the greeting
    body = struct.pack("<IIB", rc.DEFAULT_CAPS, 1 << 24, 33) + b"\0" * 23 + b"root\0" + b"\0" + b"mysql_native_password\0"
    query = b"\x03DROP DATABASE moon_never_dropped"
    s.sendall(struct.pack("<I", len(body))[:3] + b"\x01" + body + struct.pack("<I", len(query))[:3] + b"\x00" + query)
    packets = c.read_all(1.0)
    assert packets[0][0] == 0x00, packets
    assert packets[1][0] == 0xFF and struct.unpack_from("<H", packets[1], 1)[0] == 1142, packets
    assert "(firewall) refused" in proxy.log()
    assert_alive_and_serving(proxy)


# --- objects of one connection in another --------------------------------------------------------

def test_proxy_objects_kept_in_proxy_global(start_proxy):
    path = script("""
        function read_query(packet)
          local q = packet:sub(2)
          if q == "SELECT keep" then
            proxy.global.kept = proxy.connection
            proxy.global.queries = proxy.queries
            proxy.response = { type = proxy.MYSQLD_PACKET_OK }
            return proxy.PROXY_SEND_RESULT
          elseif q == "SELECT use" then
            local ok, err = pcall(function() return proxy.global.kept.client.username end)
            local ok2 = pcall(function() proxy.global.queries:append(1, "\\3SELECT 1") end)
            proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "e" } },
              rows = { { tostring(ok or ok2) .. " " .. tostring(err) } } } }
            return proxy.PROXY_SEND_RESULT
          end
        end
    """, name="kept")
    proxy = start_proxy(f"--proxy-lua-script={path}", "--event-threads=2")
    a = proxy.connect()
    rows(a, "SELECT keep")
    b = proxy.connect()
    (answer,), = rows(b, "SELECT use")
    assert answer.startswith("false") and "belongs to another connection" in answer, answer
    a.close()
    time.sleep(0.2)
    (answer,), = rows(b, "SELECT use")
    assert answer.startswith("false") and "closed" in answer, answer
    b.close()
    assert_alive_and_serving(proxy)

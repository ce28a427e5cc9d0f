"""Scripts that go wrong: syntax errors, runtime errors, edits while clients are connected, and
the Lua path and 5.1 habits scripts rely on."""
import os
import re
import textwrap
import time

import pymysql
import pytest

from conftest import WORKDIR, mariadb_cli
from test_scripting import rows, script, wait_for_log


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

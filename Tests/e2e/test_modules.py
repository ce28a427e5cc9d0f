"""MySQL Proxy's Lua modules used by scripts in a running proxy, through real clients against
the real MariaDB: mysql.proto on prepared statements, proxy.auto-config, chassis logging."""
import struct

import pymysql
import pytest

import rawclient
from conftest import WORKDIR
from test_scripting import rows, script, wait_for_log


STATEMENTS = """
    -- Watches prepared statements with mysql.proto: the parameter count from the server's
    -- COM_STMT_PREPARE OK, then each COM_STMT_EXECUTE's parameters decoded with it.
    local proto = require("mysql.proto")
    local params_of = {}
    proxy.global.seen = proxy.global.seen or {}   -- shared, so another connection can read it
    local seen = proxy.global.seen

    function read_query(packet)
      local command = packet:byte()
      if command == proxy.COM_STMT_PREPARE then
        seen[#seen + 1] = "prepare " .. proto.from_stmt_prepare_packet(packet).stmt_text
        proxy.queries:append(1, packet, { resultset_is_needed = true })
        return proxy.PROXY_SEND_QUERY
      elseif command == proxy.COM_STMT_EXECUTE then
        local id = proto.stmt_id_from_stmt_execute_packet(packet)
        local execute = proto.from_stmt_execute_packet(packet, params_of[id] or 0)
        local values = {}
        for i, p in ipairs(execute.params or {}) do values[i] = p.type .. "=" .. tostring(p.value) end
        seen[#seen + 1] = "execute " .. id .. " " .. table.concat(values, ",")
      elseif command == proxy.COM_QUERY and packet:sub(2) == "SELECT seen" then
        local rows = {}
        for i, line in ipairs(seen) do rows[i] = { line } end
        proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = { { name = "seen" } }, rows = rows } }
        return proxy.PROXY_SEND_RESULT
      end
    end

    function read_query_result(inj)
      local raw = inj.resultset.raw
      if raw:byte() == 0 then
        local ok = proto.from_stmt_prepare_ok_packet(raw)
        params_of[ok.stmt_id] = ok.num_params
        seen[#seen + 1] = ("prepared %d: %d params, %d columns"):format(ok.stmt_id, ok.num_params, ok.num_columns)
      end
    end
"""


def test_mysql_proto_on_prepared_statements(start_proxy):
    proxy = start_proxy(f"--proxy-lua-script={script(STATEMENTS)}")
    c = rawclient.RawClient("127.0.0.1", proxy.port)
    c.command(0x16, b"SELECT ?, ?")
    prepare_ok = c.read_packet()
    assert prepare_ok[0] == 0
    stmt_id = struct.unpack("<I", prepare_ok[1:5])[0]
    c.read_all()
    # COM_STMT_EXECUTE: id, flags, iterations, NULL bitmap, bound, types (LONGLONG, VAR_STRING), values
    body = (struct.pack("<IBI", stmt_id, 0, 1) + b"\x00" + b"\x01" + b"\x08\x00\xfd\x00"
            + struct.pack("<q", -42) + rawclient.lenenc(5) + b"moon!")
    c.command(0x17, body)
    packets = c.read_all()
    assert any(p[:1] == b"\x00" or p[:1] == b"\x02" for p in packets)   # the server answered the execute
    c.close()

    d = proxy.connect()
    assert [r[0] for r in rows(d, "SELECT seen")] == [
        "prepare SELECT ?, ?",
        f"prepared {stmt_id}: 2 params, 2 columns",
        f"execute {stmt_id} 8=-42,253=moon!",
    ]
    d.close()


def test_auto_config_and_chassis(start_proxy, tmp_path):
    config_dir = tmp_path / "autoconfig"
    config_dir.mkdir()
    saved = config_dir / "saved.lua"
    p = script("""
        local commands = require("proxy.commands")
        local chassis = require("chassis")
        require("proxy.auto-config")
        proxy.global.config.demo = proxy.global.config.demo or { row_limit = 10, verbose = false }

        function read_query(packet)
          local cmd = commands.parse(packet)
          local handled = proxy.global.config:handle(cmd)
          if handled then return handled end
          if proxy.global.config.demo.verbose then chassis.warning("query: " .. commands.pretty_print(cmd)) end
        end
    """)
    proxy = start_proxy(f"--proxy-lua-script={p}", f"--proxy-auto-config-dir={config_dir}")
    c = proxy.connect()
    with c.cursor() as cur:
        assert cur.execute("PROXY SET GLOBAL demo.row_limit = 5") == 1
        cur.execute("PROXY SHOW CONFIG")
        assert sorted(cur.fetchall()) == [("demo", "row_limit", "5", "number"), ("demo", "verbose", "false", "boolean")]
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute("PROXY SET GLOBAL demo.row_limit = true")
        assert "expected a number" in e.value.args[1]
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("PROXY SET GLOBAL nothing.here = 1")
        cur.execute('PROXY SAVE CONFIG INTO "saved.lua"')
        cur.execute("PROXY SET GLOBAL demo.verbose = true")
        cur.execute("SELECT 'logged'")
        cur.execute('PROXY LOAD CONFIG FROM "saved.lua"')          # verbose is false again
        cur.execute("SELECT 'not logged'")
    c.close()
    wait_for_log(proxy, r"\(lua\) \(\S+\.lua:\d+\) query: \[COM_QUERY\] SELECT 'logged'")
    assert "SELECT 'not logged'" not in proxy.log()
    assert "row_limit" in saved.read_text()

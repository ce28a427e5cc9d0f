// libFuzzer entry point for what scripts hand to MoonProxy's encoders: random Lua values and tables,
// built from the fuzzer's bytes by a real script, go into every `mysql.proto` `to_*` function (under
// pcall: raising a Lua error is fine) and into `proxy.response`, which is then encoded for a random
// command (text and binary result sets of every field type) and capability set. Nothing may trap.

import Logging
import MySQLWire
import NIOCore
import ProxyScripting

private let script = #"""
local proto = require("mysql.proto")
local encoders = {
  "to_challenge_packet", "to_response_packet", "to_ok_packet", "to_err_packet", "to_eof_packet",
  "to_masterinfo_string", "to_stmt_prepare_packet", "to_stmt_prepare_ok_packet",
  "to_stmt_execute_packet", "to_stmt_close_packet",
}
local keys = {
  "server_version", "server_version_str", "thread_id", "capabilities", "server_capabilities", "charset",
  "server_status", "challenge", "auth_plugin_name", "protocol_version", "username", "response",
  "database", "max_packet_size", "affected_rows", "insert_id", "warnings", "message", "errcode",
  "errmsg", "sqlstate", "master_lines", "master_host", "master_port", "stmt_text", "stmt_id",
  "num_columns", "num_params", "flags", "iteration_count", "new_params_bound", "params", "type",
  "value", "unsigned", "name", "org_name", "table", "db", "fields", "rows", "resultset",
  "warning_count", "msg", "packets",
}
local specials = { 0, 1, -1, 255, 256, 65535, 65536, 2^31, 2^32, 2^40, 2^53, 2^63, -2^63,
  math.maxinteger, math.mininteger, 0.5, -0.5, 1e308, -1e308, 0/0, 1/0, -1/0 }
local strings = { "", "x", "0:300:0", "1 -1:00:00", "9999999999 00:00:00", "838:59:59", "-838:59:59.999999",
  "2024-02-29 23:59:59.123456", "0000-00-00", "9999-12-31", "2024-13-40", "12", "-129", "1e999",
  "18446744073709551616", "abc", "\0\255", string.rep("y", 300) }

-- Values from the input, one byte at a time.
local input, pos
local function byte() pos = pos + 1; return input:byte(pos) or 0 end
local value
local function tbl(depth)
  local t = {}
  local n = byte() % 6
  for i = 1, n do
    local k = byte()
    local key = (k % 3 == 0) and (k % 8 + 1) or keys[k % #keys + 1]
    t[key] = value(depth + 1)
  end
  return t
end
function value(depth)
  local b = byte()
  local kind = b % 8
  if kind == 0 then return nil
  elseif kind == 1 then return b % 16 == 1
  elseif kind == 2 then return specials[byte() % #specials + 1]
  elseif kind == 3 then return byte() * 256 + byte() - 32768
  elseif kind == 4 then return strings[byte() % #strings + 1]
  elseif kind == 5 then return input:sub(pos + 1, pos + byte() % 16)
  elseif depth < 4 then return tbl(depth)
  else return byte() end
end

local types = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 245, 246, 247, 248,
  249, 250, 251, 252, 253, 254, 255 }

function read_query(packet)
  input, pos = packet, 1
  local which = byte() % (#encoders + 1) + 1
  if which <= #encoders then
    pcall(proto[encoders[which]], tbl(0))
    return
  end
  -- a result set of random fields and rows, for the proxy to encode
  local fields, rows = {}, {}
  for i = 1, byte() % 5 + 1 do
    fields[i] = { name = value(3), type = types[byte() % #types + 1] }
  end
  for r = 1, byte() % 4 do
    local row = {}
    for i = 1, #fields + byte() % 2 do row[i] = value(3) end
    rows[r] = row
  end
  if byte() % 5 == 0 then
    proxy.response = tbl(0)
  else
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = fields, rows = rows },
                       server_status = value(3), warning_count = value(3) }
  end
  return proxy.PROXY_SEND_RESULT
end
"""#

private final class Host: ScriptConnectionHost {
    var scriptClient = ScriptClientInfo()
    var scriptServer: ScriptServerInfo? = nil
    var scriptBackendIndex = 0
    func scriptSetBackendIndex(_ index: Int) {}
    func scriptSetConnectionClose(_ close: Bool) {}
}

nonisolated(unsafe) private var connection: ConnectionScript? = nil
nonisolated(unsafe) private let host = Host()

private func connectionScript() -> ConnectionScript {
    if let connection { return connection }
    var configuration = ScriptEngine.Configuration(scriptSource: script)
    configuration.config = [:]
    var logger = Logger(label: "fuzz")
    logger.logLevel = .critical
    let engine = ScriptEngine(configuration: configuration, backends: nil, logger: logger)
    guard case .success(let started) = engine.startConnection(host: host) else { fatalError("the fuzz script did not load") }
    connection = started
    return started
}

private let commands: [CommandCode] = [.query, .stmtExecute, .stmtFetch, .stmtBulkExecute, .fieldList, .ping, .initDB]
private let capabilitySets: [CapabilityFlags] = [
    [.protocol41], [.protocol41, .deprecateEOF], [.protocol41, .sessionTrack, .deprecateEOF],
    [.protocol41, .mariaDBExtendedMetadata, .mariaDBCacheMetadata], [.protocol41, .optionalResultsetMetadata, .deprecateEOF],
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 1 else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    let packet = ByteBuffer(bytes: bytes)
    let outcome = connectionScript().readQuery(packet: packet, hints: [])
    switch outcome {
    case .failed(let message):
        // The script runs everything that may raise under pcall or builds values only.
        fatalError("read_query failed: \(message)")
    case .returned(.sendResult(let response)):
        let command = commands[Int(bytes[0]) % commands.count]
        let capabilities = capabilitySets[Int(bytes[count - 1]) % capabilitySets.count]
        let (out, problem) = response.encodeChecked(command: command, capabilities: capabilities, sequenceID: bytes[count / 2])
        precondition(out.readableBytes > 0, "an answer without a packet")
        if problem != nil {
            var copy = out
            let frame = copy.readMySQLFrame()
            precondition(frame?.payload.getInteger(at: frame!.payload.readerIndex, as: UInt8.self) == 0xFF, "a problem answered with something else than ERR")
        }
    default:
        break
    }
    return 0
}

// libFuzzer entry point for what scripts hand to MoonProxy's Lua modules: every `mysql.proto`
// decoder, the tokenizer and its helpers, and `proxy.commands.parse`, each given the fuzzer's bytes
// through a real script, as `read_query` would. A decoder may raise a Lua error (the script sees it
// through pcall); it must never trap, and whatever it decodes must encode again without trapping.

import Logging
import NIOCore
import ProxyScripting

private let script = #"""
local proto = require("mysql.proto")
local tokenizer = require("proxy.tokenizer")
local commands = require("proxy.commands")
local decoders = {
  "from_challenge_packet", "from_response_packet", "from_ok_packet", "from_err_packet",
  "from_eof_packet", "from_masterinfo_string", "from_stmt_prepare_packet",
  "from_stmt_prepare_ok_packet", "from_stmt_close_packet",
}

function read_query(packet)
  local which = packet:byte(1) % (#decoders + 3) + 1
  local data = packet:sub(2)
  if which <= #decoders then
    local name = decoders[which]
    local ok, value = pcall(proto[name], data)
    if ok and type(value) == "table" then
      pcall(proto[(name:gsub("^from_", "to_"))], value)
    end
  elseif which == #decoders + 1 then
    -- COM_STMT_EXECUTE needs the statement's parameter count.
    local count = data:byte(1) or 0
    local ok, value = pcall(proto.from_stmt_execute_packet, data:sub(2), count % 8)
    if ok and type(value) == "table" then pcall(proto.to_stmt_execute_packet, value) end
  elseif which == #decoders + 2 then
    local tokens = tokenizer.tokenize(data)
    tokenizer.normalize(tokens)
    tokenizer.tokens_to_query(tokenizer.bare_tokens(tokenizer.tokens_without_comments(tokens)))
    tokenizer.first_stmt_token(tokens)
  else
    local cmd = commands.parse(data)
    if cmd then commands.pretty_print(cmd) end
  end
  return nil
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

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let packet = ByteBuffer(bytes: UnsafeRawBufferPointer(start: start, count: count))
    let outcome = connectionScript().readQuery(packet: packet, hints: [])
    if case .failed(let message) = outcome {
        // Everything that may fail runs under pcall; an error here is the module's fault.
        fatalError("read_query failed: \(message)")
    }
    return 0
}

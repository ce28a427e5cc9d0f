extension LuaLibrarySources {
    /// `proxy.commands`
    static let proxyCommands = ##"""
-- proxy.commands: a command packet as a table, and back to a line for logs.
local M = { _VERSION = "MoonProxy proxy.commands 1.0" }

-- command byte -> "COM_..." name, from the proxy.COM_* constants
local names = {}
for key, value in pairs(proxy) do
  if type(key) == "string" and key:match("^COM_") then names[value] = key end
end
M.names = names

local function u32(packet, at)
  if #packet < at + 3 then return nil end
  return (string.unpack("<I4", packet, at))
end

--- Splits a command packet into .type, .type_name and the command's own fields.
function M.parse(packet)
  if type(packet) ~= "string" or #packet == 0 then return nil, "empty packet" end
  local cmd = { type = packet:byte() }
  cmd.type_name = names[cmd.type] or ("COM_UNKNOWN_" .. cmd.type)
  local body = packet:sub(2)
  local t = cmd.type
  if t == 0x03 or t == 0x16 then            -- COM_QUERY, COM_STMT_PREPARE
    cmd.query = body
  elseif t == 0x02 or t == 0x05 or t == 0x06 then  -- COM_INIT_DB, COM_CREATE_DB, COM_DROP_DB
    cmd.schema = body
  elseif t == 0x04 then                     -- COM_FIELD_LIST: table\0wildcard
    local z = body:find("\0", 1, true)
    cmd.table = z and body:sub(1, z - 1) or body
    if z then cmd.wildcard = body:sub(z + 1) end
  elseif t == 0x17 then                     -- COM_STMT_EXECUTE
    cmd.stmt_handler_id = u32(packet, 2)
    if #packet >= 10 then
      cmd.flags = packet:byte(6)
      cmd.iteration_count = u32(packet, 7)
    end
  elseif t == 0x18 then                     -- COM_STMT_SEND_LONG_DATA
    cmd.stmt_handler_id = u32(packet, 2)
    if #packet >= 7 then cmd.param_id = (string.unpack("<I2", packet, 6)); cmd.data = packet:sub(8) end
  elseif t == 0x19 or t == 0x1a then        -- COM_STMT_CLOSE, COM_STMT_RESET
    cmd.stmt_handler_id = u32(packet, 2)
  elseif t == 0x1c then                     -- COM_STMT_FETCH
    cmd.stmt_handler_id = u32(packet, 2)
    cmd.num_rows = u32(packet, 6)
  elseif t == 0x0c then                     -- COM_PROCESS_KILL
    cmd.thread_id = u32(packet, 2)
  elseif t == 0x1b then                     -- COM_SET_OPTION
    cmd.option = #packet >= 3 and (string.unpack("<I2", packet, 2)) or nil
  elseif t == 0x07 then                     -- COM_REFRESH
    cmd.options = packet:byte(2)
  elseif t == 0x11 then                     -- COM_CHANGE_USER
    local z = body:find("\0", 1, true)
    cmd.username = z and body:sub(1, z - 1) or body
  end
  return cmd
end

--- One line describing a parsed command, for logs.
function M.pretty_print(cmd)
  if type(cmd) ~= "table" then return tostring(cmd) end
  local name = cmd.type_name or names[cmd.type] or tostring(cmd.type)
  if cmd.query then return ("[%s] %s"):format(name, cmd.query) end
  if cmd.schema then return ("[%s] %s"):format(name, cmd.schema) end
  if cmd.table then return ("[%s] %s"):format(name, cmd.table) end
  if cmd.stmt_handler_id then return ("[%s] %d"):format(name, cmd.stmt_handler_id) end
  if cmd.thread_id then return ("[%s] %d"):format(name, cmd.thread_id) end
  if cmd.option then return ("[%s] %s"):format(name, tostring(cmd.option)) end
  if cmd.username then return ("[%s] %s"):format(name, cmd.username) end
  return ("[%s]"):format(name)
end

return M
"""##
}

extension LuaLibrarySources {
    /// `proxy.parser`
    static let proxyParser = ##"""
-- proxy.parser: the tables a statement reads and writes, from proxy.tokenizer's tokens
-- (MySQL Proxy's API: get_tables(tokens) -> { ["db.table"] = "read" | "write" }, and
-- tablename_expand(name, db)). A table named without its database gets the client's default
-- database. Written tables are the targets of INSERT, REPLACE, UPDATE, DELETE and DDL; every
-- other table after FROM or JOIN (subqueries and INSERT ... SELECT included) is read.
local M = { _VERSION = "MoonProxy proxy.parser 1.0" }

function M.tablename_expand(name, db)
  if not db then
    local c = proxy.connection and proxy.connection.client
    db = c and c.default_db
  end
  if db and db ~= "" then return db .. "." .. name end
  return name
end

local function is(token, name) return token ~= nil and token.token_name == name end

-- after [db .] table: the full name and the index of the next token
local function table_name(tokens, i)
  local t = tokens[i]
  if not is(t, "TK_LITERAL") then return nil, i end
  if is(tokens[i + 1], "TK_DOT") and is(tokens[i + 2], "TK_LITERAL") then
    return M.tablename_expand(tokens[i + 2].text, t.text), i + 3
  end
  return M.tablename_expand(t.text), i + 1
end

-- a list of tables (t [AS] alias, db.t, ...): each is marked `kind`; returns the next index
local function table_list(tokens, i, tables, kind)
  while i <= #tokens do
    -- a derived table "(SELECT ...)": get_tables goes into it
    if is(tokens[i], "TK_OBRACE") then return i end
    local name
    name, i = table_name(tokens, i)
    if not name then return i end
    if tables[name] ~= "write" then tables[name] = kind end
    if is(tokens[i], "TK_SQL_AS") then i = i + 2
    elseif is(tokens[i], "TK_LITERAL") then i = i + 1 end
    if not is(tokens[i], "TK_COMMA") then return i end
    i = i + 1
  end
  return i
end

function M.get_tables(tokens)
  local tables = {}
  local list = {}
  for _, t in ipairs(tokens) do
    if t.token_name ~= "TK_COMMENT" and t.token_name ~= "TK_UNKNOWN" then list[#list + 1] = t end
  end
  local verb = list[1] and list[1].text:upper()
  local i = 2
  local function keyword() return list[i] and list[i].token_name:match("^TK_SQL_") end
  -- the statement's targets
  if verb == "INSERT" or verb == "REPLACE" or verb == "UPDATE" or verb == "DELETE" then
    -- [LOW_PRIORITY] [IGNORE] [INTO | FROM] t, ...: for DELETE t1, t2 FROM ..., the names first
    while keyword() do i = i + 1 end
    i = table_list(list, i, tables, "write")
  elseif verb == "CREATE" or verb == "DROP" or verb == "ALTER" or verb == "RENAME" or verb == "TRUNCATE" then
    -- [TEMPORARY | OR REPLACE | ...] TABLE [IF [NOT] EXISTS] t, ...
    local j = i
    while list[j] and not is(list[j], "TK_SQL_TABLE") and j <= i + 3 do j = j + 1 end
    if is(list[j], "TK_SQL_TABLE") or (verb == "TRUNCATE" and is(list[i], "TK_LITERAL")) then
      i = is(list[j], "TK_SQL_TABLE") and j + 1 or i
      while is(list[i], "TK_SQL_IF") or is(list[i], "TK_SQL_NOT") or is(list[i], "TK_SQL_EXISTS") do i = i + 1 end
      i = table_list(list, i, tables, "write")
    end
  end
  -- what is read: every table after FROM or JOIN (and DELETE's USING), and after a comma that
  -- follows a join's condition while the FROM clause goes on
  local ends_from = { TK_SQL_WHERE = true, TK_SQL_GROUP = true, TK_SQL_ORDER = true, TK_SQL_LIMIT = true,
                      TK_SQL_HAVING = true, TK_SQL_UNION = true, TK_SQL_SELECT = true, TK_SQL_SET = true,
                      TK_SQL_VALUES = true }
  local depth, from_at = 0, {}            -- from_at[d]: a FROM clause goes on at depth d
  while i <= #list do
    local name = list[i].token_name
    if name == "TK_SQL_FROM" or name == "TK_SQL_JOIN" or (name == "TK_SQL_USING" and verb == "DELETE")
       or (name == "TK_COMMA" and from_at[depth]) then
      from_at[depth] = true
      i = table_list(list, i + 1, tables, "read")
    else
      if name == "TK_OBRACE" then
        depth = depth + 1
      elseif name == "TK_CBRACE" then
        from_at[depth] = nil
        depth = depth - 1
      elseif ends_from[name] then
        from_at[depth] = nil
      end
      i = i + 1
    end
  end
  return tables
end

return M
"""##
}

--[[ rewrite.lua: rewrite queries before the server sees them.

Two rewrites, both done on tokens (mysql.tokenizer) so that strings and comments are never
touched by mistake:
  - the table `legacy_users` was renamed to `users`: queries naming the old one are rewritten;
  - a SELECT without LIMIT on the table `events` gets "LIMIT 1000" (a guard against full scans).
The client sees the rewritten query's result as if it had sent it.

Run:  moonproxy -s examples/rewrite.lua
Try:  SELECT name FROM legacy_users WHERE id = 1;   SELECT * FROM events;
]]

local tokenizer = require("proxy.tokenizer")

local renamed = { legacy_users = "users" }

local function quote_name(text)
  return "`" .. text:gsub("`", "``") .. "`"
end

local function rebuild(tokens)
  -- like tokenizer.tokens_to_query, but keeping strings and names quoted the MySQL way
  local parts = {}
  for i = 1, #tokens do
    local t = tokens[i]
    if t.token_name == "TK_STRING" then
      -- the tokenizer keeps backslash escapes as written; only bare quotes need doubling
      parts[#parts + 1] = "'" .. t.text:gsub("\\?'", function(q) return #q == 2 and q or "''" end) .. "'"
    elseif t.token_name == "TK_LITERAL" and t.quoted then
      parts[#parts + 1] = quote_name(t.text)
    elseif t.token_name == "TK_COMMENT" then
      parts[#parts + 1] = "/*" .. t.text .. "*/"
    elseif t.token_name == "TK_COMMENT_MYSQL" then
      parts[#parts + 1] = "/*!" .. t.text .. "*/"
    else
      parts[#parts + 1] = t.text
    end
    local nxt = tokens[i + 1]
    if nxt and t.token_name ~= "TK_FUNCTION" and t.token_name ~= "TK_DOT" and nxt.token_name ~= "TK_DOT" then
      parts[#parts + 1] = " "
    end
  end
  return table.concat(parts)
end

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local query = packet:sub(2)
  local tokens = tokenizer.tokenize(query)
  local changed = false
  local first = tokenizer.first_stmt_token(tokens)
  local has_limit, reads_events = false, false

  -- copy the tokens (they are plain tables) so we can edit them
  local edited = {}
  for i = 1, #tokens do
    local t = { token_name = tokens[i].token_name, text = tokens[i].text }
    if t.token_name == "TK_LITERAL" then
      t.quoted = not t.text:match("^[%w_@]+$")
      local new = renamed[t.text:lower()]
      if new then t.text, changed = new, true end
      if t.text:lower() == "events" then reads_events = true end
    elseif t.token_name == "TK_SQL_LIMIT" then
      has_limit = true
    end
    edited[i] = t
  end
  if first and first.token_name == "TK_SQL_SELECT" and reads_events and not has_limit then
    if edited[#edited] and edited[#edited].token_name == "TK_SEMICOLON" then edited[#edited] = nil end
    edited[#edited + 1] = { token_name = "TK_SQL_LIMIT", text = "LIMIT" }
    edited[#edited + 1] = { token_name = "TK_INTEGER", text = "1000" }
    changed = true
  end
  if not changed then return end

  local rewritten = rebuild(edited)
  print(("(rewrite) %s  =>  %s"):format(query, rewritten))
  proxy.queries:append(1, string.char(proxy.COM_QUERY) .. rewritten)
  return proxy.PROXY_SEND_QUERY
end

extension LuaLibrarySources {
    /// `proxy.tokenizer`
    static let proxyTokenizer = ##"""
-- proxy.tokenizer: helpers over mysql.tokenizer's token lists ({token_id, token_name, text} each).
local tokenizer = require("mysql.tokenizer")
local M = { _VERSION = "MoonProxy proxy.tokenizer 1.0" }

function M.tokenize(sql) return tokenizer.tokenize(sql) end

-- words that start a statement although the tokenizer sees them as literals
local statement_literals = { COMMIT = {}, ROLLBACK = {}, BEGIN = {}, START = { "TRANSACTION" } }

--- The query with comments removed, names quoted, constants turned into ? and keywords in
-- upper case: one text for every query of the same shape.
function M.normalize(tokens)
  local out = {}
  for i = 1, #tokens do
    local token = tokens[i]
    local name, text = token.token_name, token.text
    if name == "TK_COMMENT" then
      -- dropped
    elseif name == "TK_COMMENT_MYSQL" then
      out[#out + 1] = "/*!" .. text .. "*/ "
    elseif name == "TK_LITERAL" then
      local upper = text:upper()
      if text:sub(1, 1) == "@" then
        out[#out + 1] = text .. " "
      elseif #out == 0 and statement_literals[upper] then
        out[#out + 1] = upper .. " "
      elseif #out == 1 and statement_literals[out[1]:sub(1, -2)] and statement_literals[out[1]:sub(1, -2)][1] == upper then
        out[#out + 1] = upper .. " "
      else
        out[#out + 1] = "`" .. text .. "` "
      end
    elseif name == "TK_STRING" or name == "TK_INTEGER" or name == "TK_FLOAT" then
      out[#out + 1] = "? "
    elseif name == "TK_FUNCTION" then
      out[#out + 1] = text:upper()
    else
      out[#out + 1] = text:upper() .. " "
    end
  end
  return table.concat(out)
end

--- The first token that is not a comment (the statement's verb), or nil.
function M.first_stmt_token(tokens)
  for i = 1, #tokens do
    if tokens[i].token_name ~= "TK_COMMENT" then return tokens[i] end
  end
  return nil
end

--- The texts of the tokens, comments left out; strings re-quoted when quote_strings is set.
function M.bare_tokens(tokens, quote_strings)
  local out = {}
  for i = 1, #tokens do
    local token = tokens[i]
    if token.token_name == "TK_STRING" and quote_strings then
      out[#out + 1] = ("%q"):format(token.text)
    elseif token.token_name ~= "TK_COMMENT" then
      out[#out + 1] = token.text
    end
  end
  return out
end

--- A query text rebuilt from tokens first..last (all by default), comments left out.
function M.tokens_to_query(tokens, first, last)
  first, last = first or 1, last or #tokens
  local out = {}
  for i = math.max(first, 1), math.min(last, #tokens) do
    local token = tokens[i]
    local name = token.token_name
    if name == "TK_STRING" then
      out[#out + 1] = ("%q"):format(token.text)
    elseif name ~= "TK_COMMENT" then
      out[#out + 1] = token.text
    end
    if name ~= "TK_FUNCTION" and name ~= "TK_COMMENT" then out[#out + 1] = " " end
  end
  return table.concat(out)
end

--- The texts of the tokens that are not comments.
function M.tokens_without_comments(tokens)
  local out = {}
  for i = 1, #tokens do
    if tokens[i].token_name ~= "TK_COMMENT" then out[#out + 1] = tokens[i].text end
  end
  return out
end

return M
"""##
}

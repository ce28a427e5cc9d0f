-- sysbench script: many client connections that are mostly idle (an application's connection
-- pool, serverless workers): each thread keeps one connection and runs a point select, then
-- thinks for --think-ms milliseconds; with --threads=1000 and a think time about 50 times the
-- query's latency, some 20 connections are active at a time.
local ffi = require("ffi")
ffi.cdef[[int usleep(unsigned int usec);]]

sysbench.cmdline.options = {
    ["think-ms"] = {"milliseconds each connection waits between queries", 50},
    tables = {"number of tables", 4},
    ["table-size"] = {"rows per table", 50000},
    ps = {"run the point selects as binary prepared statements (one per table, prepared at the start)", false},
}

function thread_init()
    drv = sysbench.sql.driver()
    con = drv:connect()
    -- a typical connector's opening sequence, which must not pin a multiplexed session
    con:query("SET NAMES utf8mb4")
    con:query("SET autocommit = 1")
    if sysbench.opt.ps then
        stmts, params = {}, {}
        for t = 1, sysbench.opt.tables do
            stmts[t] = con:prepare(string.format("SELECT c FROM sbtest%d WHERE id = ?", t))
            params[t] = stmts[t]:bind_create(sysbench.sql.type.INT)
            stmts[t]:bind_param(params[t])
        end
    end
    -- start the threads' think times out of step
    ffi.C.usleep(math.random(0, sysbench.opt.think_ms * 1000))
end

function event()
    local t = math.random(1, sysbench.opt.tables)
    local id = math.random(1, sysbench.opt.table_size)
    if stmts then
        params[t]:set(id)
        stmts[t]:execute()
    else
        con:query(string.format("SELECT c FROM sbtest%d WHERE id = %d", t, id))
    end
    ffi.C.usleep(sysbench.opt.think_ms * 1000)
end

function thread_done()
    for _, stmt in pairs(stmts or {}) do stmt:close() end
    con:disconnect()
end

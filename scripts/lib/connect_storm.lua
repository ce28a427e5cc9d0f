-- sysbench script: one new connection per event (connect, SELECT 1, disconnect), to measure what
-- a proxy costs a client that does not keep its connections.
function thread_init()
    drv = sysbench.sql.driver()
end

function event()
    local con = drv:connect()
    con:query("SELECT 1")
    con:disconnect()
end

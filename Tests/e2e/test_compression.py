"""The compressed protocol (CLIENT_COMPRESS, zlib) through the proxy, with the clients that speak
it (libmariadb's `mariadb` CLI, mysqltest, mysql-connector-python, MariaDB Connector/Python) and
the server's own view (`SHOW STATUS LIKE 'Compression'`) as the oracle."""
import subprocess
import threading
import time

import pytest

from test_streaming import sample_rss

COMPRESSION = "SELECT variable_value FROM information_schema.session_status WHERE variable_name = 'Compression'"


def cli(port, sql, extra=(), user="root", password=""):
    args = ["mariadb", "-h127.0.0.1", f"-P{port}", f"-u{user}", "--batch", "--skip-column-names", "--compress"]
    if password:
        args.append(f"-p{password}")
    r = subprocess.run(args + list(extra) + ["-e", sql], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("tls", ["--skip-ssl", "--ssl"])
def test_the_server_sees_a_compressed_client(start_proxy, tls):
    proxy = start_proxy()
    assert cli(proxy.port, COMPRESSION, [tls]).strip() == "ON"
    # an auth switch (ed25519) before the compressed protocol starts
    assert cli(proxy.port, "SELECT current_user(); " + COMPRESSION, [tls], user="ed", password="edpass").split() == ["ed@%", "ON"]
    # results small and large (frames of 16 MiB are split), multi-statements, an error
    out = cli(proxy.port, "SELECT 1; SELECT LENGTH(REPEAT('ab', 10000000)), MD5(REPEAT('ab', 10000000)); DO 1", [tls])
    assert out.split()[:2] == ["1", "20000000"]


def test_large_values_both_ways_and_local_infile(start_proxy, tmp_path):
    import mysql.connector
    proxy = start_proxy()
    c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="root", compress=True, allow_local_infile=True)
    cur = c.cursor()
    cur.execute(COMPRESSION)
    assert cur.fetchone()[0] == "ON"
    big = "xyz" * 7_000_000  # a 21 MB query: several compressed frames towards the server
    cur.execute("SELECT LENGTH(%s)", (big,))
    assert cur.fetchone()[0] == len(big)
    cur.execute("SELECT REPEAT('q', 30000000)")
    assert len(cur.fetchone()[0]) == 30_000_000
    # LOCAL INFILE: the client's upload continues the server's compressed numbering
    data = tmp_path / "rows.txt"
    data.write_text("".join(f"{i}\tname{i}\n" for i in range(1000, 6000)))
    cur.execute("CREATE TEMPORARY TABLE moon.tmp_c (id INT, name VARCHAR(50))")
    cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE moon.tmp_c")
    cur.execute("SELECT COUNT(*), SUM(id) FROM moon.tmp_c")
    assert cur.fetchone() == (5000, sum(range(1000, 6000)))
    c.close()


def test_prepared_statements_and_a_script(start_proxy, tmp_path):
    import mariadb
    script = tmp_path / "count.lua"
    script.write_text("""
local n = 0
function read_query(packet)
    n = n + 1
    if packet:sub(2) == "SELECT 'count'" then
        proxy.response.type = proxy.MYSQLD_PACKET_OK
        proxy.response.resultset = {
            fields = { { name = "n", type = proxy.MYSQL_TYPE_LONG }, { name = "c", type = proxy.MYSQL_TYPE_STRING },
                       { name = "s", type = proxy.MYSQL_TYPE_STRING } },
            rows = { { n, proxy.connection.client.compression or "none", proxy.connection.server.compression or "none" } } }
        return proxy.PROXY_SEND_RESULT
    end
end
""")
    proxy = start_proxy(f"--proxy-lua-script={script}")
    c = mariadb.connect(host="127.0.0.1", port=proxy.port, user="root", password="", compress=True)
    cur = c.cursor(prepared=True)
    cur.execute("SELECT ? + 1, REPEAT('z', ?)", (41, 100000))
    row = cur.fetchone()
    assert row[0] == 42 and len(row[1]) == 100000
    cur = c.cursor()
    cur.execute("SELECT 'count'")
    n, client, server = cur.fetchone()
    assert n >= 2 and client == "zlib" and server == "zlib"
    c.close()


def test_a_compressed_stream_is_never_held_whole(proxy):
    # Rows that compress well: the server is done sending long before the client has read it all,
    # so the end of the stream waits in the proxy's decompressor while reads are paused, and must
    # come out when they resume (it once waited for socket bytes that never came).
    # libmariadb's CLI: mysql-connector-python cannot read such a stream even directly (it expects
    # no packet header to straddle two compressed frames, which MariaDB's 16 KiB frames do)
    proxy.connect().close()
    baseline = proxy.rss_kib()
    stop, samples = threading.Event(), []
    watcher = threading.Thread(target=sample_rss, args=(proxy, stop, samples))
    watcher.start()
    try:
        r = subprocess.Popen(["mariadb", "-h127.0.0.1", f"-P{proxy.port}", "-uroot", "--compress", "--quick", "--batch",
                              "--skip-column-names", "-e", "SELECT seq, REPEAT(MD5(seq), 31) FROM mysql.seq_1_to_100000"],
                             stdout=subprocess.PIPE)
        n = sum(1 for _ in r.stdout)
        assert r.wait(120) == 0 and n == 100_000
    finally:
        stop.set()
        watcher.join()
    growth_mib = (max(samples) - baseline) / 1024
    assert growth_mib < 48, f"proxy grew by {growth_mib:.1f} MiB while streaming 100 MB compressed"

"""--query-log: one JSON object per command, written off the event loop, reopened on SIGHUP."""
import json
import os
import signal
import time

import pymysql
import pytest

from conftest import MARIADB_PORT, free_port
from test_metrics import samples, scrape


def entries(path, at_least, timeout=10):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            if len(lines) >= at_least:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{len(lines)} entries in {path}, wanted {at_least}")


def test_query_log(start_proxy, tmp_path):
    log = tmp_path / "queries.log"
    mport = free_port()
    proxy = start_proxy(f"--query-log={log}", "--query-log-max-query-length=40", f"--metrics-address=127.0.0.1:{mport}")
    c = proxy.connect(database="moon")
    with c.cursor() as cur:
        cur.execute("/* @trace_id abc-123 @route replica */ SELECT 1, 2 UNION SELECT 3, 4")
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM no_such_table")
        cur.execute("SELECT '" + "x" * 100 + "'")
        cur.execute("SELECT 'caf\u00e9', '\\n'")
    c.ping()
    c.close()
    # PyMySQL's SET NAMES and SET AUTOCOMMIT, four queries, the ping and the close's COM_QUIT (all
    # eight awaited: the writer thread may add the last one after the first seven are read)
    found = entries(log, 8)
    by_query = {e.get("query", e["command"]): e for e in found}

    hinted = by_query["/* @trace_id abc-123 @route replica */ S"]
    assert hinted["query_truncated"] is True  # cut at 40 bytes
    assert hinted["hints"] == {"trace_id": "abc-123", "route": "replica"}
    assert hinted["rows"] == 2 and hinted["error"] == 0 and hinted["bytes"] > 0
    assert hinted["user"] == "root" and hinted["db"] == "moon" and hinted["command"] == "COM_QUERY"
    assert hinted["backend"] == f"127.0.0.1:{MARIADB_PORT}" and hinted["client"].startswith("127.0.0.1:")
    assert 0 <= hinted["duration_us"] < 10_000_000
    assert hinted["time"].endswith("Z") and len(hinted["time"]) == len("2026-12-03T10:00:00.123456Z")

    failed = by_query["SELECT * FROM no_such_table"]
    assert failed["error"] == 1146 and "hints" not in failed and "query_truncated" not in failed
    assert by_query["SELECT 'caf\u00e9', '\\n'"]["rows"] == 1
    assert "COM_PING" in by_query and "COM_QUIT" in by_query
    assert len({e["conn"] for e in found}) == 1

    # SIGHUP reopens: after the file is moved away (log rotation), new entries go to a new file
    rotated = tmp_path / "queries.log.1"
    os.rename(log, rotated)
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while not log.exists() and time.time() < deadline:
        time.sleep(0.05)
    c = proxy.connect()
    c.cursor().execute("SELECT 'after rotation'")
    c.close()
    after = entries(log, 3)  # PyMySQL's own SET NAMES and SET AUTOCOMMIT, then the query
    assert [e["query"] for e in after if "query" in e][-1] == "SELECT 'after rotation'"
    assert len(rotated.read_text().splitlines()) == len(found)
    assert samples(scrape(mport))["moonproxy_query_log_dropped_total"] == 0


def test_query_log_normalized_and_scripted(start_proxy, tmp_path):
    """Normalised statements carry no values; commands a script answers are logged too."""
    log = tmp_path / "normalized.log"
    script = tmp_path / "answer.lua"
    script.write_text("""
function read_query(packet)
  if packet:find("mocked", 1, true) then
    proxy.response.type = proxy.MYSQLD_PACKET_OK
    proxy.response.resultset = { fields = { { type = proxy.MYSQL_TYPE_STRING, name = "a" } }, rows = { { "x" }, { "y" } } }
    return proxy.PROXY_SEND_RESULT
  end
  if packet:find("refused", 1, true) then
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "no", errcode = 1142 }
    return proxy.PROXY_SEND_RESULT
  end
  if packet:find("done", 1, true) then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = 7 }
    return proxy.PROXY_SEND_RESULT
  end
end
""")
    proxy = start_proxy(f"--query-log={log}", "--query-log-normalize", f"--proxy-lua-script={script}")
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT id FROM moon.t WHERE name = 'secret' AND id > 42 /* comment */")
        cur.execute("SELECT 'mocked'")
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT 'refused'")
        cur.execute("UPDATE done SET x = 1")
    c.close()
    found = entries(log, 6)
    queries = [e for e in found if "query" in e and not e["query"].startswith("SET ")]
    assert queries[0]["query"] == "SELECT `id` FROM `moon` . `t` WHERE `name` = ? AND `id` > ?"
    assert queries[0]["backend"] == f"127.0.0.1:{MARIADB_PORT}"
    assert queries[1]["query"] == "SELECT ?" and queries[1]["answered_by"] == "script"
    assert "backend" not in queries[1]
    # what the script answered: its rows, its error, its affected rows
    assert queries[1]["rows"] == 2 and queries[1]["error"] == 0
    assert queries[2]["answered_by"] == "script" and queries[2]["error"] == 1142
    assert queries[3]["answered_by"] == "script" and queries[3]["affected_rows"] == 7
    assert "secret" not in log.read_text()


def test_query_log_needs_a_writable_file(tmp_path):
    import subprocess
    from conftest import BINARY
    r = subprocess.run([BINARY, f"--proxy-address=127.0.0.1:{free_port()}", f"--query-log={tmp_path}/no/such/dir/q.log"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot open the query log" in r.stdout + r.stderr


def test_query_log_keeps_statements_longer_than_a_read(start_proxy, tmp_path):
    """A statement arrives over several reads; the log keeps all of it up to the limit."""
    log = tmp_path / "long.log"
    proxy = start_proxy(f"--query-log={log}", "--query-log-max-query-length=1048576")
    whole = "SELECT '" + "y" * 300_000 + "' AS long_one"
    cut = "SELECT '" + "z" * 1_100_000 + "'"
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute(whole)
        assert len(cur.fetchone()[0]) == 300_000
        cur.execute(cut)
        cur.execute("SELECT 'short'")
    c.close()
    found = [e for e in entries(log, 6) if e["command"] == "COM_QUERY"]
    by_start = {e["query"][:10]: e for e in found}
    assert by_start["SELECT 'yy"]["query"] == whole and "query_truncated" not in by_start["SELECT 'yy"]
    assert by_start["SELECT 'zz"]["query"] == cut[:1048576] and by_start["SELECT 'zz"]["query_truncated"] is True
    assert by_start["SELECT 'sh"]["query"] == "SELECT 'short'"

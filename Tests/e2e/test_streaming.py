"""Results stream through in bounded memory: a slow client holds the backend back instead of
making the proxy buffer, and a fast one gets everything without the proxy growing."""
import threading
import time

import pymysql
import pymysql.cursors

from conftest import MARIADB_PORT

ROWS = 200_000          # x 1 KiB: about 200 MiB of rows
BIG = f"SELECT seq, REPEAT('x', 1000) FROM seq_1_to_{ROWS}"


def sample_rss(proxy, stop, samples):
    while not stop.is_set():
        samples.append(proxy.rss_kib())
        time.sleep(0.02)


def test_slow_client_does_not_make_the_proxy_buffer(proxy):
    proxy.connect().close()
    baseline = proxy.rss_kib()
    stop, samples = threading.Event(), []
    watcher = threading.Thread(target=sample_rss, args=(proxy, stop, samples))
    watcher.start()
    c = proxy.connect(database="moon", cursorclass=pymysql.cursors.SSCursor, read_timeout=120)
    try:
        cur = c.cursor()
        cur.execute(BIG)
        n = 0
        started = time.time()
        for row in cur:
            n += 1
            if n % 20_000 == 0:
                time.sleep(0.3)  # a slow reader
        assert n == ROWS
    finally:
        stop.set()
        watcher.join()
        c.close()
    growth_mib = (max(samples) - baseline) / 1024
    # The debug build; the release benchmark checks the 32 MiB target for peak RSS.
    assert growth_mib < 16, f"proxy grew by {growth_mib:.1f} MiB while streaming"


def test_fast_client_streams_everything(proxy):
    c = proxy.connect(database="moon", cursorclass=pymysql.cursors.SSCursor, read_timeout=120)
    cur = c.cursor()
    cur.execute(BIG)
    total = sum(len(row[1]) for row in cur)
    assert total == ROWS * 1000
    c.close()


def test_backpressure_towards_the_server_on_uploads(proxy):
    """A client sending a large LOAD DATA LOCAL INFILE through the proxy: all rows arrive."""
    import tempfile, os
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for i in range(300_000):
            f.write(f"{10_000_000 + i}\t{'y' * 40}\n")
        path = f.name
    c = proxy.connect(database="moon", local_infile=True, read_timeout=120)
    with c.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS upload (id INT PRIMARY KEY, v VARCHAR(50))")
        cur.execute("TRUNCATE upload")
        cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE upload")
        cur.execute("SELECT COUNT(*) FROM upload")
        assert cur.fetchone() == (300_000,)
        cur.execute("DROP TABLE upload")
    c.close()
    os.unlink(path)

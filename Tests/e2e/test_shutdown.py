"""SIGTERM and SIGINT: stop accepting, let running commands finish, then close."""
import signal
import socket
import threading
import time

import pymysql
import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_running_command_finishes_then_connections_close(start_proxy, sig):
    p = start_proxy("--proxy-shutdown-timeout=20")
    idle = p.connect()
    busy = p.connect()
    result = {}

    def long_query():
        try:
            with busy.cursor() as cur:
                cur.execute("SELECT SLEEP(1.5), 'finished'")
                result["row"] = cur.fetchone()
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=long_query)
    t.start()
    time.sleep(0.4)
    p.proc.send_signal(sig)
    time.sleep(0.3)
    # no new connections
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).recv(1) or (_ for _ in ()).throw(OSError("closed"))
    t.join(10)
    assert result.get("row") == (0, "finished"), result
    assert p.proc.wait(20) == 0
    # the idle connection was closed
    with pytest.raises(pymysql.err.OperationalError):
        idle.cursor().execute("SELECT 1")


def test_grace_period_is_bounded(start_proxy):
    p = start_proxy("--proxy-shutdown-timeout=1")
    c = p.connect()
    t = threading.Thread(target=lambda: pytest.raises(Exception, c.cursor().execute, "SELECT SLEEP(10)"))
    t.start()
    time.sleep(0.3)
    started = time.time()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(15) == 0
    assert time.time() - started < 5
    t.join(15)
    assert "still busy after the shutdown grace period" in p.log()

"""Prometheus metrics on --metrics-address: GET /metrics in the text exposition format, checked
by promtool (Prometheus' own linter) and against what the proxy did."""
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pymysql
import pytest

from conftest import MARIADB_PORT, free_port


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_endpoint(start_proxy):
    metrics_port, dead = free_port(), free_port()
    proxy = start_proxy(f"--metrics-address=127.0.0.1:{metrics_port}", "--max-connections=2",
                        f"--proxy-backend-addresses=127.0.0.1:{dead},127.0.0.1:{MARIADB_PORT}", backend=False)
    before = samples(scrape(metrics_port))
    c = proxy.connect()
    with c.cursor() as cur:
        for i in range(5):
            cur.execute("SELECT %s", (i,))
    other = proxy.connect()
    with pytest.raises(pymysql.err.OperationalError):
        proxy.connect()  # the third: refused
    text = scrape(metrics_port)
    after = samples(text)
    live, down = f'backend="127.0.0.1:{MARIADB_PORT}",type="rw"', f'backend="127.0.0.1:{dead}",type="rw"'
    assert after["moonproxy_client_connections"] >= 2
    live_backend = f'backend="127.0.0.1:{MARIADB_PORT}"'
    queries = f'command="query",{live_backend}'
    assert after[f"moonproxy_commands_total{{{queries}}}"] - before.get(f"moonproxy_commands_total{{{queries}}}", 0) >= 5
    assert after[f"moonproxy_command_duration_seconds_count{{{queries}}}"] == after[f"moonproxy_commands_total{{{queries}}}"]
    assert after[f'moonproxy_command_duration_seconds_bucket{{{queries},le="10.0"}}'] == after[f"moonproxy_commands_total{{{queries}}}"]
    assert 0 < after[f"moonproxy_command_duration_seconds_sum{{{queries}}}"] < 10
    assert after['moonproxy_client_connections_closed_total{source="limit"}'] == 1
    assert after['moonproxy_sent_bytes_total{peer="client"}'] > 0
    assert after['moonproxy_sent_bytes_total{peer="backend"}'] > 0
    assert after["moonproxy_client_connections_refused_total"] == 1
    assert after['moonproxy_received_bytes_total{peer="client"}'] > 0
    assert after['moonproxy_received_bytes_total{peer="backend"}'] > 0
    assert after[f"moonproxy_backend_up{{{live}}}"] == 1
    assert after[f"moonproxy_backend_up{{{down}}}"] == 0  # the first client's connect failed
    assert after["moonproxy_backend_connect_failures_total"] >= 1
    assert after[f"moonproxy_backend_clients{{{live}}}"] == 2
    assert after[f"moonproxy_backend_connect_duration_seconds_count{{{live_backend}}}"] >= 2
    assert after[f'moonproxy_backend_connect_duration_seconds_bucket{{{live_backend},le="2.0"}}'] >= 2
    # counters never go back, even across scrapes
    again = samples(scrape(metrics_port))
    assert again[f"moonproxy_commands_total{{{queries}}}"] >= after[f"moonproxy_commands_total{{{queries}}}"]
    c.close()
    other.close()
    promtool_check(text)
    # anything but /metrics is 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10)
    assert e.value.code == 404


def promtool_check(text):
    # Prometheus' own linter (scripts/test installs it with Debian's prometheus package)
    assert shutil.which("promtool"), "promtool is missing: apt-get install prometheus"
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_client_that_quits_is_not_a_lost_backend(start_proxy):
    metrics_port = free_port()
    proxy = start_proxy(f"--metrics-address=127.0.0.1:{metrics_port}")
    for _ in range(3):
        c = proxy.connect()
        c.ping(reconnect=False)
        c.close()
    assert samples(scrape(metrics_port))["moonproxy_backend_connections_lost_total"] == 0


def test_health_checks_in_the_metrics(start_proxy):
    metrics_port = free_port()
    start_proxy(f"--metrics-address=127.0.0.1:{metrics_port}", "--proxy-backend-check-interval=0.2",
                "--proxy-backend-check-user=nat", "--proxy-backend-check-password=natpass")
    key = f'moonproxy_backend_checks_total{{backend="127.0.0.1:{MARIADB_PORT}",result="up"}}'
    deadline = time.time() + 10
    while time.time() < deadline and samples(scrape(metrics_port)).get(key, 0) < 2:
        time.sleep(0.2)
    text = scrape(metrics_port)
    assert samples(text)[key] >= 2
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr

"""Time passing (issue 23): every script under examples/ serves clients that pause, between
statements, for longer than every timer that ticks while they wait: the timeout sweep (its tick
is a quarter of the shortest timeout), the login and greeting timeouts, the health checks, the
metrics' recording. A pause of that kind once turned rw-splitting's pool moves into an abort; the
e2e tests that run their statements back to back never saw it."""
import os
import time

import pytest

from conftest import MARIADB_PORT, MARIADB_SOCKET, WORKDIR, free_port
from test_examples import example
from test_scripting import rows

TIMERS = ["--proxy-backend-greeting-timeout=0.5", "--proxy-login-timeout=1", "--proxy-backend-check-interval=0.3",
          "--proxy-backend-check-user=nat", "--proxy-backend-check-password=natpass"]
PAUSE = 1.6  # longer than each of them

SPLIT = [f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}", f"--proxy-read-only-backend-addresses={MARIADB_SOCKET}"]
NAT = dict(user="nat", password="natpass", autocommit=True)

# script: (proxy arguments, environment additions, login, a statement and its rows)
CASES = {
    "query-log.lua": ([], {"MOON_QUERY_LOG": "query-log"}, {}, ("SELECT 40 + 2", ((42,),))),
    "rewrite.lua": ([], {}, {}, ("SELECT 1", ((1,),))),
    "inject-hidden.lua": ([], {}, {}, ("SELECT 'only mine'", (("only mine",),))),
    "querycounter.lua": ([], {}, {}, ("SELECT 1", ((1,),))),
    "firewall.lua": ([], {}, {}, ("SELECT 1", ((1,),))),
    "rw-splitting.lua": (SPLIT, {}, NAT, ("SELECT 1", ((1,),))),
    "route-by-hint.lua": (SPLIT, {}, NAT, ("SELECT /* @route replica */ 1", ((1,),))),
    "audit.lua": ([], {"MOON_AUDIT_FILE": "audit"}, NAT, ("SELECT 1", ((1,),))),
    "mock-server.lua": (None, {}, dict(user="app", password="app-secret"), ("SELECT * FROM orders", ((10, 1, 99.5), (11, 2, 12.25), (12, 2, 7.0)))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_example_serves_clients_that_pause_past_every_timer(start_proxy, name):
    args, env_files, login, (sql, expected) = CASES[name]
    env = dict(os.environ)
    for variable, stem in env_files.items():
        env[variable] = str(WORKDIR / f"moon-{stem}-{time.time_ns()}.log")
    extra = TIMERS + [f"--metrics-address=127.0.0.1:{free_port()}"]
    proxy = start_proxy(example(name), *extra, *(args or []), backend=args == [], env=env)
    clients = [proxy.connect(**login) for _ in range(2)]
    for _ in range(3):
        for c in clients:
            assert rows(c, sql) == expected
        time.sleep(PAUSE)
    assert proxy.proc.poll() is None, proxy.log()
    for c in clients:
        c.close()

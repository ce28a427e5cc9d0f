"""The mysqltest scripts under Tests/mysqltest, run through the proxy with and without
--ps-protocol and --cursor-protocol. Their .result files were recorded against MariaDB directly
(MOON_RECORD=1 scripts/test -k mysqltest records them again), so a pass means the proxy's output
is the server's own. Each test also runs directly against the server, to show the recording holds."""
import os
import subprocess
from pathlib import Path

import pytest

from conftest import MARIADB_PORT, WORKDIR

SUITE = Path(__file__).resolve().parents[1] / "mysqltest"
TESTS = sorted(p.stem for p in SUITE.glob("*.test"))
MODES = {"text": [], "ps": ["--ps-protocol"], "cursor": ["--ps-protocol", "--cursor-protocol"]}


def run_mysqltest(port, test, mode, record=False):
    vardir = WORKDIR / "mysqltest-var"
    (vardir / "tmp").mkdir(parents=True, exist_ok=True)
    args = ["mysqltest", "-h127.0.0.1", f"-P{port}", "-uroot", "--database=moon", f"--tmpdir={vardir / 'tmp'}",
            f"--test-file={SUITE / (test + '.test')}", f"--result-file={SUITE / (test + '.result')}",
            f"--logdir={vardir}", "--silent", "--tail-lines=30"] + MODES[mode]
    if record:
        args.append("--record")
    env = dict(os.environ, MYSQLTEST_VARDIR=str(vardir))
    return subprocess.run(args, capture_output=True, text=True, errors="backslashreplace", env=env, timeout=300)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("test", TESTS)
def test_mysqltest(proxy, test, mode):
    if os.environ.get("MOON_RECORD") and mode == "text":
        r = run_mysqltest(MARIADB_PORT, test, mode, record=True)
        assert r.returncode == 0, r.stdout + r.stderr
    straight = run_mysqltest(MARIADB_PORT, test, mode)
    assert straight.returncode == 0, "the recording does not match the server itself:\n" + straight.stdout + straight.stderr
    through = run_mysqltest(proxy.port, test, mode)
    assert through.returncode == 0, through.stdout + through.stderr + "\n--- proxy log ---\n" + proxy.log()


LUA = Path(__file__).resolve().parent / "lua"


@pytest.mark.parametrize("script", ["passthrough", "buffer_all"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("test", TESTS)
def test_mysqltest_through_a_script(start_proxy, test, mode, script):
    """The same recordings through scripts that decide nothing (every hook defined) and that
    re-send every query as a buffered injection: a script that changes nothing must change nothing."""
    proxy = start_proxy(f"--proxy-lua-script={LUA / (script + '.lua')}")
    through = run_mysqltest(proxy.port, test, mode)
    assert through.returncode == 0, through.stdout + through.stderr + "\n--- proxy log ---\n" + proxy.log()

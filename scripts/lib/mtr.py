#!/usr/bin/env python3
"""MariaDB's own test suite as the oracle: runs tests of the `mariadb-test` package with
`mysql-test-run.pl --extern` once against a throwaway MariaDB directly and once through MoonProxy,
in text, --ps-protocol and --cursor-protocol modes, and prints the tests that pass directly but
not through the proxy.

Called by scripts/mtr, which installs the packages and builds MoonProxy first.

The pitfalls of --extern mode, and what this harness does about them:
- mysqltest restricts file operations to MYSQLTEST_VARDIR: the server's data directory lives inside
  the vardir (var/mysqld.1/data, as mtr lays it out), and secure_file_priv is the vardir.
- mtr never restarts an external server: tests that restart, shut down or crash it, tests that need
  server options (.opt, .cnf, .combinations) and debug builds are left out of the lists.
- A failing test leaves its tables, databases, users and global variables behind, and every later
  test would then fail for that reason: after any failed test, a wrapper around mariadb-test
  restores the server (directly, over its socket, never through the proxy) to the state it had
  when the run began.
- `localhost` means the Unix socket to MariaDB's clients: the [client] section says protocol=tcp,
  so every connection, a test's own `connect` included, goes through the port under test.
- mysqltest writes .reject files next to the results, and mtr needs its tree to find the binaries:
  the tests run from a private copy of the tree under a private prefix whose bin/lib/share point
  at the installed ones.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("/usr/share/mysql/mysql-test")
LISTS = ROOT / "Tests" / "mtr"
MODES = {"text": [], "ps": ["--ps-protocol"], "cursor": ["--ps-protocol", "--cursor-protocol"]}
SYSTEM_DATABASES = {"mysql", "information_schema", "performance_schema", "sys"}

# Server options as mtr's include/default_mysqld.cnf sets them, where they change what tests see;
# plus a binary log, so that replication clients (mysqlbinlog --read-from-remote-server) run.
SERVER_OPTIONS = """
local-infile
character-set-server=latin1
collation-server=latin1_swedish_ci
connect-timeout=60
log-bin-trust-function-creators=1
key_buffer_size=1M
sort_buffer_size=256K
max_heap_table_size=1M
default-storage-engine=myisam
use_stat_tables=preferably
histogram_type=json_hb
innodb_buffer_pool_size=64M
innodb_log_file_size=32M
innodb_flush_log_at_trx_commit=2
max_connections=300
log-bin=mysqld-bin
server-id=1
plugin-load-add=auth_ed25519
""".strip()

# A test that does any of these needs a server of its own (mtr would restart it), or kills it.
RESTARTING = re.compile(
    r"restart_mysqld|shutdown_server|kill_mysqld|restart_abort|wait_until_disconnected|"
    r"kill_and_restart|crash_mysqld|start_mysqld|\$MYSQLD\b|\$MYSQLD_CMD|\$MYSQLD_BOOTSTRAP|"
    r"\$MYSQL_INSTALL_DB|\$MARIADB_INSTALL_DB|send_shutdown|\bshutdown\b|expect_crash|\.expect\b|"
    r"debug_sync|have_debug|have_ssl",
    re.IGNORECASE)


def log(msg):
    print(f"\033[1m==> {msg}\033[0m", file=sys.stderr, flush=True)


def free_port():
    import random
    for _ in range(200):
        port = random.randint(20000, 32000)
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def wait_for_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


# MARK: - the test tree


def test_path(name):
    """main.foo -> main/foo.test, jp.bar -> suite/jp/t/bar.test"""
    suite, test = name.split(".", 1)
    if suite == "main":
        return SOURCE / "main" / f"{test}.test"
    return SOURCE / "suite" / suite / "t" / f"{test}.test"


def needs_own_server(name):
    """Whether a test needs server options or restarts, so that --extern cannot run it as meant."""
    path = test_path(name)
    stem = path.with_suffix("")
    for suffix in (".opt", "-master.opt", "-slave.opt", ".cnf", ".combinations", "-master.sh"):
        if Path(str(stem) + suffix).exists():
            return True
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return True
    return bool(RESTARTING.search(text))


def all_tests(suites):
    names = []
    for suite in suites:
        folder = SOURCE / "main" if suite == "main" else SOURCE / "suite" / suite / "t"
        names += sorted(f"{suite}.{p.stem}" for p in folder.glob("*.test"))
    return names


def prepare_tree(work):
    """A private prefix: bin, sbin, lib and share/* point at the installed ones; mysql-test is a copy."""
    prefix = work / "root" / "usr"
    share = prefix / "share" / "mysql"
    if (share / "mysql-test" / "mysql-test-run.pl").exists():
        return share / "mysql-test"
    share.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "sbin", "lib"):
        if not (prefix / d).exists():
            (prefix / d).symlink_to(f"/usr/{d}")
    for entry in Path("/usr/share/mysql").iterdir():
        if entry.name != "mysql-test" and not (share / entry.name).exists():
            (share / entry.name).symlink_to(entry)
    shutil.copytree(SOURCE, share / "mysql-test", symlinks=True)
    return share / "mysql-test"


# MARK: - the server


class Server:
    """A throwaway MariaDB whose data directory is inside mtr's vardir."""

    def __init__(self, work, port):
        self.work = work
        self.vardir = work / "var"
        self.port = port
        self.datadir = self.vardir / "mysqld.1" / "data"
        self.socket = work / "mysqld.sock"
        self.cnf = work / "my.cnf"
        self.proc = None

    def prepare_vardir(self, tree):
        for d in ("log", "run", "tmp"):
            (self.vardir / d).mkdir(parents=True, exist_ok=True)
        if not (self.vardir / "std_data").exists():
            shutil.copytree(tree / "std_data", self.vardir / "std_data", symlinks=True)

    def start(self):
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        self.cnf.write_text(
            "[mariadbd]\nuser=root\n"
            f"datadir={self.datadir}\nsocket={self.socket}\npid-file={self.work}/mysqld.pid\n"
            f"log-error={self.work}/mysqld.err\nport={self.port}\nbind-address=127.0.0.1\n"
            f"secure-file-priv={self.vardir}\ntmpdir={self.vardir}/tmp\n" + SERVER_OPTIONS + "\n"
            # TLS with mtr's own certificates, as mtr configures the servers it starts
            f"ssl-ca={self.vardir}/std_data/cacert.pem\nssl-cert={self.vardir}/std_data/server-cert.pem\n"
            f"ssl-key={self.vardir}/std_data/server-key.pem\n")
        if not (self.datadir / "mysql").exists():
            r = subprocess.run(["mariadb-install-db", f"--defaults-file={self.cnf}",
                                "--auth-root-authentication-method=normal"], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit("mariadb-install-db failed:\n" + r.stdout + r.stderr)
        start_server(self.cnf, self.socket)
        # Over TCP from 127.0.0.1 the server resolves the client to localhost (no skip-name-resolve),
        # so root@localhost is the account every test connection uses, direct or proxied.
        self.sql("CREATE DATABASE IF NOT EXISTS test")

    def stop(self):
        stop_server(self.work)

    def sql(self, statements, check=True):
        r = subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B",
                            "--connect-timeout=5", "-e", statements],
                           capture_output=True, text=True, errors="replace")
        if check and r.returncode != 0:
            raise RuntimeError(f"{statements[:200]}: {r.stderr}")
        return r

    # The state a run starts from, restored after every failed test.

    def snapshot(self):
        users = self.sql("SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.global_priv").stdout.split("\n")
        variables = {}
        for line in self.sql("SHOW GLOBAL VARIABLES").stdout.split("\n"):
            if "\t" in line:
                k, v = line.split("\t", 1)
                variables[k] = v
        state = {"users": [u for u in users if u], "variables": variables, "cnf": str(self.cnf), "socket": str(self.socket)}
        (self.work / "snapshot.json").write_text(json.dumps(state))
        # The grant tables as they are, for tests that empty them and fail before putting them back.
        dump = subprocess.run(["mariadb-dump", "--no-defaults", f"--socket={self.socket}", "-uroot", "mysql",
                               "global_priv", "roles_mapping", "db", "tables_priv", "columns_priv", "procs_priv", "proxies_priv"],
                              capture_output=True, text=True, check=True)
        (self.work / "grants.sql").write_text(dump.stdout)


def start_server(cnf, socket_path, *options):
    subprocess.Popen(["mariadbd", f"--defaults-file={cnf}"] + list(options),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        r = subprocess.run(["mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot", "-e", "SELECT 1"],
                           capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    sys.exit(f"MariaDB did not start; see {Path(cnf).parent}/mysqld.err")


def stop_server(work):
    try:
        pid = int((Path(work) / "mysqld.pid").read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def restore(socket_path, work):
    """Puts the server back as it was when the run began (called by the mariadb-test wrapper)."""
    work = Path(work)
    state = json.loads((work / "snapshot.json").read_text())

    def sql(statements, database=None):
        return subprocess.run(["mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot", "-N", "-B",
                               "--connect-timeout=5", "--force", "-e", statements] + ([database] if database else []),
                              capture_output=True, text=True, errors="replace")

    if sql("SELECT 1").returncode != 0:
        # A test emptied the grant tables and failed before filling them again: nobody can log
        # in, so the server is restarted without grant checks to put them back.
        stop_server(work)
        start_server(state["cnf"], socket_path, "--skip-grant-tables", "--skip-networking")
        subprocess.run(["mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot", "mysql"],
                       input=(work / "grants.sql").read_text(), capture_output=True, text=True)
        stop_server(work)
        start_server(state["cnf"], socket_path)
    users = sql("SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.global_priv").stdout.split("\n")
    if set(u for u in users if u) != set(state["users"]):
        subprocess.run(["mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot", "mysql"],
                       input=(work / "grants.sql").read_text() + "\nFLUSH PRIVILEGES;\n", capture_output=True, text=True)

    ids = sql("SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() "
              "AND command NOT IN ('Daemon', 'Binlog Dump') AND user NOT IN ('system user', 'event_scheduler')").stdout.split()
    statements = [f"KILL {i}" for i in ids if i.isdigit()]
    for db in sql("SHOW DATABASES").stdout.split("\n"):
        if db and db not in SYSTEM_DATABASES:
            statements.append(f"DROP DATABASE IF EXISTS `{db}`")
    statements.append("CREATE DATABASE test")
    now = {}
    for line in sql("SHOW GLOBAL VARIABLES").stdout.split("\n"):
        if "\t" in line:
            k, v = line.split("\t", 1)
            now[k] = v
    for k, v in state["variables"].items():
        if now.get(k, v) != v:
            if re.fullmatch(r"-?\d+(\.\d+)?", v) or v in ("ON", "OFF"):
                statements.append(f"SET GLOBAL {k} = {v}")
            else:
                statements.append(f"SET GLOBAL {k} = '{v}'")
    sql(";\n".join(statements) + ";")


# MARK: - runs


RESULT_LINE = re.compile(r"^(\w+\.[\w-]+)\s+(?:'[^']*'\s+)?(?:w\d+\s+)?\[ (pass|fail|skipped|disabled) \]\s*(.*)$")


def run_mtr(tree, server, port, tests, mode, logfile, timeout):
    """Runs mtr over `tests` against 127.0.0.1:port; returns {test: (status, detail)}."""
    wrapper = server.work / "bin" / "mariadb-test"
    args = ["perl", "mysql-test-run.pl",
            "--extern", "host=127.0.0.1", "--extern", f"port={port}", "--extern", f"socket={server.socket}",
            "--extern", "protocol=tcp", "--extern", "user=root",
            f"--vardir={server.vardir}", "--force", "--max-test-fail=0", "--retry=0", "--nocheck-testcases",
            "--testcase-timeout=5", f"--suite-timeout={max(60, timeout // 60)}", "--nowarnings",
            ] + MODES[mode] + tests
    # mtr takes MASTER_MYPORT and MASTER_MYSOCK from the servers it starts; with --extern, from here.
    env = dict(os.environ, MYSQL_TEST=str(wrapper), MOON_MTR_SOCKET=str(server.socket), MOON_MTR_WORK=str(server.work),
               MASTER_MYPORT=str(port), MASTER_MYSOCK=str(server.socket))
    results = {}
    with open(logfile, "w") as out:
        proc = subprocess.Popen(args, cwd=tree, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env=env, start_new_session=True)
        current = None
        detail = []
        try:
            deadline = time.time() + timeout
            for line in proc.stdout:
                out.write(line)
                m = RESULT_LINE.match(line.strip())
                if m:
                    if current:
                        results[current] = (results[current][0], "".join(detail))
                    current = m.group(1)
                    results[current] = (m.group(2), m.group(3))
                    detail = []
                elif current and results[current][0] == "fail" and len(detail) < 60:
                    detail.append(line)
                if time.time() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if current:
            results[current] = (results[current][0], "".join(detail))
    return results


class Proxy:
    def __init__(self, binary, backend_port, work, extra):
        self.port = free_port()
        self.log_path = work / f"moonproxy-{self.port}.log"
        self.proc = subprocess.Popen([binary, f"--proxy-address=127.0.0.1:{self.port}",
                                      f"--proxy-backend-addresses=127.0.0.1:{backend_port}", "--log-level=info"] + extra,
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def read_list(path):
    names = []
    for line in Path(path).read_text().split("\n"):
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", default=str(LISTS / "full.list"), help="file naming the tests to run (suite.test per line)")
    ap.add_argument("--tests", help="comma-separated tests to run instead of a list")
    ap.add_argument("--modes", default="text,ps,cursor")
    ap.add_argument("--binary", default=str(ROOT / ".build/debug/moonproxy"))
    ap.add_argument("--proxy-option", action="append", default=[], help="an extra moonproxy option (repeatable)")
    ap.add_argument("--proxy-auth", action="store_true",
                    help="the proxy authenticates clients itself (--proxy-auth=proxy)")
    ap.add_argument("--proxy-pool", type=int, default=0, metavar="N",
                    help="with --proxy-auth, a core pool of N connections (tests that count the server's sessions "
                         "then see the pool's idle ones)")
    ap.add_argument("--work", help="work directory (default: a new temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--direct-only", action="store_true", help="run directly only (no proxy)")
    ap.add_argument("--make-list", metavar="FILE",
                    help="run every main and jp test directly, twice per mode, and write those that always pass to FILE")
    ap.add_argument("--timeout", type=int, default=7200, help="seconds per mtr run")
    ap.add_argument("--summary", help="write the results as JSON to this file")
    ap.add_argument("--restore", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.restore:
        restore(os.environ["MOON_MTR_SOCKET"], os.environ["MOON_MTR_WORK"])
        return 0

    modes = [m for m in args.modes.split(",") if m]
    if args.make_list:
        tests = [t for t in all_tests(["main", "jp"]) if not needs_own_server(t)]
    elif args.tests:
        tests = args.tests.split(",")
    else:
        tests = read_list(args.list)

    import tempfile
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="moonproxy-mtr."))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    log(f"work directory {work}")
    tree = prepare_tree(work)
    server = Server(work, free_port())
    server.prepare_vardir(tree)
    bindir = work / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "mariadb-test"
    wrapper.write_text(f"""#!/bin/sh
# mariadb-test, then, when a test (not one of mtr's own checks) failed, the server as it was.
# A test that hangs (mtr's own timeout does not apply to --extern runs) is stopped after 5 minutes.
timeout -k 10 300 /usr/bin/mariadb-test "$@" </dev/null
rc=$?
case " $* " in *--test-file=include/*) exit $rc;; esac
if [ $rc -ne 0 ] && [ $rc -ne 62 ]; then
    python3 {Path(__file__).resolve()} --restore >/dev/null 2>&1
fi
exit $rc
""")
    wrapper.chmod(0o755)

    proxy = None
    started = time.time()
    summary = {"tests": len(tests), "modes": {}}
    try:
        log(f"starting a throwaway MariaDB on 127.0.0.1:{server.port}")
        server.start()
        if args.proxy_auth:
            # the service account the proxy reads the accounts with, part of the state restored
            server.sql("CREATE OR REPLACE USER 'moon_mtr_svc'@'localhost' IDENTIFIED BY 'mtr svc'; "
                       "GRANT SELECT ON mysql.global_priv TO 'moon_mtr_svc'@'localhost'")
            args.proxy_option += ["--proxy-auth=proxy", "--proxy-users-user=moon_mtr_svc", f"--proxy-pool-max={args.proxy_pool}"]
            os.environ["MOONPROXY_USERS_PASSWORD"] = "mtr svc"
        server.snapshot()
        if not args.direct_only and not args.make_list:
            # the proxy shows clients the server's certificate, which the tests verify against std_data's CA
            std = server.vardir / "std_data"
            proxy = Proxy(args.binary, server.port, work,
                          [f"--ssl-cert={std / 'server-cert.pem'}", f"--ssl-key={std / 'server-key.pem'}"] + args.proxy_option)
            log(f"MoonProxy on 127.0.0.1:{proxy.port}")

        if args.make_list:
            return make_list(args, tree, server, tests, modes, work)

        differences = 0
        for mode in modes:
            targets = [("direct", server.port)] + ([] if proxy is None else [("proxy", proxy.port)])
            results = {}
            for target, port in targets:
                t0 = time.time()
                log(f"{mode}: {len(tests)} tests {'directly' if target == 'direct' else 'through MoonProxy'}")
                results[target] = run_mtr(tree, server, port, tests, mode, work / "logs" / f"{mode}-{target}.log", args.timeout)
                restore(server.socket, work)
                counts = {s: sum(1 for v in results[target].values() if v[0] == s) for s in ("pass", "fail", "skipped")}
                log(f"{mode} {target}: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped ({time.time() - t0:.0f} s)")
                summary["modes"].setdefault(mode, {})[target] = counts
            if proxy is None:
                continue
            direct, through = results["direct"], results["proxy"]
            worse = [t for t in tests if direct.get(t, ("?",))[0] == "pass" and through.get(t, ("?",))[0] != "pass"]
            better = [t for t in tests if direct.get(t, ("?",))[0] == "fail" and through.get(t, ("?",))[0] == "pass"]
            summary["modes"][mode]["pass_direct_not_proxy"] = worse
            differences += len(worse)
            for t in worse:
                status, detail = through.get(t, ("missing", ""))
                print(f"\n--- {mode}: {t} passes directly, {status} through MoonProxy")
                print(detail.rstrip()[-3000:])
            if better:
                print(f"\n{mode}: through MoonProxy but not directly (flaky?): {', '.join(better)}")
            if not proxy.alive():
                print("MoonProxy is no longer running!")
                differences += 1
                break

        print("\nmode     direct pass/fail/skip   proxy pass/fail/skip   pass direct, not through the proxy")
        for mode, r in summary["modes"].items():
            d = r.get("direct", {})
            p = r.get("proxy", {})
            print(f"{mode:8} {d.get('pass', 0):5}/{d.get('fail', 0)}/{d.get('skipped', 0):<14}"
                  f"{p.get('pass', 0):5}/{p.get('fail', 0)}/{p.get('skipped', 0):<14}{len(r.get('pass_direct_not_proxy', []))}")
        print(f"({len(tests)} tests, {time.time() - started:.0f} s; logs in {work / 'logs'})")
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary, indent=1))
        if proxy is not None:
            warnings = [l for l in proxy.log_path.read_text(errors="replace").split("\n") if " warning " in l or " error " in l]
            if warnings:
                print(f"\nMoonProxy logged {len(warnings)} warnings/errors; the first ones:")
                print("\n".join(warnings[:15]))
        return 1 if differences else 0
    finally:
        if proxy:
            proxy.stop()
        server.stop()
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def make_list(args, tree, server, tests, modes, work):
    """Every test that passes directly in every mode, twice."""
    passing = set(tests)
    for round_ in (1, 2):
        for mode in modes:
            candidates = [t for t in tests if t in passing]
            log(f"round {round_}, {mode}: {len(candidates)} tests directly")
            results = run_mtr(tree, server, server.port, candidates, mode, work / "logs" / f"list-{round_}-{mode}.log", args.timeout)
            restore(server.socket, work)
            passing = {t for t in candidates if results.get(t, ("?",))[0] == "pass"}
            log(f"  {len(passing)} pass")
    out = Path(args.make_list)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Tests of the mariadb-test package that pass reliably against MariaDB directly with\n"
                   "# mysql-test-run.pl --extern in text, --ps-protocol and --cursor-protocol modes\n"
                   "# (written by scripts/mtr --make-list; tests needing server options or restarts excluded).\n"
                   + "".join(f"{t}\n" for t in tests if t in passing))
    log(f"{len(passing)} tests written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Side-by-side benchmark of direct / HAProxy / MoonProxy (driven by scripts/bench).

Each workload runs against every target in every round; the order of the targets rotates from
round to round so that none of them always runs on a warmer (or more tired) machine. The figures
are medians over the rounds. On a 2-core machine the client, MariaDB and the proxy share the CPUs,
so the ratios matter, not the absolute rates.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    import random
    while True:
        port = random.randint(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()


def wait_for(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def cpu_times(pid):
    """(user, system) CPU seconds of a process, from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def peak_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Target:
    def __init__(self, name, port, pid=None, stop=None):
        self.name, self.port, self.pid, self._stop = name, port, pid, stop

    def stop(self):
        if self._stop:
            self._stop()


def haproxy_config(path, port, backend_port, threads, socket=None):
    """HAProxy in TCP mode on 127.0.0.1:port in front of the server (its unix socket, given one):
    the plain forwarder baseline."""
    path.write_text(f"""global
    maxconn 4000
    nbthread {threads}
defaults
    mode tcp
    timeout connect 2s
    timeout client 8h
    timeout server 8h
listen mysql
    bind 127.0.0.1:{port}
    server db {socket or f"127.0.0.1:{backend_port}"}
""")
    return path


def start_haproxy(workdir, backend_port, threads, name="haproxy", socket=None):
    port = free_port()
    cfg = haproxy_config(workdir / f"{name.replace('/', '-')}.cfg", port, backend_port, threads, socket)
    proc = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(port)
    return Target(name, port, proc.pid, lambda: (proc.terminate(), proc.wait()))


def thread_suffix(n, first):
    """Targets at the first thread count keep their plain names; the others are NAME@Nt."""
    return "" if n == first else f"@{n}t"


def baseline_of(name):
    """The HAProxy target a MoonProxy target is compared with: the one with as many threads, and
    the one on the server's unix socket for a target on it (NAME/sock)."""
    _, at, threads = name.partition("@")
    return "haproxy" + ("/sock" if name.endswith("/sock") else "") + (f"@{threads}" if at else "")


def start_moonproxy(binary, backend_port, threads, name="moonproxy", extra=(), env=None, backend=None):
    port = free_port()
    proc = subprocess.Popen([binary, f"--proxy-address=127.0.0.1:{port}", f"--proxy-backend-addresses={backend or f'127.0.0.1:{backend_port}'}",
                             f"--event-threads={threads}", "--log-level=warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for(port)
    stop_scraping = threading.Event()
    metrics = [arg.split("=", 1)[1] for arg in extra if arg.startswith("--metrics-address=")]
    if metrics:
        # as Prometheus would: a scrape every second for as long as the target runs
        import urllib.request

        def scrape():
            while not stop_scraping.wait(1.0):
                try:
                    urllib.request.urlopen(f"http://{metrics[0]}/metrics", timeout=5).read()
                except OSError:
                    pass
        threading.Thread(target=scrape, daemon=True).start()

    def stop():
        stop_scraping.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    return Target(name, port, proc.pid, stop)


CERTS = None  # set by main: the test certificates, for the TLS workloads


def sysbench_tls_dir():
    """sysbench 1.0 with --mysql-ssl=on loads client-key.pem, client-cert.pem and cacert.pem from
    its working directory and verifies the server against that CA."""
    d = Path(CERTS) / "sysbench"
    d.mkdir(exist_ok=True)
    for src, dst in (("client.pem", "client-cert.pem"), ("client-key.pem", "client-key.pem"), ("ca.pem", "cacert.pem")):
        shutil.copy(Path(CERTS) / src, d / dst)
    return d


def sysbench(args, port, seconds, threads, script=None):
    tls = "--mysql-ssl=on" in args
    cmd = ["sysbench", script or args[0], "--mysql-host=127.0.0.1", f"--mysql-port={port}", "--mysql-user=root",
           "--mysql-db=sbtest", "--tables=4", "--table-size=50000", f"--threads={threads}", f"--time={seconds}",
           "--percentile=95", *args[1:], "run"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                         cwd=sysbench_tls_dir() if tls else None).stdout
    queries = re.search(r"queries:\s+(\d+)\s+\(([\d.]+) per sec", out)
    events = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec", out)
    p95 = re.search(r"95th percentile:\s+([\d.]+)", out)
    errors = re.search(r"ignored errors:\s+(\d+)", out)
    if not (queries and p95):
        raise RuntimeError("sysbench failed:\n" + out)
    count, rate = (int(events.group(1)), float(events.group(2))) if script else (int(queries.group(1)), float(queries.group(2)))
    return {"count": count, "rate": rate, "p95": float(p95.group(1)), "errors": int(errors.group(1)) if errors else 0}


def stream(port, mib, tls=False):
    rows = mib * 1024
    cmd = ["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "--quick", "--batch", "--skip-column-names"]
    cmd += ["--ssl", f"--ssl-ca={Path(CERTS) / 'ca.pem'}", "--ssl-verify-server-cert"] if tls else ["--skip-ssl"]
    cmd += ["-e", f"SELECT REPEAT('x', 1020) FROM seq_1_to_{rows}", "sbtest"]
    started = time.time()
    with open(os.devnull, "wb") as null:
        subprocess.run(cmd, stdout=null, check=True, timeout=600)
    elapsed = time.time() - started
    return {"count": rows, "rate": mib / elapsed, "p95": elapsed * 1000, "errors": 0}


def server_connections_of(pid, a):
    """The connections process `pid` holds to the server, over TCP and over its unix socket (ss)."""
    tag = f"pid={pid},"
    tcp = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{a.mariadb_port} )"], capture_output=True, text=True).stdout
    count = sum(1 for line in tcp.splitlines() if tag in line)
    if a.mariadb_socket:
        lines = [line.split() for line in subprocess.run(["ss", "-Hxp"], capture_output=True, text=True).stdout.splitlines()]
        # u_str ESTAB recv send LOCAL INODE PEER PEER_INODE users:...: the server's ends carry the socket's path
        server_ends = {f[5] for f in lines if len(f) > 7 and f[4] == a.mariadb_socket}
        count += sum(1 for f in lines if len(f) > 8 and f[7] in server_ends and tag in f[8])
    return count


def idle_clients(port, a, ps=False):
    """1000 connections, about 20 active at a time (each thinks 50 ms between point selects); the
    server connections the target uses are sampled meanwhile: a proxy's own (ss), or for direct the
    server's Threads_connected less the sampler's own and those the proxies hold."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            try:
                if a.current_pid:
                    n = server_connections_of(a.current_pid, a)
                else:
                    r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "--batch", "--skip-column-names", "-e",
                                        "SHOW GLOBAL STATUS LIKE 'Threads_connected'"], capture_output=True, text=True)
                    n = int(r.stdout.split()[1]) - 1 - sum(server_connections_of(pid, a) for pid in a.proxy_pids)
                peak[0] = max(peak[0], n)
            except (IndexError, ValueError, OSError):
                pass
    threading.Thread(target=sample, daemon=True).start()
    try:
        res = sysbench(["idle_clients", "--think-ms=50", *(["--ps=on"] if ps else [])], port, a.seconds, a.idle_clients,
                       script=str(HERE / "idle_clients.lua"))
    finally:
        done.set()
    res["server_connections"] = peak[0]
    return res


WORKLOADS = {
    "point_select_text": ("queries/s", lambda port, a: sysbench(["oltp_point_select", "--db-ps-mode=disable"], port, a.seconds, a.threads)),
    "point_select_ps": ("queries/s", lambda port, a: sysbench(["oltp_point_select", "--db-ps-mode=auto"], port, a.seconds, a.threads)),
    "read_only": ("queries/s", lambda port, a: sysbench(["oltp_read_only", "--db-ps-mode=disable"], port, a.seconds, a.threads)),
    "connect_storm": ("connects/s", lambda port, a: sysbench(["connect_storm"], port, a.seconds, a.threads, script=str(HERE / "connect_storm.lua"))),
    # the same storm, where the moon+pool target (--proxy-auth=proxy with a core pool) takes part
    "connect_storm_pool": ("connects/s", lambda port, a: sysbench(["connect_storm"], port, a.seconds, a.threads, script=str(HERE / "connect_storm.lua"))),
    "stream_256mb": ("MiB/s", lambda port, a: stream(port, 256)),
    # 1000 mostly idle clients, where the moon+mx target (--proxy-multiplex) takes part
    "idle_clients_multiplex": ("queries/s", idle_clients),
    # the same with binary prepared statements, which move with their sessions
    "idle_clients_multiplex_ps": ("queries/s", lambda port, a: idle_clients(port, a, ps=True)),
    # TLS from the client to the proxy and from the proxy to the server (HAProxy forwards the
    # client's own TLS to the server; direct is TLS to MariaDB)
    "point_select_tls": ("queries/s", lambda port, a: sysbench(["oltp_point_select", "--db-ps-mode=disable", "--mysql-ssl=on"], port, a.seconds, a.threads)),
    "stream_256mb_tls": ("MiB/s", lambda port, a: stream(port, 256, tls=True)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mariadb-port", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--moonproxy", required=True)
    ap.add_argument("--certs", help="directory of make_test_certs (MariaDB runs with its server certificate)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--proxy-threads", default="1",
                    help="event threads of MoonProxy and HAProxy's nbthread; a list (1,2) runs a MoonProxy and an "
                         "HAProxy per count side by side (the script and metrics targets use the first count)")
    ap.add_argument("--workloads", default=",".join(w for w in WORKLOADS if not w.startswith("idle_clients_multiplex")))
    ap.add_argument("--idle-clients", type=int, default=1000, help="client connections of idle_clients_multiplex")
    ap.add_argument("--multiplex-pool", type=int, default=25, help="server connections of the moon+mx target")
    ap.add_argument("--mariadb-socket", help="the server's unix socket (scripts/bench passes it)")
    ap.add_argument("--socket-targets", action="store_true",
                    help="with the multiplexing workloads, add moon+mx/sock and haproxy/sock, which reach the server through its "
                         "unix socket (a proxy on the database's host), beside the TCP targets")
    ap.add_argument("--extra-moonproxy", action="append", default=[],
                    help="NAME=ARGS: another MoonProxy target started with these extra arguments")
    ap.add_argument("--metrics", action="store_true",
                    help="add a MoonProxy target with --metrics-address, scraped every second (the metrics' cost)")
    ap.add_argument("--compare-moonproxy", metavar="PATH",
                    help="another MoonProxy build (an older commit's) run side by side: its relay as moonproxy-cmp and, "
                         "with the multiplexing workloads, its moon+mx as moon+mx-cmp")
    ap.add_argument("--no-script-targets", action="store_true",
                    help="leave out the MoonProxy targets running an empty read_query and an appending one")
    a = ap.parse_args()
    workdir = Path(a.workdir)
    workloads = [w for w in a.workloads.split(",") if w]
    global CERTS
    CERTS = a.certs
    if not CERTS:
        workloads = [w for w in workloads if not w.endswith("_tls")]
    tls_args = [f"--ssl-cert={Path(CERTS) / 'server.pem'}", f"--ssl-key={Path(CERTS) / 'server-key.pem'}"] if CERTS else []

    print("preparing sysbench tables ...", file=sys.stderr)
    subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "-e", "CREATE DATABASE IF NOT EXISTS sbtest"], check=True)
    subprocess.run(["sysbench", "oltp_read_only", "--mysql-host=127.0.0.1", f"--mysql-port={a.mariadb_port}", "--mysql-user=root",
                    "--mysql-db=sbtest", "--tables=4", "--table-size=50000", "prepare"], check=True, capture_output=True)

    thread_counts = [int(n) for n in str(a.proxy_threads).split(",") if n]
    first = thread_counts[0]
    targets = [Target("direct", a.mariadb_port)]
    for n in thread_counts:
        targets.append(start_haproxy(workdir, a.mariadb_port, n, name="haproxy" + thread_suffix(n, first)))
        targets.append(start_moonproxy(a.moonproxy, a.mariadb_port, n, name="moonproxy" + thread_suffix(n, first), extra=tls_args))
    if a.compare_moonproxy:
        targets.append(start_moonproxy(a.compare_moonproxy, a.mariadb_port, first, name="moonproxy-cmp", extra=tls_args))
    if not a.no_script_targets:
        a.extra_moonproxy = [f"moon+empty=--proxy-lua-script={HERE / 'bench_empty.lua'}",
                             f"moon+append=--proxy-lua-script={HERE / 'bench_append.lua'}"] + a.extra_moonproxy
    if a.metrics:
        a.extra_moonproxy.append(f"moon+metrics=--metrics-address=127.0.0.1:{free_port()}")
    for spec in a.extra_moonproxy:
        name, _, args = spec.partition("=")
        targets.append(start_moonproxy(a.moonproxy, a.mariadb_port, first, name=name, extra=tls_args + args.split()))
    if "connect_storm_pool" in workloads:
        # the proxy authenticates clients itself and keeps server connections for the next one
        subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "-e",
                        "CREATE OR REPLACE USER 'moon_bench_svc'@'127.0.0.1' IDENTIFIED BY 'bench svc'; "
                        "GRANT SELECT ON mysql.global_priv TO 'moon_bench_svc'@'127.0.0.1'"], check=True)
        targets.append(start_moonproxy(a.moonproxy, a.mariadb_port, first, name="moon+pool",
                                       extra=tls_args + ["--proxy-auth=proxy", "--proxy-users-user=moon_bench_svc",
                                                         f"--proxy-pool-max={2 * a.threads}"],
                                       env=dict(os.environ, MOONPROXY_USERS_PASSWORD="bench svc")))
        if not a.no_script_targets:
            # a script on every command (the empty read_query of moon+empty) with the same pool:
            # its sessions give their connections back too
            targets.append(start_moonproxy(a.moonproxy, a.mariadb_port, first, name="moon+pool+lua",
                                           extra=tls_args + ["--proxy-auth=proxy", "--proxy-users-user=moon_bench_svc",
                                                             f"--proxy-pool-max={2 * a.threads}", f"--proxy-lua-script={HERE / 'bench_empty.lua'}"],
                                           env=dict(os.environ, MOONPROXY_USERS_PASSWORD="bench svc")))
        time.sleep(1)  # the accounts are read
    if any(w.startswith("idle_clients_multiplex") for w in workloads):
        # the server takes the direct target's thousand connections; the moon+mx target shares a few
        subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "-e",
                        f"SET GLOBAL max_connections = {a.idle_clients + 200}; "
                        "CREATE OR REPLACE USER 'moon_bench_svc'@'127.0.0.1' IDENTIFIED BY 'bench svc'; "
                        "GRANT SELECT ON mysql.global_priv TO 'moon_bench_svc'@'127.0.0.1'"], check=True)
        multiplexed = [(a.moonproxy, "moon+mx", None)] + ([(a.compare_moonproxy, "moon+mx-cmp", None)] if a.compare_moonproxy else [])
        if a.socket_targets and a.mariadb_socket:
            # the service account logs in over the socket too: as 'moon_bench_svc'@'localhost'
            subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "-e",
                            "CREATE OR REPLACE USER 'moon_bench_svc'@'localhost' IDENTIFIED BY 'bench svc'; "
                            "GRANT SELECT ON mysql.global_priv TO 'moon_bench_svc'@'localhost'"], check=True)
            targets.append(start_haproxy(workdir, a.mariadb_port, first, name="haproxy/sock", socket=a.mariadb_socket))
            multiplexed.append((a.moonproxy, "moon+mx/sock", a.mariadb_socket))
        for binary, name, backend in multiplexed:
            targets.append(start_moonproxy(binary, a.mariadb_port, first, name=name, backend=backend,
                                           extra=tls_args + ["--proxy-auth=proxy", "--proxy-users-user=moon_bench_svc",
                                                             f"--proxy-pool-max={a.multiplex_pool}", "--proxy-multiplex"],
                                           env=dict(os.environ, MOONPROXY_USERS_PASSWORD="bench svc")))
        time.sleep(1)

    results = {w: {t.name: [] for t in targets} for w in workloads}
    a.current_pid, a.proxy_pids = None, [t.pid for t in targets if t.pid]
    try:
        for w in workloads:  # warm up every path once
            for t in targets:
                if w == "stream_256mb":
                    continue
                ns = argparse.Namespace(**{**vars(a), "seconds": 2, "current_pid": t.pid})
                WORKLOADS[w][1](t.port, ns)
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for w in workloads:
                for t in order:
                    user0, sys0 = cpu_times(t.pid) if t.pid else (0, 0)
                    if t.pid:
                        reset_peak_rss(t.pid)
                    a.current_pid = t.pid
                    res = WORKLOADS[w][1](t.port, a)
                    if t.pid:
                        user1, sys1 = cpu_times(t.pid)
                        n = max(res["count"], 1)
                        res["cpu_per_10k"] = (user1 - user0 + sys1 - sys0) / n * 10_000
                        res["user_us"] = (user1 - user0) / n * 1e6
                        res["sys_us"] = (sys1 - sys0) / n * 1e6
                        res["peak_rss_mib"] = peak_rss_kib(t.pid) / 1024
                    results[w][t.name].append(res)
                    cpu = f" cpu/10k {res['cpu_per_10k']:.3f}" if t.pid else ""
                    if "server_connections" in res:
                        cpu += f" server connections {res['server_connections']}"
                    print(f"round {r + 1} {w:18} {t.name:12} {res['rate']:10.1f}{cpu}", file=sys.stderr)
    finally:
        for t in targets:
            t.stop()

    def med(values):
        return statistics.median(values) if values else float("nan")

    cpu_by_workload = {}
    print()
    print(f"MoonProxy benchmark: {a.rounds} rounds x {a.seconds}s, {a.threads} client threads, "
          f"{'/'.join(map(str, thread_counts))} proxy thread(s), {os.cpu_count()} CPUs; medians over rounds")
    print(f"{'workload':20} {'target':14} {'rate':>12} {'unit':10} {'p95 ms':>9} {'CPU s/10k':>10} {'user+sys µs':>13} {'peak RSS':>9}")
    for w in workloads:
        unit = WORKLOADS[w][0]
        summary = {}
        for t in targets:
            runs = results[w][t.name]
            rate = med([x["rate"] for x in runs])
            p95 = med([x["p95"] for x in runs])
            cpu = med([x["cpu_per_10k"] for x in runs]) if t.pid else None
            split = f"{med([x['user_us'] for x in runs]):.1f}+{med([x['sys_us'] for x in runs]):.1f}" if t.pid else "-"
            rss = max([x["peak_rss_mib"] for x in runs]) if t.pid else None
            errors = sum(x["errors"] for x in runs)
            summary[t.name] = (rate, cpu)
            print(f"{w:20} {t.name:14} {rate:12.1f} {unit:10} {p95:9.2f} "
                  f"{(f'{cpu:.3f}' if cpu is not None else '-'):>10} {split:>13} {(f'{rss:.1f}M' if rss is not None else '-'):>9}"
                  + (f"  ({errors} errors)" if errors else "")
                  + (f"  clients/server connections {a.idle_clients}/{max(x['server_connections'] for x in runs)}"
                     if runs and "server_connections" in runs[0] else ""))
        direct_rate = summary["direct"][0]
        plain_cpu = summary["moonproxy"][1]
        for t in targets:
            if t.name == "direct" or t.name.startswith("haproxy"):
                continue
            base_rate, base_cpu = summary[baseline_of(t.name)]
            rate, cpu = summary[t.name]
            versus_plain = f"  CPU/moonproxy {cpu / plain_cpu:5.2f}" if t.name.partition("@")[0] != "moonproxy" and plain_cpu else ""
            plain_w = None
            if w.endswith("_tls"):
                base = w[:-len("_tls")]
                plain_w = base if base in cpu_by_workload else base + "_text"
            versus_tls = ""
            if plain_w in cpu_by_workload and cpu_by_workload[plain_w].get(t.name):
                versus_tls = f"  CPU TLS/plaintext {cpu / cpu_by_workload[plain_w][t.name]:5.2f}"
            print(f"{'':20} {t.name + ' ratios':14} rate/{baseline_of(t.name)} {rate / base_rate:5.2f}  rate/direct {rate / direct_rate:5.2f}  "
                  f"CPU/{baseline_of(t.name)} {cpu / base_cpu if base_cpu else float('nan'):5.2f}{versus_plain}{versus_tls}")
        for t in targets:
            if t.name.endswith("-cmp") and t.name[:-4] in summary:
                (new_rate, new_cpu), (old_rate, old_cpu) = summary[t.name[:-4]], summary[t.name]
                print(f"{'':20} {t.name[:-4] + ' vs the compared build':14} rate {new_rate / old_rate:5.2f}  "
                      f"CPU {new_cpu / old_cpu if old_cpu else float('nan'):5.2f}")
        for n in thread_counts[1:]:
            for proxy in ("haproxy", "moonproxy"):
                one, more = summary[proxy][0], summary[proxy + thread_suffix(n, first)][0]
                print(f"{'':20} {proxy + ' scaling':14} rate {n}t/{first}t {more / one:5.2f}")
        cpu_by_workload[w] = {name: c for name, (_, c) in summary.items()}


if __name__ == "__main__":
    main()

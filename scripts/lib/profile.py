"""Repeatable cost figures per query and per connection (driven by scripts/profile).

Seconds on a shared 2-core machine move by tens of percent from run to run; instruction counts,
heap allocations and system calls do not. For each target and workload the target is started
under a tool, driven through exactly N and then 2N events by one sysbench thread, and the cost of
one event is (X(2N) - X(N)) / N: start-up, the client's connect and shut-down cancel out.

  instructions  valgrind --tool=callgrind (all threads of the process)
  allocations   valgrind --tool=dhat (heap blocks allocated)
  syscalls      strace -f -c (every thread)
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import free_port, haproxy_config, wait_for  # noqa: E402

WORKLOADS = {
    "point_select_text": ["oltp_point_select", "--db-ps-mode=disable"],
    "point_select_ps": ["oltp_point_select", "--db-ps-mode=auto"],
    "connect_storm": [str(HERE / "connect_storm.lua")],
}
UNITS = {"point_select_text": "query", "point_select_ps": "query", "connect_storm": "connection"}


def tool_prefix(tool, out):
    if tool == "instructions":
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--log-file={out}.log"]
    if tool == "allocations":
        return ["valgrind", "--tool=dhat", f"--dhat-out-file={out}", f"--log-file={out}.log"]
    return ["strace", "-f", "-c", "-o", str(out)]


def measured(tool, out):
    if tool == "instructions":
        text = Path(out).read_text(errors="replace")
        m = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        return int(m.group(1))
    if tool == "allocations":
        text = Path(f"{out}.log").read_text(errors="replace")
        m = re.search(r"Total:\s+([\d,]+) bytes in ([\d,]+) blocks", text)
        return int(m.group(2).replace(",", ""))
    for line in Path(out).read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] == "total":
            return int(fields[3])
    raise RuntimeError(f"no total in {out}")


def target_command(name, port, a, workdir):
    if name == "haproxy":
        cfg = haproxy_config(workdir / f"haproxy-{port}.cfg", port, a.mariadb_port, 1)
        return ["haproxy", "-f", str(cfg), "-db"]
    binary = a.baseline if name.startswith("before") else a.moonproxy
    # --skip-ssl: the self-signed certificate made at startup costs a random number of
    # instructions (its key), which (X(2N) - X(N)) does not cancel; sysbench uses no TLS here
    cmd = [binary, f"--proxy-address=127.0.0.1:{port}", f"--proxy-backend-addresses=127.0.0.1:{a.mariadb_port}",
           "--event-threads=1", "--log-level=warning", "--skip-ssl"]
    if name in ("moon+empty", "before+empty"):
        cmd.append(f"--proxy-lua-script={HERE / 'bench_empty.lua'}")
    if name == "moon+pool":
        # the proxy authenticates clients itself and keeps their server connections (core pool)
        cmd += ["--proxy-auth=proxy", "--proxy-users-user=moon_bench_svc", "--proxy-pool-max=4"]
    if name == "moon+mx":
        # multiplexed sessions on one server connection: with --client-threads 2 or more, the
        # connection changes hands at (nearly) every command, as with many mostly idle clients
        cmd += ["--proxy-auth=proxy", "--proxy-users-user=moon_bench_svc", "--proxy-pool-max=1", "--proxy-multiplex"]
    if name == "moon+metrics":
        cmd.append(f"--metrics-address=127.0.0.1:{free_port()}")
    return cmd


def run_once(tool, target, workload, events, a, workdir):
    port = free_port()
    out = workdir / f"{tool}-{target}-{workload}-{events}.out"
    proc = subprocess.Popen(tool_prefix(tool, out) + target_command(target, port, a, workdir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MOONPROXY_USERS_PASSWORD="bench svc"))
    try:
        wait_for(port, timeout=120)
        if target in ("moon+pool", "moon+mx"):
            time.sleep(3)  # the accounts are read (under valgrind, slowly)
        args = WORKLOADS[workload]
        cmd = ["sysbench", args[0], "--mysql-host=127.0.0.1", f"--mysql-port={port}", "--mysql-user=root",
               "--mysql-db=sbtest", "--tables=1", "--table-size=10000", f"--threads={a.client_threads}", "--time=0",
               f"--events={events}", *args[1:], "run"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError("sysbench failed:\n" + r.stdout + r.stderr)
    finally:
        victim = proc.pid
        if tool == "syscalls":
            # strace runs the target as its child: the target is to stop, strace to report
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            victim = int(children[0]) if children else proc.pid
        os.kill(victim, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return measured(tool, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mariadb-port", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--moonproxy", required=True)
    ap.add_argument("--events", type=int, default=2000, help="N: each figure is (X(2N) - X(N)) / N")
    ap.add_argument("--targets", default="moonproxy,moon+empty,haproxy")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--tools", default="instructions,allocations,syscalls")
    ap.add_argument("--client-threads", type=int, default=1, help="sysbench threads (moon+mx hands its connection over with 2)")
    ap.add_argument("--baseline", help="another moonproxy binary, measured as the targets 'before' and 'before+empty'")
    a = ap.parse_args()
    workdir = Path(a.workdir)
    # valgrind 3.19 cannot read the DWARF 5 Swift's toolchain writes: a copy without it (the
    # symbol table stays, so callgrind_annotate still names functions)
    stripped = workdir / "moonproxy"
    subprocess.run(["strip", "--strip-debug", "-o", str(stripped), a.moonproxy], check=True)
    a.moonproxy = str(stripped)
    if a.baseline:
        subprocess.run(["strip", "--strip-debug", "-o", str(workdir / "baseline"), a.baseline], check=True)
        a.baseline = str(workdir / "baseline")
        if "before" not in a.targets:
            a.targets = "before,before+empty," + a.targets
    subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "-e", "CREATE DATABASE IF NOT EXISTS sbtest"], check=True)
    subprocess.run(["sysbench", "oltp_point_select", "--mysql-host=127.0.0.1", f"--mysql-port={a.mariadb_port}", "--mysql-user=root",
                    "--mysql-db=sbtest", "--tables=1", "--table-size=10000", "prepare"], check=False, capture_output=True)  # made by an earlier run
    subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.mariadb_port}", "-uroot", "-e",
                    "CREATE OR REPLACE USER 'moon_bench_svc'@'127.0.0.1' IDENTIFIED BY 'bench svc'; "
                    "GRANT SELECT ON mysql.global_priv TO 'moon_bench_svc'@'127.0.0.1'"], check=True)
    targets = [t for t in a.targets.split(",") if t]
    workloads = [w for w in a.workloads.split(",") if w]
    tools = [t for t in a.tools.split(",") if t]
    results = {}
    for workload in workloads:
        for target in targets:
            for tool in tools:
                started = time.time()
                small = run_once(tool, target, workload, a.events, a, workdir)
                large = run_once(tool, target, workload, 2 * a.events, a, workdir)
                per = (large - small) / a.events
                results[(workload, target, tool)] = per
                print(f"{workload:18} {target:12} {tool:12} {per:12.1f} per {UNITS[workload]}  ({time.time() - started:.0f} s)",
                      file=sys.stderr, flush=True)

    print(f"\nMoonProxy cost per event: (X(2N) - X(N)) / N with N = {a.events}, {a.client_threads} sysbench thread(s), one event thread")
    print(f"{'workload':18} {'target':12} " + " ".join(f"{t:>14}" for t in tools) + "   " +
          " ".join(f"{t + '/haproxy':>22}" for t in tools if "haproxy" in targets))
    for workload in workloads:
        for target in targets:
            row = [results[(workload, target, t)] for t in tools]
            line = f"{workload:18} {target:12} " + " ".join(f"{v:14.1f}" for v in row)
            if "haproxy" in targets and target != "haproxy":
                ratios = []
                for t, v in zip(tools, row):
                    h = results[(workload, "haproxy", t)]
                    ratios.append(f"{v / h:22.2f}" if h > 0 else f"{'-':>22}")
                line += "   " + " ".join(ratios)
            print(line)


if __name__ == "__main__":
    main()

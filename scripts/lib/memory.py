"""Memory per idle connection, MoonProxy beside HAProxy (driven by scripts/memory).

For each connection count, every target gets that many clients that log in (mysql_native_password,
root without a password) and then sit idle; the target's resident set is read before they come,
while they sit, and a few seconds after they have all gone. Per connection: (RSS with them - RSS
before) / count, in bytes. Not a test: it prints the figures and the ratios.
"""
import argparse
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, haproxy_config, wait_for  # noqa: E402


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def read_packet(sock):
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    length = int.from_bytes(header[:3], "little")
    payload = b""
    while len(payload) < length:
        chunk = sock.recv(length - len(payload))
        if not chunk:
            raise ConnectionError("closed")
        payload += chunk
    return header[3], payload


def login(port):
    """A client that logs in as root (no password) and stays idle: its socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    seq, greeting = read_packet(s)
    if greeting[:1] == b"\xff":
        raise ConnectionError(greeting[3:].decode(errors="replace"))
    caps = 0x0200 | 0x8000 | 0x80000 | 0x0001 | 0x0004 | 0x00010000 | 0x00020000  # 4.1, secure conn, plugin auth, ...
    response = struct.pack("<IIB", caps, 1 << 24, 33) + b"\0" * 23 + b"root\0" + b"\0" + b"mysql_native_password\0"
    s.sendall(struct.pack("<I", len(response))[:3] + bytes([seq + 1]) + response)
    _, verdict = read_packet(s)
    if verdict[:1] == b"\xfe":  # auth switch: answer with an empty scramble
        s.sendall(b"\0\0\0" + bytes([3]))
        _, verdict = read_packet(s)
    if verdict[:1] != b"\x00":
        raise ConnectionError(f"login refused: {verdict[3:].decode(errors='replace')}")
    return s


def measure(target, counts, settle):
    results = []
    for n in counts:
        time.sleep(settle)
        before = rss_kib(target["pid"])
        sockets = []
        for _ in range(n):
            sockets.append(login(target["port"]))
        time.sleep(settle)
        during = rss_kib(target["pid"])
        for s in sockets:
            s.close()
        time.sleep(max(settle, 3))  # closes done, and an idle tick or two
        after = rss_kib(target["pid"])
        results.append((n, before, during, after))
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mariadb-port", type=int, required=True)
    p.add_argument("--moonproxy", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--counts", default="1000,5000")
    p.add_argument("--settle", type=float, default=2.0)
    a = p.parse_args()
    counts = [int(x) for x in a.counts.split(",")]
    workdir = Path(a.workdir)
    # the clients' sockets, and each target's two per client (HAProxy wants twice its maxconn and more)
    maxconn = max(counts) + 100
    limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4 * maxconn + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    targets = []
    hport = free_port()
    cfg = haproxy_config(workdir / "haproxy.cfg", hport, a.mariadb_port, 1)
    cfg.write_text(cfg.read_text().replace("maxconn 4000", f"maxconn {maxconn}"))
    haproxy = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(hport)
    targets.append({"name": "haproxy", "port": hport, "pid": haproxy.pid, "proc": haproxy})
    mport = free_port()
    moon = subprocess.Popen([a.moonproxy, f"--proxy-address=127.0.0.1:{mport}", f"--proxy-backend-addresses=127.0.0.1:{a.mariadb_port}",
                             f"--max-open-files={limit}", "--log-level=warning", "--proxy-backend-ssl=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(mport)
    targets.append({"name": "moonproxy", "port": mport, "pid": moon.pid, "proc": moon})
    try:
        # warm up: a first round of connections makes the allocators' arenas and NIO's structures
        for t in targets:
            for s in [login(t["port"]) for _ in range(50)]:
                s.close()
        table = {t["name"]: measure(t, counts, a.settle) for t in targets}
    finally:
        for t in targets:
            t["proc"].send_signal(signal.SIGTERM)
            t["proc"].wait()

    print()
    print("| connections | target | RSS before (MiB) | with them (MiB) | per connection (bytes) | after they closed (MiB) | after - before (MiB) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    per = {}
    for name, rows in table.items():
        for n, before, during, after in rows:
            per[(name, n)] = (during - before) * 1024 / n
            print(f"| {n} | {name} | {before / 1024:.1f} | {during / 1024:.1f} | {per[(name, n)]:,.0f} | {after / 1024:.1f} | {(after - before) / 1024:+.1f} |")
    print()
    for n in counts:
        h, m = per.get(("haproxy", n)), per.get(("moonproxy", n))
        if h and m:
            print(f"{n} idle connections: MoonProxy {m:,.0f} bytes each, HAProxy {h:,.0f}: {m / h:.2f}x")


if __name__ == "__main__":
    main()

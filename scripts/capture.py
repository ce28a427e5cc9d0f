#!/usr/bin/env python3
"""Relays one TCP connection and prints every MySQL frame seen in each direction as hex.

Used to capture byte vectors from a real server for MySQLWire's unit tests:
    scripts/capture.py --listen 127.0.0.1:24000 --backend 127.0.0.1:3306 > capture.txt
then point any client at port 24000. Each line is `C>` (client to server) or `S>` (server to
client), the frame's payload length and sequence id, then the payload in hex (truncated with --max).
"""
import argparse
import socket
import sys
import threading


def frames(name, src, dst, out, lock, limit):
    pending = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            pending += data
            while len(pending) >= 4:
                length = int.from_bytes(pending[:3], "little")
                if len(pending) < 4 + length:
                    break
                seq = pending[3]
                payload = pending[4:4 + length]
                pending = pending[4 + length:]
                shown = payload if limit <= 0 else payload[:limit]
                with lock:
                    out.write(f"{name} len={length} seq={seq} {shown.hex()}{'...' if len(shown) < length else ''}\n")
                    out.flush()
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--max", type=int, default=256, help="bytes of each payload to print (0: all)")
    ap.add_argument("--connections", type=int, default=1)
    args = ap.parse_args()
    lh, lp = args.listen.rsplit(":", 1)
    bh, bp = args.backend.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lh, int(lp)))
    ls.listen(8)
    lock = threading.Lock()
    for _ in range(args.connections):
        c, _ = ls.accept()
        b = socket.create_connection((bh, int(bp)))
        t1 = threading.Thread(target=frames, args=("C>", c, b, sys.stdout, lock, args.max))
        t2 = threading.Thread(target=frames, args=("S>", b, c, sys.stdout, lock, args.max))
        t1.start(); t2.start(); t1.join(); t2.join()


if __name__ == "__main__":
    main()

"""Hostile clients, at random but reproducibly: mangled handshake responses, and after a proper
login, commands with random codes, bodies, lengths and sequence ids. Through the transparent path
through a script that collects every result, and against the example mock server (no backend). Whatever each session gets, the proxy must stay
up, keep its file descriptors, and serve a well-behaved client afterwards.

The fuzzers under Fuzz/ cover the parsers in process; this covers the state machines and the
channel handlers that sit around them, against a real MariaDB."""
import random
import socket
import struct
import time

import pytest

from conftest import ROOT
from rawclient import DEFAULT_CAPS, RawClient, lenenc
from test_faults import assert_still_serving, proxy_fd_count

SESSIONS = 120
SEED = 20261121

# Never sent: COM_SHUTDOWN, COM_PROCESS_KILL, COM_DEBUG, COM_REFRESH, COM_CREATE_DB/COM_DROP_DB and
# the replication commands would act on the shared test server or wait for a stream.
SAFE_COMMANDS = [c for c in range(0x00, 0x20) if c not in (0x05, 0x06, 0x07, 0x08, 0x0C, 0x0D, 0x12, 0x15, 0x1E)]

SCRIPT = """
function read_query(packet)
  proxy.queries:append(1, packet, { resultset_is_needed = true })
  return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
  local res = inj.resultset
  local n = 0
  if res.fields then for _ in res.rows do n = n + 1 end end
end
"""


def mangle(rng, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        what = rng.randrange(4)
        if what == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif what == 1 and data:
            del data[rng.randrange(len(data)):]
        elif what == 2:
            data[rng.randrange(len(data) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        elif data:
            i = rng.randrange(len(data))
            data[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xfc", b"\xfd\xff\xff", b"\xfe", b"\x00\x00"])
    return bytes(data)


def raw_frame(payload: bytes, seq: int, lie: int = 0) -> bytes:
    return struct.pack("<I", max(0, len(payload) + lie) & 0xFFFFFF)[:3] + bytes([seq & 0xFF]) + payload


def drain(sock, quiet=0.05, limit=1.0):
    sock.settimeout(quiet)
    end = time.monotonic() + limit
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return
    except (socket.timeout, OSError):
        pass


def hostile_handshake(rng, port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        s.recv(4096)
        body = struct.pack("<IIB", DEFAULT_CAPS, 1 << 24, 33) + b"\0" * 23 + b"root\0" + lenenc(0)
        body += b"mysql_native_password\0"
        s.sendall(raw_frame(mangle(rng, body), 1, lie=rng.choice([0, 0, 0, -1, 3, 1 << 20])))
        drain(s)
    finally:
        s.close()


def hostile_commands(rng, port, **login):
    c = RawClient("127.0.0.1", port, **login)
    try:
        for _ in range(rng.randint(1, 6)):
            code = rng.choice(SAFE_COMMANDS)
            body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 4, 9, 30])))
            if code == 0x03 and rng.random() < 0.5:
                body = mangle(rng, b"SELECT 1, 'x', NULL; SELECT 2")
            seq = rng.choice([0, 0, 0, 1, 7])
            lie = rng.choice([0, 0, 0, 0, -1, 2])
            c.sock.sendall(raw_frame(bytes([code]) + body, seq, lie))
            drain(c.sock, limit=0.3)
    except OSError:
        pass
    finally:
        c.sock.close()


@pytest.mark.parametrize("mode", ["transparent", "scripted", "mock"])
def test_random_hostile_sessions(start_proxy, tmp_path, mode):
    login = {}
    if mode == "transparent":
        p = start_proxy()
    elif mode == "scripted":
        script = tmp_path / "collect.lua"
        script.write_text(SCRIPT)
        p = start_proxy(f"--proxy-lua-script={script}")
    else:  # no backend at all: the example mock server answers everything
        login = {"user": "app", "password": "app-secret"}
        p = start_proxy(f"--proxy-lua-script={ROOT / 'examples' / 'mock-server.lua'}", backend=False)

    def still_serving():
        if mode == "mock":
            c = p.connect(**login)
            with c.cursor() as cur:
                cur.execute("SELECT * FROM customers")
                assert len(cur.fetchall()) == 3
            c.close()
        else:
            assert_still_serving(p)

    still_serving()
    fds = proxy_fd_count(p)
    rng = random.Random(f"{SEED}-{mode}")
    for _ in range(SESSIONS):
        if rng.random() < 0.35:
            hostile_handshake(rng, p.port)
        else:
            hostile_commands(rng, p.port, **login)
        assert p.proc.poll() is None, p.log()[-3000:]
    still_serving()
    deadline = time.monotonic() + 10
    while proxy_fd_count(p) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy_fd_count(p) <= fds, "file descriptors leaked"
    assert "Fatal error" not in p.log()

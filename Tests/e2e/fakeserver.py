"""A deliberately misbehaving MySQL server for fault tests. It greets, accepts any login, and
answers queries by keyword:

  - a query containing 'ok'            → a proper OK packet
  - 'select'                           → a proper one-column result set
  - 'lying-count'                      → a column count whose length-encoding runs past the packet
  - 'truncated-ok'                     → an OK packet cut short
  - 'eof-missing'                      → a row where the EOF after the definitions belongs
  - 'die'                              → closes the connection in the middle of a result set
With greeting='garbage' it sends a malformed greeting instead of a handshake; with
greeting='absurd-version' a well-formed one whose version string no real server would send.
"""
import socket
import struct
import threading


def read_packet(conn):
    """One packet from a socket: (sequence id, payload), or (None, None) at the end."""
    header = b""
    while len(header) < 4:
        chunk = conn.recv(4 - len(header))
        if not chunk:
            return None, None
        header += chunk
    length = int.from_bytes(header[:3], "little")
    payload = b""
    while len(payload) < length:
        chunk = conn.recv(length - len(payload))
        if not chunk:
            return None, None
        payload += chunk
    return header[3], payload


def frame(payload, seq):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


GREETING = (b"\x0a" + b"5.5.5-10.11.0-FakeServer\x00" + struct.pack("<I", 7) + b"12345678\x00"
            + struct.pack("<H", 0xF7FE & ~0x20) + b"\x21" + struct.pack("<H", 2)
            + struct.pack("<H", 0x81BF) + b"\x15" + b"\x00" * 10 + b"abcdefghijkl\x00"
            + b"mysql_native_password\x00")
OK = b"\x00\x00\x00\x02\x00\x00\x00"
EOF_PKT = b"\xfe\x00\x00\x02\x00"
COLUMN = b"\x03def\x00\x00\x00\x01x\x00\x0c\x21\x00\x0b\x00\x00\x00\xfd\x00\x00\x00\x00\x00"


class FakeServer:
    def __init__(self, greeting="good"):
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn):
        return read_packet(conn)

    def _serve(self, conn):
        try:
            if self.greeting == "garbage":
                conn.sendall(frame(b"\x0a5.5", 0))
                conn.recv(1024)
                return
            if self.greeting == "absurd-version":
                conn.sendall(frame(GREETING.replace(b"5.5.5-10.11.0-FakeServer", b"9223372036854775807.1.1"), 0))
            else:
                conn.sendall(frame(GREETING, 0))
            seq, _ = self._read(conn)
            if seq is None:
                return
            conn.sendall(frame(OK, seq + 1))
            while True:
                seq, payload = self._read(conn)
                if payload is None or payload[:1] == b"\x01":
                    return
                q = payload[1:].decode(errors="replace").lower()
                if "lying-count" in q:
                    conn.sendall(frame(b"\xfc\x01", 1))
                elif "truncated-ok" in q:
                    conn.sendall(frame(b"\x00\x00", 1))
                elif "eof-missing" in q:
                    conn.sendall(frame(b"\x01", 1) + frame(COLUMN, 2) + frame(b"\x01a", 3))
                elif "die" in q:
                    conn.sendall(frame(b"\x01", 1) + frame(COLUMN, 2) + frame(EOF_PKT, 3) + frame(b"\x01a", 4))
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                elif "select" in q:
                    conn.sendall(frame(b"\x01", 1) + frame(COLUMN, 2) + frame(EOF_PKT, 3) + frame(b"\x011", 4) + frame(EOF_PKT, 5))
                else:
                    conn.sendall(frame(OK, 1))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()

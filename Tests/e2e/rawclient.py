"""A minimal MySQL protocol client over a raw socket, for tests and captures that need control
over capability flags and exact bytes (libmariadb never sets CLIENT_DEPRECATE_EOF, for one).

It only does mysql_native_password authentication. Responses are read packet by packet; `read_all`
collects packets until the peer has been silent for a moment, which suits captures, while tests use
the structured readers.
"""
import ctypes
import hashlib
import socket
import struct
import zlib

CLIENT_LONG_PASSWORD = 1
CLIENT_FOUND_ROWS = 2
CLIENT_LONG_FLAG = 4
CLIENT_CONNECT_WITH_DB = 8
CLIENT_LOCAL_FILES = 128
CLIENT_PROTOCOL_41 = 512
CLIENT_SSL = 2048
CLIENT_TRANSACTIONS = 8192
CLIENT_SECURE_CONNECTION = 32768
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_COMPRESS = 1 << 5
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
# MariaDB's extended capabilities (sent in the last 4 filler bytes when CLIENT_LONG_PASSWORD,
# which MariaDB calls CLIENT_MYSQL, is clear)
MARIADB_CLIENT_PROGRESS = 1
MARIADB_CLIENT_STMT_BULK_OPERATIONS = 4
MARIADB_CLIENT_EXTENDED_METADATA = 8
MARIADB_CLIENT_CACHE_METADATA = 16

DEFAULT_CAPS = (CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS
                | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS
                | CLIENT_PS_MULTI_RESULTS | CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC
                | CLIENT_LOCAL_FILES)


def native_password(password: bytes, scramble: bytes) -> bytes:
    if not password:
        return b""
    h1 = hashlib.sha1(password).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(scramble + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


def lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfc" + struct.pack("<H", n)
    if n <= 0xFFFFFF:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def read_lenenc(p: bytes, pos: int):
    first = p[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        return int.from_bytes(p[pos + 1:pos + 3], "little"), pos + 3
    if first == 0xFD:
        return int.from_bytes(p[pos + 1:pos + 4], "little"), pos + 4
    return int.from_bytes(p[pos + 1:pos + 9], "little"), pos + 9


class Zstd:
    """Debian's libzstd through ctypes: the reference implementation, not ours."""
    lib = None

    @classmethod
    def _load(cls):
        if cls.lib is None:
            lib = ctypes.CDLL("libzstd.so.1")
            lib.ZSTD_compressBound.restype = ctypes.c_size_t
            lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
            lib.ZSTD_compress.restype = ctypes.c_size_t
            lib.ZSTD_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
            lib.ZSTD_decompress.restype = ctypes.c_size_t
            lib.ZSTD_decompress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
            lib.ZSTD_isError.restype = ctypes.c_uint
            lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
            cls.lib = lib
        return cls.lib

    @classmethod
    def compress(cls, data: bytes, level: int) -> bytes:
        lib = cls._load()
        cap = lib.ZSTD_compressBound(len(data))
        out = ctypes.create_string_buffer(cap)
        n = lib.ZSTD_compress(out, cap, data, len(data), level)
        assert not lib.ZSTD_isError(n)
        return out.raw[:n]

    @classmethod
    def decompress(cls, data: bytes, size: int) -> bytes:
        lib = cls._load()
        out = ctypes.create_string_buffer(max(size, 1))
        n = lib.ZSTD_decompress(out, size, data, len(data))
        if lib.ZSTD_isError(n) or n != size:
            raise ConnectionError(f"zstd frame does not inflate to {size} bytes")
        return out.raw[:n]


class RawClient:
    """`compression`: None, "zlib" or ("zstd", level): asked for when the greeting offers it;
    `self.compression` says what the login negotiated."""

    compression = None  # also for tests that build one with __new__ around a socket of their own

    def __init__(self, host, port, user="root", password="", database=None, caps=DEFAULT_CAPS, timeout=10, mariadb_caps=0,
                 compression=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.seq = 0
        self.compression = None
        self.cbuf = b""
        self.cseq = 0
        self.greeting = self.read_packet()
        if self.greeting[0] == 0xFF:
            raise ConnectionError(self.greeting)
        g = self.greeting
        pos = g.index(b"\0", 1) + 1
        self.server_version = g[1:pos - 1].decode()
        self.connection_id = struct.unpack_from("<I", g, pos)[0]
        scramble = g[pos + 4:pos + 12]
        pos += 13
        self.server_caps = struct.unpack_from("<H", g, pos)[0]
        self.server_caps |= struct.unpack_from("<H", g, pos + 5)[0] << 16
        auth_len = g[pos + 7]
        self.server_mariadb_caps = struct.unpack_from("<I", g, pos + 14)[0] if not self.server_caps & CLIENT_LONG_PASSWORD else 0
        pos += 18
        part2 = g[pos:pos + max(13, auth_len - 8)]
        self.scramble = scramble + part2.rstrip(b"\0")
        self.caps = caps & (self.server_caps | CLIENT_LONG_PASSWORD)
        if database:
            self.caps |= CLIENT_CONNECT_WITH_DB
        zstd_level = None
        if compression == "zlib" and self.server_caps & CLIENT_COMPRESS:
            self.caps |= CLIENT_COMPRESS
        elif isinstance(compression, tuple) and self.server_caps & CLIENT_ZSTD_COMPRESSION_ALGORITHM:
            self.caps |= CLIENT_ZSTD_COMPRESSION_ALGORITHM
            zstd_level = compression[1]
        self.mariadb_caps = mariadb_caps & self.server_mariadb_caps
        if self.mariadb_caps:
            self.caps &= ~CLIENT_LONG_PASSWORD
        auth = native_password(password.encode(), self.scramble)
        body = struct.pack("<IIB", self.caps, 1 << 24, 33) + b"\0" * 19 + struct.pack("<I", self.mariadb_caps)
        body += user.encode() + b"\0"
        body += lenenc(len(auth)) + auth if self.caps & CLIENT_PLUGIN_AUTH_LENENC else bytes([len(auth)]) + auth
        if database:
            body += database.encode() + b"\0"
        body += b"mysql_native_password\0"
        if zstd_level is not None:
            body += bytes([zstd_level])
        self.write_packet(body, seq=1)
        reply = self.read_packet()
        if reply[0] == 0xFE:  # auth switch
            name_end = reply.index(b"\0", 1)
            data = reply[name_end + 1:].rstrip(b"\0")
            self.write_packet(native_password(password.encode(), data), seq=self.seq)
            reply = self.read_packet()
        if reply[0] != 0:
            raise ConnectionError(reply)
        self.auth_ok = reply
        if self.caps & CLIENT_COMPRESS:
            self.compression = "zlib"
        elif zstd_level is not None:
            self.compression = ("zstd", zstd_level)

    def write_packet(self, payload: bytes, seq=None):
        if seq is not None:
            self.seq = seq
        out = b""
        while True:
            chunk = payload[:0xFFFFFF]
            payload = payload[0xFFFFFF:]
            out += struct.pack("<I", len(chunk))[:3] + bytes([self.seq & 0xFF]) + chunk
            self.seq += 1
            if len(chunk) < 0xFFFFFF:
                break
        if self.compression:
            if seq == 0:
                self.cseq = 0  # a command starts the compressed numbering again
            out = self.compress_frames(out)
        self.sock.sendall(out)

    def compress_frames(self, data: bytes) -> bytes:
        """The compressed protocol: 7-byte headers, payloads under 50 bytes sent as they are."""
        out = b""
        while data:
            chunk, data = data[:0xFFFFFF], data[0xFFFFFF:]
            body, size = chunk, 0
            if len(chunk) >= 50:
                packed = zlib.compress(chunk) if self.compression == "zlib" else Zstd.compress(chunk, self.compression[1])
                if len(packed) < len(chunk):
                    body, size = packed, len(chunk)
            out += struct.pack("<I", len(body))[:3] + bytes([self.cseq & 0xFF]) + struct.pack("<I", size)[:3] + body
            self.cseq += 1
        return out

    def _recv(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("connection closed")
        return data

    def _fill(self, n):
        while len(self.buf) < n:
            if not self.compression:
                self.buf += self._recv()
                continue
            while len(self.cbuf) < 7 or len(self.cbuf) < 7 + int.from_bytes(self.cbuf[:3], "little"):
                self.cbuf += self._recv()
            length = int.from_bytes(self.cbuf[:3], "little")
            self.cseq = self.cbuf[3] + 1
            size = int.from_bytes(self.cbuf[4:7], "little")
            body, self.cbuf = self.cbuf[7:7 + length], self.cbuf[7 + length:]
            if size:
                body = zlib.decompress(body) if self.compression == "zlib" else Zstd.decompress(body, size)
                assert len(body) == size
            self.buf += body

    def read_frame(self):
        self._fill(4)
        length = int.from_bytes(self.buf[:3], "little")
        self.seq = self.buf[3] + 1
        self._fill(4 + length)
        payload = self.buf[4:4 + length]
        self.buf = self.buf[4 + length:]
        return payload

    def read_packet(self):
        payload = self.read_frame()
        while len(payload) % 0xFFFFFF == 0 and len(payload) > 0:
            more = self.read_frame()
            payload += more
            if len(more) < 0xFFFFFF:
                break
        return payload

    def command(self, code: int, body: bytes = b""):
        self.write_packet(bytes([code]) + body, seq=0)

    def query_rows(self, sql: str):
        """A text-protocol query's rows (lists of bytes or None); an ERR raises."""
        self.command(0x03, sql.encode())
        first = self.read_packet()
        if first[0] == 0xFF:
            raise ConnectionError(first)
        if first[0] == 0x00:
            return []
        columns = first[0]
        for _ in range(columns):
            self.read_packet()
        if not self.caps & CLIENT_DEPRECATE_EOF:
            self.read_packet()  # EOF
        rows = []
        while True:
            p = self.read_packet()
            if p[0] == 0xFE and len(p) < 9:
                return rows
            if p[0] == 0xFF:
                raise ConnectionError(p)
            row, pos = [], 0
            for _ in range(columns):
                if p[pos] == 0xFB:
                    row.append(None)
                    pos += 1
                    continue
                n, pos = read_lenenc(p, pos)
                row.append(p[pos:pos + n])
                pos += n
            rows.append(row)

    def read_all(self, quiet=0.3):
        """Every packet until the server has been silent for `quiet` seconds."""
        packets = []
        old = self.sock.gettimeout()
        self.sock.settimeout(quiet)
        try:
            while True:
                try:
                    packets.append(self.read_packet())
                except socket.timeout:
                    break
        finally:
            self.sock.settimeout(old)
        return packets

    def close(self):
        try:
            self.command(0x01)
        except OSError:
            pass
        self.sock.close()

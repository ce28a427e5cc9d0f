"""A fake MySQL server for the authentication methods MariaDB cannot play: caching_sha2_password
(fast path and full authentication with the RSA public-key request), an auth switch to
sha256_password (which, like a server on a plaintext link, takes the password only RSA-encrypted)
and an auth switch to mysql_clear_password. It checks the password for real and answers OK or
ERR 1045."""
import hashlib
import os
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fakeserver import OK, FakeServer, frame

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def greeting(plugin, scramble):
    caps = 0xF7FE & ~0x20 & ~0x800 | 1  # no compression, no TLS, CLIENT_LONG_PASSWORD
    upper = 0x81BF
    return (b"\x0a" + b"8.0.36-FakeAuth\x00" + struct.pack("<I", 9) + scramble[:8] + b"\x00"
            + struct.pack("<H", caps & 0xFFFF) + b"\x21" + struct.pack("<H", 2) + struct.pack("<H", upper)
            + bytes([21]) + b"\x00" * 10 + scramble[8:] + b"\x00" + plugin + b"\x00")


def sha2_scramble(password, scramble):
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(hashlib.sha256(p1).digest() + scramble).digest()
    return bytes(a ^ b for a, b in zip(p1, p2))


class AuthServer(FakeServer):
    """mode: 'sha2-fast' (the server has the password cached), 'sha2-full', 'sha256' or 'clear'.
    key_bits: the size of the RSA key it sends (2048 unless a test wants a weak one)."""

    def __init__(self, mode, password=b"secret", key_bits=2048):
        self.mode, self.password = mode, password
        self.steps = []
        self.key = KEY if key_bits == 2048 else rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        self.pem = self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        super().__init__()

    @staticmethod
    def _read(conn):
        seq, payload = FakeServer._read(conn)
        if payload is None:
            raise ConnectionError
        return seq, payload

    def _serve(self, conn):
        try:
            scramble = os.urandom(20).replace(b"\x00", b"\x01")
            plugin = b"mysql_native_password" if self.mode in ("clear", "sha256") else b"caching_sha2_password"
            conn.sendall(frame(greeting(plugin, scramble), 0))
            seq, response = self._read(conn)
            ok = False
            if self.mode == "sha256":
                switch_scramble = os.urandom(20).replace(b"\x00", b"\x01")
                conn.sendall(frame(b"\xfesha256_password\x00" + switch_scramble + b"\x00", seq + 1))
                seq, answer = self._read(conn)
                if answer == b"\x01":                              # request for the public key
                    self.steps.append("key requested")
                    conn.sendall(frame(b"\x01" + self.pem, seq + 1))
                    seq, answer = self._read(conn)
                try:
                    plain = self.key.decrypt(answer, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
                    xored = bytes(b ^ switch_scramble[i % 20] for i, b in enumerate(plain))
                    ok = xored.rstrip(b"\x00") == self.password
                except ValueError:
                    self.steps.append("not encrypted")
                self.steps.append("sha256")
            elif self.mode == "clear":
                conn.sendall(frame(b"\xfemysql_clear_password\x00", seq + 1))
                seq, answer = self._read(conn)
                self.steps.append("clear")
                ok = answer.rstrip(b"\x00") == self.password
            else:
                pos = 32 + response[32:].index(b"\x00") + 1          # after the user name
                length = response[pos]
                token = response[pos + 1:pos + 1 + length]
                if self.mode == "sha2-fast":
                    ok = token == sha2_scramble(self.password, scramble)
                    if ok:
                        conn.sendall(frame(b"\x01\x03", seq + 1))  # fast auth success
                        self.steps.append("fast")
                        seq += 1
                else:
                    conn.sendall(frame(b"\x01\x04", seq + 1))      # perform full authentication
                    seq, answer = self._read(conn)
                    if answer == b"\x02":                          # request for the public key
                        self.steps.append("key requested")
                        conn.sendall(frame(b"\x01" + self.pem, seq + 1))
                        seq, answer = self._read(conn)
                    try:
                        plain = self.key.decrypt(answer, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
                        xored = bytes(b ^ scramble[i % len(scramble)] for i, b in enumerate(plain))
                        ok = xored.rstrip(b"\x00") == self.password
                    except ValueError:
                        self.steps.append("not encrypted for this key")
                    self.steps.append("full")
            if ok:
                conn.sendall(frame(OK, seq + 1))
            else:
                msg = b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied for user (using password: YES)"
                conn.sendall(frame(msg, seq + 1))
                return
            while True:
                seq, payload = self._read(conn)
                if payload[:1] == b"\x01":
                    return
                conn.sendall(frame(OK, seq + 1))
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            conn.close()

#!/usr/bin/env python3
"""A letterlock protocol version 2 client in Python's standard library (docs/PROTOCOL.md,
section 13): TLS 1.3 with a client certificate, the server pinned by key id, ALPN letterlock/2,
then frames. It fetches and prints how many messages wait (it does not open them: that is the
sealed-message format of sections 3 to 8).

    python3 v2_fetch.py HOST:PORT server_public.pem client.crt client_private.pem

client.crt is any certificate of the client's key, e.g. one made by
    openssl req -x509 -new -key client_private.pem -subj /CN=me -days 3650 -out client.crt
"""

import base64
import hashlib
import socket
import ssl
import struct
import sys

ALPN = "letterlock/2"
READY, FETCH, DELIVER, DELIVER_END, FETCH_DONE, ERROR = 0x03, 0x20, 0x21, 0x22, 0x23, 0x7F
PADDING = 0x7E  # section 13, "Frame padding": dropped after checking; never a frame of its own


def padded(frames):
    """`frames` (whole encoded frames, sent in one write) followed by the padding frame that
    brings them to their bucket: the smallest power of two >= len + 5 and >= 512 up to 16 KiB,
    else the next multiple of 16 KiB."""
    need = len(frames) + 5
    bucket = max(512, 1 << (need - 1).bit_length()) if need <= 16384 else -(-need // 16384) * 16384
    zeros = bucket - need
    return frames + struct.pack(">IB", 1 + zeros, PADDING) + bytes(zeros)


def key_id_of_pem(path):
    """SHA-256 of the SubjectPublicKeyInfo DER in a `BEGIN PUBLIC KEY` file (section 1)."""
    lines = open(path).read().strip().splitlines()
    if lines[0] != "-----BEGIN PUBLIC KEY-----":
        sys.exit(f"{path}: expected a BEGIN PUBLIC KEY file")
    return hashlib.sha256(base64.b64decode("".join(lines[1:-1]))).digest()


def tlv(der, i):
    """One DER element at offset i: (tag, content start, end)."""
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(der[i:i + k], "big")
        i += k
    return tag, i, i + n


def spki_of_cert(der):
    """The SubjectPublicKeyInfo DER of an X.509 certificate: the 7th field of the
    TBSCertificate (6th when the optional [0] version is absent)."""
    _, cert, _ = tlv(der, 0)
    _, i, _ = tlv(der, cert)
    fields = []
    while len(fields) < 7:
        tag, start, end = tlv(der, i)
        fields.append((tag, i, end))
        i = end
    if fields[0][0] != 0xA0:  # no version field: v1 layout
        fields = fields[:6]
    _, start, end = fields[-1]
    return der[start:end]


def read_frame(sock):
    """The next frame that is not padding: (type, payload)."""
    while True:
        head = recv_exactly(sock, 4)
        (length,) = struct.unpack(">I", head)
        if not 1 <= length <= 1 << 20:
            sys.exit(f"bad frame length {length}")
        body = recv_exactly(sock, length)
        if body[0] != PADDING:
            return body[0], body[1:]
        if length > 16384 or any(body[1:]):
            sys.exit("malformed padding")


def recv_exactly(sock, n):
    out = b""
    while len(out) < n:
        more = sock.recv(n - len(out))
        if not more:
            sys.exit("the server closed the connection")
        out += more
    return out


def main():
    addr, server_pem, client_crt, client_key = sys.argv[1:5]
    host, port = addr.rsplit(":", 1)
    pinned = key_id_of_pem(server_pem)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # No certificate authority: the server is pinned by its key id below, before any frame.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN])
    ctx.load_cert_chain(client_crt, client_key)

    with socket.create_connection((host, int(port))) as raw:
        with ctx.wrap_socket(raw) as tls:  # no server_hostname: no SNI
            if tls.version() != "TLSv1.3" or tls.selected_alpn_protocol() != ALPN:
                sys.exit(f"not letterlock/2 over TLS 1.3: {tls.version()}")
            got = hashlib.sha256(spki_of_cert(tls.getpeercert(binary_form=True))).digest()
            if got != pinned:
                sys.exit("the server's key is not the pinned one: refusing to talk to it")
            kind, payload = read_frame(tls)  # Ready, or an alert if our key is not trusted
            if kind != READY:
                sys.exit(f"expected Ready, got frame type {kind:#04x} {payload!r}")
            print("ready", tls.version(), tls.cipher()[0])
            tls.sendall(padded(struct.pack(">IB", 1, FETCH)))
            waiting = 0
            while True:
                kind, payload = read_frame(tls)
                if kind == DELIVER:
                    continue  # the next bytes of a sealed message (not opened here)
                if kind == DELIVER_END:
                    waiting += 1
                elif kind == FETCH_DONE:
                    (count,) = struct.unpack(">I", payload)
                    # Not acknowledged with DeliveryAck: the messages stay on the server.
                    print(f"fetch done: {count} messages ({waiting} received)")
                    break
                elif kind == ERROR:
                    sys.exit(f"server error {payload[:2].hex()}: {payload[2:]!r}")
                else:
                    sys.exit(f"unexpected frame type {kind:#04x}")
            return 0


if __name__ == "__main__":
    sys.exit(main())

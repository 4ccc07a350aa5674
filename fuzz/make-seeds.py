#!/usr/bin/env python3
"""Writes the seed corpora in corpus-seed/<target>/ (stdlib only).

usage: python3 fuzz/make-seeds.py CAPTURES_DIR
CAPTURES_DIR holds the Tomcat captures (membership-udp.pcap, message-tcp.pcap,
decode.py; see DESIGN.md). Seeds come from those captures, from the golden
vectors of host/src/wire and host/src/session, and from the example configs.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "corpus-seed")

sys.path.insert(0, sys.argv[1])
import decode  # noqa: E402  (the captures' own pcap reader)

START, END = b"FLT2002", b"TLF2003"


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frame(data):
    return START + struct.pack(">i", len(data)) + data + END


def member(alive=0x1234, port=4000, host=b"\x0a\x00\x00\x01", command=b"", domain=b"dom",
           uid=bytes(range(1, 17)), payload=b""):
    body = struct.pack(">qiii", alive, port, -1, -1) + bytes([len(host)]) + host
    body += struct.pack(">i", len(command)) + command + struct.pack(">i", len(domain)) + domain
    body += uid + struct.pack(">i", len(payload)) + payload
    return b"TRIBES-B\x01\x00" + struct.pack(">i", len(body)) + body + b"TRIBES-E\x01\x00"


def fingerprint(entries, labels=None, fmt=2):
    out = b"shoal" + bytes([1, fmt, len(entries)])
    for name, version, sha, wire in entries:
        out += bytes([len(name)]) + name + bytes([len(version)]) + version + sha + bytes([wire])
    if fmt >= 2:
        out += bytes([len(labels or [])])
        for k, v in labels or []:
            out += bytes([len(k)]) + k + bytes([len(v)]) + v
    return out


# --- captures ---------------------------------------------------------------
cap = sys.argv[1]
udp, seen = [], set()
for _ts, lt, pkt in decode.read_pcap(os.path.join(cap, "membership-udp.pcap")):
    proto, _s, _d, seg = decode.ip_payload(lt, pkt)
    if proto != 17:
        continue
    payload = seg[8:]
    key = (payload[22:26], len(payload))  # tcp port, and heartbeat or shutdown
    if key not in seen:
        seen.add(key)
        udp.append(payload)
for i, p in enumerate(udp):
    write("member_packet", f"tomcat-heartbeat-{i}", p)

streams = {}
for _ts, lt, pkt in decode.read_pcap(os.path.join(cap, "message-tcp.pcap")):
    proto, src, dst, seg = decode.ip_payload(lt, pkt)
    if proto != 6:
        continue
    sport, dport = struct.unpack(">HH", seg[:4])
    data = seg[(seg[12] >> 4) * 4:]
    if data:
        streams.setdefault((sport, dport), b"")
        streams[(sport, dport)] += data
frames = []
for i, (ports, s) in enumerate(sorted(streams.items())):
    write("frame_stream", f"tomcat-stream-{i}", b"\x00\x01" + s)
    while s.startswith(START):
        n = struct.unpack(">i", s[7:11])[0]
        frames.append(s[11:11 + n])
        s = s[18 + n:]
msgs = [f for f in frames if len(f) > 3]
uniq = []
for f in msgs:
    if f not in uniq:
        uniq.append(f)
# channel message 1 (options 7) first: the channel_data target embeds it
uniq.sort(key=lambda f: (struct.unpack(">i", f[:4])[0] != 7, len(f)))
for i, f in enumerate(uniq):
    write("channel_data", f"tomcat-message-{i + 1}", f)
    n = struct.unpack(">i", f[32:36])[0]
    write("member_packet", f"tomcat-sender-{i + 1}", f[36:36 + n])

# --- golden vectors (host/src/wire) -----------------------------------------
write("member_packet", "golden-reference", member())
write("member_packet", "golden-shutdown", member(command=b"BABY-ALEX"))
fp = fingerprint([(b"a", b"1", bytes([2] * 8), 0), (b"zip", b"2", bytes([9] * 8), 1)],
                 [(b"zone", b"eu-1"), (b"route", b"a")])
write("member_packet", "shoal-fingerprint", member(payload=fp, host=bytes(16)))
write("fingerprint", "format-2-labels", fp)
write("fingerprint", "format-1", fingerprint([(b"t", b"", bytes(8), 0)], fmt=1))
write("fingerprint", "empty", fingerprint([]))
ack = frame(bytes([6, 2, 3]))
fail = frame(bytes([11, 0, 5]))
write("frame_stream", "acks-pipelined", b"\x00\x07" + ack + fail + ack[:13])
write("frame_stream", "small-max", b"\x03\x2a" + frame(b"one") + frame(b"two!") + frame(b"x" * 7))

# --- session messages (postcard; host/src/session/wire.rs) ------------------
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def zz(n):
    return varint((n << 1) ^ (n >> 63))


def text(s):
    return varint(len(s)) + s


def seq(items):
    return varint(len(items)) + b"".join(items)


def stamp(v, node):
    return varint(v) + varint(node)


def attr(name, v, node, value):
    return text(name) + stamp(v, node) + (b"\x00" if value is None else b"\x01" + text(value))


def loc(epoch, primary, backups):
    return varint(epoch) + primary + seq(backups)


ATTRS = [attr(b"cart", 2, 7, b"[1,2]"), attr(b"gone", 3, 9, None)]
LOC = loc(2, bytes([1] * 16), [bytes([2] * 16)])
KEY = 0x0123456789ABCDEF0011223344556677
COPY = (varint(KEY) + text(b"a") + stamp(1, 7) + zz(1700000000000) + zz(1700000000500)
        + varint(1800) + varint(3) + seq(ATTRS) + LOC)
DELTA = varint(5) + varint(9) + zz(12) + b"\x01" + text(b"b") + stamp(9, 1) + seq(ATTRS)
LOCATED = varint(5) + text(b"c") + zz(3) + varint(60) + LOC


def msg(kind, payload):
    return b"shoal" + bytes([kind, 1]) + payload


write("session_wire", "copies", msg(16, seq([COPY, COPY])))
write("session_wire", "deltas", msg(17, seq([DELTA])))
write("session_wire", "locations", msg(18, seq([LOCATED])))
write("session_wire", "invalidate", msg(19, seq([varint(1), varint(2), varint(2**128 - 1)])))
write("session_wire", "state-request", msg(20, varint(77)))
write("session_wire", "state-done", msg(21, varint(77) + varint(100000)))
write("session_wire", "fetch", msg(22, varint(1) + varint(2)))
write("session_wire", "fetch-reply", msg(23, varint(1) + b"\x01" + COPY))
write("session_wire", "fetch-reply-none", msg(23, varint(1) + b"\x00"))
write("channel_data", "session-copies",
      uniq[0][:-36] + struct.pack(">i", len(msg(16, seq([COPY])))) + msg(16, seq([COPY])))

# --- session API (id 0xFF create 0xFF patch...) -----------------------------
SID = b"0123456789ABCDEF0123456789ABCDEF.nodeA"
write("session_api", "create-patch", SID + b"\xff" + b'{"max_inactive_s": 60, "attributes": {"cart": [1, 2], "user": "ann"}}'
      + b"\xff" + b'{"set": {"cart": [1, 2, 3]}, "remove": ["user"]}'
      + b"\xff" + b'{"set": {"n": 1.5e3, "o": {"a": null}}}')
write("session_api", "empty-create", SID + b"\xff \n\xff{}")
write("session_api", "over-limits", b"0123456789abcdef0123456789abcdef\xff"
      + b'{"attributes": {"a": "' + b"x" * 70 + b'"}}')
write("session_api", "many", SID + b"\xff{}\xff"
      + b'{"set": {' + b",".join(b'"k%d": %d' % (i, i) for i in range(10)) + b"}}"
      + b"\xff" + b'{"remove": [' + b",".join(b'"r%d"' % i for i in range(40)) + b"]}")

# --- config -----------------------------------------------------------------
for d in sorted(os.listdir(os.path.join(ROOT, "examples"))):
    p = os.path.join(ROOT, "examples", d)
    for f in sorted(os.listdir(p)) if os.path.isdir(p) else []:
        if f.endswith(".toml") and f != "Cargo.toml":
            with open(os.path.join(p, f), "rb") as fh:
                write("config", f"example-{d}-{f}", fh.read())
with open(os.path.join(ROOT, "README.md"), "rb") as fh:
    readme = fh.read().decode()
for i, block in enumerate(readme.split("```toml\n")[1:]):
    write("config", f"readme-{i}.toml", block.split("```")[0].encode())
write("config", "empty.toml", b"")

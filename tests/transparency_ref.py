#!/usr/bin/env python3
"""Independent reference implementation used by the Rust tests to cross-check the log code.

Written only from the specifications -- RFC 6962 section 2.1 (MTH, PATH, PROOF/SUBPROOF),
RFC 9162 sections 2.1.3.2 / 2.1.4.2 (proof verification) and the C2SP signed-note,
tlog-checkpoint and tlog-cosignature (Ed25519 cosignature/v1) specs -- never from the Rust
sources, so that the Rust integration tests can compare two independent implementations.

Usage (one JSON document on stdin, one on stdout):
  transparency_ref.py proofs              roots, inclusion/consistency proofs, bulk digests
  transparency_ref.py verify-checkpoint   signed checkpoint + witness cosignatures
  transparency_ref.py verify-inclusion    RFC 9162 2.1.3.2 -> {"ok": bool}
  transparency_ref.py verify-consistency  RFC 9162 2.1.4.2 -> {"ok": bool}
  transparency_ref.py selftest            internal checks, non-zero exit on failure
Exit status: 0 ok, 1 checkpoint rejected (reason on stderr), 2 bad request / out of range.
Needs only the standard library and `cryptography` (Ed25519).
"""
import base64
import binascii
import hashlib
import json
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

class RequestError(Exception):
    """Malformed request or out-of-range size/index (exit status 2)."""

class NoteError(Exception):
    """The signed note / checkpoint is rejected (exit status 1)."""

def sha256(data):
    return hashlib.sha256(data).digest()

# ------------------------------------------------------------------ RFC 6962 Merkle tree

def leaf_hash(data):
    return sha256(b"\x00" + data)

def node_hash(left, right):
    return sha256(b"\x01" + left + right)

def split_point(n):
    """k: the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)

class Tree:
    """The leaf list D. Methods take a range D[a:b]; MTH is memoised per (a, b)."""

    def __init__(self, leaves):
        self.leaf_hashes = [leaf_hash(d) for d in leaves]
        self.memo = {}

    def __len__(self):
        return len(self.leaf_hashes)

    def mth(self, a, b):
        """MTH(D[a:b])."""
        h = self.memo.get((a, b))
        if h is None:
            if b - a == 0:
                h = sha256(b"")
            elif b - a == 1:
                h = self.leaf_hashes[a]
            else:
                k = split_point(b - a)
                h = node_hash(self.mth(a, a + k), self.mth(a + k, b))
            self.memo[(a, b)] = h
        return h

    def path(self, m, a, b):
        """PATH(m, D[a:b])."""
        if b - a == 1:
            return []
        k = split_point(b - a)
        if m < k:
            return self.path(m, a, a + k) + [self.mth(a + k, b)]
        return self.path(m - k, a + k, b) + [self.mth(a, a + k)]

    def subproof(self, m, a, b, flag):
        """SUBPROOF(m, D[a:b], flag) -- `flag` is the RFC's boolean b."""
        if m == b - a:
            return [] if flag else [self.mth(a, b)]
        k = split_point(b - a)
        if m <= k:
            return self.subproof(m, a, a + k, flag) + [self.mth(a + k, b)]
        return self.subproof(m - k, a + k, b, False) + [self.mth(a, a + k)]

    def inclusion(self, index, size):
        if not 0 <= index < size <= len(self):
            raise RequestError(f"inclusion [{index}, {size}] out of range ({len(self)} leaves)")
        return self.path(index, 0, size)

    def consistency(self, old, new):
        """PROOF(old, D[new]) for 0 < old < new; the empty list for old == new."""
        if not 0 < old <= new <= len(self):
            raise RequestError(f"consistency [{old}, {new}] out of range ({len(self)} leaves)")
        return [] if old == new else self.subproof(old, 0, new, True)

# ------------------------------------------------------------------ RFC 9162 verification

def verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not (fn & 1 or fn == 0):
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root

def verify_consistency(first, second, first_hash, second_hash, path):
    """RFC 9162 section 2.1.4.2; equal sizes need an empty path and equal roots."""
    if first == second:
        return not path and first_hash == second_hash
    if not 0 < first < second or not path:
        return False
    if first & (first - 1) == 0:
        path = [first_hash] + list(path)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not (fn & 1 or fn == 0):
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0

# ------------------------------------------------------------------ C2SP signed notes

def key_id(name, sig_type, pub):
    return sha256(name.encode() + b"\n" + bytes([sig_type]) + pub)[:4]

def b64_strict(s, what):
    """Standard padded base64 (RFC 4648 section 4); non-canonical encodings are rejected."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what}: invalid base64")
    if base64.b64encode(raw).decode() != s:
        raise NoteError(f"{what}: non-canonical base64")
    return raw

def valid_key_name(name):
    return name != "" and "+" not in name and not any(c.isspace() for c in name)

def parse_note(note):
    """Split a signed note into (text, [(key name, key id, signature), ...])."""
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note is not valid UTF-8")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("note contains an ASCII control character other than newline")
    if not note.endswith("\n"):
        raise NoteError("note does not end with a newline")
    split = note.rfind("\n\n")  # the text is separated by the last empty line
    if split < 0 or split + 2 == len(note):
        raise NoteError("no blank line followed by signature lines")
    text, sigs = note[:split + 1], []
    for line in note[split + 2:-1].split("\n"):
        name, sep, b64 = line[2:].partition(" ")
        if not line.startswith("\u2014 ") or not sep or not valid_key_name(name):
            raise NoteError(f"malformed signature line {line!r}")
        raw = b64_strict(b64, f"signature of {name!r}")
        if len(raw) < 5:
            raise NoteError(f"signature of {name!r} is too short")
        sigs.append((name, raw[:4], raw[4:]))
    return text, sigs

def ed25519_ok(pub, sig, msg):
    if len(sig) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except InvalidSignature:
        return False

def verify_checkpoint(note, origin, log_pub, witnesses):
    """Verify the log signature (key name = origin), parse the body, check each witness."""
    text, sigs = parse_note(note)
    body = text.encode()
    lid = key_id(origin, 0x01, log_pub)
    log_sigs = [s for n, k, s in sigs if n == origin and k == lid]  # others are ignored
    if not log_sigs:
        raise NoteError("no signature from the log key")
    if not all(ed25519_ok(log_pub, s, body) for s in log_sigs):
        raise NoteError("log signature does not verify")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or "" in lines:
        raise NoteError("checkpoint text needs at least three lines, none of them empty")
    if lines[0] != origin:
        raise NoteError(f"origin {lines[0]!r} is not the expected {origin!r}")
    if not re.fullmatch(r"0|[1-9][0-9]*", lines[1], re.ASCII) or int(lines[1]) >= 2**64:
        raise NoteError(f"bad tree size line {lines[1]!r}")
    root = b64_strict(lines[2], "root hash")
    if len(root) != 32:
        raise NoteError("root hash is not 32 bytes")
    result = {"origin": origin, "size": int(lines[1]), "root": root.hex(),
              "cosigned_by": [], "timestamps": {}}
    for name, pub in witnesses:
        wid = key_id(name, 0x04, pub)
        mine = [s for n, k, s in sigs if n == name and k == wid]
        if not mine:
            raise NoteError(f"no cosignature from witness {name!r}")
        for s in mine:
            ts = int.from_bytes(s[:8], "big")
            msg = b"cosignature/v1\ntime %d\n" % ts + body
            if len(s) != 72 or ts >= 2**63 or not ed25519_ok(pub, s[8:], msg):
                raise NoteError(f"cosignature from witness {name!r} does not verify")
            result["timestamps"].setdefault(name, ts)
        result["cosigned_by"].append(name)
    return result

def raw_pub(sk):
    return sk.public_key().public_bytes_raw()

def sign_line(name, kid, sig):
    return "\u2014 %s %s\n" % (name, base64.b64encode(kid + sig).decode())

def make_checkpoint(origin, size, root, log_sk, witnesses=(), extra=""):
    """Test helper: checkpoint signed by log_sk, cosigned by (name, key, timestamp) triples."""
    body = f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n{extra}".encode()
    out = body.decode() + "\n" + sign_line(origin, key_id(origin, 1, raw_pub(log_sk)), log_sk.sign(body))
    for name, sk, ts in witnesses:
        sig = sk.sign(b"cosignature/v1\ntime %d\n" % ts + body)
        out += sign_line(name, key_id(name, 4, raw_pub(sk)), struct.pack(">Q", ts) + sig)
    return out

# ------------------------------------------------------------------ requests

def req_int(v, what):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise RequestError(f"{what} must be a non-negative integer")
    return v

def req_hex(v, what, length=None):
    if not isinstance(v, str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", v):
        raise RequestError(f"{what} must be a hex string")
    if length is not None and len(v) != 2 * length:
        raise RequestError(f"{what} must be {length} bytes")
    return bytes.fromhex(v)

def req_list(req, key, default=None):
    v = req.get(key, default)
    if not isinstance(v, list):
        raise RequestError(f"{key} must be a list")
    return v

def req_key(v, what):
    try:
        key = b64_strict(v, what) if isinstance(v, str) else b""
    except NoteError as e:
        raise RequestError(str(e))
    if len(key) != 32:
        raise RequestError(f"{what} must be a base64 32-byte Ed25519 public key")
    return key

def cmd_proofs(req):
    tree = Tree([req_hex(x, "leaf") for x in req_list(req, "leaves")])
    out = {"roots": {}}
    for size in req_list(req, "roots", []):
        if req_int(size, "root size") > len(tree):
            raise RequestError(f"root size {size} exceeds {len(tree)} leaves")
        out["roots"][str(size)] = tree.mth(0, size).hex()
    for key, proof_fn in (("inclusion", tree.inclusion), ("consistency", tree.consistency)):
        pairs = req_list(req, key, [])
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise RequestError(f"{key} must be a list of [a, b] pairs")
        out[key] = [[h.hex() for h in proof_fn(req_int(a, key), req_int(b, key))] for a, b in pairs]
    for key in ("all_inclusion_up_to", "all_consistency_up_to"):
        if key in req and req_int(req[key], key) > len(tree):
            raise RequestError(f"{key} {req[key]} exceeds {len(tree)} leaves")
    if "all_inclusion_up_to" in req:
        h = hashlib.sha256()
        for size in range(1, req["all_inclusion_up_to"] + 1):
            for index in range(size):
                proof = tree.inclusion(index, size)
                h.update(struct.pack(">QQI", size, index, len(proof)) + b"".join(proof))
        out["all_inclusion_digest"] = h.hexdigest()
    if "all_consistency_up_to" in req:
        h = hashlib.sha256()
        for new in range(1, req["all_consistency_up_to"] + 1):
            for old in range(1, new + 1):
                proof = tree.consistency(old, new)
                h.update(struct.pack(">QQI", old, new, len(proof)) + b"".join(proof))
        out["all_consistency_digest"] = h.hexdigest()
    return out

def cmd_verify_checkpoint(req):
    note, origin = req.get("note"), req.get("origin")
    if not isinstance(note, str) or not isinstance(origin, str) or not valid_key_name(origin):
        raise RequestError("note and origin must be strings; origin must be a valid key name")
    witnesses = []
    for w in req_list(req, "witnesses", []):
        name = w.get("name") if isinstance(w, dict) else None
        if not isinstance(name, str) or not valid_key_name(name):
            raise RequestError(f"bad witness entry {w!r}")
        witnesses.append((name, req_key(w.get("key"), f"key of witness {name!r}")))
    return verify_checkpoint(note, origin, req_key(req.get("log_key"), "log_key"), witnesses)

def cmd_verify_inclusion(req):
    return {"ok": verify_inclusion(
        req_hex(req.get("leaf_hash"), "leaf_hash", 32), req_int(req.get("index"), "index"),
        req_int(req.get("size"), "size"),
        [req_hex(p, "proof hash", 32) for p in req_list(req, "proof")],
        req_hex(req.get("root"), "root", 32))}

def cmd_verify_consistency(req):
    return {"ok": verify_consistency(
        req_int(req.get("old"), "old"), req_int(req.get("new"), "new"),
        req_hex(req.get("old_root"), "old_root", 32), req_hex(req.get("new_root"), "new_root", 32),
        [req_hex(p, "proof hash", 32) for p in req_list(req, "proof")])}

# ------------------------------------------------------------------ self-test

def selftest():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    # Published test vectors for the RFC 6962 test tree (certificate-transparency tests).
    ct = Tree(bytes.fromhex(x) for x in ["", *"00 10 2021 3031 40414243 5051525354555657 "
                                         "606162636465666768696a6b6c6d6e6f".split()])
    roots = ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 "
             "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d "
             "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125 "
             "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77 "
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7 "
             "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4 "
             "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef "
             "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c "
             "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328").split()
    for n, want in enumerate(roots):
        check(ct.mth(0, n).hex() == want, f"RFC 6962 test root, size {n}")
    check([h.hex()[:8] for h in ct.inclusion(0, 8)] == ["96a296d2", "5f083f0a", "6b47aaf2"],
          "RFC 6962 test tree: inclusion proof of leaf 0 at size 8")
    check([h.hex()[:8] for h in ct.consistency(2, 5)] == ["5f083f0a", "bc1a0643"],
          "RFC 6962 test tree: consistency proof 2 -> 5")

    flip = lambda h: bytes([h[0] ^ 1]) + h[1:]
    tampered = lambda p: (p[:j] + [flip(p[j])] + p[j + 1:] for j in range(len(p)))
    t = Tree(b"leaf-%d" % i for i in range(64))
    for n in range(1, 65):
        root = t.mth(0, n)
        for i in range(n):
            p, leaf = t.inclusion(i, n), t.leaf_hashes[i]
            check(verify_inclusion(leaf, i, n, p, root), f"inclusion {i}/{n}")
            check(not verify_inclusion(flip(leaf), i, n, p, root), f"wrong leaf {i}/{n}")
            check(not verify_inclusion(leaf, i, n, p + [root], root), f"extra hash {i}/{n}")
            check(not p or not verify_inclusion(leaf, i, n, p[:-1], root), f"short {i}/{n}")
            check(n == 1 or not verify_inclusion(leaf, (i + 1) % n, n, p, root), f"index {i}/{n}")
            check(not any(verify_inclusion(leaf, i, n, q, root) for q in tampered(p)),
                  f"tampered inclusion {i}/{n}")
        for m in range(1, n + 1):
            p, old = t.consistency(m, n), t.mth(0, m)
            check(verify_consistency(m, n, old, root, p), f"consistency {m}->{n}")
            check((m == n) == (not p), f"consistency proof empty iff {m} == {n}")
            check(not verify_consistency(m, n, flip(old), root, p), f"old root {m}->{n}")
            check(not verify_consistency(m, n, old, flip(root), p), f"new root {m}->{n}")
            check(not p or not verify_consistency(m, n, old, root, p[:-1]), f"short {m}->{n}")
            check(not any(verify_consistency(m, n, old, root, q) for q in tampered(p)),
                  f"tampered consistency {m}->{n}")

    # The golang.org/x/mod/sumdb/note example (PeterNeumann key) for the note layer.
    pn_pub = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
    pn_text = ("If you think cryptography is the answer to your problem,\n"
               "then you don't know what your problem is.\n")
    text, sigs = parse_note(pn_text + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8p"
                            "AcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
    check(text == pn_text and sigs[0][1].hex() == key_id("PeterNeumann", 1, pn_pub).hex()
          == "c74f20a3" and ed25519_ok(pn_pub, sigs[0][2], text.encode()), "Go note vector")

    # Fresh keys: a cosigned checkpoint verifies; each kind of tampering is rejected.
    log_sk, w1, w2, other = (Ed25519PrivateKey.generate() for _ in range(4))
    origin, root = "example.com/log", t.mth(0, 5)
    wits = [("w1.example/a", w1, 1700000000), ("w2.example/b", w2, 0)]
    wl = [(name, raw_pub(sk)) for name, sk, _ in wits]
    good = make_checkpoint(origin, 5, root, log_sk, wits)
    unknown = sign_line(origin, key_id(origin, 1, raw_pub(other)), other.sign(b"x"))
    ext = make_checkpoint(origin, 0, sha256(b""), log_sk, wits, extra="ext line\n")
    w2_line = good.splitlines(keepends=True)[-1]
    w2_sig = base64.b64decode(w2_line.split()[2])[12:]
    want = {"origin": origin, "size": 5, "root": root.hex(), "cosigned_by": ["w1.example/a",
            "w2.example/b"], "timestamps": {"w1.example/a": 1700000000, "w2.example/b": 0}}
    for note, expect in ((good, want), (good + unknown, want), (ext, dict(want, size=0,
                         root=sha256(b"").hex()))):
        try:
            check(verify_checkpoint(note, origin, raw_pub(log_sk), wl) == expect, "checkpoint")
        except NoteError as e:
            check(False, f"good checkpoint rejected: {e}")
    bad = {
        "missing final newline": (good[:-1], wl),
        "tampered size": (good.replace("\n5\n", "\n6\n", 1), wl),
        "leading zero in size": (make_checkpoint(origin, "05", root, log_sk), []),
        "31-byte root": (make_checkpoint(origin, 5, root[:31], log_sk), []),
        "other origin": (make_checkpoint("example.com/other", 5, root, log_sk), []),
        "missing cosignature": (make_checkpoint(origin, 5, root, log_sk, wits[:1]), wl),
        "witness key mismatch": (good, [("w1.example/a", raw_pub(other))]),
        "cosignature time changed": (good.replace(w2_line, sign_line("w2.example/b", key_id(
            "w2.example/b", 4, raw_pub(w2)), struct.pack(">Q", 1) + w2_sig)), wl),
        "cosignature corrupted": (good.replace(w2_line, sign_line("w2.example/b", key_id(
            "w2.example/b", 4, raw_pub(w2)), bytes(8) + flip(w2_sig))), wl),
        "wrong log key": (make_checkpoint(origin, 5, root, other), []),
        "control character": (good.replace(origin + "\n", origin + "\r\n", 1), []),
        "empty extension line": (ext.replace("ext line\n", "ext line\n\n", 1), []),
        "no signatures": (good.split("\u2014")[0], []),
        "bad signature line": (good + "\u2014 x\n", []),
    }
    for what, (note, w) in bad.items():
        try:
            verify_checkpoint(note, origin, raw_pub(log_sk), w)
            check(False, f"accepted a bad checkpoint: {what}")
        except NoteError:
            pass
    for f in failures[:20]:
        print("FAIL:", f, file=sys.stderr)
    print(f"selftest: {len(failures)} failure(s)", file=sys.stderr)
    return 1 if failures else 0

COMMANDS = {"proofs": cmd_proofs, "verify-checkpoint": cmd_verify_checkpoint,
            "verify-inclusion": cmd_verify_inclusion, "verify-consistency": cmd_verify_consistency}

def main(argv):
    if len(argv) == 2 and argv[1] == "selftest":
        return selftest()
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        req = json.load(sys.stdin)
        if not isinstance(req, dict):
            raise RequestError("input must be a JSON object")
        out = COMMANDS[argv[1]](req)
    except (RequestError, ValueError) as e:  # ValueError covers invalid JSON
        print(f"transparency_ref: bad request: {e}", file=sys.stderr)
        return 2
    except NoteError as e:
        print(f"transparency_ref: checkpoint rejected: {e}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))

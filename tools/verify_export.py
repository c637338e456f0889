#!/usr/bin/env python3
"""Independent verifier for a `docket export` file, written from docs/FORMAT.md alone.

Usage: verify_export.py EXPORT.jsonl [--admin-key B64] [--ledger-key B64]
Exit 0 and "intact ..." when the export verifies; exit 1 naming the first bad seq otherwise.
Needs the PyPI packages `blake3` and `cryptography`.
"""
import base64
import hashlib
import json
import struct
import sys

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PAYLOAD_TYPE = b"application/vnd.docket.event+json"
ADMIN_KINDS = {"key.registered", "key.revoked"}


def b64(text):
    try:
        return base64.b64decode(text, validate=True)
    except Exception:
        return base64.urlsafe_b64decode(text)


def pae(body):
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE, len(body), body)


def key_id(pk):
    return hashlib.sha256(pk).hexdigest()


def verify_sig(pk, msg, sig):
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def entry_hash(seq, prev, received_us, subject, envelope):
    s = subject.encode()
    return blake3.blake3(
        b"docket/entry/v1\n" + struct.pack(">Q", seq) + prev + struct.pack(">q", received_us)
        + struct.pack(">I", len(s)) + s + struct.pack(">I", len(envelope)) + envelope
    ).digest()


def note_key_id(name, pk):
    return hashlib.sha256(name.encode() + b"\n\x01" + pk).digest()[:4]


def verify_note(note, name, pk):
    body, _, sigs = note.partition("\n\n")
    body += "\n"
    prefix = "\u2014 " + name + " "
    for line in sigs.splitlines():
        if line.startswith(prefix):
            blob = b64(line[len(prefix):])
            if len(blob) == 68 and blob[:4] == note_key_id(name, pk) and verify_sig(pk, body.encode(), blob[4:]):
                origin, size, head = body.splitlines()[:3]
                return origin, int(size), b64(head)
    return None


def main(argv):
    path = argv[1]
    pins = dict(zip(argv[2::2], argv[3::2]))
    problems = []
    lines = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    header = lines[0]
    assert header["type"] == "ledger" and header["format"] == 1, "not a docket export"
    admin = b64(pins.get("--admin-key", header["admin_public_key"]))
    ledger_key = b64(pins.get("--ledger-key", header["ledger_public_key"]))
    registry = {}  # key_id -> (public key, set of kinds, revoked)
    seen_ids = set()
    hashes = {}
    prev = bytes(32)
    expected = 1
    for rec in lines:
        if rec["type"] != "entry":
            continue
        seq = rec["seq"]
        bad = lambda what: problems.append((seq, what))
        if seq != expected:
            bad("seq %d where %d was expected" % (seq, expected))
        expected = seq + 1
        env_bytes = b64(rec["envelope"])
        h = entry_hash(seq, bytes.fromhex(rec["prev"]), rec["received_us"], rec["subject"], env_bytes)
        if h.hex() != rec["hash"]:
            bad("entry hash mismatch")
        if bytes.fromhex(rec["prev"]) != prev:
            bad("prev link broken")
        prev = bytes.fromhex(rec["hash"])
        hashes[seq] = prev
        env = json.loads(env_bytes)
        payload = b64(env["payload"])
        sig = env["signatures"][0]
        event = json.loads(payload)
        kind = event["kind"]
        if event["id"] in seen_ids:
            bad("duplicate event id")
        seen_ids.add(event["id"])
        if kind in ADMIN_KINDS:
            pk = admin if sig["keyid"] == key_id(admin) else None
        else:
            k = registry.get(sig["keyid"])
            pk = k[0] if k and not k[2] and kind in k[1] else None
        if pk is None:
            bad("signer %s may not emit %s here" % (sig["keyid"][:12], kind))
            continue
        if not verify_sig(pk, pae(payload), b64(sig["sig"])):
            bad("bad signature")
            continue
        if kind == "key.registered":
            registry[event["key_id"]] = (b64(event["public_key"]), set(event["kinds"]), False)
        elif kind == "key.revoked" and event["key_id"] in registry:
            pk_, kinds, _ = registry[event["key_id"]]
            registry[event["key_id"]] = (pk_, kinds, True)
    last = expected - 1
    for rec in lines:
        if rec["type"] == "checkpoint":
            cp = verify_note(rec["note"], header["origin"], ledger_key)
            if cp is None:
                problems.append((rec["size"], "checkpoint signature invalid"))
            elif cp[1] != rec["size"] or hashes.get(cp[1]) != cp[2]:
                problems.append((rec["size"], "checkpoint does not match the chain"))
    if header["entries"] != last or header["head"] != prev.hex():
        problems.append((last + 1, "header tip does not match the last entry"))
    if problems:
        problems.sort()
        print("NOT INTACT: first bad seq %d: %s" % problems[0])
        return 1
    print("intact: %d entries, head %s" % (last, prev.hex()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

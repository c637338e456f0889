#!/usr/bin/env python3
"""Independent verifier for a `docket export` file, written from docs/FORMAT.md alone.

Usage: verify_export.py EXPORT.jsonl [--admin-key B64] [--ledger-key B64]
Exit 0 and "intact ..." when the export verifies; exit 1 naming the first bad seq otherwise.
Needs the PyPI packages `blake3` and `cryptography`.
"""
import base64
import datetime
import hashlib
import json
import struct
import sys

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PAYLOAD_TYPE = b"application/vnd.docket.event+json"
ADMIN_KINDS = {"key.registered", "key.revoked", "policy.set"}
# What serve's detector records (FORMAT.md section 3): the ledger's key alone may sign these.
LEDGER_KINDS = ("rules.set", "finding.raised")
# The documented default policy (FORMAT.md section 12): the one policy the ledger's key may sign.
DEFAULT_POLICY = {"revision": 1, "step_up_max_age_s": 300, "approval_ttl_s": 300,
                  "token_ttl_max_s": 300, "request_skew_max_s": 300,
                  "unauthenticated_recorded_per_s": 50, "event_ts_ahead_max_s": 300,
                  "vault_requests_per_key_per_s": 100}
# Settings added after the first format: absent from older policy.set events, taking these.
LATER_POLICY_SETTINGS = {"event_ts_ahead_max_s": 300, "vault_requests_per_key_per_s": 100}
# Deepest nesting of arrays and objects in any signed document (FORMAT.md section 1).
JSON_DEPTH_MAX = 16


class NotPlain(ValueError):
    pass


def plain_json(data):
    """Parses UTF-8 JSON that FORMAT.md calls plain: no repeated key, nested at most 16 deep.
    Raises NotPlain (or ValueError) for anything else, never RecursionError."""
    text = data.decode("utf-8")  # invalid UTF-8 raises UnicodeDecodeError, a ValueError
    depth = cur = 0
    in_str = esc = False
    for ch in text:  # nesting first, so a deep document never reaches the recursive parser
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            cur += 1
            depth = max(depth, cur)
            if depth > JSON_DEPTH_MAX:
                raise NotPlain("nested deeper than %d" % JSON_DEPTH_MAX)
        elif ch in "]}":
            cur -= 1

    def pairs(items):
        seen = {}
        for k, v in items:
            if k in seen:
                raise NotPlain("duplicate key %r" % k)
            seen[k] = v
        return seen
    return json.loads(text, object_pairs_hook=pairs)


def ts_micros(text):
    """Micros since the epoch of a `ts` (YYYY-MM-DDTHH:MM:SS.ffffffZ)."""
    t = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return (t - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // datetime.timedelta(microseconds=1)
# Keys one envelope's signature is checked against at most (FORMAT.md section 3).
SIGNATURE_CHECKS_PER_ENVELOPE_MAX = 2


def b64(text):
    try:
        return base64.b64decode(text, validate=True)
    except Exception:
        return base64.urlsafe_b64decode(text)


def pae(body):
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE, len(body), body)


def key_id(pk):
    return hashlib.sha256(pk).hexdigest()


def securesystemslib_key_id(pk):
    """The keyid securesystemslib gives an ed25519 key by default (FORMAT.md section 3)."""
    canonical = '{"keytype":"ed25519","keyval":{"public":"%s"},"scheme":"ed25519"}' % pk.hex()
    return hashlib.sha256(canonical.encode()).hexdigest()


class Registry:
    """The producer keys, replayed from the chain, and the keyid resolution of FORMAT.md section 3."""

    def __init__(self, admin, ledger):
        self.admin = admin
        self.admin_id = key_id(admin)
        self.ledger = ledger
        self.ledger_id = key_id(ledger)
        self.policy_recorded = False
        self.policy = dict(DEFAULT_POLICY)  # in force; the same succession rule as the ledger's
        self.keys = {}  # key id -> {"pk", "name", "kinds", "seq", "revoked"}
        self.aliases = {securesystemslib_key_id(admin): self.admin_id,
                        securesystemslib_key_id(ledger): self.ledger_id}

    def apply(self, seq, event):
        if event["kind"] == "key.registered":
            pk = b64(event["public_key"])
            self.keys[event["key_id"]] = {"pk": pk, "name": event["name"],
                                          "kinds": set(event["kinds"]), "seq": seq, "revoked": False}
            self.aliases[securesystemslib_key_id(pk)] = event["key_id"]
        elif event["kind"] == "key.revoked" and event["key_id"] in self.keys:
            self.keys[event["key_id"]]["revoked"] = True
        elif event["kind"] == "policy.set":
            body = policy_body(event)
            if (not self.policy_recorded and body == DEFAULT_POLICY) or \
                    body.get("revision") == self.policy["revision"] + 1:
                self.policy = body
            self.policy_recorded = True

    def signers(self, hint, event):
        """(public keys to try in order, what they are), or a string saying why none may sign."""
        kind = event["kind"]
        named = hint if hint in (self.admin_id, self.ledger_id) or hint in self.keys else self.aliases.get(hint)
        if named == self.ledger_id:
            if kind in LEDGER_KINDS:
                return [self.ledger], "the ledger's key"
            if kind != "policy.set" or policy_body(event) != DEFAULT_POLICY or self.policy_recorded:
                return ("the ledger's key may sign only the default policy (before any other), "
                        "rules.set and finding.raised")
            return [self.ledger], "the ledger's key"
        if named == self.admin_id:
            if kind not in ADMIN_KINDS:
                return "the admin may not emit %s" % kind
            return [self.admin], "the admin key"
        if named is not None:
            k = self.keys[named]
            if kind in ADMIN_KINDS:
                return "only the admin may emit %s" % kind
            if kind in LEDGER_KINDS:
                return "only the ledger's key may emit %s" % kind
            if k["revoked"]:
                return "key %s was revoked" % named[:12]
            if kind not in k["kinds"] or k["name"].startswith("stepup:"):
                return "key %s (%s) may not emit %s" % (named[:12], k["name"], kind)
            if (kind == "approval.decided" and k["name"].startswith("user:")
                    and event["user"] != k["name"][len("user:"):]):
                return "key %s (%s) may not speak for %s" % (named[:12], k["name"], event["user"])
            return [k["pk"]], "key %s" % named[:12]
        if kind != "approval.decided":
            return "keyid %s names no registered key" % hint[:12]
        name = "user:" + event["user"]
        authors = sorted(
            ((kid, k) for kid, k in self.keys.items()
             if k["name"] == name and not k["revoked"] and kind in k["kinds"]),
            key=lambda item: (-item[1]["seq"], item[0]))
        if not authors:
            return "keyid %s names no registered key, and there is no key of %s" % (hint[:12], name)
        tried = authors[:SIGNATURE_CHECKS_PER_ENVELOPE_MAX]
        return [k["pk"] for _, k in tried], "the keys of %s (%d tried)" % (name, len(tried))


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


def merkle_node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(border):
    """RFC 6962 root from the border (roots of the maximal complete subtrees, largest first)."""
    if not border:
        return hashlib.sha256(b"").digest()
    acc = border[-1][1]
    for _, left in reversed(border[:-1]):
        acc = merkle_node(left, acc)
    return acc


def merkle_push(border, entry_hash):
    """Appends leaf SHA-256(0x00 || entry_hash) to the border of (height, hash) pairs."""
    node = (0, hashlib.sha256(b"\x00" + entry_hash).digest())
    while border and border[-1][0] == node[0]:
        height, left = border.pop()
        node = (height + 1, merkle_node(left, node[1]))
    border.append(node)


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
                origin, size, root = body.splitlines()[:3]
                return origin, int(size), b64(root)
    return None


def parse_args(argv):
    import argparse

    parser = argparse.ArgumentParser(
        prog="verify_export.py",
        description="Verify a `docket export` file independently (written from docs/FORMAT.md alone). "
        "Exit 0 and 'intact ...' when it verifies; exit 1 naming every problem otherwise.",
    )
    parser.add_argument("export", help="the JSON-lines file `docket export --out FILE` wrote")
    parser.add_argument("--admin-key", help="trust this admin public key (base64) instead of the export's")
    parser.add_argument("--ledger-key", help="trust this checkpoint key (base64) instead of the export's")
    return parser.parse_args(argv[1:])


def policy_body(event):
    """A policy.set's settings, the later ones filled with their defaults when absent."""
    body = {k: v for k, v in event.items() if k not in ("v", "id", "ts", "kind")}
    return {**LATER_POLICY_SETTINGS, **body}


def main(argv):
    args = parse_args(argv)
    path = args.export
    pins = {k: v for k, v in (("--admin-key", args.admin_key), ("--ledger-key", args.ledger_key)) if v}
    problems = []
    try:
        lines = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    except (OSError, ValueError) as e:
        print(f"error: cannot read {path}: {e}", file=sys.stderr)
        return 2
    if not lines:
        print(f"error: {path} is empty, not a docket export", file=sys.stderr)
        return 2
    header = lines[0]
    assert header["type"] == "ledger" and header["format"] == 1, "not a docket export"
    admin = b64(pins.get("--admin-key", header["admin_public_key"]))
    ledger_key = b64(pins.get("--ledger-key", header["ledger_public_key"]))
    registry = Registry(admin, ledger_key)
    seen_ids = set()
    roots = {}
    wanted = {rec["size"] for rec in lines if rec["type"] == "checkpoint"}
    border = []
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
        merkle_push(border, prev)
        if seq in wanted:
            roots[seq] = merkle_root(border)
        try:
            env = plain_json(env_bytes)
            payload = b64(env["payload"])
            sig = env["signatures"][0]
            event = plain_json(payload)
            kind = event["kind"]
            ts = ts_micros(event["ts"])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            bad("unreadable envelope or event: %s" % str(e)[:200])
            continue
        if rec["subject"] != "docket.events." + kind:
            bad("subject %s does not name kind %s" % (rec["subject"][:80], kind))
        if ts - rec["received_us"] > registry.policy["event_ts_ahead_max_s"] * 1_000_000:
            bad("dated further ahead of its receipt than the policy allows")
        if event["id"] in seen_ids:
            bad("duplicate event id")
        seen_ids.add(event["id"])
        found = registry.signers(sig["keyid"], event)
        if isinstance(found, str):
            bad("not authorized here: " + found)
            continue
        keys, tried = found
        if not any(verify_sig(pk, pae(payload), b64(sig["sig"])) for pk in keys):
            bad("bad signature: not made by " + tried)
            continue
        registry.apply(seq, event)
    last = expected - 1
    for rec in lines:
        if rec["type"] == "checkpoint":
            cp = verify_note(rec["note"], header["origin"], ledger_key)
            if cp is None:
                problems.append((rec["size"], "checkpoint signature invalid"))
            elif cp[1] != rec["size"] or roots.get(cp[1]) != cp[2]:
                problems.append((rec["size"], "checkpoint does not match the chain"))
    if header["entries"] != last or header["head"] != prev.hex():
        problems.append((last + 1, "header tip does not match the last entry"))
    if problems:
        problems.sort()
        print("NOT INTACT: first bad seq %d: %s" % problems[0])
        for seq, what in problems[1:]:
            print("  also seq %d: %s" % (seq, what))
        return 1
    print("intact: %d entries, head %s" % (last, prev.hex()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

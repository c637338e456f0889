#!/usr/bin/env python3
"""Publishes Docket events the way an outside producer would: signed with securesystemslib's DSSE, sent with nats-py.

Run by tests/dsse.rs. Reads a JSON object on stdin:
  {"nats": URL, "events": [{"seed": hex of a 32-byte ed25519 seed, "keyid": null or a
   keyid of our choosing, "event": {...kind and fields...}}, ...]}
Signs each event with securesystemslib.signer.CryptoSigner (its default keyid unless
one is given), publishes it on docket.events.<kind> to JetStream with Nats-Msg-Id,
waits for the publish ack, and prints one JSON line per event: {"id", "keyid"}.
Exits non-zero, naming what is missing, if a package is not installed: the test
must fail, not skip.
"""
import asyncio
import datetime
import json
import os
import sys
import time

try:
    import nats
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey
except ImportError as e:  # pragma: no cover - the point is the message
    sys.exit(f"missing Python package ({e}); run scripts/setup.sh "
             "(pip install 'securesystemslib[crypto]' nats-py)")

PAYLOAD_TYPE = "application/vnd.docket.event+json"


def uuid7():
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, variant 10, random bits."""
    ms = time.time_ns() // 1_000_000
    b = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signer(seed_hex, keyid):
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    if keyid is None:
        return CryptoSigner(private)  # securesystemslib's default keyid
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), keyid))


async def main():
    job = json.load(sys.stdin)
    nc = await nats.connect(job["nats"])
    js = nc.jetstream()
    for item in job["events"]:
        event = {"v": 1, "id": uuid7(), "ts": now(), **item["event"]}
        envelope = Envelope(json.dumps(event).encode(), PAYLOAD_TYPE, {})
        sig = envelope.sign(signer(item["seed"], item.get("keyid")))
        data = json.dumps(envelope.to_dict()).encode()
        await js.publish(
            f"docket.events.{event['kind']}", data, headers={"Nats-Msg-Id": event["id"]}
        )
        print(json.dumps({"id": event["id"], "keyid": sig.keyid}), flush=True)
    await nc.close()


asyncio.run(main())

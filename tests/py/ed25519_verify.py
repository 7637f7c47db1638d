"""Verifies a Standard Webhooks asymmetric signature (`v1a,<base64>`) with the
independent `cryptography` package.

usage: ed25519_verify.py PUBLIC_KEY ID TIMESTAMP SIGNATURES   (body on stdin)
    PUBLIC_KEY is `whpk_<base64 of the 32-byte key>`; SIGNATURES the `webhook-signature`
    header (space-separated). Exit 0 and print "ok" when one `v1a` signature verifies.
"""
import base64
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def main() -> int:
    pk, msg_id, ts, sigs = sys.argv[1:5]
    body = sys.stdin.buffer.read()
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pk.removeprefix("whpk_")))
    content = msg_id.encode() + b"." + ts.encode() + b"." + body
    for s in sigs.split(" "):
        version, _, value = s.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(value), content)
        except InvalidSignature:
            continue
        print("ok")
        return 0
    print("rejected: no v1a signature verifies")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Interop with the independent `standardwebhooks` package (PyPI).

usage:
  standardwebhooks_interop.py verify SECRET ID TIMESTAMP SIGNATURE   (body on stdin)
      exit 0 and print "ok" when the library accepts the headers, 1 with its error otherwise
  standardwebhooks_interop.py sign SECRET ID TIMESTAMP               (body on stdin)
      print the library's `webhook-signature` value
"""
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook


def main() -> int:
    mode, secret, msg_id, ts = sys.argv[1:5]
    body = sys.stdin.buffer.read().decode("utf-8")
    wh = Webhook(secret)
    if mode == "sign":
        print(wh.sign(msg_id, datetime.fromtimestamp(int(ts), tz=timezone.utc), body))
        return 0
    headers = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sys.argv[5]}
    try:
        wh.verify(body, headers)
    except Exception as e:  # the library's WebhookVerificationError
        print(f"rejected: {e}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

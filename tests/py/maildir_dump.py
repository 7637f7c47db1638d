"""Print every message of a Maildir as one JSON object per line:
{"to", "from", "subject", "text", "attachments": [{"filename", "content_type", "sha256", "size"}]}"""
import hashlib
import json
import mailbox
import sys

for key, msg in mailbox.Maildir(sys.argv[1], create=False).items():
    out = {"to": msg["To"], "from": msg["From"], "subject": msg["Subject"], "text": "", "attachments": []}
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            out["attachments"].append({
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "sha256": hashlib.sha256(payload).hexdigest(),
                "size": len(payload),
            })
        elif part.get_content_type() == "text/plain":
            out["text"] += payload.decode("utf-8", "replace")
    print(json.dumps(out))

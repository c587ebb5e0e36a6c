"""No column of any table holds a private key, API token, broker secret or issued JWT in raw,
base64, base64url, hex or PEM form. The seeds are recovered independently by decrypting the
sealed column with the key-encryption key (AES-256-GCM via `cryptography`), which also proves
they are stored encrypted."""

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from test_api_support import BOOTSTRAP, b64url_decode, make_broker, make_token, psql, request


def forms(secret: bytes):
    """The encodings a leaked secret could appear in."""
    out = {
        secret.hex(), secret.hex().upper(),
        base64.b64encode(secret).decode(), base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("="),
    }
    try:
        out.add(secret.decode("utf-8"))
    except UnicodeDecodeError:
        out.add(secret.decode("latin-1"))
    return {f for f in out if len(f) >= 16}


def dump_database():
    tables = psql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert "signing_keys" in tables and "api_tokens" in tables
    text = []
    for t in tables:
        text.extend(psql(f'SELECT row_to_json(t)::text FROM "{t}" t'))
    return "\n".join(text)


def test_no_secret_is_stored_in_any_recognisable_form():
    write = make_token("write")
    admin = make_token("admin")
    ns, created = make_broker(token=write)
    broker_secret = created["secret"]
    _, _, rotated = request("POST", f"/v1/namespaces/{ns}/brokers/b1/secret/rotate", write)
    _, _, tokens = request("GET", f"/v1/namespaces/{ns}/brokers/b1/credentials?number=10&topicAcl=%23", write)
    request("POST", f"/v1/namespaces/{ns}/brokers/b1/keys/rotate", write)
    jwts = list(tokens.values())

    kek = AESGCM(bytes.fromhex(os.environ["STARLING_API_KEK"]))
    seeds = []
    for row in psql(f"SELECT broker_id || ' ' || kid || ' ' || x || ' ' || sealed_seed FROM signing_keys WHERE broker_id = '{created['id']}'"):
        broker_id, kid, x, sealed = row.split(" ")
        assert sealed.startswith("v1.")
        raw = b64url_decode(sealed[3:])
        seed = kek.decrypt(raw[:12], raw[12:], f"{broker_id}/{kid}".encode())
        key = Ed25519PrivateKey.from_private_bytes(seed)
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert base64.urlsafe_b64encode(public).decode().rstrip("=") == x
        seeds.append((seed, key))
    assert len(seeds) == 3, "current, next and retiring keys"

    needles = set()
    for seed, key in seeds:
        needles |= forms(seed)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        needles.add(pem)
        needles |= {line for line in pem.splitlines() if len(line) > 20 and "PRIVATE" not in line}
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        needles |= forms(der)
    for secret in [BOOTSTRAP, write, admin, broker_secret, rotated["secret"], *jwts]:
        needles |= forms(secret.encode())
        if secret.count(".") == 2:
            needles |= {part for part in secret.split(".")[1:] if len(part) >= 16}
    dump = dump_database()
    assert len(dump) > 1000
    leaks = [n[:12] for n in needles if n in dump]
    assert not leaks, f"secrets found in the database: {leaks}"

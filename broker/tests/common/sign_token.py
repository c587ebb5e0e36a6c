"""Signs a token with Python's `cryptography`, an Ed25519 implementation independent of ours.

usage: sign_token.py SEED_HEX HEADER_JSON CLAIMS_JSON  -> prints the compact JWT
"""
import base64
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


seed, header, claims = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3]
key = Ed25519PrivateKey.from_private_bytes(seed)
signing_input = b64(header.encode()) + "." + b64(claims.encode())
print(signing_input + "." + b64(key.sign(signing_input.encode())))

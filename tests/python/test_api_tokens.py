"""Tokens issued by the api, checked by an independent verifier (Python `cryptography`)
against the broker's /publickeys, on both route sets."""

import json
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from test_api_support import ACCOUNT, BOOTSTRAP, b64url_decode, make_broker, request


def public_keys(ns, broker):
    status, _, body = request("GET", f"/v1/namespaces/{ns}/brokers/{broker}/publickeys", BOOTSTRAP)
    assert status == 200, body
    return {k["kid"]: k for k in body["keys"]}


def verify(token, keys):
    header_b64, payload_b64, sig_b64 = token.split(".")
    header = json.loads(b64url_decode(header_b64))
    assert header == {"alg": "EdDSA", "kid": header["kid"]}
    jwk = keys[header["kid"]]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    key = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    key.verify(b64url_decode(sig_b64), f"{header_b64}.{payload_b64}".encode())
    return json.loads(b64url_decode(payload_b64))


def test_issued_tokens_verify_with_cryptography_against_publickeys():
    ns, _ = make_broker(body={"expiration": 3600})
    keys = public_keys(ns, "b1")
    assert all("d" not in k for k in keys.values())
    status, headers, tokens = request(
        "GET", f"/v1/namespaces/{ns}/brokers/b1/credentials?number=5&type=TOKEN&topicAcl=%23&expiration=120", BOOTSTRAP)
    assert status == 200, tokens
    assert headers["cache-control"] == "no-store"
    assert len(tokens) == 5
    now = int(time.time())
    for client_id, token in tokens.items():
        claims = verify(token, keys)
        assert claims["sub"] == client_id and len(client_id) == 26
        assert claims["topicAcl"] == "#"
        assert claims["exp"] == claims["iat"] + 120
        assert abs(claims["iat"] - now) < 60
        assert len(claims["jti"]) == 32


def test_compat_route_tokens_verify_and_carry_the_acl_object():
    ns, _ = make_broker()
    acl = '{"pub":["sensors/+/temp"],"sub":["alerts/#"]}'
    from urllib.parse import quote
    path = f"/client/v4/accounts/{ACCOUNT}/pubsub/namespaces/{ns}/brokers/b1/credentials?clientid=dev-1&topicAcl={quote(acl)}&expiration=-1"
    status, _, body = request("GET", path, BOOTSTRAP)
    assert status == 200, body
    assert body["success"] is True
    claims = verify(body["result"]["dev-1"], public_keys(ns, "b1"))
    assert claims["topicAcl"] == {"pub": ["sensors/+/temp"], "sub": ["alerts/#"]}
    assert "exp" not in claims


def test_a_tampered_token_does_not_verify():
    ns, _ = make_broker()
    _, _, tokens = request("GET", f"/v1/namespaces/{ns}/brokers/b1/credentials?topicAcl=%23", BOOTSTRAP)
    token = next(iter(tokens.values()))
    h, p, s = token.split(".")
    forged = json.loads(b64url_decode(p))
    forged["sub"] = "someone-else"
    import base64
    p2 = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    try:
        verify(f"{h}.{p2}.{s}", public_keys(ns, "b1"))
    except InvalidSignature:
        return
    raise AssertionError("a tampered token verified")

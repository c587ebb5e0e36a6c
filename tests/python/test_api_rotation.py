"""Key rotation over real time: old tokens verify until retire_at, new tokens at once, and the
old key leaves /publickeys (and the brokers' state) after retire_at. The hook key rotates with
them: a new one at once, the previous one in /publickeys until retire_at, never in the brokers'
token key set."""

import json
import time

from test_api_support import BOOTSTRAP, INTERNAL_URL, b64url_decode, make_broker, request


def kid_of(token):
    return json.loads(b64url_decode(token.split(".")[0]))["kid"]


def kids(ns):
    _, _, body = request("GET", f"/v1/namespaces/{ns}/brokers/b1/publickeys", BOOTSTRAP)
    return {k["kid"] for k in body["keys"]}


def issue(ns):
    _, _, tokens = request("GET", f"/v1/namespaces/{ns}/brokers/b1/credentials?topicAcl=%23", BOOTSTRAP)
    return next(iter(tokens.values()))


def test_rotation_retires_the_old_key_at_retire_at():
    ns, created = make_broker()
    secret = created["secret"]
    old = issue(ns)
    status, _, rotation = request("POST", f"/v1/namespaces/{ns}/brokers/b1/keys/rotate?retire_after=3", BOOTSTRAP)
    assert status == 200, rotation
    assert rotation["retiringKid"] == kid_of(old)
    new = issue(ns)
    assert kid_of(new) == rotation["currentKid"] != kid_of(old)
    token_kids = {kid_of(old), kid_of(new), rotation["nextKid"]}
    published = kids(ns)
    # The token keys, the new hook key, and the hook key before the rotation.
    assert token_kids | {rotation["hookKid"]} <= published and len(published) == 5, published
    previous_hook = (published - token_kids - {rotation["hookKid"]}).pop()
    state_path = f"/internal/v1/brokers/{created['id']}/state"
    _, _, state = request("GET", state_path, secret, base=INTERNAL_URL)
    assert {k["kid"] for k in state["jwks"]["keys"]} == token_kids, "never a hook key"
    # Wait (bounded) for the retirement to show, and check it is not before retire_at.
    deadline = time.time() + 30
    while kid_of(old) in kids(ns):
        assert time.time() < deadline, "the retiring key never left /publickeys"
        time.sleep(0.2)
    assert time.time() >= rotation["retireAt"] - 1
    assert kids(ns) == {kid_of(new), rotation["nextKid"], rotation["hookKid"]}, "both retired"
    assert previous_hook not in kids(ns)
    # The brokers' state drops it too, with a higher version once the janitor has collected the
    # key (every second in this tier): a long-poll from the old version wakes for it.
    status, _, later = request("GET", f"{state_path}?since={state['version']}&wait=30s", secret, base=INTERNAL_URL)
    assert status == 200, later
    assert kid_of(old) not in {k["kid"] for k in later["jwks"]["keys"]}
    assert later["version"] > state["version"]

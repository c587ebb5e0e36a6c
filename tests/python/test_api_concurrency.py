"""20 concurrent identical creates: exactly one succeeds, the rest get the conflict answer of
their route set, none a 5xx."""

from concurrent.futures import ThreadPoolExecutor

from test_api_support import ACCOUNT, BOOTSTRAP, make_broker, request, unique


def race(method, path, body):
    with ThreadPoolExecutor(max_workers=20) as pool:
        return list(pool.map(lambda _: request(method, path, BOOTSTRAP, body)[0], range(20)))


def test_twenty_identical_namespace_creates_one_wins_native():
    statuses = race("POST", "/v1/namespaces", {"name": unique("race")})
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 19, statuses


def test_twenty_identical_broker_creates_one_wins_compat():
    ns, _ = make_broker()
    statuses = race("POST", f"/client/v4/accounts/{ACCOUNT}/pubsub/namespaces/{ns}/brokers", {"name": "racer"})
    assert statuses.count(200) == 1, statuses
    assert statuses.count(400) == 19, statuses
    assert all(s < 500 for s in statuses)

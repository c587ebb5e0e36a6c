"""schemathesis against the control plane's /openapi.json (run by scripts/tiers/50-api-python.sh).

    python3 tests/python/api_schemathesis.py setup
        creates the objects the document's examples name and prints a write-role token
    python3 tests/python/api_schemathesis.py report OPENAPI PASS=EVENTS.ndjson ...
        prints examples and answers per operation (OPENAPI: the document's URL or file) from
        schemathesis's NDJSON event reports, and exits non-zero unless every operation reached
        a 2xx, no answer was a 5xx, no check failed (a response breaking the schema is a failed
        check) and every operation got at least 100 examples, the only exception being
        operations without parameters or a body, whose whole input space is smaller than that.

The environment is the one test_api_support.py reads (STARLING_API_URL, STARLING_API_BOOTSTRAP).
"""

import base64
import json
import sys
import urllib.parse
from collections import defaultdict

from test_api_support import make_token, request

MIN_EXAMPLES = 100


def setup():
    """Namespaces and brokers the examples in the document name; returns a write-role token.

    `demo/demo` is operator-managed, so that a generated DELETE cannot remove it (409 without
    the operator's header) and every other operation keeps finding it; `doomed-*` exist for the
    DELETE examples (`doomed-native` and `doomed-compat` as empty namespaces, and as brokers in
    `demo`)."""
    write = make_token("write")
    for ns in ["demo", "doomed-native", "doomed-compat"]:
        status, _, body = request("POST", "/v1/namespaces", write, {"name": ns})
        assert status == 201, body
    managed = {"kind": "Broker", "namespace": "schemathesis", "name": "demo"}
    for broker in ["demo", "doomed-native", "doomed-compat"]:
        body = {"name": broker, "managedBy": managed} if broker == "demo" else {"name": broker}
        status, _, created = request("POST", "/v1/namespaces/demo/brokers", write, body)
        assert status == 201, created
    return write


class Operation:
    def __init__(self, method, path, op):
        self.method = method
        self.path = path
        # Inputs schemathesis can vary: parameters and a body. (The bearer token is the same
        # header on every request; leaving it out is one more case, not a space of them.)
        self.has_inputs = bool(op.get("parameters")) or "requestBody" in op
        self.passes = set()
        self.examples = 0
        self.by_class = defaultdict(int)
        self.success_codes = set()
        self.by_phase = defaultdict(int)
        self.failures = []

    @property
    def label(self):
        return f"{self.method} {self.path}"


def operations(openapi):
    """The operations of the document at `openapi`, a URL or a file."""
    parsed = urllib.parse.urlparse(openapi)
    if parsed.scheme in ("http", "https"):
        status, _, doc = request("GET", parsed.path, base=f"{parsed.scheme}://{parsed.netloc}")
        assert status == 200, doc
    else:
        with open(openapi) as f:
            doc = json.load(f)
    ops = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            o = Operation(method.upper(), path, op)
            ops[o.label] = o
    return ops


def _body_excerpt(response):
    content = (response or {}).get("content") or {}
    raw = content.get("$base64")
    text = base64.b64decode(raw).decode("utf-8", "replace") if raw else content.get("string", "")
    return text[:300]


def read_events(ops, pass_name, path):
    """Adds one pass's test cases to `ops`; returns errors schemathesis reported (not checks)."""
    errors = []
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            (kind, data), = event.items()
            if kind == "NonFatalError":
                errors.append(f"{pass_name}: {data.get('label')}: {data.get('info', {}).get('title') or data}")
                continue
            if kind != "ScenarioFinished":
                continue
            phase = data.get("phase", "")
            recorder = data.get("recorder") or {}
            op = ops.get(recorder.get("label"))
            interactions = recorder.get("interactions") or {}
            if op is None:
                if interactions:
                    errors.append(f"{pass_name}: cases for an operation not in the document: {recorder.get('label')}")
                continue
            for case_id, interaction in interactions.items():
                req = interaction.get("request") or {}
                # The coverage phase also tries methods the path does not have (405 expected);
                # those are not examples of this operation.
                if req.get("method", "").upper() != op.method:
                    continue
                op.passes.add(pass_name)
                op.examples += 1
                op.by_phase[phase] += 1
                code = (interaction.get("response") or {}).get("status_code")
                op.by_class[f"{code // 100}xx" if code else "none"] += 1
                if code and 200 <= code < 300:
                    op.success_codes.add(code)
                if code is None or code >= 500:
                    op.failures.append(f"{code} for {req.get('method')} {req.get('uri')}: {_body_excerpt(interaction.get('response'))}")
                for check in (recorder.get("checks") or {}).get(case_id) or []:
                    if check.get("status") not in ("success", "skip", "skipped"):
                        failure = ((check.get("failure_info") or {}).get("failure")) or {}
                        op.failures.append(
                            f"check {check.get('name')} {check.get('status')}: {failure.get('title', '')} "
                            f"({failure.get('code', '')}) for {req.get('method')} {req.get('uri')} -> {code}: "
                            f"{_body_excerpt(interaction.get('response'))}"
                        )
    return errors


def report(openapi, passes):
    ops = operations(openapi)
    errors = []
    for name, path in passes:
        errors += read_events(ops, name, path)
    problems = []
    print(f"{'examples':>8} {'2xx':>5} {'(codes)':<9} {'4xx':>5} {'5xx':>4} {'fail':>4}  {'pass':<6} operation")
    for op in sorted(ops.values(), key=lambda o: (o.path, o.method)):
        note = ""
        if not op.passes:
            problems.append(f"{op.label}: not tested by any pass")
            note = "   <-- not tested"
        elif op.by_class["2xx"] == 0:
            problems.append(f"{op.label}: no 2xx answer")
            note = "   <-- no 2xx"
        if op.examples < MIN_EXAMPLES and op.passes:
            if op.has_inputs:
                problems.append(f"{op.label}: {op.examples} examples, fewer than {MIN_EXAMPLES}")
                note += f"   <-- fewer than {MIN_EXAMPLES} examples"
            elif op.by_phase["fuzzing"] == 0:
                problems.append(f"{op.label}: not fuzzed")
                note += "   <-- not fuzzed"
            else:
                # Without parameters or a body there is one valid input: fuzzing stops after
                # it (the space is exhausted); coverage adds the few header variants.
                phases = ", ".join(f"{k} {v}" for k, v in sorted(op.by_phase.items()))
                note += f"   (no parameters, no body: one input, all tried; {phases})"
        problems += [f"{op.label}: {f}" for f in op.failures]
        print(
            f"{op.examples:>8} {op.by_class['2xx']:>5} {','.join(map(str, sorted(op.success_codes))):<9} "
            f"{op.by_class['4xx']:>5} {op.by_class['5xx']:>4} "
            f"{len(op.failures):>4}  {','.join(sorted(op.passes)) or '-':<6} {op.label}{note}"
        )
    problems += errors
    total = sum(o.examples for o in ops.values())
    reached = sum(1 for o in ops.values() if o.by_class["2xx"])
    print(f"operations: {len(ops)}; examples: {total}; operations with a 2xx: {reached} of {len(ops)}; "
          f"5xx answers: {sum(o.by_class['5xx'] for o in ops.values())}; "
          f"failed checks and errors: {sum(len(o.failures) for o in ops.values()) + len(errors)}")
    if problems:
        print("schemathesis verdict: FAILED")
        for p in problems[:200]:
            print(f"  {p}")
        return False
    print("schemathesis verdict: passed")
    return True


def main(argv):
    if len(argv) == 2 and argv[1] == "setup":
        print(setup())
        return 0
    if len(argv) >= 4 and argv[1] == "report":
        passes = [tuple(a.split("=", 1)) for a in argv[3:]]
        return 0 if report(argv[2], passes) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Checks custom resources against their CRD's schema, offline, the way the API server would:
unknown fields (where the schema does not preserve them), types, bounds, enums, patterns and
required fields.

    validate_cr.py CRD.yaml[,MORE-CRDS.yaml] CR.yaml [CR.yaml ...]

Prints one line per object: `PASS FILE KIND/NAME`, `FAIL FILE KIND/NAME: FIELD.PATH: WHY` for
every problem found, or `SKIP FILE: (apiVersion, kind) has no CRD`. Exits 1 when any object
fails. Needs PyYAML and jsonschema (both come with kubernetes-validate).

The server prunes unknown fields instead of rejecting them where a schema says nothing; here an
object schema with properties and no `x-kubernetes-preserve-unknown-fields` or
`additionalProperties` refuses them, which is what `kubectl apply --validate=strict` reports.
`format` is not checked (the server's formats are its own).
"""

import sys

import jsonschema
import yaml


def to_json_schema(schema):
    """An OpenAPI v3 structural schema as a JSON Schema draft 7 one."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: to_json_schema(value) for key, value in schema.items()}
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        schema["additionalProperties"] = False
    schema.pop("format", None)
    return schema


def load_schemas(paths):
    """{(apiVersion, kind): JSON Schema} for every version of every CRD in the files."""
    schemas = {}
    for path in paths:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                    schema.setdefault("properties", {}).update(
                        apiVersion={"type": "string"},
                        kind={"type": "string"},
                        metadata={"type": "object"},
                    )
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_schemas(argv[1].split(","))
    if not schemas:
        print(f"no CustomResourceDefinition in {argv[1]}", file=sys.stderr)
        return 2
    failed = 0
    for path in argv[2:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = (doc.get("metadata") or {}).get("name")
            if key not in schemas:
                print(f"SKIP {path}: {key} has no CRD")
                continue
            validator = jsonschema.Draft7Validator(schemas[key])
            errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.path])
            for e in errors:
                field = ".".join(map(str, e.path)) or "<root>"
                print(f"FAIL {path} {key[1]}/{name}: {field}: {e.message}")
            if not errors:
                print(f"PASS {path} {key[1]}/{name}")
            failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

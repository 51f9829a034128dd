#!/usr/bin/env python3
"""Validates what live-operator generates against the Kubernetes schemas, offline.

- `live-operator render -f EXAMPLE` for every crds/examples/*.yaml: each child is validated with
  kubernetes-validate (strict: unknown fields fail) for the oldest Kubernetes we support.
  ServiceMonitor (monitoring.coreos.com/v1) has no schema offline: it is checked for the fields
  prometheus-operator needs and reported as such.
- crds/liverealtime.yaml is validated as a CustomResourceDefinition.
- every example is validated against the CRD's own openAPIV3Schema (jsonschema).
- `live-operator rbac` is validated as a ClusterRole.

Usage: python3 crates/operator/tests/validate_render.py [--bin PATH] [--kubernetes-version 1.33.0]
Needs: pip install kubernetes-validate (brings jsonschema and PyYAML).
"""

import argparse
import glob
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def run(binary, *args):
    out = subprocess.run([binary, *args], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate_k8s(doc, version, where):
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        print(f"ok    {where}: {name}")
        return True
    except kubernetes_validate.SchemaNotFoundError:
        if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") == "ServiceMonitor":
            endpoints = doc.get("spec", {}).get("endpoints", [])
            good = bool(doc["spec"].get("selector", {}).get("matchLabels")) and all(
                e.get("port") and e.get("path") for e in endpoints
            ) and endpoints
            print(f"{'ok' if good else 'FAIL'}    {where}: {name} (CRD kind, no offline schema: structure checked only)")
            return bool(good)
        print(f"FAIL  {where}: {name}: no schema for {doc.get('apiVersion')}")
        return False
    except kubernetes_validate.ValidationError as e:
        print(f"FAIL  {where}: {name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.environ.get(
        "LIVE_OPERATOR_BIN", os.path.join(ROOT, "target", "debug", "live-operator")))
    parser.add_argument("--kubernetes-version", default="1.33.0")
    args = parser.parse_args()
    version = args.kubernetes_version
    ok = True

    crd_path = os.path.join(ROOT, "crds", "liverealtime.yaml")
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    ok &= validate_k8s(crd, version, "crds/liverealtime.yaml")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    examples = sorted(glob.glob(os.path.join(ROOT, "crds", "examples", "*.yaml")))
    if not examples:
        print("FAIL  no examples in crds/examples")
        ok = False
    for example in examples:
        rel = os.path.relpath(example, ROOT)
        with open(example) as f:
            for doc in yaml.safe_load_all(f):
                try:
                    jsonschema.validate(doc, schema)
                    print(f"ok    {rel}: matches the CRD schema")
                except jsonschema.ValidationError as e:
                    print(f"FAIL  {rel}: {e.message} at {'.'.join(str(p) for p in e.path)}")
                    ok = False
        children = run(args.bin, "render", "-f", example)
        if not children:
            print(f"FAIL  {rel}: render printed nothing")
            ok = False
        for child in children:
            ok &= validate_k8s(child, version, f"render {rel}")
            # Our contract: every child is labelled as ours.
            labels = child.get("metadata", {}).get("labels", {})
            if labels.get("app.kubernetes.io/managed-by") != "live-operator":
                print(f"FAIL  render {rel}: {child.get('kind')} lacks the managed-by label")
                ok = False

    for doc in run(args.bin, "rbac"):
        ok &= validate_k8s(doc, version, "live-operator rbac")

    print("all manifests valid" if ok else "INVALID manifests found")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

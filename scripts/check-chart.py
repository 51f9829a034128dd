#!/usr/bin/env python3
"""Offline checks of rendered Helm output for scripts/test-chart.sh.

  check-chart.py validate RENDERED.yaml [--kubernetes-version 1.33.0] [--no-pod-checks]
      Every object against the Kubernetes schemas (kubernetes-validate, strict: unknown fields
      fail). ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1) have no offline schema:
      their structure is checked and a note printed. Every Deployment must meet restricted Pod Security and have
      probes and resource requests (unless --no-pod-checks). LiveRealtime documents are
      validated against crds/liverealtime.yaml's schema (jsonschema) instead.

  check-chart.py rbac RENDERED.yaml --operator BIN [--release-namespace NS]
      The chart's RBAC rules must EQUAL `BIN rbac` (least privilege: nothing missing, nothing
      extra), grant by grant (group, resource, verb). Leader election off in the values: the
      Lease grants must be absent too. The Lease rule must sit in a Role in the release namespace; the
      other rules in the ClusterRole (or, with watchNamespace, in one Role in that namespace).
      Every role must be bound to the operator's ServiceAccount. Prints a diff on failure.

Needs: pip install kubernetes-validate (brings PyYAML and jsonschema).
"""

import argparse
import subprocess
import sys

import yaml

LEASE_GROUP = "coordination.k8s.io"


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc):
    meta = doc.get("metadata", {})
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def check_service_monitor(doc):
    spec = doc.get("spec", {})
    endpoints = spec.get("endpoints") or []
    problems = []
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is empty")
    if not endpoints:
        problems.append("no spec.endpoints")
    for e in endpoints:
        if not (e.get("port") and e.get("path")):
            problems.append(f"endpoint without port/path: {e}")
    return problems


def check_prometheus_rule(doc):
    """Structure of a PrometheusRule; the expressions themselves are checked with promtool by
    tests/console/monitoring.test.mjs."""
    problems = []
    groups = doc.get("spec", {}).get("groups") or []
    if not groups:
        problems.append("no spec.groups")
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            problems.append(f"group without name or rules: {g.get('name')}")
        for r in g.get("rules") or []:
            if not r.get("expr") or not (r.get("alert") or r.get("record")):
                problems.append(f"rule without expr or alert/record name in {g.get('name')}")
    return problems


def check_restricted(doc):
    """Restricted Pod Security for the operator's own pods."""
    problems = []
    pod = doc["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod seccompProfile is not RuntimeDefault")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{c['name']}: capabilities do not drop ALL")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: root filesystem is writable")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                problems.append(f"{c['name']}: no {probe}")
        if not c.get("resources", {}).get("requests"):
            problems.append(f"{c['name']}: no resource requests")
    return problems


def crd_schema():
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crds", "liverealtime.yaml")
    with open(path) as f:
        return yaml.safe_load(f)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def cmd_validate(args):
    import jsonschema
    import kubernetes_validate

    docs = load(args.rendered)
    if not docs:
        print(f"FAIL  {args.rendered}: nothing rendered")
        return 1
    ok = True
    for doc in docs:
        name = name_of(doc)
        if doc.get("apiVersion") == "realtime.halobuzz.com/v1alpha1" and doc.get("kind") == "LiveRealtime":
            try:
                jsonschema.validate(doc, crd_schema())
                print(f"ok    {name} matches the CRD schema")
            except jsonschema.ValidationError as e:
                ok = False
                print(f"FAIL  {name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
            continue
        try:
            kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            print(f"ok    {name}")
        except kubernetes_validate.SchemaNotFoundError:
            checks = {"ServiceMonitor": check_service_monitor, "PrometheusRule": check_prometheus_rule}
            if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") in checks:
                problems = checks[doc["kind"]](doc)
                if problems:
                    ok = False
                    print(f"FAIL  {name}: {'; '.join(problems)}")
                else:
                    print(f"ok    {name} (CRD kind without an offline schema: structure checked only)")
            else:
                ok = False
                print(f"FAIL  {name}: no schema for {doc.get('apiVersion')}")
        except kubernetes_validate.ValidationError as e:
            ok = False
            print(f"FAIL  {name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        if doc.get("kind") == "Deployment" and not args.no_pod_checks:
            problems = check_restricted(doc)
            if problems:
                ok = False
                print(f"FAIL  {name}: not restricted: {'; '.join(problems)}")
            else:
                print(f"ok    {name} meets restricted Pod Security")
    return 0 if ok else 1


def triples(rules):
    """A rule list as a sorted list of (group, resource, verb), with no resourceNames or
    nonResourceURLs allowed (the operator's rules have neither)."""
    out = []
    for r in rules or []:
        extra = set(r) - {"apiGroups", "resources", "verbs"}
        if extra:
            out.append(("!unexpected", ",".join(sorted(extra)), ""))
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    out.append((g, res, v))
    return sorted(out)


def fmt(t):
    group = t[0] or '""'
    return f"{group} {t[1]} {t[2]}"


def cmd_rbac(args):
    docs = load(args.rendered)
    wanted_docs = yaml.safe_load_all(
        subprocess.run([args.operator, "rbac"], check=True, capture_output=True, text=True).stdout)
    wanted_roles = [d for d in wanted_docs if d and d.get("kind") == "ClusterRole"]
    if len(wanted_roles) != 1:
        print(f"FAIL  `{args.operator} rbac` printed {len(wanted_roles)} ClusterRoles, expected 1")
        return 1
    wanted = triples(wanted_roles[0]["rules"])

    roles = [d for d in docs if d.get("kind") in ("ClusterRole", "Role")]
    bindings = [d for d in docs if d.get("kind") in ("ClusterRoleBinding", "RoleBinding")]
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        print(f"FAIL  expected one operator Deployment, found {len(deployments)}")
        return 1
    env = {e["name"]: e.get("value") for c in deployments[0]["spec"]["template"]["spec"]["containers"]
           for e in c.get("env", [])}
    watch = env.get("LIVE_OPERATOR_WATCH_NAMESPACE")
    sa = deployments[0]["spec"]["template"]["spec"].get("serviceAccountName")
    if env.get("LIVE_OPERATOR_LEADER_ELECTION") == "false":
        print("note  leader election is off in these values: the Lease grants must be absent")
        wanted = [t for t in wanted if t[0] != LEASE_GROUP]
    ok = True

    got = sorted(t for role in roles for t in triples(role.get("rules")))
    missing = sorted(set(wanted) - set(got))
    extra = sorted(set(got) - set(wanted))
    dupes = sorted({t for t in got if got.count(t) > 1})
    if missing or extra or dupes:
        ok = False
        print("FAIL  the chart's RBAC differs from `live-operator rbac` (group resource verb):")
        for t in missing:
            print(f"  - {fmt(t)}    (the operator uses it; the chart does not grant it)")
        for t in extra:
            print(f"  + {fmt(t)}    (granted by the chart; the operator never uses it)")
        for t in dupes:
            print(f"  = {fmt(t)}    (granted twice)")
    else:
        print(f"ok    chart RBAC equals `live-operator rbac`: {len(wanted)} (group, resource, verb) grants")

    # Where each grant lives.
    for role in roles:
        rt = triples(role.get("rules"))
        lease = [t for t in rt if t[0] == LEASE_GROUP]
        ns = role["metadata"].get("namespace")
        if lease:
            if role["kind"] != "Role" or ns != args.release_namespace or len(lease) != len(rt):
                ok = False
                print(f"FAIL  {name_of(role)}: the Lease grants must be alone in a Role in the "
                      f"release namespace {args.release_namespace}")
            else:
                print(f"ok    {name_of(role)}: leader-election Lease grants, release namespace only")
        else:
            if watch and not (role["kind"] == "Role" and ns == watch):
                ok = False
                print(f"FAIL  {name_of(role)}: with watchNamespace={watch} the grants belong in a Role there")
            elif not watch and role["kind"] != "ClusterRole":
                ok = False
                print(f"FAIL  {name_of(role)}: watching all namespaces needs a ClusterRole")
            else:
                print(f"ok    {name_of(role)}: reconcile grants ({'namespace ' + watch if watch else 'cluster-wide'})")

    # Bindings: each role bound to the operator's ServiceAccount.
    for role in roles:
        bound = [b for b in bindings
                 if b["roleRef"]["kind"] == role["kind"] and b["roleRef"]["name"] == role["metadata"]["name"]
                 and b["metadata"].get("namespace") == role["metadata"].get("namespace")]
        good = bound and all(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == args.release_namespace
            for b in bound for s in b.get("subjects", []))
        if not good:
            ok = False
            print(f"FAIL  {name_of(role)} is not bound (only) to ServiceAccount {args.release_namespace}/{sa}")
        else:
            print(f"ok    {name_of(role)} bound to ServiceAccount {args.release_namespace}/{sa}")
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("rendered")
    v.add_argument("--kubernetes-version", default="1.33.0")
    v.add_argument("--no-pod-checks", action="store_true")
    r = sub.add_parser("rbac")
    r.add_argument("rendered")
    r.add_argument("--operator", required=True)
    r.add_argument("--release-namespace", required=True)
    args = p.parse_args()
    return cmd_validate(args) if args.cmd == "validate" else cmd_rbac(args)


if __name__ == "__main__":
    sys.exit(main())

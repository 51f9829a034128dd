#!/usr/bin/env bash
# Starts the envtest control plane for crates/operator/tests/envtest: etcd, kube-apiserver (with
# an audit log of the operator's requests) and kube-controller-manager from $KUBEBUILDER_ASSETS,
# on free loopback ports, with a fresh PKI, all under DIR. Writes DIR/kubeconfig (admin) and
# DIR/ports, then stays in the foreground until the process PARENT_PID ends, and stops exactly
# the processes it started.
#
#   controlplane.sh DIR PARENT_PID AUDITED_USERS(comma-separated)
set -euo pipefail
dir=$1 parent=$2 audited=$3
bin=${KUBEBUILDER_ASSETS:?KUBEBUILDER_ASSETS is not set}
pki=$dir/pki
mkdir -p "$pki" "$dir/etcd" && chmod 700 "$dir/etcd"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The apiserver drains for a few seconds on SIGTERM; never leave anything behind.
  for _ in $(seq 1 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 0' TERM INT

ca() { openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/$1.key" -out "$pki/$1.crt" -days 2 \
  -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null; }
cert() { # name subject extendedKeyUsage [subjectAltName] [ca]
  local signer=${5:-ca}
  openssl req -newkey rsa:2048 -nodes -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "$2" 2>/dev/null
  { echo "basicConstraints=critical,CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$3"; [ -n "${4:-}" ] && echo "subjectAltName=$4"; } > "$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$signer.crt" -CAkey "$pki/$signer.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}
ca ca envtest-ca; ca front-proxy-ca envtest-front-proxy-ca
cert apiserver "/CN=kube-apiserver" serverAuth "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc"
cert admin "/O=system:masters/CN=admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null && openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); kcm_port=$(free_port)
server=https://127.0.0.1:$api_port
kubeconfig() { # file user cert
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters: [{name: envtest, cluster: {server: "$server", certificate-authority-data: $(base64 -w0 "$pki/ca.crt")}}]
users: [{name: $2, user: {client-certificate-data: $(base64 -w0 "$pki/$3.crt"), client-key-data: $(base64 -w0 "$pki/$3.key")}}]
contexts: [{name: envtest, context: {cluster: envtest, user: $2}}]
current-context: envtest
KC
  chmod 600 "$1"
}
kubeconfig "$dir/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
users_yaml=$(printf '"%s",' ${audited//,/ }); users_yaml=[${users_yaml%,}]
cat > "$dir/audit-policy.yaml" <<POLICY
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: $users_yaml
  - level: None
POLICY

"$bin/etcd" --data-dir="$dir/etcd" --unsafe-no-fsync \
  --listen-client-urls=http://127.0.0.1:$etcd_port --advertise-client-urls=http://127.0.0.1:$etcd_port \
  --listen-peer-urls=http://127.0.0.1:$peer_port >"$dir/etcd.log" 2>&1 &
pids+=($!)
"$bin/kube-apiserver" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --secure-port=$api_port --etcd-servers=http://127.0.0.1:$etcd_port \
  --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
  --authorization-mode=RBAC --anonymous-auth=false --allow-privileged=true \
  --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --requestheader-client-ca-file="$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
  --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" --audit-log-mode=blocking \
  --cert-dir="$dir/apiserver-certs" >"$dir/kube-apiserver.log" 2>&1 &
pids+=($!)
# The controller-manager needs the apiserver's bootstrap roles: wait for /readyz first.
ready=0
for _ in $(seq 1 360); do
  if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz" >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 0.5
done
[ "$ready" = 1 ] || { echo "kube-apiserver not ready after 180 s" >&2; exit 1; }
# No nodes: the node lifecycle controller has nothing to do. The HPA controller runs (it scales
# LiveRealtimes for real).
"$bin/kube-controller-manager" --kubeconfig="$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$dir/controller-manager.kubeconfig" --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=$kcm_port --cert-dir="$dir/kcm-certs" --controllers='*,-nodelifecycle' \
  --use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range=10.96.0.0/16 --leader-elect=false \
  --horizontal-pod-autoscaler-sync-period=2s >"$dir/kube-controller-manager.log" 2>&1 &
pids+=($!)
kubeconfig "$dir/kubeconfig.tmp" admin admin && mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
while kill -0 "$parent" 2>/dev/null; do
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "a control-plane process ($p) exited" >&2; exit 1; }; done
  sleep 1 & wait $! || true
done

#!/usr/bin/env bash
# A throwaway PKI for the TLS tests, made with openssl at test time (no private key is committed):
#
#   tests/support/pki.sh DIR
#
# Two unrelated CAs, each with a server and a client certificate (P-256 keys, PKCS#8 PEM):
#   DIR/ca.crt        ca.key          "Test CA"
#   DIR/server.crt    server.key      signed by ca; SAN DNS:localhost, DNS:responses-router.example.internal,
#                                     IP:127.0.0.1 (the names deploy/envoy-mtls.yaml and the tests dial);
#                                     serverAuth and clientAuth: Redis Cluster nodes also present it
#                                     as their client certificate (cluster bus, replication)
#   DIR/client.crt    client.key      signed by ca; CN=gateway, clientAuth (what Envoy presents)
#   DIR/client-renewed.crt/.key       the same, renewed (another key and serial), for rotation
#   DIR/other-ca.crt  other-ca.key    "Other CA": a rotation's new CA, or an intruder's
#   DIR/other-server.crt/.key, DIR/other-client.crt/.key   the same two, signed by other-ca
# Used by tests/transport.rs (Rust), tests/e2e/test_mtls.py, and the Redis-over-TLS tests
# (crates/redis-store/tests/tls.rs, tests/lifecycle.rs, tests/support/redis/cluster.sh --tls).
set -euo pipefail
dir=${1:?usage: pki.sh DIR}
mkdir -p "$dir"
cd "$dir"

# ca NAME CN
ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$1.key" -out "$1.crt" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf NAME CN CA EXTENSIONS
leaf() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key.tmp" -out "$1.csr" \
    -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "$4" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" -CAcreateserial -days 30 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  openssl pkey -in "$1.key.tmp" -out "$1.key"
  rm -f "$1.csr" "$1.ext" "$1.key.tmp"
}

server_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,DNS:responses-router.example.internal,IP:127.0.0.1"
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

for prefix in "" "other-"; do
  ca "${prefix}ca" "${prefix:+Other }Test CA"
  leaf "${prefix}server" "responses-router" "${prefix}ca" "$server_ext"
  leaf "${prefix}client" "gateway" "${prefix}ca" "$client_ext"
done
leaf client-renewed "gateway" ca "$client_ext"
rm -f ./*.srl

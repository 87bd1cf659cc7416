#!/usr/bin/env bash
# A throwaway PKI for the Redis-over-TLS tests (openssl; P-256 keys in PKCS#8):
#
#   tests/support/redis/certs.sh DIR
#
#   DIR/ca.crt, ca.key                  the test CA
#   DIR/server.crt, server.key          CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1
#                                       ($SERVER_SAN replaces the SAN); serverAuth + clientAuth,
#                                       because Redis nodes also use it as their client
#                                       certificate on the cluster bus and for replication
#   DIR/client.crt, client.key          CN=router, clientAuth, signed by the test CA
#   DIR/other-ca.crt, other-ca.key      an unrelated CA (the "wrong CA" cases)
#   DIR/other-client.crt, .key          a client certificate signed by the unrelated CA
set -euo pipefail
dir=${1:?usage: certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=30

ca() { # NAME CN
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.crt" \
    -days "$days" -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

leaf() { # NAME CN CA EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" \
    -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "$4" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" -CAcreateserial -out "$1.crt" \
    -days "$days" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  openssl pkey -in "$1.key" -out "$1.key.pk8" && mv "$1.key.pk8" "$1.key"
}

ca ca "Test CA"
ca other-ca "Other CA"
leaf server localhost ca "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=${SERVER_SAN:-DNS:localhost,IP:127.0.0.1,IP:::1}"
leaf client router ca "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
leaf other-client intruder other-ca "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
# Test material only: readable by the redis-server the tests start.
chmod 644 ./*.key

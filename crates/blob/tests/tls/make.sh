#!/usr/bin/env bash
# Makes the TLS test's fixtures (tests/stores.rs, `s3_over_tls_*`): a private CA and a server
# certificate it signs for 127.0.0.1 and localhost, ECDSA P-256, valid for 100 years. Test keys
# only: they protect nothing. Rerun to replace them (the test reads whatever is here).
set -euo pipefail
cd "$(dirname "$0")"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 36500 -subj "/CN=cohort test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" -out ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out server.ec.key
openssl pkcs8 -topk8 -nocrypt -in server.ec.key -out server.key
rm server.ec.key
openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 -sha256 \
  -extfile server.ext -out server.pem
rm -f server.csr server.ext ca.srl ca.key

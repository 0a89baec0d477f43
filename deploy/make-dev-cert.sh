#!/usr/bin/env bash
# A throwaway self-signed certificate for localhost, for trying TLS
# (docs/security.md) and deploy/compose.yaml. It writes a private key: the
# repository git-ignores certs/ and deploy/certs/, and this says so when the
# key lands anywhere else in a git work tree that does not ignore it.
set -euo pipefail
dir=${1:-deploy/certs}
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
echo "wrote $dir/fullchain.pem and $dir/privkey.pem"
if git -C "$dir" rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
    ! git -C "$dir" check-ignore -q privkey.pem; then
    echo "warning: git does not ignore $dir/privkey.pem: do not commit it" >&2
fi

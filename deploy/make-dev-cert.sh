#!/usr/bin/env bash
# A throwaway self-signed certificate for localhost, for trying deploy/compose.yaml.
set -euo pipefail
dir=${1:-deploy/certs}
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
echo "wrote $dir/fullchain.pem and $dir/privkey.pem"

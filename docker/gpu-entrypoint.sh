#!/usr/bin/env bash
# Starts tritonserver with the model-repository API (load / unload / index) restricted to requests
# carrying the header `admin-key: $ROUTENLP_ADMIN_KEY` (the same flags as routenlp/deployment.py).
# Refuses to start without the key: an open repository API lets anyone load or unload models.
set -euo pipefail
if [ -z "${ROUTENLP_ADMIN_KEY:-}" ]; then
  echo "routenlp-entrypoint: ROUTENLP_ADMIN_KEY is not set; refusing to open the repository API" >&2
  exit 64
fi
if [ "${1:-}" = "tritonserver" ]; then
  restricted="model-repository:admin-key=${ROUTENLP_ADMIN_KEY}"
  set -- "$@" "--http-restricted-api=${restricted}" "--grpc-restricted-protocol=${restricted}"
fi
exec "$@"

#!/bin/sh
# Run the reference Go Sidecar as one node in network namespace $NETNS (default goint1),
# with its own host name, static discovery of one service (go-web) and no HAProxy.
#   usage: run-go-node.sh NAME ADVERTISE_IP [SEED]
# GO_SIDECAR_DIR holds `sidecar-go` (built as ../shared/ENVIRONMENT.md says), `src/` (the
# source tree, for its views/) and `static.json`. A hand check only: never run in CI.
set -eu
dir=${GO_SIDECAR_DIR:-/work/gosidecar}
ns=${NETNS:-goint1}
cd "$dir/src"
exec ip netns exec "$ns" unshare --uts sh -c "hostname $1; \
  SIDECAR_DISCOVERY=static STATIC_CONFIG_FILE=$dir/static.json HAPROXY_DISABLE=true \
  SIDECAR_ADVERTISE_IP=$2 SIDECAR_SEEDS=${3:-$2} SIDECAR_LOGGING_LEVEL=debug \
  exec $dir/sidecar-go"

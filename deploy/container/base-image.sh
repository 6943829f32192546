#!/usr/bin/env bash
# Make a local base image, Debian bookworm with Python 3.11, for hosts that cannot pull python:3.11-slim-bookworm
# from a registry: debootstrap (from Debian's packages) fetches it from the host's Debian mirror (the first in its
# apt sources, or DEBIAN_MIRROR), podman imports it. Once per machine: an existing image is kept. Needs root
# (debootstrap), podman and debootstrap.
#
#   deploy/container/base-image.sh [IMAGE]        # default localhost/transfer-serve-base:bookworm
#   podman build --build-arg PYTHON_IMAGE=localhost/transfer-serve-base:bookworm ...
set -euo pipefail
image="${1:-localhost/transfer-serve-base:bookworm}"
if podman image exists "$image"; then
    echo "$image exists"
    exit 0
fi
host_mirror() {  # the first Debian archive in the host's apt sources (deb822 or one-line format)
    local sources=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    grep -hoE '^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' \
        "${sources[@]}" 2>/dev/null | grep -oE '[a-z]+://[^[:space:]]+' | head -n 1
}
mirror="${DEBIAN_MIRROR:-$(host_mirror || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
log="$(mktemp)"
trap 'rm -rf "$root" "$log"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >"$log" 2>&1 \
    || { tail -20 "$log" >&2; exit 1; }
# What an image needs no copy of: downloaded packages, package lists, documentation and translations.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import --quiet --change 'CMD ["python3"]' - "$image" >/dev/null
echo "$image made from Debian bookworm ($mirror)"

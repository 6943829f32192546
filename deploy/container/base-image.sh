#!/usr/bin/env bash
# Make a local base image, Debian bookworm with Python 3.11, for hosts that cannot pull python:3.11-slim-bookworm
# from a registry: debootstrap (from Debian's packages) fetches it from the Debian mirror, podman imports it.
# Once per machine: an existing image is kept. Needs root (debootstrap), podman and debootstrap.
#
#   deploy/container/base-image.sh [IMAGE]        # default localhost/transfer-serve-base:bookworm
#   podman build --build-arg PYTHON_IMAGE=localhost/transfer-serve-base:bookworm ...
set -euo pipefail
image="${1:-localhost/transfer-serve-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if podman image exists "$image"; then
    echo "$image exists"
    exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# What an image needs no copy of: downloaded packages, package lists, documentation and translations.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/locale/*
tar -C "$root" -c . | podman import --quiet --change 'CMD ["python3"]' - "$image" >/dev/null
echo "$image made from Debian bookworm ($mirror)"

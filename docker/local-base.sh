#!/usr/bin/env bash
# Build a local stand-in for `python:3.11-slim-bookworm` with debootstrap and
# import it into podman, so the Dockerfile's CPU target can be built on a
# machine that cannot pull images (see docs/deployment.md).
#
#   sudo docker/local-base.sh [IMAGE]      (default IMAGE: localhost/fusionserve-base:bookworm)
#
# The result is Debian bookworm (minbase) with python3 + venv + CA certificates.
# Extra CA certificates found in /usr/local/share/ca-certificates on this host
# (an egress proxy's, for instance) are copied in, so that pip inside `RUN`
# steps trusts the same roots as the host; /etc/pip.conf points pip at the
# system bundle for the same reason. Nothing of this reaches a real image
# built on the official python base.
set -euo pipefail

IMAGE="${1:-localhost/fusionserve-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$IMAGE"; then
    echo "local-base: $IMAGE already exists (podman rmi it to rebuild)"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "local-base: $tool is not installed" >&2; exit 2; }
done

ROOTFS="$(mktemp -d /var/tmp/fusionserve-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"

chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin

tar -C "$ROOTFS" --numeric-owner -c . \
    | podman import --change 'CMD ["/usr/bin/python3"]' \
        --change 'ENV LANG=C.UTF-8' - "$IMAGE"
podman image inspect --format '{{.Id}} {{.Size}}' "$IMAGE"

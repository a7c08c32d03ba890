#!/usr/bin/env bash
# Unpack Debian packages into a directory without installing them (no maintainer scripts run):
# for programs the tests run inside namespaces whose installation would change the machine
# (systemd-resolved's replaces /etc/resolv.conf). Usage: unpack-debian-packages.sh DIR PACKAGE...
set -euo pipefail
dest=$(realpath -m "$1"); shift
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
chmod 777 "$work"  # apt-get download fetches as the _apt user where it can
apt-get download -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get download -q "$@"; }
for deb in ./*.deb; do
  dpkg-deb -x "$deb" "$dest"
done

#!/usr/bin/env bash
# Install the Debian packages veilgate's tests and demo need, only if missing.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "veilgate: missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "veilgate: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

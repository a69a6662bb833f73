#!/usr/bin/env bash
# Installs, with apt, what the lab and the tests need on a fresh Debian
# machine (as root). Quiet and quick when everything is already there.
set -euo pipefail
packages=(openssh-server openssh-client postfix swaks sudo openssl iproute2 util-linux)
need=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

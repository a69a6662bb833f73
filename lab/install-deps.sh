#!/usr/bin/env bash
# Installs, with apt, what the lab and the tests need on a fresh Debian
# machine (as root). Quiet and quick when everything is already there.
#
# Exim (for `lab.sh up ... --exim HOST`): Debian's exim4 packages conflict
# with postfix, so they are never installed. Their .debs are downloaded and
# unpacked into EXIM_CACHE (nothing lands in the machine's /usr/sbin or /etc);
# lab.sh shows the unpacked binaries only inside an Exim host's private mount
# namespace. What the unpacked exim4 needs globally: its shared libraries
# (installed below; libidn12 is the one a postfix machine lacks) and the
# system user/group Debian-exim (created as exim4-base's postinst would).
set -euo pipefail
packages=(openssh-server openssh-client postfix swaks libnet-ssleay-perl sudo openssl iproute2 util-linux fetchmail)
# Runtime libraries of exim4-daemon-light 4.96 (its Depends, minus debconf and
# exim4-base). Most are there already with postfix installed.
packages+=(libidn12 libidn2-0 libgnutls30 libgnutls-dane0 libpcre2-8-0 libdb5.3 libnsl2 libcrypt1)
need=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
updated=0
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    apt-get update -q >/dev/null
    updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# The system user/group exim drops to (as exim4-base's postinst creates it).
if ! getent passwd Debian-exim >/dev/null; then
    echo "creating system user Debian-exim"
    if command -v adduser >/dev/null 2>&1; then
        adduser --system --group --quiet --home /var/spool/exim4 \
            --no-create-home --disabled-login --force-badname Debian-exim
    else
        useradd --system --user-group --home-dir /var/spool/exim4 --no-create-home \
            --shell /usr/sbin/nologin Debian-exim
    fi
fi

# The unpacked exim4 packages: EXIM_CACHE/root/{usr/sbin,etc/exim4,...}.
# EXIM_CACHE/debs keeps the .debs; EXIM_CACHE/root/.complete marks a finished
# unpack (written last, so an interrupted run is redone).
EXIM_CACHE=/var/cache/mxpin-lab/exim4
exim_debs=(exim4-base exim4-daemon-light exim4-config)
if [[ ! -f $EXIM_CACHE/root/.complete ]]; then
    echo "unpacking ${exim_debs[*]} into $EXIM_CACHE"
    mkdir -p "$EXIM_CACHE"
    tmp=$(mktemp -d "$EXIM_CACHE/tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/debs" "$tmp/root"
    # Sandbox user root: the download dir is not writable by _apt (otherwise
    # apt warns "Download is performed unsandboxed as root").
    dl() { (cd "$tmp/debs" && apt-get -q -o APT::Sandbox::User=root download "${exim_debs[@]}" >/dev/null); }
    if ! dl; then
        ((updated)) || apt-get update -q >/dev/null
        dl
    fi
    for deb in "$tmp"/debs/*.deb; do
        dpkg-deb -x "$deb" "$tmp/root"
    done
    # Everything exim4 links must resolve (it runs with the machine's libs).
    if ldd "$tmp/root/usr/sbin/exim4" | grep -q 'not found'; then
        ldd "$tmp/root/usr/sbin/exim4" | grep 'not found' >&2
        echo "install-deps: unpacked exim4 misses libraries (see above)" >&2
        exit 1
    fi
    ls "$tmp/debs" >"$tmp/root/.complete"
    rm -rf "$EXIM_CACHE/debs" "$EXIM_CACHE/root"
    mv "$tmp/debs" "$tmp/root" "$EXIM_CACHE/"
    rm -rf "$tmp"
    trap - EXIT
fi

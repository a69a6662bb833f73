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
#
# Dovecot (for `lab.sh up ... --dovecot HOST`): installed, but never started
# as the machine's own service: lab.sh runs its own instance per lab with
# `dovecot -c DIR/dovecot/dovecot.conf`. Its postinst would start the system
# dovecot (invoke-rc.d / deb-systemd-invoke): a policy-rc.d that forbids it
# is put in place for the install when the machine has none (Docker images
# ship one), and on a systemd machine the unit the postinst enabled is
# disabled again.
set -euo pipefail
packages=(openssh-server openssh-client postfix swaks libnet-ssleay-perl sudo openssl iproute2 util-linux fetchmail)
packages+=(dovecot-core dovecot-imapd dovecot-pop3d)
# DNS for `lab.sh up ... --dane`: knot (authoritative, signs, TSIG updates),
# unbound (validating resolver). Like Dovecot, lab.sh runs its own instances.
packages+=(knot knot-dnsutils unbound)
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
    dovecot_new=0
    if [[ " ${need[*]} " == *" dovecot-core "* || " ${need[*]} " == *" knot "* || " ${need[*]} " == *" unbound "* ]]; then
        dovecot_new=1
    fi
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if ((dovecot_new)) && [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# mxpin lab/install-deps.sh: no service starts during this install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    if ((own_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    if ((dovecot_new)) && [[ -d /run/systemd/system ]]; then
        systemctl disable --now dovecot.service dovecot.socket knot.service unbound.service >/dev/null 2>&1 || true
    fi
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

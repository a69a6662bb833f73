#!/usr/bin/env bash
# mxpin test lab: two Postfix + sshd "hosts" (home, relay) on one machine,
# or, with --fleet N, N hosts h01..hNN serving N/2 domains (for benchmarks).
#
#   lab/lab.sh up DIR NAME      build and start a lab under DIR using netns NAME
#   lab/lab.sh up DIR NAME --fleet N   the same with a fleet of N hosts (N even, 2..60)
#   lab/lab.sh up DIR NAME --exim HOST the two-host lab with Exim instead of
#                                      Postfix on HOST (home or relay; repeatable)
#   lab/lab.sh down DIR         stop everything the lab started, delete its netns
#   lab/lab.sh exec DIR CMD...  run CMD inside the lab's network namespace
#
# Must run as root (network and mount namespaces). Needs openssh-server,
# postfix and swaks installed by apt; sudo is installed if missing. --exim
# needs the unpacked exim4 packages and user Debian-exim: lab/install-deps.sh.
# Several labs may run at once: everything lives under DIR and in netns NAME.
# See lab/README.md for the layout of DIR.
set -euo pipefail

# Lab topology (fixed: the tests and mxpin.toml rely on it). A fleet lab
# (--fleet N) replaces it, see use_fleet.
HOSTS=(home relay)
declare -A ADDR=([home]=127.0.0.2 [relay]=127.0.0.3)
declare -A MAILNAME=([home]=home.example.net [relay]=relay.example.org)
declare -A MYDOMAIN=([home]=example.net [relay]=example.org)
# 0: the two-host lab; N: a fleet of N hosts.
FLEET=0
FLEET_MAX=60
SUDO_USER_NAME=mxpinlab
# --exim HOST: HOST runs Exim (Debian's exim4 4.96, unpacked by
# lab/install-deps.sh, never installed) instead of Postfix. EXIM[host]=1.
declare -A EXIM=()
EXIM_ROOT=${MXPIN_LAB_EXIM_ROOT:-/var/cache/mxpin-lab/exim4/root}
EXIM_USER=Debian-exim
# The repository (for inventories/lab.toml).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Bounded waits: WAIT_STEPS x 0.1 s.
WAIT_STEPS=100

die() {
    echo "lab.sh: $*" >&2
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: lab/lab.sh up DIR NAME       # build and start a lab under DIR (absolute), netns NAME
       lab/lab.sh up DIR NAME --fleet N   # N hosts h01..hNN (N even, 2..60), N/2 domains
       lab/lab.sh up DIR NAME --exim HOST # HOST (home|relay) runs Exim, not Postfix; repeatable
       lab/lab.sh down DIR          # stop it and delete its netns (idempotent)
       lab/lab.sh exec DIR CMD...   # run CMD in the lab's netns (lab hosts file as /etc/hosts)
EOF
    exit 2
}

# Paths end up in sshd_config, Postfix parameters (lists split on spaces and
# commas, '$' expands) and shell strings: allow only a safe character set.
check_dir_arg() {
    local dir=$1
    [[ $dir == /* ]] || die "DIR must be an absolute path: $dir"
    [[ $dir =~ ^/[A-Za-z0-9._/-]+$ ]] || die "DIR may contain only A-Za-z0-9._/- : $dir"
}

# Run a command with its output appended to the lab log.
LOG=/dev/null
quiet() {
    "$@" >>"$LOG" 2>&1
}

lab_name() {
    local dir=$1
    [[ -f $dir/netns ]] || return 1
    cat "$dir/netns"
}

netns_exists() {
    [[ -e /run/netns/$1 ]]
}

# Fleet topology: hosts h01..hNN on 127.0.1.1..127.0.1.N, mail names
# hNN.fleet.example. Domain dKK.example (K = 1..N/2) has primary h(2K-1) and
# backup h(2K). Waits are scaled with N (many Postfix instances start at once
# on few cores), but stay bounded.
use_fleet() {
    local n=$1 i h
    if ! [[ $n =~ ^[0-9]{1,2}$ ]] || ((10#$n < 2 || 10#$n > FLEET_MAX || 10#$n % 2 != 0)); then
        die "--fleet N: N must be even, 2..$FLEET_MAX: $n"
    fi
    n=$((10#$n))
    FLEET=$n
    HOSTS=()
    ADDR=() MAILNAME=() MYDOMAIN=()
    for ((i = 1; i <= n; i++)); do
        printf -v h 'h%02d' "$i"
        HOSTS+=("$h")
        ADDR[$h]=127.0.1.$i
        MAILNAME[$h]=$h.fleet.example
        MYDOMAIN[$h]=fleet.example
    done
    if ((WAIT_STEPS < 20 * n)); then
        WAIT_STEPS=$((20 * n))
    fi
}

# The topology of an existing lab: a fleet lab records N in DIR/fleet.
load_topology() {
    local dir=$1 n
    if [[ -f $dir/fleet ]]; then
        n=$(cat "$dir/fleet")
        use_fleet "$n"
    fi
    if [[ -f $dir/exim ]]; then
        local h
        while read -r h; do
            [[ -n $h ]] && EXIM[$h]=1
        done <"$dir/exim"
    fi
    return 0
}

# Run "FN DIR HOST" for every host: one after the other in the two-host lab
# (unchanged behaviour), in parallel (at most JOBS at once) in a fleet.
# Fails if any of them failed.
for_each_host() {
    local fn=$1 dir=$2 host pid failed=0 jobs=8
    if ((FLEET == 0)); then
        for host in "${HOSTS[@]}"; do
            "$fn" "$dir" "$host"
        done
        return 0
    fi
    local -a pids=()
    for host in "${HOSTS[@]}"; do
        if ((${#pids[@]} >= jobs)); then
            wait "${pids[0]}" || failed=1
            pids=("${pids[@]:1}")
        fi
        ("$fn" "$dir" "$host") &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    ((failed == 0)) || die "setting up the fleet hosts failed (see above and $LOG)"
}

# Run a command inside the netns, with the lab hosts file over /etc/hosts in a
# private mount namespace (so lab names resolve, and nothing leaks out).
in_netns() {
    local dir=$1 name=$2
    shift 2
    # shellcheck disable=SC2016 # expanded by the inner bash
    ip netns exec "$name" unshare --mount --propagation private \
        bash -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' lab-exec "$dir/hosts" "$@"
}

# ---------------------------------------------------------------- global setup
# The only global changes: the apt package sudo and the system user mxpinlab.
# Serialized with a lock on this script file itself (no global lock file is
# created): parallel "up"s would otherwise race on dpkg and /etc/passwd.
global_setup() {
    exec 9<"${BASH_SOURCE[0]}"
    flock -w 300 9 || die "timed out waiting for the global setup lock"
    if ! command -v sudo >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        quiet apt-get install -y -o DPkg::Lock::Timeout=300 sudo ||
            { quiet apt-get update && quiet apt-get install -y -o DPkg::Lock::Timeout=300 sudo; } ||
            die "could not install sudo (see $LOG)"
    fi
    if ! id -u "$SUDO_USER_NAME" >/dev/null 2>&1; then
        quiet useradd --system --create-home --shell /bin/bash "$SUDO_USER_NAME" ||
            id -u "$SUDO_USER_NAME" >/dev/null 2>&1 || die "could not create user $SUDO_USER_NAME"
    fi
    # useradd leaves the password field "!" (locked). With UsePAM no, sshd
    # refuses locked accounts even for public-key logins ("User mxpinlab not
    # allowed because account is locked"). "*" means "no password" but not
    # locked, so key logins work and password logins stay impossible.
    local pw
    pw=$(getent shadow "$SUDO_USER_NAME" | cut -d: -f2)
    if [[ $pw == '!'* ]]; then
        quiet usermod -p '*' "$SUDO_USER_NAME"
    fi
    flock -u 9
    exec 9<&-
    # sshd's privilege separation directory (global, shared by all labs).
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
}

# ---------------------------------------------------------------- up
write_client_files() {
    local dir=$1 host
    ssh-keygen -q -t ed25519 -N '' -C mxpin-lab-client -f "$dir/client_key"
    # sshd opens AuthorizedKeysFile with the *target user's* uid, so mxpinlab
    # must be able to read it (and traverse DIR).
    chmod 0644 "$dir/client_key.pub"

    {
        echo "127.0.0.1 localhost"
        for host in "${HOSTS[@]}"; do
            echo "${ADDR[$host]} ${MAILNAME[$host]} $host"
        done
    } >"$dir/hosts"

    # visudo checks the syntax below; sudo insists on root:root 0440.
    cat >"$dir/sudoers" <<EOF
# mxpin lab sudoers: bind-mounted over /etc/sudoers inside each lab host.
Defaults env_reset
Defaults !requiretty
Defaults !lecture
Defaults !fqdn
Defaults secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
root ALL=(ALL:ALL) ALL
$SUDO_USER_NAME ALL=(root) NOPASSWD: ALL
EOF
    chown root:root "$dir/sudoers"
    chmod 0440 "$dir/sudoers"
    quiet visudo -c -f "$dir/sudoers" || die "invalid $dir/sudoers"

    : >"$dir/known_hosts"
    : >"$dir/ssh_config"
    for host in "${HOSTS[@]}"; do
        local key
        key=$(cut -d' ' -f1-2 "$dir/$host/ssh_host_ed25519_key.pub")
        echo "$host,${MAILNAME[$host]},${ADDR[$host]} $key" >>"$dir/known_hosts"
        # One block per alias (not "Host a b") so that even a naive parser of
        # this file in the tool under test finds HostName for each name.
        local alias
        for alias in "$host" "${MAILNAME[$host]}"; do
            cat >>"$dir/ssh_config" <<EOF
Host $alias
    HostName ${ADDR[$host]}
    User root
    IdentityFile $dir/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $dir/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
    LogLevel ERROR

EOF
        done
    done

    if ((FLEET)); then
        write_fleet_inventory "$dir"
    else
        # One source for the lab inventory: inventories/lab.toml.
        cp "$REPO/inventories/lab.toml" "$dir/mxpin.toml"
        # An Exim host says so in its table.
        for host in "${!EXIM[@]}"; do
            sed -i "/^\[hosts\.$host\]\$/a mta = \"exim\"" "$dir/mxpin.toml"
        done
        (($(grep -cx 'mta = "exim"' "$dir/mxpin.toml") == ${#EXIM[@]})) ||
            die "could not add mta = \"exim\" to $dir/mxpin.toml"
    fi
}

# The fleet's inventory: every host reached as root; domain dKK.example has
# primary h(2K-1), backup h(2K) and three recipients.
write_fleet_inventory() {
    local dir=$1 k p b d host
    {
        echo "# Fleet lab inventory written by lab/lab.sh up --fleet $FLEET"
        echo "[settings]"
        echo 'ssh_config = "ssh_config"'
        for host in "${HOSTS[@]}"; do
            echo
            echo "[hosts.$host]"
            echo "ssh = \"$host\""
            echo "mx = \"${MAILNAME[$host]}\""
        done
        for ((k = 1; k <= FLEET / 2; k++)); do
            printf -v d 'd%02d.example' "$k"
            printf -v p 'h%02d' $((2 * k - 1))
            printf -v b 'h%02d' $((2 * k))
            echo
            echo "[domains.\"$d\"]"
            echo "primary = \"$p\""
            echo "backups = [\"$b\"]"
            echo "recipients = [\"postmaster@$d\", \"alice@$d\", \"bob@$d\"]"
        done
    } >"$dir/mxpin.toml"
}

setup_sshd() {
    local dir=$1 host=$2
    local hd=$dir/$host
    ssh-keygen -q -t ed25519 -N '' -C "root@${MAILNAME[$host]}" -f "$hd/ssh_host_ed25519_key"
    cat >"$hd/sshd_config" <<EOF
# sshd for lab host $host (${MAILNAME[$host]})
ListenAddress ${ADDR[$host]}:22
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# Absolute path: the same client key for every user (root and $SUDO_USER_NAME).
AuthorizedKeysFile $dir/client_key.pub
# UsePAM no: no /etc/pam.d involvement; StrictModes no: DIR may be anywhere.
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
# Tests may open many connections at once.
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    quiet /usr/sbin/sshd -t -f "$hd/sshd_config" || die "$host: invalid sshd_config (see $LOG)"
}

setup_postfix() {
    local dir=$1 host=$2
    local hd=$dir/$host
    local cf=$hd/etc/postfix
    mkdir -p "$hd/etc" "$hd/queue" "$hd/data" "$hd/mailspool"
    # Pristine copy of the machine's config; the machine's /etc/postfix is
    # never written (postconf -c below edits the copy only).
    cp -a /etc/postfix "$cf"
    # data_directory must belong to postfix, or master fails to lock
    # ("open lock file ... Permission denied").
    chown postfix:postfix "$hd/data"
    chmod 0700 "$hd/data"
    # Like /var/mail: group mail, setgid.
    if getent group mail >/dev/null; then
        chgrp mail "$hd/mailspool"
        chmod 2775 "$hd/mailspool"
    else
        chmod 1777 "$hd/mailspool"
    fi
    : >"$hd/maillog"

    # master.cf first: every postconf run reads main.cf, and right after an
    # edit of main.cf that read stalls (see the touch below).
    # Chroot off everywhere (the chroot would lack the lab paths).
    local -a chroot_off=()
    local line
    while IFS= read -r line; do
        chroot_off+=("${line%% = y} = n")
    done < <(postconf -c "$cf" -F | grep -E '/chroot = y$' || true)
    if ((${#chroot_off[@]})); then
        quiet postconf -c "$cf" -F -e "${chroot_off[@]}"
    fi
    # postlogd must be enabled for maillog_file (Debian 12 ships it enabled).
    if [[ -z $(postconf -c "$cf" -M postlog/unix-dgram 2>/dev/null) ]]; then
        quiet postconf -c "$cf" -M -e 'postlog/unix-dgram = postlog unix-dgram n - n - 1 postlogd'
    fi

    local -a params=(
        "queue_directory = $hd/queue"
        "data_directory = $hd/data"
        "mail_spool_directory = $hd/mailspool"
        # Without syslogd, log to a file via postlogd. maillog_file outside
        # /var needs maillog_file_prefixes, otherwise a fatal error that only
        # goes to syslog (i.e. nowhere).
        "maillog_file = $hd/maillog"
        "maillog_file_prefixes = $dir"
        "inet_interfaces = ${ADDR[$host]}"
        "smtp_bind_address = ${ADDR[$host]}"
        "inet_protocols = ipv4"
        "myhostname = ${MAILNAME[$host]}"
        "mydomain = ${MYDOMAIN[$host]}"
        "myorigin = \$myhostname"
        # The pristine file lists the machine's hostname here.
        "mydestination = \$myhostname, localhost.\$mydomain, localhost"
        "mynetworks = 127.0.0.0/8"
        # Never query DNS: names come from the lab hosts file via libc.
        "smtp_host_lookup = native"
        "smtp_dns_support_level = disabled"
        "lmtp_host_lookup = native"
        "smtp_tls_loglevel = 1"
        "smtpd_tls_loglevel = 1"
        "compatibility_level = 3.6"
    )
    if [[ $host == home ]]; then
        local uid gid
        uid=$(id -u nobody)
        gid=$(id -g nobody)
        mkdir -p "$hd/mail"
        chown nobody:"$gid" "$hd/mail"
        chmod 0755 "$hd/mail"
        echo "first.last@example.net first.last/" >"$cf/vmailbox"
        params+=(
            "virtual_mailbox_domains = example.net"
            "virtual_mailbox_base = $hd/mail"
            # texthash: needs no postmap (but a reload to see changes).
            "virtual_mailbox_maps = texthash:/etc/postfix/vmailbox"
            "virtual_uid_maps = static:$uid"
            "virtual_gid_maps = static:$gid"
        )
    fi
    quiet postconf -c "$cf" -e "${params[@]}"

    # Postfix refuses to read a main.cf (or texthash: file) modified within the
    # last second or so: it sleeps 0.3 s at a time until the mtime is older
    # (guard against half-written files). Every postconf/postfix command right
    # after an edit would stall ~2 s; our edits are complete, so backdate.
    touch -d "@$((EPOCHSECONDS - 10))" "$cf/main.cf" "$cf/master.cf"
    if [[ -f $cf/vmailbox ]]; then
        touch -d "@$((EPOCHSECONDS - 10))" "$cf/vmailbox"
    fi
}

# An Exim host (--exim HOST). Its own directories, seen in its mount
# namespace (start_host) at the paths compiled into Debian's exim4:
#   HD/etc/exim4   -> /etc/exim4        (exim4.conf; home: vmailbox)
#   HD/spool       -> /var/spool/exim4  (queue, hints db; Debian-exim, 0750)
#   HD/log         -> /var/log/exim4    (mainlog, rejectlog, paniclog)
#   HD/run         -> /run/exim4        (exim.pid of the daemon)
#   HD/lib         -> /var/lib/exim4    (config.autogenerated of a split config)
# HD/maillog is a symlink to log/mainlog (where a Postfix host's log is).
setup_exim() {
    local dir=$1 host=$2
    local hd=$dir/$host
    local d
    mkdir -p "$hd/etc/exim4" "$hd/spool/db" "$hd/spool/input" "$hd/spool/msglog" \
        "$hd/log" "$hd/run" "$hd/lib" "$hd/mailspool"
    # Owners and modes as exim4-base's postinst makes them.
    chown -R "$EXIM_USER:$EXIM_USER" "$hd/spool"
    chmod 0750 "$hd/spool" "$hd/spool/db" "$hd/spool/input" "$hd/spool/msglog"
    chown "$EXIM_USER:adm" "$hd/log"
    chmod 2750 "$hd/log"
    chown "$EXIM_USER:$EXIM_USER" "$hd/run"
    chmod 0750 "$hd/run"
    if getent group mail >/dev/null; then
        chgrp mail "$hd/mailspool"
        chmod 2775 "$hd/mailspool"
    else
        chmod 1777 "$hd/mailspool"
    fi
    ln -s log/mainlog "$hd/maillog"
    # Upper/work dirs of the copy-on-write overlays on /etc, /var and /run
    # that provide the mount points (start_host): the machine itself never
    # gets an /etc/exim4 (a Postfix host must not look like an Exim host).
    for d in etc var run; do
        mkdir -p "$hd/ovl/$d/upper" "$hd/ovl/$d/work"
    done
    mkdir -p "$hd/ovl/etc/upper/exim4" "$hd/ovl/var/upper/spool/exim4" \
        "$hd/ovl/var/upper/log/exim4" "$hd/ovl/var/upper/lib/exim4" "$hd/ovl/run/upper/exim4"

    local local_domains='@ : localhost'
    if [[ $host == home ]]; then
        local_domains+=' : example.net'
        mkdir -p "$hd/mail"
        chown nobody:"$(id -g nobody)" "$hd/mail"
        chmod 0755 "$hd/mail"
        # local part: Maildir name below $hd/mail (like Postfix's vmailbox).
        echo "first.last: first.last" >"$hd/etc/exim4/vmailbox"
    fi
    local conf=$hd/etc/exim4/exim4.conf
    cat >"$conf" <<EOF
# /etc/exim4/exim4.conf of lab host $host (${MAILNAME[$host]}), written by
# lab/lab.sh: a plain single-file configuration as an admin might keep it
# (after Exim's example "configure"). No TLS and no relaying for other
# domains: that is mxpin's job.

######################################################################
#                    MAIN CONFIGURATION SETTINGS                     #
######################################################################

primary_hostname = ${MAILNAME[$host]}

domainlist local_domains = $local_domains
domainlist relay_to_domains =
hostlist   relay_from_hosts = <; 127.0.0.1 ; ::1

acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

# Several lab hosts share one network namespace: listen on our address only.
local_interfaces = ${ADDR[$host]}
daemon_smtp_ports = 25

# No STARTTLS until a certificate is configured (Exim would otherwise offer
# a self-signed certificate made up at startup).
tls_advertise_hosts =

# No reverse DNS (the lab has no DNS), no ident.
host_lookup =
rfc1413_hosts =

# Commands Exim runs get no environment (silences "purging the environment").
keep_environment =

ignore_bounce_errors_after = 2d
timeout_frozen_after = 7d
log_selector = +smtp_protocol_error +smtp_syntax_error +tls_peerdn

######################################################################
#                       ACL CONFIGURATION                            #
######################################################################

begin acl

acl_check_rcpt:
  # Local submission (-bs, sendmail) without TCP/IP.
  accept  hosts = :

  deny    message = Restricted characters in address
          domains = +local_domains
          local_parts = ^[.] : ^.*[@%!/|]

  deny    message = Restricted characters in address
          domains = !+local_domains
          local_parts = ^[./|] : ^.*[@%!] : ^.*/\\\\.\\\\./

  accept  local_parts = postmaster
          domains = +local_domains

  # Unknown local recipients are refused at RCPT time, from any client.
  deny    domains = +local_domains
          !verify = recipient

  accept  hosts = +relay_from_hosts
          control = submission/sender_retain

  require message = relay not permitted
          domains = +local_domains : +relay_to_domains

  require verify = recipient

  accept

acl_check_data:
  accept

######################################################################
#                      ROUTERS CONFIGURATION                         #
######################################################################

begin routers

# Other domains: to the host named like the domain. A real host would use
# a dnslookup router (MX records); the lab has no DNS, so manualroute
# "byname" resolves through /etc/hosts (getaddrinfo).
dnslookup:
  driver = manualroute
  domains = ! +local_domains
  transport = remote_smtp
  route_list = * \$domain byname
  no_more

system_aliases:
  driver = redirect
  allow_fail
  allow_defer
  data = \${lookup{\$local_part}lsearch{/etc/aliases}}
EOF
    if [[ $host == home ]]; then
        cat >>"$conf" <<'EOF'

# Virtual mailboxes: local part -> Maildir name in /etc/exim4/vmailbox.
vmailbox:
  driver = accept
  domains = example.net
  local_parts = lsearch;/etc/exim4/vmailbox
  transport = vmailbox_maildir
EOF
    fi
    cat >>"$conf" <<EOF

localuser:
  driver = accept
  domains = @ : localhost
  check_local_user
  transport = local_delivery
  cannot_route_message = Unknown user

######################################################################
#                      TRANSPORTS CONFIGURATION                      #
######################################################################

begin transports

remote_smtp:
  driver = smtp
  interface = ${ADDR[$host]}

local_delivery:
  driver = appendfile
  file = $hd/mailspool/\$local_part_data
  delivery_date_add
  envelope_to_add
  return_path_add
  group = mail
  mode = 0600
EOF
    if [[ $host == home ]]; then
        cat >>"$conf" <<EOF

vmailbox_maildir:
  driver = appendfile
  directory = $hd/mail/\$local_part_data
  maildir_format
  create_directory
  delivery_date_add
  envelope_to_add
  return_path_add
  user = nobody
  group = $(id -gn nobody)
  mode = 0600
EOF
    fi
    cat >>"$conf" <<'EOF'

######################################################################
#                      RETRY CONFIGURATION                           #
######################################################################

begin retry

*                      *           F,2h,15m; G,16h,1h,1.5; F,4d,6h

######################################################################
#                      REWRITE CONFIGURATION                         #
######################################################################

begin rewrite

######################################################################
#                   AUTHENTICATION CONFIGURATION                     #
######################################################################

begin authenticators
EOF
    chmod 0644 "$conf"
}

start_host() {
    local dir=$1 name=$2 host=$3
    local hd=$dir/$host mta=postfix
    if [[ -n ${EXIM[$host]:-} ]]; then
        mta=exim
    fi
    # Private mount + UTS namespace inside the lab netns. The inner bash
    # records its pid (it becomes "sleep infinity" via exec), which keeps the
    # namespaces alive. sshd and master (or the Exim daemon) daemonize; their
    # children (the SSH sessions of the tests) inherit this mount namespace.
    # All fds go to files so a caller reading our stdout through a pipe is
    # not kept waiting.
    # An Exim host sees the unpacked exim4 binaries in /usr/sbin (a read-only
    # overlay, unpacked dir on top: sshd and the rest stay visible; exim
    # re-executes its compiled-in /usr/sbin/exim4) and its own /etc/exim4,
    # /var/spool/exim4, /var/log/exim4, /var/lib/exim4 and /run/exim4, bind
    # mounts onto mount points that copy-on-write overlays of /etc, /var and
    # /run provide (their writes land in HD/ovl/*/upper, never in the
    # machine's directories).
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid ip netns exec "$name" unshare --mount --uts --propagation private bash -c '
        set -eu
        echo $$ >"$1/ns.pid"
        if [ "$4" = exim ]; then
            mount -t overlay mxpin-lab-sbin -o "lowerdir=$5/usr/sbin:/usr/sbin" /usr/sbin
            for d in etc var run; do
                mount -t overlay "mxpin-lab-$d" \
                    -o "lowerdir=/$d,upperdir=$1/ovl/$d/upper,workdir=$1/ovl/$d/work" "/$d"
            done
            mount --bind "$1/etc/exim4" /etc/exim4
            mount --bind "$1/spool" /var/spool/exim4
            mount --bind "$1/log" /var/log/exim4
            mount --bind "$1/lib" /var/lib/exim4
            mount --bind "$1/run" /run/exim4
        else
            mount --bind "$1/etc/postfix" /etc/postfix
        fi
        mount --bind "$2/hosts" /etc/hosts
        mount --bind "$2/sudoers" /etc/sudoers
        if [ -d "$1/root" ]; then
            mount --bind "$1/root" /root
        fi
        hostname "$3"
        /usr/sbin/sshd -f "$1/sshd_config" -E "$1/sshd.log"
        if [ "$4" = exim ]; then
            # Daemon + queue runner every 30 s; pid in /run/exim4/exim.pid.
            if ! /usr/sbin/exim4 -bd -q30s; then
                cat /var/log/exim4/paniclog 2>/dev/null || true
                exit 1
            fi
        elif ! postfix start; then
            # Without syslogd, Postfix fatals are invisible unless stderr is
            # a terminal: repeat the check under script(1) to get the reason.
            script -qec "postfix check" /dev/null || true
            exit 1
        fi
        exec sleep infinity
    ' "lab-$host" "$hd" "$dir" "$host" "$mta" "$EXIM_ROOT" >>"$hd/start.log" 2>&1 </dev/null &
}

show_host_logs() {
    local dir=$1 host=$2 f
    for f in start.log maillog log/paniclog sshd.log; do
        if [[ $f == log/paniclog ]] && [[ ! -s $dir/$host/$f ]]; then
            continue
        fi
        echo "--- last lines of $dir/$host/$f:" >&2
        tail -n 15 "$dir/$host/$f" >&2 2>/dev/null || true
    done
    echo "--- last lines of $dir/lab.log:" >&2
    tail -n 15 "$dir/lab.log" >&2 || true
}

# Wait until sshd (22) and Postfix (25) listen on the host's address.
wait_host() {
    local dir=$1 name=$2 host=$3
    local a=${ADDR[$host]} i listening pid
    for ((i = 0; i < WAIT_STEPS; i++)); do
        listening=$(ip netns exec "$name" ss -Hltn 2>/dev/null | awk '{print $4}')
        if grep -qxF "$a:22" <<<"$listening" && grep -qxF "$a:25" <<<"$listening"; then
            return 0
        fi
        # Fail fast if the namespace keeper already died (e.g. postfix start failed).
        pid=$(cat "$dir/$host/ns.pid" 2>/dev/null || true)
        if ((i > 10)) && { [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; }; then
            break
        fi
        sleep 0.1
    done
    echo "lab.sh: host $host ($a): sshd and/or Postfix not listening on $a:22 / $a:25" >&2
    echo "listening in netns $name: $(echo "$listening" | tr '\n' ' ')" >&2
    show_host_logs "$dir" "$host"
    return 1
}

check_line() {
    printf '%-4s %s\n' "$1" "$2"
}

# Fleet self-check: every host answers over ssh (all at once) with its own
# Postfix config. Port 25 was checked by wait_host. No sudo user, no delivery.
fleet_self_checks() {
    local dir=$1 name=$2 host pid out failed=0
    local -a pids=()
    mkdir -p "$dir/selfcheck"
    for host in "${HOSTS[@]}"; do
        in_netns "$dir" "$name" ssh -F "$dir/ssh_config" "$host" postconf -h myhostname \
            >"$dir/selfcheck/$host" 2>>"$LOG" </dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || true
    done
    for host in "${HOSTS[@]}"; do
        out=$(cat "$dir/selfcheck/$host")
        if [[ $out != "${MAILNAME[$host]}" ]]; then
            check_line FAIL "ssh $host postconf -h myhostname: got '$out', want ${MAILNAME[$host]}"
            show_host_logs "$dir" "$host"
            failed=1
        fi
    done
    rm -rf "$dir/selfcheck"
    ((failed == 0)) || return 1
    check_line ok "ssh h01..${HOSTS[-1]}: postconf -h myhostname = hNN.fleet.example on all $FLEET hosts"
    check_line ok "sshd and Postfix listening on ${ADDR[${HOSTS[0]}]}..${ADDR[${HOSTS[-1]}]} ports 22 and 25"
}

self_checks() {
    local dir=$1 name=$2 host out
    for host in "${HOSTS[@]}"; do
        if [[ -n ${EXIM[$host]:-} ]]; then
            # The host's own exim4 and exim4.conf, through ssh.
            out=$(in_netns "$dir" "$name" ssh -F "$dir/ssh_config" "$host" exim4 -bP -n primary_hostname 2>>"$LOG") || true
            if [[ $out != "${MAILNAME[$host]}" ]]; then
                check_line FAIL "ssh $host exim4 -bP -n primary_hostname: got '$out', want ${MAILNAME[$host]}"
                show_host_logs "$dir" "$host"
                return 1
            fi
            check_line ok "ssh $host: exim4 -bP -n primary_hostname = $out"
            # shellcheck disable=SC2016 # expanded on the host
            out=$(in_netns "$dir" "$name" ssh -F "$dir/ssh_config" "$host" \
                'exim4 -bV | head -n 1; kill -0 "$(cat /run/exim4/exim.pid)" && echo daemon-running' 2>>"$LOG") || true
            if [[ $out != "Exim version "*daemon-running ]]; then
                check_line FAIL "ssh $host exim4 -bV / kill -0 \$(cat /run/exim4/exim.pid): got '$out'"
                show_host_logs "$dir" "$host"
                return 1
            fi
            check_line ok "ssh $host: ${out%%$'\n'*}; daemon in /run/exim4/exim.pid running"
            continue
        fi
        out=$(in_netns "$dir" "$name" ssh -F "$dir/ssh_config" "$host" postconf -h myhostname 2>>"$LOG") || true
        if [[ $out != "${MAILNAME[$host]}" ]]; then
            check_line FAIL "ssh $host postconf -h myhostname: got '$out', want ${MAILNAME[$host]}"
            show_host_logs "$dir" "$host"
            return 1
        fi
        check_line ok "ssh $host: postconf -h myhostname = $out"
    done

    out=$(in_netns "$dir" "$name" ssh -F "$dir/ssh_config" "$SUDO_USER_NAME@relay" sudo -n id -u 2>>"$LOG") || true
    if [[ $out != 0 ]]; then
        check_line FAIL "ssh $SUDO_USER_NAME@relay sudo -n id -u: got '$out', want 0"
        show_host_logs "$dir" relay
        return 1
    fi
    check_line ok "ssh $SUDO_USER_NAME@relay: sudo -n id -u = 0"
    if [[ -n ${EXIM[relay]:-} ]]; then
        out=$(in_netns "$dir" "$name" ssh -F "$dir/ssh_config" "$SUDO_USER_NAME@relay" sudo -n exim4 -bV 2>>"$LOG" | head -n 1) || true
        if [[ $out != "Exim version "* ]]; then
            check_line FAIL "ssh $SUDO_USER_NAME@relay sudo -n exim4 -bV: got '$out'"
            show_host_logs "$dir" relay
            return 1
        fi
        check_line ok "ssh $SUDO_USER_NAME@relay: sudo -n exim4 -bV: $out"
    fi

    local newdir=$dir/home/mail/first.last/new
    if ! in_netns "$dir" "$name" swaks --server 127.0.0.2 --to first.last@example.net \
        --from test@relay.example.org --header "Subject: mxpin lab self-check" >>"$LOG" 2>&1; then
        check_line FAIL "swaks to first.last@example.net via 127.0.0.2 was not accepted (see $LOG)"
        show_host_logs "$dir" home
        return 1
    fi
    check_line ok "swaks: first.last@example.net accepted by home (127.0.0.2:25)"
    local i f=
    for ((i = 0; i < WAIT_STEPS; i++)); do
        f=$(find "$newdir" -maxdepth 1 -type f 2>/dev/null | head -n 1 || true)
        [[ -n $f ]] && break
        sleep 0.1
    done
    if [[ -z $f ]]; then
        check_line FAIL "no message in $newdir after $((WAIT_STEPS / 10)) s"
        show_host_logs "$dir" home
        return 1
    fi
    # Move the self-check message out so tests start with an empty maildir.
    mv "$f" "$dir/selfcheck-message.eml"
    check_line ok "delivered to $newdir (moved to $dir/selfcheck-message.eml)"
}

setup_host() {
    local dir=$1 host=$2
    mkdir -p "$dir/$host"
    if ((FLEET)); then
        setup_root_home "$dir" "$host"
    fi
    setup_sshd "$dir" "$host"
    if [[ -n ${EXIM[$host]:-} ]]; then
        setup_exim "$dir" "$host"
    else
        setup_postfix "$dir" "$host"
    fi
}

# Fleet hosts get their own /root (bind-mounted in start_host) with Debian's
# pristine dot files, as on a fresh machine: otherwise every SSH command pays
# for whatever the controller's own ~/.bashrc does (bash sources it for
# commands run by sshd), which would distort benchmarks.
setup_root_home() {
    local dir=$1 host=$2 f
    local rh=$dir/$host/root
    mkdir -p "$rh"
    chmod 0700 "$rh"
    for f in bashrc profile; do
        if [[ -f /usr/share/base-files/dot.$f ]]; then
            cp "/usr/share/base-files/dot.$f" "$rh/.$f"
        elif [[ -f /etc/skel/.$f ]]; then
            cp "/etc/skel/.$f" "$rh/.$f"
        fi
    done
}

cmd_up() {
    (($# >= 2)) || usage
    local dir=$1 name=$2 host
    shift 2
    while (($#)); do
        (($# >= 2)) || usage
        case $1 in
        --fleet)
            ((FLEET == 0 && ${#EXIM[@]} == 0)) || die "--fleet goes alone (no second --fleet, no --exim)"
            use_fleet "$2"
            ;;
        --exim)
            ((FLEET == 0)) || die "--exim is for the two-host lab, not with --fleet"
            [[ $2 == home || $2 == relay ]] || die "--exim HOST: HOST is home or relay: $2"
            EXIM[$2]=1
            ;;
        *) usage ;;
        esac
        shift 2
    done
    check_dir_arg "$dir"
    # Postfix clients reach postlogd by the absolute socket path
    # DIR/relay/queue/public/postlog, and a unix socket path has at most 107
    # bytes: longer DIRs fail with "unix-domain name too long".
    ((${#dir} <= 80)) || die "DIR is longer than 80 characters (Postfix socket path limit): $dir"
    [[ $name =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "NAME may contain only A-Za-z0-9_.- : $name"
    [[ $(id -u) == 0 ]] || die "must run as root"
    local cmd
    for cmd in ip unshare setsid ss sshd ssh ssh-keygen postfix postconf swaks flock; do
        command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] ||
            die "missing command $cmd (apt-get install -y openssh-server postfix swaks)"
    done
    if [[ -e $dir ]]; then
        [[ -d $dir ]] || die "$dir exists and is not a directory"
        [[ -z $(ls -A "$dir") ]] || die "$dir is not empty (a previous lab? run down and remove it)"
    fi
    netns_exists "$name" && die "network namespace $name already exists"
    if ((${#EXIM[@]})); then
        check_exim_prereqs "$dir"
    fi

    mkdir -p "$dir"
    # Postfix (as user postfix), virtual delivery (as nobody) and sshd's
    # AuthorizedKeysFile read (as mxpinlab) all need to traverse DIR.
    chmod 0755 "$dir"
    LOG=$dir/lab.log
    : >"$LOG"
    echo "$name" >"$dir/netns"
    if ((FLEET)); then
        echo "$FLEET" >"$dir/fleet"
    fi
    if ((${#EXIM[@]})); then
        printf '%s\n' "${!EXIM[@]}" | sort >"$dir/exim"
    fi

    local t0=$SECONDS
    # On any failure below: explain, and tear down what was started (unless
    # LAB_KEEP_ON_FAILURE=1) so that no process or netns is left behind.
    # Globals: the trap runs after cmd_up's locals are gone.
    UP_DIR=$dir UP_NAME=$name UP_STARTED=0
    # shellcheck disable=SC2317 # invoked by the trap
    on_exit() {
        local rc=$?
        if ((rc != 0)); then
            echo "lab.sh up $UP_DIR $UP_NAME: FAILED (exit $rc); log: $LOG" >&2
            if ((UP_STARTED)) && [[ ${LAB_KEEP_ON_FAILURE:-0} != 1 ]]; then
                cmd_down "$UP_DIR" >&2 || true
            fi
        fi
    }
    trap on_exit EXIT

    global_setup

    local u
    local -a users=(postfix nobody "$SUDO_USER_NAME")
    if ((${#EXIM[@]})); then
        users+=("$EXIM_USER")
    fi
    for u in "${users[@]}"; do
        runuser -u "$u" -- test -x "$dir" ||
            die "user $u cannot traverse $dir: every parent directory needs o+x"
    done

    for_each_host setup_host "$dir"
    write_client_files "$dir"

    # Only a netns we created ourselves may be torn down on failure.
    quiet ip netns add "$name" || die "could not create network namespace $name"
    UP_STARTED=1
    quiet ip -n "$name" link set lo up
    for host in "${HOSTS[@]}"; do
        # inet_interfaces needs the address really on an interface.
        quiet ip -n "$name" addr add "${ADDR[$host]}/8" dev lo
    done
    for host in "${HOSTS[@]}"; do
        start_host "$dir" "$name" "$host"
    done
    for host in "${HOSTS[@]}"; do
        wait_host "$dir" "$name" "$host"
    done
    if ((FLEET)); then
        fleet_self_checks "$dir" "$name"
    else
        self_checks "$dir" "$name"
    fi
    echo "lab up: $dir (netns $name) in $((SECONDS - t0)) s"
}

# --exim: what an Exim host needs (lab/install-deps.sh provides it).
check_exim_prereqs() {
    local dir=$1 p
    [[ $EXIM_ROOT =~ ^/[A-Za-z0-9._/-]+$ ]] || die "MXPIN_LAB_EXIM_ROOT may contain only A-Za-z0-9._/- : $EXIM_ROOT"
    [[ -x $EXIM_ROOT/usr/sbin/exim4 ]] ||
        die "--exim: no unpacked exim4 in $EXIM_ROOT (run lab/install-deps.sh as root)"
    getent passwd "$EXIM_USER" >/dev/null ||
        die "--exim: no user $EXIM_USER (run lab/install-deps.sh as root)"
    # An Exim host sees /etc, /var and /run through copy-on-write overlays:
    # a DIR below them would not be shared with the controller.
    for p in /etc /var /run /usr/sbin; do
        [[ $dir != "$p"/* ]] || die "--exim: DIR must not be below $p (the Exim host overlays it): $dir"
    done
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
    grep -qw overlay /proc/filesystems || die "--exim needs overlayfs (not in /proc/filesystems)"
}

# ---------------------------------------------------------------- down
cmd_down() {
    (($# == 1)) || usage
    local dir=$1 name host pid i
    check_dir_arg "$dir"
    if ! name=$(lab_name "$dir"); then
        echo "lab.sh down: no lab recorded in $dir (nothing to do)"
        return 0
    fi
    load_topology "$dir"
    if [[ -d $dir ]] && [[ -w $dir ]] && [[ $LOG == /dev/null ]]; then
        LOG=$dir/lab.log
    fi
    # Processes outside the netns are not ours; inside it everything is:
    # sshd, Postfix, the namespace keepers and any session or controller
    # command started with "lab.sh exec".
    list_pids() {
        local p
        if netns_exists "$name"; then
            ip netns pids "$name" 2>/dev/null || true
        fi
        # Keepers recorded in DIR (in case the netns was deleted already).
        for host in "${HOSTS[@]}"; do
            p=$(cat "$dir/$host/ns.pid" 2>/dev/null || true)
            if [[ -n $p ]] && kill -0 "$p" 2>/dev/null &&
                [[ $(cat "/proc/$p/comm" 2>/dev/null) == sleep ]]; then
                echo "$p"
            fi
        done
    }
    local -a pids
    local what=stopped
    mapfile -t pids < <(list_pids | sort -un)
    if ((${#pids[@]} == 0)) && ! netns_exists "$name"; then
        what="already down"
    fi
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # Postfix master stops its children on SIGTERM; give it a moment.
        for ((i = 0; i < WAIT_STEPS; i++)); do
            mapfile -t pids < <(list_pids | sort -un)
            ((${#pids[@]} == 0)) && break
            sleep 0.1
        done
        if ((${#pids[@]})); then
            kill -KILL "${pids[@]}" 2>/dev/null || true
            for ((i = 0; i < 20; i++)); do
                mapfile -t pids < <(list_pids | sort -un)
                ((${#pids[@]} == 0)) && break
                sleep 0.1
            done
        fi
    fi
    if netns_exists "$name"; then
        ip netns del "$name" >>"$LOG" 2>&1 || true
    fi
    mapfile -t pids < <(list_pids | sort -un)
    if ((${#pids[@]})) || netns_exists "$name"; then
        die "down $dir: could not stop everything (pids: ${pids[*]:-none}; netns $name exists: $(netns_exists "$name" && echo yes || echo no))"
    fi
    echo "lab down: $dir (netns $name $what)"
}

# ---------------------------------------------------------------- exec
cmd_exec() {
    (($# >= 2)) || usage
    local dir=$1 name
    shift
    check_dir_arg "$dir"
    name=$(lab_name "$dir") || die "no lab recorded in $dir"
    netns_exists "$name" || die "netns $name of $dir does not exist (lab down?)"
    in_netns "$dir" "$name" "$@"
}

main() {
    (($# >= 1)) || usage
    local sub=$1
    shift
    case $sub in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    exec) cmd_exec "$@" ;;
    *) usage ;;
    esac
}

main "$@"

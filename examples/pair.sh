#!/usr/bin/env bash
# The pair, both ways: home sends all its outgoing mail through vps, its
# backup MX, on vps's relay port 2525. vps pins home's client certificate,
# home pins vps's key, and both rotate under mail without deferring any of
# it. A stranger with a certificate nobody pinned is told to try later
# (450), so its mail waits in its own queue instead of bouncing. Runs the
# four-host pair lab (lab/lab.sh up ... --pair); root, Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_ARGS=--pair
# shellcheck source=examples/lab-env.sh
. examples/lab-env.sh
inv=$dir/mxpin.toml
sed -i '/^\[hosts.home\]$/a relayhost = "vps"' "$inv"
echo "== the inventory: home relays through vps"
grep -A4 '^\[hosts' "$inv" | sed 's/^/  /'

echo "== mxpin plan"
mxpin plan -i "$inv" | grep -E '^[a-z]|note|^ +[-+~] |relayhost|2525|smtpd_relay|relay_clientcerts' || true
echo "== mxpin apply --yes"
mxpin apply --yes -i "$inv" | grep -v '^ ' || true

messages() { n=$(find "$dir/world/mail/bob/new" -type f | wc -l); [ "$n" -eq 1 ] && echo "1 message" || echo "$n messages"; }
send() { lab/lab.sh exec "$dir" swaks --silent 2 --server "$1" --to "$2" --from "$3" --body "$4"; }
echo "== home -> bob@world.test, through vps"
send 127.0.0.2 bob@world.test first.last@example.net "hello world, from home"
echo "== stranger -> bob@world.test, through vps (not pinned)"
send 127.0.0.5 bob@world.test alice@stranger.example.com "hello from a stranger"
for _ in $(seq 1 100); do
    ls "$dir/world/mail/bob/new/"* >/dev/null 2>&1 && break
    sleep 0.2
done
sleep 2
echo "== home's log:"
grep -E 'Verified TLS.*2525|relay=vps' "$dir/home/maillog" | sed 's/^/  /'
echo "== vps's log:"
grep -E 'info: RCPT|reject: RCPT|relay=world' "$dir/vps/maillog" | sed 's/^/  /'
echo "== stranger's log (deferred, never bounced):"
grep -E 'status=' "$dir/stranger/maillog" | sed 's/^/  /'
echo "== world's mailbox: $(messages)"

echo "== mxpin rotate --yes (both hosts)"
mxpin rotate --yes -i "$inv" | grep -E 'serves|pins' || true
send 127.0.0.2 bob@world.test first.last@example.net "after the rotation"
for _ in $(seq 1 100); do
    [ "$(find "$dir/world/mail/bob/new" -type f | wc -l)" -ge 2 ] && break
    sleep 0.2
done
echo "== world's mailbox: $(messages);" \
    "deferred on home: $(grep -c 'status=deferred' "$dir/home/maillog" || true)"
grep 'Verified TLS.*2525' "$dir/home/maillog" | tail -n 1 | sed 's/^/  /'

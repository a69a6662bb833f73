#!/usr/bin/env bash
# Bootstrap, end to end, on a fresh Debian machine as root: build mxpin,
# bring up a two-host lab (home + backup relay, real sshd and Postfix on
# loopback addresses in a private network namespace), plan, apply, send a
# message to the backup and show that it reached home over a verified,
# pinned TLS connection.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/lab-env.sh
. examples/lab-env.sh

echo "== mxpin plan (dry run: shows every change, touches nothing)"
rc=0; mxpin plan -i "$dir/mxpin.toml" || rc=$?
[ "$rc" -eq 2 ] || { echo "expected exit 2 (changes pending), got $rc"; exit 1; }

echo "== mxpin apply --yes"
mxpin apply --yes -i "$dir/mxpin.toml"

echo "== mxpin plan again (exit 0: nothing left to do)"
mxpin plan -i "$dir/mxpin.toml"

echo "== a message to the backup MX for first.last@example.net"
lab/lab.sh exec "$dir" swaks --silent 1 --server 127.0.0.3 --to first.last@example.net \
    --from demo@elsewhere.example --body "hello through a pinned relay"
for _ in $(seq 1 100); do
    ls "$dir/home/mail/first.last/new/"* >/dev/null 2>&1 && break
    sleep 0.2
done
echo "== relay's log:"
grep -E 'Verified TLS|status=' "$dir/relay/maillog" | sed 's/^/  /'
echo "== home's mailbox:"
grep -h -A1 '^Subject:' "$dir"/home/mail/first.last/new/* | sed 's/^/  /'

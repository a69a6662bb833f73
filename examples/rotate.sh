#!/usr/bin/env bash
# Rotation: bootstrap a two-host lab, keep mail flowing to the backup, and
# rotate every host's key in the middle of it. Shows the dry run (diff and
# order of steps), the old and new public keys, what the peer now pins, and
# that no message was deferred. Root, Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/lab-env.sh
. examples/lab-env.sh
mxpin apply --yes -i "$dir/mxpin.toml" >/dev/null
echo "== mxpin rotate --dry-run (changes nothing)"
{ mxpin rotate --dry-run -i "$dir/mxpin.toml" || [ $? -eq 2 ]; } | grep -v '^    '
send() { lab/lab.sh exec "$dir" swaks --silent 2 --server 127.0.0.3 --to first.last@example.net \
    --from demo@elsewhere.example --body "message $1"; }
for i in $(seq 1 10); do send "$i"; sleep 0.3; done &
sender=$!
sleep 1
echo "== mxpin rotate --yes (while 10 messages arrive at the backup)"
mxpin rotate --yes -i "$dir/mxpin.toml" | grep -v '^    '
wait "$sender"
for _ in $(seq 1 150); do
    [ "$(find "$dir/home/mail/first.last/new" -type f | wc -l)" -ge 10 ] && break
    sleep 0.2
done
echo "== delivered: $(find "$dir/home/mail/first.last/new" -type f | wc -l) of 10;" \
    "deferred: $(grep -c 'status=deferred' "$dir/relay/maillog" || true)"
grep 'Verified TLS' "$dir/relay/maillog" | tail -n 1 | sed 's/^/  /'

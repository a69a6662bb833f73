#!/usr/bin/env bash
# Dry-run diff: after a bootstrap, add a recipient to the inventory and let
# `mxpin plan` show exactly what would change (one line of one table), prove
# that the plan left every host byte-identical, then apply it. Root, Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=examples/lab-env.sh
. examples/lab-env.sh
mxpin apply --yes -i "$dir/mxpin.toml" >/dev/null
echo "== bootstrapped; now adding postmaster@example.net to the inventory"
sed -i 's/^recipients = \[\(.*\)\]/recipients = [\1, "postmaster@example.net"]/' "$dir/mxpin.toml"
snapshot() { (cd "$dir" && find home/etc relay/etc -type f -exec sha256sum {} + | sort); }
before=$(snapshot)
echo "== mxpin plan"
rc=0; mxpin plan -i "$dir/mxpin.toml" || rc=$?
echo "(exit $rc: 2 means changes are pending)"
[ "$before" = "$(snapshot)" ] && echo "== every host is byte-identical after the dry run"
echo "== mxpin plan --json (the same, for scripts)"
mxpin plan --json -i "$dir/mxpin.toml" | head -n 20 || true
echo "== mxpin apply --yes"
mxpin apply --yes -i "$dir/mxpin.toml"
mxpin plan -i "$dir/mxpin.toml"

# shellcheck shell=bash
# Sourced by the examples: installs what the lab needs, builds mxpin, starts
# a lab in a fresh directory (stopped again on exit) and defines `mxpin`,
# which runs the built binary inside the lab's network namespace.
# Sets: dir (the lab directory).
lab/install-deps.sh
cargo build --release --locked -q
dir=$(mktemp -d /tmp/mxpin-demo.XXXXXX)
trap 'lab/lab.sh down "$dir" >/dev/null' EXIT
# shellcheck disable=SC2086 # LAB_ARGS: extra words for lab.sh up (--pair)
lab/lab.sh up "$dir" "mxdemo$$" ${LAB_ARGS:-} >/dev/null
mxpin() { lab/lab.sh exec "$dir" "$PWD/target/release/mxpin" "$@"; }

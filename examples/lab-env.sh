# shellcheck shell=bash
# Sourced by the examples: installs what the lab needs, builds mxpin, starts
# a lab in a fresh directory and defines `mxpin`, which runs the built binary
# inside the lab's network namespace. On exit, however the example ends, the
# example's background jobs are stopped, the lab is brought down and its
# directory removed. Sets: dir (the lab directory).
lab/install-deps.sh
cargo build --release --locked -q
dir=$(mktemp -d /tmp/mxpin-demo.XXXXXX)
cleanup() {
    local jobs
    jobs=$(jobs -p)
    # shellcheck disable=SC2086 # one word per job
    [ -z "$jobs" ] || kill $jobs 2>/dev/null || true
    lab/lab.sh down "$dir" >/dev/null && rm -rf -- "$dir"
}
trap cleanup EXIT
# shellcheck disable=SC2086 # LAB_ARGS: extra words for lab.sh up (--pair)
lab/lab.sh up "$dir" "mxdemo$$" ${LAB_ARGS:-} >/dev/null
mxpin() { lab/lab.sh exec "$dir" "$PWD/target/release/mxpin" "$@"; }

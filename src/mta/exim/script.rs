//! The Exim apply script: one remote command per host. Same shape as
//! Postfix's (stage, swap with hard-linked copies, validate, reload, roll
//! back on any failure), with Exim's own checks:
//! - before anything is swapped in, `exim -bV -C` on a copy of the new
//!   configuration whose `.include` lines point at the staged fragments;
//! - after the swap, `exim -bV` on the live configuration and `exim -bt` of
//!   one address per backed-up domain, which must be routed by mxpin's
//!   router and transport to the primary (`-bV` misses a router naming a
//!   missing transport, `-bt` does not);
//! - reload is SIGHUP to the daemon (it re-executes itself, same pid).

use std::fmt::Write as _;

use zeroize::Zeroizing;

use super::{conf, ApplySteps};
use crate::mta::{ApplyScript, Steps, SCRIPT_PRELUDE};
use crate::plan::{Action, HostPlan};
use crate::shell::quote;

fn staged(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').expect("absolute path");
    format!("{dir}/.{name}.mxpin-new")
}

/// Builds the script for a plan. Every path and value is quoted.
pub fn apply_script(plan: &HostPlan) -> ApplyScript {
    let Steps::Exim(steps) = &plan.steps else {
        unreachable!("mta::apply_script dispatches on the plan's MTA")
    };
    let steps: &ApplySteps = steps;
    let config = steps.config_file.as_str();
    let check = staged(&format!("{config}-check"));
    let mut s = String::with_capacity(16 * 1024);
    let _ = writeln!(s, "mxpin_apply() {{");
    let _ = writeln!(s, "C={}", quote(&steps.config_dir));
    let _ = writeln!(s, "X={}", quote(&steps.bin));
    let _ = writeln!(
        s,
        "reload_exim() {{\n  pid=''\n  if [ -r {p} ]; then read -r pid < {p} || :; fi\n  \
         if [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; then kill -HUP \"$pid\"; fi\n}}\n\
         reload_after_rollback() {{ reload_exim; }}",
        p = quote(&steps.pid_file)
    );
    s.push_str(SCRIPT_PRELUDE);

    let writes: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| !matches!(c.action, Action::Delete | Action::Chmod))
        .collect();
    let _ = writeln!(s, "cleanup_staged() {{");
    for c in &writes {
        let _ = writeln!(s, "  rm -f {}", quote(&staged(&c.path)));
    }
    let _ = writeln!(s, "  rm -f {}\n  :\n}}", quote(&check));

    let _ = writeln!(
        s,
        "step='check user'\n[ \"$(id -u)\" = 0 ] || fail \"not running as root\""
    );
    let _ = writeln!(
        s,
        "step={}\ncur=$(cat {c}; echo x) || fail \"cannot read {config}\"\n\
         [ \"$cur\" = {} ] || fail \"{config} changed since mxpin read it; plan again\"",
        quote(&format!("check {config}")),
        quote(&format!("{}x", steps.config_before)),
        c = quote(config),
    );
    let _ = writeln!(
        s,
        "step='prepare'\nmkdir -p \"$C/{dir}\" && chown 0:0 \"$C/{dir}\" && chmod 755 \"$C/{dir}\" || fail \"cannot create $C/{dir}\"",
        dir = super::OWNED_DIR
    );
    for c in &plan.changes {
        let _ = writeln!(s, "rm -f {}", quote(&format!("{}.mxpin-old", c.path)));
    }
    for c in plan.changes.iter().filter(|c| c.action == Action::Chmod) {
        let _ = writeln!(
            s,
            "step={}\nchown 0:{} {p} && chmod {:o} {p} || fail \"cannot set mode\"",
            quote(&format!("set mode of {}", c.path)),
            c.group,
            c.mode,
            p = quote(&c.path)
        );
    }

    // Stage every new file beside its target.
    for c in &writes {
        let new = c.new.as_ref().expect("writes have content");
        let st = quote(&staged(&c.path));
        let _ = writeln!(s, "step={}", quote(&format!("stage {}", c.path)));
        if c.path == config {
            // cp -p keeps the admin's mode and owner.
            let _ = writeln!(
                s,
                "cp -p {} {st} || fail \"cannot copy {config}\"",
                quote(config)
            );
        }
        let _ = writeln!(
            s,
            "printf '%s' {} > {st} || fail \"cannot write {}\"",
            quote(new.raw()),
            c.path
        );
        if c.path != config {
            let _ = writeln!(
                s,
                "chown 0:{} {st} && chmod {:o} {st} || fail \"cannot set mode of {}\"",
                c.group, c.mode, c.path
            );
        }
    }

    // The new configuration, with its includes pointing at the staged
    // fragments, must parse before anything is swapped in.
    let new_config = writes
        .iter()
        .find(|c| c.path == config)
        .and_then(|c| c.new.as_ref())
        .map_or(steps.config_before.clone(), |n| n.raw().to_string());
    let mapping: Vec<(String, String)> = writes
        .iter()
        .filter(|c| c.path != config)
        .map(|c| (c.path.clone(), staged(&c.path)))
        .collect();
    let _ = writeln!(
        s,
        "step='exim -bV of the new configuration'\nprintf '%s' {} > {ck} || fail \"cannot write {check}\"\n\
         out=$(\"$X\" -bV -C {ck} 2>&1) || fail \"$out\"\nrm -f {ck}",
        quote(&conf::with_staged_includes(&new_config, &mapping)),
        ck = quote(&check),
    );

    // Swap: fragments, keys and trust files first, the configuration last,
    // so it never includes a file that is not in place.
    let _ = writeln!(s, "step=swap");
    for c in writes.iter().filter(|c| c.path != config) {
        let _ = writeln!(s, "swap {} {}", quote(&staged(&c.path)), quote(&c.path));
    }
    if writes.iter().any(|c| c.path == config) {
        let _ = writeln!(s, "swap {} {}", quote(&staged(config)), quote(config));
    }
    for c in plan.changes.iter().filter(|c| c.action == Action::Delete) {
        let _ = writeln!(s, "remove {}", quote(&c.path));
    }

    let _ = writeln!(
        s,
        "step='exim -bV'\nout=$(\"$X\" -bV 2>&1) || fail \"$out\""
    );
    for t in &steps.route_tests {
        let port = if t.port == 25 {
            String::new()
        } else {
            format!("*\" port={}\"*", t.port)
        };
        let _ = writeln!(
            s,
            "step={}\nout=$(\"$X\" -bt {} 2>&1)\n\
             case \"$out\" in *'router = mxpin_backup, transport = mxpin_smtp'*) ;; *) fail \"$out\" ;; esac\n\
             case \"$out\" in *{}*{port}) ;; *) fail \"$out\" ;; esac",
            quote(&format!("exim -bt {}", t.address)),
            quote(&t.address),
            quote(&format!("host {} [", t.mx)),
        );
    }
    s.push_str(
        r#"step=reload
reload_exim || fail "cannot signal the Exim daemon"
trap '' HUP INT TERM
for t in $swapped; do rm -f "$t.mxpin-old"; done
printf '@@mxpin-ok\n'
}
mxpin_apply
"#,
    );
    ApplyScript::new(Zeroizing::new(s))
}

//! `mxpin pin NAME`: trust an external server on first use, like ssh,
//! and write its fingerprint into the inventory.

use std::io::Write as _;
use std::path::Path;

use crate::external::PinDecision;
use crate::inventory;
use crate::tls::{Fingerprint, PinKind};

/// Writes `pins` as `[external.NAME] pins` of the inventory `file`, in
/// place: only if the file, so edited, is still a valid inventory.
pub fn write_pins(file: &Path, name: &str, pins: &[Fingerprint]) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("{}: cannot read: {err}", file.display()))?;
    let new = inventory::edit::set_pins(&text, name, pins)
        .map_err(|err| format!("{}: {err}", file.display()))?;
    // What is written must still be a valid inventory with these pins.
    let check = inventory::parse(file, &new).map_err(|err| err.to_string())?;
    debug_assert!(check.externals.iter().any(|x| x.name.as_str() == name));
    inventory::edit::replace_file(file, &new)
        .map_err(|err| format!("{}: cannot write: {err}", file.display()))
}

/// Probes the external `name` of the inventory `file`, shows what it
/// presents, and pins it as [`crate::external::pin_decision`] decides.
pub async fn run_pin(
    file: &std::path::Path,
    name: &str,
    add: bool,
    replace: bool,
    timeout: u64,
    json: bool,
) -> Result<u8, String> {
    let inv = inventory::load(file).map_err(|e| e.to_string())?;
    let Some(e) = inv.externals.iter().find(|e| e.name.as_str() == name) else {
        return Err(format!(
            "{}: no [external.{name}] in this inventory",
            file.display()
        ));
    };
    let chain = crate::external::probe(e, std::time::Duration::from_secs(timeout))
        .await
        .map_err(|err| format!("external {name} ({}): {err}", e.address()))?;
    let leaf = &chain[0];
    let s = &inv.settings;
    let served = leaf.fingerprint(s.digest, s.pin);
    let d = leaf.details();
    let kind = match s.pin {
        PinKind::PublicKey => "public-key",
        PinKind::Certificate => "certificate",
    };
    let mut out = anstream::stdout();
    // --json: one document once the outcome is known; text as it goes.
    let report =
        |out: &mut anstream::AutoStream<std::io::Stdout>, pinned: &str, pins: &[String]| {
            if json {
                let doc = serde_json::json!({
                    "external": name, "address": e.address().to_string(),
                    "subject": d.subject, "key": d.key, "issuer": d.issuer,
                    "names": d.dns_names, "not_after": crate::tls::format_time(d.not_after),
                    "digest": s.digest.to_string(), "pin": kind, "fingerprint": served,
                    "status": pinned, "pins": pins,
                });
                let _ = writeln!(out, "{doc:#}");
            }
        };
    if !json {
        let _ = writeln!(
            out,
            "{name} ({}) presents {}, {}, issued by {}, names {}, valid until {}",
            e.address(),
            d.subject,
            d.key,
            d.issuer,
            if d.dns_names.is_empty() {
                "none".to_string()
            } else {
                d.dns_names.join(", ")
            },
            crate::tls::format_time(d.not_after)
        );
        let _ = writeln!(out, "{} {kind} fingerprint: {served}", s.digest);
    }
    let pins = match crate::external::pin_decision(e, &served, add, replace)? {
        PinDecision::AlreadyPinned => {
            if json {
                let pins: Vec<String> = e.pins.iter().map(|p| p.to_string()).collect();
                report(&mut out, "already_pinned", &pins);
            } else {
                let _ = writeln!(out, "already pinned");
            }
            return Ok(0);
        }
        PinDecision::Write(pins) => pins,
    };
    write_pins(file, name, &pins)?;
    if json {
        let pins: Vec<String> = pins.iter().map(|p| p.to_string()).collect();
        report(&mut out, "pinned", &pins);
    } else {
        let _ = writeln!(
            out,
            "pinned in {}: [external.{name}] pins ({})",
            file.display(),
            crate::words::count(pins.len(), "fingerprint", "fingerprints")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Digest;

    const INVENTORY: &str = "[hosts.home]\nssh = \"h\"\nmx = \"home.example.net\"\nrelayhost = \"isp\"\n\n\
                             [external.isp]\naddress = \"mail.isp.example:465\"\ntls = \"implicit\"\n";

    #[test]
    fn pins_written_are_read_back_and_a_broken_edit_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mxpin.toml");
        std::fs::write(&file, INVENTORY).unwrap();
        let pin = Fingerprint::of(Digest::Sha256, b"isp");
        write_pins(&file, "isp", std::slice::from_ref(&pin)).unwrap();
        let inv = inventory::load(&file).unwrap();
        assert_eq!(inv.externals[0].pins, vec![pin.clone()]);
        // An external the file does not have: refused, the file unchanged.
        let before = std::fs::read_to_string(&file).unwrap();
        let e = write_pins(&file, "nope", &[pin]).unwrap_err();
        assert!(e.starts_with(&format!("{}: ", file.display())), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    }
}

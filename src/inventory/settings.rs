//! The checks of `[settings]`: digest, pin kind, key type, validity.

use std::path::Path;

use super::raw::RawSettings;
use super::{Context, InventoryError, Settings};
use crate::tls::{Digest, KeyAlgorithm, PinKind};

impl Context<'_> {
    pub(super) fn check_settings(&self, s: &RawSettings) -> Result<Settings, InventoryError> {
        let ssh_config = match &s.ssh_config {
            None => None,
            Some(p) => {
                let base = self.file.parent().unwrap_or(Path::new("."));
                let path = base.join(p.get_ref());
                if !path.is_file() {
                    return Err(self.at(p, format!("ssh_config {}: no such file", path.display())));
                }
                Some(path)
            }
        };
        let valid_days = match &s.valid_days {
            None => 825,
            Some(v) => u32::try_from(*v.get_ref())
                .ok()
                .filter(|d| (1..=36_500).contains(d))
                .ok_or_else(|| self.at(v, "valid_days must be 1 to 36500".to_string()))?,
        };
        let renew_days = match &s.renew_days {
            None => 30.min(valid_days / 2),
            Some(v) => u32::try_from(*v.get_ref())
                .ok()
                .filter(|d| *d < valid_days)
                .ok_or_else(|| {
                    self.at(
                        v,
                        format!(
                            "renew_days must be 0 to {} (less than valid_days)",
                            valid_days - 1
                        ),
                    )
                })?,
        };
        Ok(Settings {
            ssh_config,
            renew_days,
            digest: self.choice(&s.digest, "digest", Digest::NAMES, Digest::Sha256)?,
            pin: self.choice(&s.pin, "pin", PinKind::NAMES, PinKind::PublicKey)?,
            key: self.choice(
                &s.key,
                "key type",
                KeyAlgorithm::NAMES,
                KeyAlgorithm::EcdsaP256,
            )?,
            valid_days,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::testing::{err, parse_str, GOOD};

    #[test]
    fn unknown_key_type_and_digest() {
        let e = err(&GOOD.replace("digest = \"sha256\"", "key = \"dsa\""));
        assert_eq!(
            e,
            "mxpin.toml:3:7: unknown key type \"dsa\": expected ecdsa-p256, rsa-2048, rsa-3072 or rsa-4096"
        );
        let e = err(&GOOD.replace("digest = \"sha256\"", "digest = \"crc32\""));
        assert!(e.contains("unknown digest"), "{e}");
    }

    #[test]
    fn renew_days_must_be_shorter_than_validity() {
        let e = err(&GOOD.replace("digest = \"sha256\"", "valid_days = 30\nrenew_days = 30"));
        assert_eq!(
            e,
            "mxpin.toml:4:14: renew_days must be 0 to 29 (less than valid_days)"
        );
        let inv = parse_str(&GOOD.replace("digest = \"sha256\"", "valid_days = 10")).unwrap();
        assert_eq!(
            inv.settings.renew_days, 5,
            "default never reaches valid_days"
        );
    }

    #[test]
    fn missing_ssh_config_file() {
        let e = err(&GOOD.replace("digest = \"sha256\"", "ssh_config = \"nope-ssh-config\""));
        assert!(e.contains("nope-ssh-config: no such file"), "{e}");
    }
}

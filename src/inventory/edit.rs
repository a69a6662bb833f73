//! Edits of the inventory file itself (`mxpin pin`), made with toml_edit so
//! that the admin's comments, order and spacing survive byte for byte
//! outside the one value that changes.

use std::io::Write as _;
use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Value};

use crate::tls::Fingerprint;

/// Sets `pins` of `[external.NAME]` in an inventory text. The comment after
/// the old value (`pins = []  # filled by mxpin pin`) is kept.
pub fn set_pins(text: &str, name: &str, pins: &[Fingerprint]) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().trim().replace('\n', " "))?;
    let table = doc
        .get_mut("external")
        .and_then(Item::as_table_like_mut)
        .and_then(|t| t.get_mut(name))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("no [external.{name}] table"))?;
    let mut array: Array = pins.iter().map(|p| p.as_str()).collect();
    if pins.len() > 1 {
        // One pin per line reads better than a line of 200 characters.
        for v in array.iter_mut() {
            v.decor_mut().set_prefix("\n    ");
        }
        array.set_trailing("\n");
        array.set_trailing_comma(true);
    }
    match table.get_mut("pins") {
        Some(item) => {
            let old = item.as_value().map(|v| v.decor().clone());
            let mut value = Value::Array(array);
            if let Some(decor) = old {
                *value.decor_mut() = decor;
            }
            *item = Item::Value(value);
        }
        None => {
            table.insert("pins", Item::Value(Value::Array(array)));
        }
    }
    Ok(doc.to_string())
}

/// Replaces `file` with `text` atomically (a temporary file in the same
/// directory, renamed over it), keeping the file's permissions.
pub fn replace_file(file: &Path, text: &str) -> std::io::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let perms = std::fs::metadata(file)?.permissions();
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    std::fs::set_permissions(tmp.path(), perms)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Digest;

    const TEXT: &str = r#"# My mail hosts.
[hosts.home]   # the box under the stairs
ssh = "home"
mx = "home.example.net"

# The ISP's smarthost, pinned on first use.
[external.isp]
address = "mail.isp.net:465"   # or :587 / :25
tls = "implicit"               # implicit | starttls
pins = []                      # filled by `mxpin pin isp`

[external.other]
address = "mail.other.net:25"
tls = "starttls"
"#;

    fn fp(byte: &str) -> Fingerprint {
        Fingerprint::parse(&byte.repeat(32), Digest::Sha256).unwrap()
    }

    #[test]
    fn pins_are_written_and_everything_else_kept() {
        let out = set_pins(TEXT, "isp", &[fp("AB")]).unwrap();
        let want = TEXT.replace(
            "pins = []                      # filled",
            &format!("pins = [\"{}\"]                      # filled", fp("AB")),
        );
        assert_eq!(out, want);
        // The result is still a valid inventory value for the parser.
        let back: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(
            back["external"]["isp"]["pins"][0].as_str(),
            Some(fp("AB").as_str())
        );
    }

    #[test]
    fn several_pins_one_per_line_and_missing_key_added() {
        let out = set_pins(TEXT, "other", &[fp("01"), fp("02")]).unwrap();
        assert!(out.starts_with(&TEXT[..TEXT.find("[external.other]").unwrap()]));
        let back: toml::Table = toml::from_str(&out).unwrap();
        let pins = back["external"]["other"]["pins"].as_array().unwrap();
        assert_eq!(pins.len(), 2);
        assert!(out.contains(&format!("\n    \"{}\",\n", fp("02"))), "{out}");
        // Replacing again keeps the comment of an existing key.
        let again = set_pins(&out, "isp", &[fp("AB"), fp("CD")]).unwrap();
        assert!(again.contains("# filled by `mxpin pin isp`"), "{again}");
        assert!(again.contains("# My mail hosts.\n[hosts.home]   # the box under the stairs\n"));
    }

    #[test]
    fn unknown_external_is_an_error() {
        assert_eq!(
            set_pins(TEXT, "nope", &[fp("AB")]).unwrap_err(),
            "no [external.nope] table"
        );
    }

    #[test]
    fn replace_keeps_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("mxpin.toml");
        std::fs::write(&f, "a = 1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&f, "a = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a = 2\n");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

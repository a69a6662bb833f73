//! Quoting for POSIX sh. Every value mxpin puts into a remote script goes
//! through [`quote`], even values the inventory already restricted.

/// `s` as one single-quoted sh word: nothing inside is expanded.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_survive_a_real_shell() {
        for s in [
            "plain",
            "",
            "it's",
            "$(id) `id` $HOME \\ \"x\"",
            "a\nb\n\n",
            "'''",
            "-n",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s' {}", quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}

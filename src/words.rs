//! Words for people: counts with the right singular or plural.

/// `n` followed by `one` or `many`: "1 change", "2 changes", "0 hosts".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn singular_only_for_one() {
        assert_eq!(count(0, "change", "changes"), "0 changes");
        assert_eq!(count(1, "change", "changes"), "1 change");
        assert_eq!(count(2, "host", "hosts"), "2 hosts");
        assert_eq!(count(1, "pinned route", "pinned routes"), "1 pinned route");
    }
}

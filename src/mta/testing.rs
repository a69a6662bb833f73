//! Test support shared by the MTA modules' tests.

use crate::desired::{StoredKeys, StoredPair};
use crate::tls::{self, KeyAlgorithm};

/// Fresh key slots for `mx` (ECDSA, 825 days from `now`), as they would
/// be found on a host.
pub fn new_keys(mx: &str, now: time::OffsetDateTime) -> StoredKeys {
    let pair = || {
        let id = tls::generate(KeyAlgorithm::EcdsaP256, mx, 825, now).unwrap();
        StoredPair {
            key: Some(id.key),
            cert: Some(id.cert.pem().to_string()),
        }
    };
    StoredKeys {
        current: pair(),
        next: pair(),
    }
}

//! New keys: where a plan gets the keys it stages. A dry run needs no real
//! key: it plans with cheap placeholders and shows
//! [`KNOWN_AFTER_APPLY`] wherever one of their fingerprints (or
//! certificates) would appear, as terraform shows values known only after
//! apply. A plan that will be applied gets real keys, generated in parallel
//! on blocking threads, and only as many as the plan uses.
//!
//! Planning is deterministic given the facts: the same facts ask for the
//! same number of keys per host, in the same order, so a plan with
//! placeholders counts exactly the keys a real plan needs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::engine::{self, FleetPlan, HostState, Rotation};
use crate::external::ExternalState;
use crate::inventory::{Host, HostName, Inventory, Settings};
use crate::plan::{Content, HostOutcome};
use crate::templates::Templates;
use crate::tls::{self, Certificate, Digest, Identity, KeyAlgorithm, PinKind, TlsError};

/// What a dry run shows in place of a fingerprint of a key that apply
/// generates.
pub const KNOWN_AFTER_APPLY: &str = "(new key: known after apply)";

/// What a dry run shows in place of a certificate for a key that apply
/// generates.
pub const CERTIFICATE_AFTER_APPLY: &str = "(new certificate: known after apply)";

/// A source of new keys for a plan.
pub trait NewKeys: Sync {
    /// A new key and certificate for `host`, as [`tls::generate`] makes
    /// them from the inventory's settings.
    fn new_key(&self, s: &Settings, host: &Host, now: OffsetDateTime)
        -> Result<Identity, TlsError>;
}

/// Generates each key when asked, on the calling thread.
pub struct Generate;

impl NewKeys for Generate {
    fn new_key(
        &self,
        s: &Settings,
        host: &Host,
        now: OffsetDateTime,
    ) -> Result<Identity, TlsError> {
        tls::generate(s.key, host.mx.as_str(), s.valid_days, now)
    }
}

/// Placeholders: an ECDSA P-256 key (well under a millisecond, whatever the
/// inventory's key type), with the certificate a real key would get. Every
/// one handed out is recorded, per host, so that its fingerprints can be
/// masked and the real keys counted. Never applied.
#[derive(Default)]
pub struct Placeholders {
    issued: Mutex<Vec<(HostName, Certificate)>>,
}

impl Placeholders {
    /// The placeholders handed out, in order.
    pub fn issued(self) -> Vec<(HostName, Certificate)> {
        self.issued.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl NewKeys for Placeholders {
    fn new_key(
        &self,
        s: &Settings,
        host: &Host,
        now: OffsetDateTime,
    ) -> Result<Identity, TlsError> {
        let id = tls::generate(KeyAlgorithm::EcdsaP256, host.mx.as_str(), s.valid_days, now)?;
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((host.name.clone(), id.cert.clone()));
        Ok(id)
    }
}

/// Keys generated beforehand, handed out per host in the order they were
/// made. A host asking for more than were made (which a deterministic plan
/// never does) gets one generated on the spot.
pub struct Pregenerated {
    keys: Mutex<BTreeMap<HostName, Vec<Result<Identity, TlsError>>>>,
}

impl NewKeys for Pregenerated {
    fn new_key(
        &self,
        s: &Settings,
        host: &Host,
        now: OffsetDateTime,
    ) -> Result<Identity, TlsError> {
        let made = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&host.name)
            .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
        made.unwrap_or_else(|| Generate.new_key(s, host, now))
    }
}

impl Pregenerated {
    /// Generates `count` keys for each host named, all at once, each on a
    /// blocking thread (RSA-4096 costs about a second of CPU per key).
    pub async fn generate(
        inv: &Inventory,
        wanted: &BTreeMap<HostName, usize>,
        now: OffsetDateTime,
    ) -> Self {
        let s = &inv.settings;
        let jobs = wanted.iter().flat_map(|(name, &n)| {
            let host = inv.host(name);
            let (alg, mx, days) = (s.key, host.mx.as_str().to_string(), s.valid_days);
            (0..n).map(move |_| {
                let (name, mx) = (name.clone(), mx.clone());
                async move {
                    let made =
                        tokio::task::spawn_blocking(move || tls::generate(alg, &mx, days, now))
                            .await
                            .unwrap_or_else(|e| {
                                Err(TlsError::Issue(format!("key generation: {e}")))
                            });
                    (name, made)
                }
            })
        });
        let mut keys: BTreeMap<HostName, Vec<Result<Identity, TlsError>>> = BTreeMap::new();
        for (name, made) in futures::future::join_all(jobs).await {
            keys.entry(name).or_default().push(made);
        }
        Pregenerated {
            keys: Mutex::new(keys),
        }
    }
}

/// Whether a plan is only shown or will be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Shown only (plan, dry runs): no key is generated, their
    /// fingerprints are [`KNOWN_AFTER_APPLY`].
    Show,
    /// Applied (possibly after a confirmation): real keys, generated in
    /// parallel, and only if the plan uses any.
    Apply,
}

/// Plans every host (see [`engine::plan_all`]) with the new keys `usage`
/// calls for.
pub async fn plan_fleet(
    inv: &Inventory,
    states: &[HostState],
    externals: &[ExternalState],
    templates: &Templates,
    now: OffsetDateTime,
    rotation: &Rotation,
    usage: Use,
) -> FleetPlan {
    let placeholders = Placeholders::default();
    let mut fleet = engine::plan_all_with(
        inv,
        states,
        externals,
        templates,
        now,
        rotation,
        &placeholders,
    );
    let issued = placeholders.issued();
    if issued.is_empty() {
        return fleet;
    }
    match usage {
        Use::Show => {
            mask(&mut fleet, &issued);
            fleet
        }
        Use::Apply => {
            let mut wanted: BTreeMap<HostName, usize> = BTreeMap::new();
            for (host, _) in &issued {
                *wanted.entry(host.clone()).or_default() += 1;
            }
            let real = Pregenerated::generate(inv, &wanted, now).await;
            engine::plan_all_with(inv, states, externals, templates, now, rotation, &real)
        }
    }
}

/// Every form in which a placeholder certificate can appear in a plan (its
/// PEM, and its fingerprints in every digest and pin kind: Postfix's
/// colon-separated form, and Exim's plain uppercase hex), and what each
/// is shown as; with the automaton that finds them all in one pass.
struct Replacements {
    to: Vec<&'static str>,
    /// Leftmost-longest: a PEM is replaced whole, never a fingerprint-like
    /// run inside it.
    automaton: aho_corasick::AhoCorasick,
}

/// Placeholders masked together: the automaton of a group is about 2 KB
/// of patterns a placeholder, and some 40 bytes a pattern byte, so groups
/// keep a fresh 200-host plan (400 placeholders) well within its memory.
const MASK_GROUP: usize = 32;

/// A placeholder's forms, each with what it is shown as.
fn forms(cert: &Certificate) -> Vec<(String, &'static str)> {
    let mut out = vec![(cert.pem().trim_end().to_string(), CERTIFICATE_AFTER_APPLY)];
    for digest in [Digest::Md5, Digest::Sha1, Digest::Sha256, Digest::Sha512] {
        for kind in [PinKind::PublicKey, PinKind::Certificate] {
            let fp = cert.fingerprint(digest, kind).to_string();
            out.push((fp.replace(':', ""), KNOWN_AFTER_APPLY));
            out.push((fp, KNOWN_AFTER_APPLY));
        }
    }
    out
}

fn replacements(forms: &[Vec<(String, &'static str)>]) -> Replacements {
    let (from, to): (Vec<String>, Vec<&'static str>) = forms.iter().flatten().cloned().unzip();
    let automaton = aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(&from)
        .expect("fingerprints and PEMs make a small automaton");
    Replacements { to, automaton }
}

fn masked(text: &str, with: &Replacements) -> String {
    with.automaton.replace_all(text, &with.to)
}

/// Replaces, in a plan that is only shown, every placeholder's
/// certificate and fingerprint with what apply will know. Each text is
/// searched once a group of [`MASK_GROUP`] placeholders, for all their
/// forms at once: one search per form and text grew as the square of the
/// fleet (3 s of CPU for a plan of 200 fresh hosts), one automaton for
/// every placeholder as its size (54 MB).
pub fn mask(fleet: &mut FleetPlan, issued: &[(HostName, Certificate)]) {
    let mut texts: Vec<&mut String> = Vec::new();
    for o in &mut fleet.outcomes {
        let HostOutcome::Planned(p) = o else { continue };
        for ch in &mut p.changes {
            for c in [&mut ch.new, &mut ch.old] {
                if let Some(Content::Text(t)) = c {
                    texts.push(t);
                }
            }
        }
        texts.extend(p.notes.iter_mut().chain(p.commands.iter_mut()));
        for e in &mut p.pinned {
            texts.extend(e.pins.iter_mut());
        }
    }
    let forms: Vec<_> = issued.iter().map(|(_, cert)| forms(cert)).collect();
    mask_texts(&mut texts, &forms);
    let every_form: std::collections::HashSet<&str> = forms
        .iter()
        .flatten()
        .map(|(from, _)| from.as_str())
        .collect();
    let unknown = |f: &mut tls::Fingerprint| {
        if every_form.contains(f.as_str()) {
            *f = tls::Fingerprint::known_after_apply();
        }
    };
    for r in &mut fleet.rotated {
        unknown(&mut r.new_current);
        unknown(&mut r.new_next);
    }
    fleet.placeholders = issued.iter().map(|(_, c)| c.clone()).collect();
}

/// Masks the placeholders' `forms` in `texts`, a group of placeholders at
/// a time.
fn mask_texts(texts: &mut [&mut String], forms: &[Vec<(String, &'static str)>]) {
    for group in forms.chunks(MASK_GROUP) {
        let with = replacements(group);
        for t in texts.iter_mut() {
            **t = masked(t, &with);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
    }

    #[test]
    fn placeholders_are_recorded_and_masked_in_every_form() {
        let inv = crate::inventory::parse(
            std::path::Path::new("t.toml"),
            "[hosts.home]\nssh = \"home\"\nmx = \"home.example.net\"\n",
        )
        .unwrap();
        let p = Placeholders::default();
        let id = p.new_key(&inv.settings, &inv.hosts[0], now()).unwrap();
        assert_eq!(id.cert.dns_names(), ["home.example.net"]);
        let issued = p.issued();
        assert_eq!(issued.len(), 1);
        let with = replacements(&issued.iter().map(|(_, c)| forms(c)).collect::<Vec<_>>());
        let spki = id.cert.fingerprint(Digest::Sha256, PinKind::PublicKey);
        let cert = id.cert.fingerprint(Digest::Sha1, PinKind::Certificate);
        let text = format!(
            "match={spki}|AB:CD\nexim {}\n{}",
            cert.as_str().replace(':', ""),
            id.cert.pem()
        );
        assert_eq!(
            masked(&text, &with),
            format!("match={KNOWN_AFTER_APPLY}|AB:CD\nexim {KNOWN_AFTER_APPLY}\n{CERTIFICATE_AFTER_APPLY}\n")
        );
    }

    /// Many placeholders (a fresh fleet): each one's forms are masked, a
    /// group at a time, and a text with none of them comes back as it was.
    #[test]
    fn every_placeholder_of_a_fleet_is_masked() {
        let mut toml = String::new();
        // More than one group of placeholders: each group is masked.
        for i in 0..(MASK_GROUP + 1) {
            toml.push_str(&format!(
                "[hosts.h{i}]\nssh = \"h{i}\"\nmx = \"h{i}.example.net\"\n"
            ));
        }
        let inv = crate::inventory::parse(std::path::Path::new("t.toml"), &toml).unwrap();
        let p = Placeholders::default();
        let ids: Vec<Identity> = inv
            .hosts
            .iter()
            .map(|h| p.new_key(&inv.settings, h, now()).unwrap())
            .collect();
        let mut text = String::new();
        for id in ids.iter().rev() {
            let pin = id.cert.fingerprint(Digest::Sha512, PinKind::Certificate);
            text.push_str(&format!("{pin} {}", id.cert.pem()));
        }
        let mut plain = "relay_domains = hash:/etc/postfix/mxpin/relay_domains\n".to_string();
        let kept = plain.clone();
        let forms: Vec<_> = p.issued().iter().map(|(_, c)| forms(c)).collect();
        mask_texts(&mut [&mut text, &mut plain], &forms);
        let line = format!("{KNOWN_AFTER_APPLY} {CERTIFICATE_AFTER_APPLY}\n");
        assert_eq!(text, line.repeat(ids.len()));
        assert_eq!(plain, kept);
    }
}

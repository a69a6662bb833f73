//! Deferred mail after a fix: the backed-up domains whose route or pins
//! change in a plan. Apply retries their deferred mail right after the
//! reload (see [`super::script`]) instead of leaving it to Exim's retry
//! rules (15 minutes and more); mail for every other domain keeps its
//! schedule.

use super::{peer_file, render::Fragments, FoundFile};

/// The entries of the `route_list` of mxpin's router: domain (lowercase)
/// and the rest of its entry (`mx::port byname`).
fn route_entries(routers: &str) -> Vec<(String, String)> {
    routers
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("route_list"))
        .and_then(|r| r.trim_start().strip_prefix('='))
        .map(|list| {
            list.split(';')
                .filter_map(|e| {
                    let mut words = e.split_whitespace();
                    let domain = words.next()?.to_ascii_lowercase();
                    Some((domain, words.collect::<Vec<_>>().join(" ")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What Exim does with mail for a domain through mxpin's fragments: the
/// router's entry, the trust file and the pins line of its primary.
type Route = (Option<String>, Option<String>, Option<String>);

/// The route of `domain` in a set of fragment texts (`file` gives a file of
/// mxpin's directory by name).
fn route_of<'a>(
    entries: &[(String, String)],
    file: impl Fn(&str) -> Option<&'a str>,
    domain: &str,
) -> Route {
    let Some((_, entry)) = entries.iter().find(|(d, _)| d == domain) else {
        return (None, None, None);
    };
    let mx = entry.split("::").next().unwrap_or_default();
    let pins = file("pins").and_then(|p| {
        p.lines()
            .find(|l| l.split_once(':').is_some_and(|(k, _)| k.trim() == mx))
            .map(str::to_string)
    });
    (
        Some(entry.clone()),
        file(&peer_file(mx)).map(str::to_string),
        pins,
    )
}

/// The domains whose route or pins change on this host when the plan is
/// applied: a new backup role, a re-pinned or moved primary, a backup role
/// that ends, a new pinned transport, or fragments the configuration did not
/// include yet (`rehooked`: the plan edits the admin's configuration or
/// mxpin's conf.d files). `new_file` gives the planned content of a file of
/// mxpin's directory (`None`: absent after the plan).
pub(super) fn domains<'a>(
    files: &'a std::collections::BTreeMap<String, FoundFile>,
    fragments: &'a Fragments,
    new_file: impl Fn(&str) -> Option<&'a str>,
    rehooked: bool,
) -> Vec<String> {
    let old_file = |name: &str| files.get(name).map(|f| f.content.raw());
    let old_entries = route_entries(old_file("routers.conf").unwrap_or_default());
    let new_entries = route_entries(&fragments.routers);
    let transport_changes = old_file("transports.conf") != Some(fragments.transports.as_str());
    let mut out: Vec<String> = Vec::new();
    for (domain, _) in new_entries.iter().chain(&old_entries) {
        if out.contains(domain) {
            continue;
        }
        let old = route_of(&old_entries, old_file, domain);
        let new = route_of(&new_entries, &new_file, domain);
        if old != new || transport_changes || rehooked {
            out.push(domain.clone());
        }
    }
    out
}

/// The `exim -R` regular expression selecting the messages with a
/// recipient in one of `domains` (validated DNS names).
pub(super) fn select_regex(domains: &[String]) -> String {
    let alternatives: Vec<String> = domains.iter().map(|d| d.replace('.', r"\.")).collect();
    format!("@({})$", alternatives.join("|"))
}

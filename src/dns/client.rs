//! The wire side of [`crate::dns`], all through hickory: TLSA and SOA
//! queries (to the authoritative server, or DNSSEC-flagged to the
//! validating resolver) and one RFC 2136 update per zone, TSIG-signed.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hickory_client::client::Client;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::TLSA;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;
use hickory_proto::xfer::{DnsHandle, DnsRequest, DnsRequestOptions};

use super::{Secret, TlsaData};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TLSA RRset as one server returned it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub records: Vec<TlsaData>,
    /// The RRset's TTL (0 when empty).
    pub ttl: u32,
    /// The AD bit of the response: the resolver validated it.
    pub authentic: bool,
}

fn name(s: &str) -> Result<Name, String> {
    Name::from_str(s).map_err(|e| format!("invalid DNS name {s}: {e}"))
}

async fn connect(server: SocketAddr, signer: Option<TSigner>) -> Result<Client, String> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(TIMEOUT))
        .with_signer(signer.map(|s| Arc::new(s) as _))
        .build();
    let (client, background) = Client::connect(stream)
        .await
        .map_err(|e| format!("DNS server {server}: {e}"))?;
    tokio::spawn(background);
    Ok(client)
}

async fn exchange(
    client: &Client,
    server: SocketAddr,
    message: Message,
) -> Result<Message, String> {
    let mut options = DnsRequestOptions::default();
    options.use_edns = message.extensions().is_some();
    let mut responses = client.send(DnsRequest::new(message, options));
    match responses.next().await {
        Some(Ok(r)) => Ok(r.into_message()),
        Some(Err(e)) => Err(format!("DNS server {server}: {e}")),
        None => Err(format!("DNS server {server}: no answer")),
    }
}

fn query_message(owner: &Name, rtype: RecordType, dnssec: bool) -> Message {
    let mut m = Message::new();
    m.set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(dnssec);
    m.add_query(Query::query(owner.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_version(0);
    if dnssec {
        // Ask for validation (DO) and for the AD bit (RFC 6840 5.7).
        edns.set_dnssec_ok(true);
        m.set_authentic_data(true);
    }
    m.set_edns(edns);
    m
}

fn rand_id() -> u16 {
    // Request ids need not be secret here (TSIG signs updates), only
    // distinct; the clock's low bits are enough.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

fn tlsa_of(record: &Record) -> Option<TlsaData> {
    match record.data() {
        RData::TLSA(t) => Some(TlsaData {
            usage: t.cert_usage().into(),
            selector: t.selector().into(),
            matching: t.matching().into(),
            data: t.cert_data().to_vec(),
        }),
        _ => None,
    }
}

/// The TLSA RRset at `owner` from `server`; `dnssec`: ask a validating
/// resolver (recursion, DO, AD).
pub async fn tlsa(server: SocketAddr, owner: &str, dnssec: bool) -> Result<Answer, String> {
    let owner_name = name(owner)?;
    let client = connect(server, None).await?;
    let m = exchange(
        &client,
        server,
        query_message(&owner_name, RecordType::TLSA, dnssec),
    )
    .await?;
    match m.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rc => return Err(format!("DNS server {server}: {owner} TLSA: {rc}")),
    }
    let tlsa: Vec<&Record> = m
        .answers()
        .iter()
        .filter(|r| r.record_type() == RecordType::TLSA && r.name() == &owner_name)
        .collect();
    Ok(Answer {
        records: tlsa.iter().filter_map(|r| tlsa_of(r)).collect(),
        ttl: tlsa.iter().map(|r| r.ttl()).max().unwrap_or(0),
        authentic: m.authentic_data(),
    })
}

/// The zone's SOA as the authoritative server has it: (serial, negative
/// caching TTL = min(SOA TTL, minimum), RFC 2308).
pub async fn soa(server: SocketAddr, zone: &str) -> Result<(u32, u32), String> {
    let zone_name = name(zone)?;
    let client = connect(server, None).await?;
    let m = exchange(
        &client,
        server,
        query_message(&zone_name, RecordType::SOA, false),
    )
    .await?;
    m.answers()
        .iter()
        .find_map(|r| match r.data() {
            RData::SOA(s) => Some((s.serial(), r.ttl().min(s.minimum()))),
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "DNS server {server}: no SOA for zone {zone} ({})",
                m.response_code()
            )
        })
}

/// One change of an update.
pub enum Change<'a> {
    Add {
        owner: &'a str,
        ttl: u32,
        data: &'a TlsaData,
    },
    Delete {
        owner: &'a str,
        data: &'a TlsaData,
    },
}

fn tlsa_record(owner: &Name, ttl: u32, d: &TlsaData) -> Record {
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::TLSA(TLSA::new(
            CertUsage::from(d.usage),
            Selector::from(d.selector),
            Matching::from(d.matching),
            d.data.clone(),
        )),
    )
}

/// Sends the changes to `zone` as one RFC 2136 update, TSIG-signed.
pub async fn update(
    server: SocketAddr,
    zone: &str,
    key_name: &str,
    algorithm: &str,
    secret: &Secret,
    changes: &[Change<'_>],
) -> Result<(), String> {
    let algorithm = TsigAlgorithm::from_name(name(algorithm)?);
    let signer = TSigner::new(secret.bytes().to_vec(), algorithm, name(key_name)?, 300)
        .map_err(|e| format!("TSIG key {key_name}: {e}"))?;
    let zone_name = name(zone)?;
    let mut m = Message::new();
    m.set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Update)
        .set_recursion_desired(false);
    let mut q = Query::new();
    q.set_name(zone_name)
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    m.add_zone(q);
    for c in changes {
        let record = match c {
            Change::Add { owner, ttl, data } => tlsa_record(&name(owner)?, *ttl, data),
            Change::Delete { owner, data } => {
                // RFC 2136 2.5.4: class NONE, TTL 0 deletes this RR only.
                let mut r = tlsa_record(&name(owner)?, 0, data);
                r.set_dns_class(DNSClass::NONE);
                r
            }
        };
        m.add_update(record);
    }
    let client = connect(server, Some(signer)).await?;
    let answer = exchange(&client, server, m)
        .await
        .map_err(|e| format!("update of zone {zone}: {e}"))?;
    match answer.response_code() {
        ResponseCode::NoError => Ok(()),
        rc => Err(format!(
            "DNS server {server} refused the update of zone {zone}: {rc}"
        )),
    }
}

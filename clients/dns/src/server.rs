//! The DNS request handler hickory-server runs for every query, over UDP
//! and TCP: names of the cluster zone answered from [`records`], every
//! other name forwarded ([`forward`]), and each query counted by type and
//! response code in `/metrics`.
//!
//! Owns the shape of responses (authority, EDNS, negative answers with the
//! zone's SOA); must not reach the API server itself (the view does).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use skiff::metrics::{CounterVec, HistogramVec};

use crate::forward::Forwarder;
use crate::records::{Answer, ClusterView, Zone};

struct Metrics {
    requests: Arc<CounterVec>,
    duration: Arc<HistogramVec>,
}

/// Buckets of DNS answer times: 50 µs to 2.5 s.
const DNS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = skiff::metrics::global();
        Metrics {
            requests: r.counter(
                "skiff_dns_requests_total",
                "DNS queries answered, by query type, response code and zone (cluster or forward).",
                &["type", "rcode", "zone"],
            ),
            duration: r.histogram(
                "skiff_dns_request_duration_seconds",
                "Time to answer a DNS query, by zone (cluster or forward).",
                &["zone"],
                DNS_BUCKETS,
            ),
        }
    })
}

/// Answers the cluster zone and forwards the rest.
pub struct ClusterDns {
    zone: Zone,
    view: Arc<dyn ClusterView>,
    forwarder: Forwarder,
}

impl ClusterDns {
    /// A handler for `zone` over `view`, forwarding through `forwarder`.
    pub fn new(zone: Zone, view: Arc<dyn ClusterView>, forwarder: Forwarder) -> Self {
        metrics();
        Self {
            zone,
            view,
            forwarder,
        }
    }
}

fn response_metadata(request: &Request, code: ResponseCode, authoritative: bool) -> Metadata {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = code;
    m.authoritative = authoritative;
    m.recursion_available = true;
    m
}

/// The record sections of a response.
#[derive(Default)]
struct Sections<'a> {
    answers: &'a [Record],
    authorities: &'a [Record],
    soa: &'a [Record],
    additionals: &'a [Record],
}

async fn send<R: ResponseHandler>(
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    sections: Sections<'_>,
    mut handle: R,
) -> ResponseInfo {
    let response = MessageResponseBuilder::new(&request.queries, edns).build(
        metadata,
        sections.answers.iter(),
        sections.authorities.iter(),
        sections.soa.iter(),
        sections.additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS response");
            let mut metadata = metadata;
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let query = match request.request_info() {
            Ok(info)
                if request.metadata.message_type == MessageType::Query
                    && request.metadata.op_code == OpCode::Query =>
            {
                info.query.clone()
            }
            _ => {
                let m = response_metadata(request, ResponseCode::FormErr, false);
                count("", ResponseCode::FormErr, "cluster", start);
                return send(request, edns.as_ref(), m, Sections::default(), handle).await;
            }
        };
        let qtype = query.query_type();
        let qname = query.name().to_string();
        let type_label = qtype.to_string();
        if !self.view.ready() && self.zone.contains(&qname) {
            // Not synced with the API server yet: a resolver tries again.
            let m = response_metadata(request, ResponseCode::ServFail, false);
            count(&type_label, ResponseCode::ServFail, "cluster", start);
            return send(request, edns.as_ref(), m, Sections::default(), handle).await;
        }
        if let Some(answer) = self.zone.lookup(&*self.view, &qname, qtype) {
            let soa = std::slice::from_ref(self.zone.soa());
            let (code, answers, additionals, soa) = match answer {
                Answer::Records {
                    answers,
                    additionals,
                } => (ResponseCode::NoError, answers, additionals, &[][..]),
                Answer::NoData => (ResponseCode::NoError, vec![], vec![], soa),
                Answer::NxDomain => (ResponseCode::NXDomain, vec![], vec![], soa),
            };
            let m = response_metadata(request, code, true);
            let sections = Sections {
                answers: &answers,
                soa,
                additionals: &additionals,
                ..Default::default()
            };
            let info = send(request, edns.as_ref(), m, sections, handle).await;
            count(&type_label, code, "cluster", start);
            return info;
        }
        let (code, message) = match self.forwarder.forward(request.as_slice()).await {
            Ok(m) => (m.metadata.response_code, Some(m)),
            Err(e) => {
                tracing::debug!(name = %qname, error = %e, "forwarding failed");
                (ResponseCode::ServFail, None)
            }
        };
        let m = response_metadata(request, code, false);
        let empty = Message::new(0, MessageType::Response, OpCode::Query);
        let up = message.as_ref().unwrap_or(&empty);
        let sections = Sections {
            answers: &up.answers,
            authorities: &up.authorities,
            additionals: &up.additionals,
            ..Default::default()
        };
        let info = send(request, edns.as_ref(), m, sections, handle).await;
        count(&type_label, code, "forward", start);
        info
    }
}

/// A response code as DNS tools print it (NOERROR, NXDOMAIN, …).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => u16::from(other).to_string(),
    }
}

fn count(qtype: &str, code: ResponseCode, zone: &str, start: Instant) {
    let m = metrics();
    let code = rcode_name(code);
    m.requests.with(&[qtype, &code, zone]).inc();
    m.duration.with(&[zone]).observe_duration(start.elapsed());
}

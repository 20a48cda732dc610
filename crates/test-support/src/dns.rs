//! A tiny authoritative DNS server on 127.0.0.1 (UDP) whose answers a test
//! can change while it runs: A, AAAA and SRV records with chosen TTLs, and
//! NXDOMAIN for everything else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// One answer record.
#[derive(Debug, Clone)]
pub enum Answer {
    Ip(IpAddr),
    /// priority, weight, port, target name.
    Srv(u16, u16, u16, String),
}

type Zone = HashMap<(String, RecordType), (u32, Vec<Answer>)>;

/// A running server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = req.queries.first().cloned() else {
                    continue;
                };
                let name = key(&query.name().to_ascii());
                if let Ok(mut q) = q.lock() {
                    q.push(format!("{name} {}", query.query_type()));
                }
                let mut resp = Message::new(req.id, MessageType::Response, OpCode::Query);
                resp.metadata.recursion_desired = req.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                resp.metadata.authoritative = true;
                resp.add_query(query.clone());
                let found = z.lock().ok().and_then(|z| z.get(&(name.clone(), query.query_type())).cloned());
                let known = z.lock().map(|z| z.keys().any(|(n, _)| *n == name)).unwrap_or(false);
                match found {
                    Some((ttl, answers)) => {
                        for a in answers {
                            let rdata = match a {
                                Answer::Ip(IpAddr::V4(v4)) => RData::A(A(v4)),
                                Answer::Ip(IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                                Answer::Srv(p, w, port, target) => {
                                    let Ok(t) = Name::from_ascii(format!("{}.", key(&target))) else { continue };
                                    RData::SRV(SRV::new(p, w, port, t))
                                }
                            };
                            resp.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
                        }
                    }
                    None if known => {}
                    None => resp.metadata.response_code = ResponseCode::NXDomain,
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer { addr, zone, queries, task }
    }

    /// Sets (replaces) the answers for `name` and `rtype` (A, AAAA or SRV).
    pub fn set(&self, name: &str, rtype: &str, ttl: u32, answers: Vec<Answer>) {
        let rt = match rtype {
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "SRV" => RecordType::SRV,
            other => panic!("unsupported record type {other}"),
        };
        self.zone.lock().expect("zone").insert((key(name), rt), (ttl, answers));
    }

    /// Forgets every record of `name`: it answers NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.zone.lock().expect("zone").retain(|(n, _), _| *n != key(name));
    }

    /// The queries received so far, as `name TYPE`.
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().map(|q| q.clone()).unwrap_or_default()
    }
}

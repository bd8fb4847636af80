//! The admin HTTP listener (`bsn node --admin ADDR`): health, peers, bans, the chain and
//! Prometheus metrics, as JSON over plain HTTP, for operators, their scripts and their
//! orchestration. It runs on threads of its own, never on a shard: each request is an engine
//! call, as an embedder would make it.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /health/live` | 200 while the engine runs |
//! | `GET /health/ready` | 200 when listening, the store readable, a peer ready and the initial header sync done; else 503 with the reasons |
//! | `GET /peers`, `GET /peers/{id}` | connections |
//! | `DELETE /peers/{id}` | disconnect |
//! | `GET /bans`, `POST /bans`, `DELETE /bans/{ip-or-subnet}`, `DELETE /bans` | bans |
//! | `GET /chain`, `GET /chain/headers/{height-or-hash}` | the chain |
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//!
//! With a token set, every `POST` and `DELETE` needs `Authorization: Bearer TOKEN` (401
//! otherwise). Errors are JSON, `{"error": "..."}`: 400 for a bad request, 404 for an unknown
//! path or object, 405 for a method a path does not take, 413 for a body over 64 KiB.

use crate::metrics::{Histogram, Metrics};
use crate::{Engine, HeaderRef, PeerInfo, PeerStatus};
use serde_json::{json, Value};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Where `bsn node --admin` listens without an address, and where `bsn peers` and the other
/// client commands look by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8335";

/// Largest request body read.
const MAX_BODY: usize = 64 << 10;
/// Threads answering requests. Few: each request is an engine call, and the engine's own
/// threads (shards, core) are what must not be starved.
const WORKERS: usize = 2;

/// A running admin listener. Dropping it stops it.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl AdminServer {
    /// Listens on `addr` (port 0 picks one) and serves `engine`. With `token`, mutating calls
    /// need it as a bearer token.
    pub fn start(
        engine: Arc<Engine>,
        addr: SocketAddr,
        token: Option<String>,
    ) -> std::io::Result<AdminServer> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("admin listener on {addr}: {e}"),
            )
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("admin listener has no IP address"))?;
        let server = Arc::new(server);
        let token: Option<Arc<str>> = token.filter(|t| !t.is_empty()).map(Into::into);
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let (server, engine, token) = (server.clone(), engine.clone(), token.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("bsn-admin-{i}"))
                    .spawn(move || {
                        let api = Api { engine, token };
                        // `recv` fails once the server is unblocked (stop)
                        while let Ok(req) = server.recv() {
                            api.handle(req);
                        }
                    })?,
            );
        }
        log::info!("admin listener on http://{addr}");
        Ok(AdminServer {
            server,
            addr,
            workers,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and joins its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An answer: status and JSON (or text, for the metrics).
struct Reply {
    status: u16,
    body: Body,
}

enum Body {
    Json(Value),
    Metrics(String),
}

fn ok(v: Value) -> Reply {
    Reply {
        status: 200,
        body: Body::Json(v),
    }
}

fn error(status: u16, msg: impl Into<String>) -> Reply {
    Reply {
        status,
        body: Body::Json(json!({ "error": msg.into() })),
    }
}

struct Api {
    engine: Arc<Engine>,
    token: Option<Arc<str>>,
}

impl Api {
    fn handle(&self, mut req: tiny_http::Request) {
        let reply = self.route(&mut req);
        let (data, content_type) = match reply.body {
            Body::Json(v) => (
                format!("{v}\n").into_bytes(),
                "application/json; charset=utf-8",
            ),
            Body::Metrics(s) => (
                s.into_bytes(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            .expect("a valid header");
        let resp = tiny_http::Response::from_data(data)
            .with_status_code(reply.status)
            .with_header(header);
        if let Err(e) = req.respond(resp) {
            log::debug!("admin: answer not delivered: {e}");
        }
    }

    fn route(&self, req: &mut tiny_http::Request) -> Reply {
        use tiny_http::Method;
        let url = req.url().to_string();
        let path = url.split(['?', '#']).next().unwrap_or("");
        let parts: Vec<String> = match path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<Vec<String>>>()
        {
            Some(p) => p,
            None => return error(400, "the path is not valid percent-encoded UTF-8"),
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let method = req.method().clone();
        let mutating = matches!(method, Method::Post | Method::Delete | Method::Put);
        if mutating && !self.authorized(req) {
            return error(
                401,
                "this call needs the admin token (Authorization: Bearer TOKEN)",
            );
        }
        let body = if method == Method::Post {
            match read_body(req) {
                Ok(b) => Some(b),
                Err(r) => return r,
            }
        } else {
            None
        };
        match (&method, parts.as_slice()) {
            (Method::Get, ["health", "live"]) => self.live(),
            (Method::Get, ["health", "ready"]) => self.ready(),
            (Method::Get, ["peers"]) => self.peers(),
            (Method::Get, ["peers", id]) => self.peer(id),
            (Method::Delete, ["peers", id]) => self.disconnect(id),
            (Method::Get, ["bans"]) => self.bans(),
            (Method::Post, ["bans"]) => self.ban(body.as_deref().unwrap_or_default()),
            (Method::Delete, ["bans"]) => self.clear_bans(),
            (Method::Delete, ["bans", rest @ ..]) => self.unban(&rest.join("/")),
            (Method::Get, ["chain"]) => self.chain(),
            (Method::Get, ["chain", "headers", at]) => self.header(at),
            (Method::Get, ["metrics"]) => self.metrics(),
            (
                _,
                ["health", "live" | "ready"]
                | ["peers", ..]
                | ["bans", ..]
                | ["chain"]
                | ["chain", "headers", _]
                | ["metrics"],
            ) => error(405, format!("{method} is not allowed on {path}")),
            _ => error(404, format!("no such path: {path}")),
        }
    }

    fn authorized(&self, req: &tiny_http::Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .iter()
            .filter(|h| h.field.equiv("Authorization"))
            .filter_map(|h| h.value.as_str().strip_prefix("Bearer "))
            .any(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
    }

    fn live(&self) -> Reply {
        match self.engine.core_counts() {
            Ok(_) => ok(json!({ "status": "live" })),
            Err(e) => error(503, format!("the engine is not running: {e}")),
        }
    }

    fn ready(&self) -> Reply {
        let mut reasons = Vec::new();
        if self.engine.config().listen.is_some() && self.engine.local_addr().is_none() {
            reasons.push("not listening".to_string());
        }
        if let Err(e) = self
            .engine
            .store()
            .get(crate::store::Table::Meta, b"schema")
        {
            reasons.push(format!("the store is not readable: {e}"));
        }
        let ready_peers = self.engine.peers().iter().filter(|p| p.ready).count();
        if ready_peers == 0 {
            reasons.push("no peer has completed its handshake".to_string());
        }
        match self.engine.chain_status() {
            Ok(c) if c.initial_sync => reasons.push(format!(
                "in the initial header sync: {} of {} headers",
                c.header_height, c.best_known_height
            )),
            Ok(_) => {}
            Err(e) => reasons.push(format!("the engine is not running: {e}")),
        }
        if reasons.is_empty() {
            ok(json!({ "status": "ready", "peers": ready_peers }))
        } else {
            Reply {
                status: 503,
                body: Body::Json(json!({ "status": "not ready", "reasons": reasons })),
            }
        }
    }

    fn peers(&self) -> Reply {
        ok(Value::Array(
            self.engine.peers().iter().map(peer_json).collect(),
        ))
    }

    fn peer(&self, id: &str) -> Reply {
        let Ok(n) = id.parse::<u64>() else {
            return error(400, format!("not a peer id: {id:?}"));
        };
        match self.engine.peers().iter().find(|p| p.id.0 == n) {
            Some(p) => ok(peer_json(p)),
            None => error(404, format!("no peer {n}")),
        }
    }

    fn disconnect(&self, id: &str) -> Reply {
        let Ok(n) = id.parse::<u64>() else {
            return error(400, format!("not a peer id: {id:?}"));
        };
        let Some(p) = self.engine.peers().into_iter().find(|p| p.id.0 == n) else {
            return error(404, format!("no peer {n}"));
        };
        match self.engine.disconnect(p.id) {
            Ok(()) => ok(json!({ "disconnected": n, "address": p.addr.to_string() })),
            Err(e) => error(404, format!("peer {n}: {e}")),
        }
    }

    fn bans(&self) -> Reply {
        ok(Value::Array(
            self.engine
                .bans()
                .iter()
                .map(|(s, b)| {
                    json!({
                        "subnet": s.to_string(),
                        "until": b.until,
                        "until_date": date(b.until),
                        "created": b.created,
                        "created_date": date(b.created),
                        "reason": b.reason,
                    })
                })
                .collect(),
        ))
    }

    fn ban(&self, body: &[u8]) -> Reply {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return error(400, "the body must be a JSON object"),
            Err(e) => return error(400, format!("the body is not valid JSON: {e}")),
        };
        let Some(subnet) = v
            .get("subnet")
            .or_else(|| v.get("address"))
            .and_then(Value::as_str)
        else {
            return error(
                400,
                "\"subnet\" (an IP or a subnet such as 10.0.0.0/8) is required",
            );
        };
        let duration = match v.get("duration") {
            None | Some(Value::Null) => self.engine.config().ban_duration,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(s) if s > 0 => Duration::from_secs(s),
                _ => return error(400, "\"duration\" must be a positive number of seconds"),
            },
            Some(Value::String(s)) => match humantime::parse_duration(s) {
                Ok(d) if d.as_secs() > 0 => d,
                Ok(_) => return error(400, "\"duration\" must be at least one second"),
                Err(e) => return error(400, format!("\"duration\" {s:?}: {e}")),
            },
            Some(_) => return error(400, "\"duration\" must be seconds or text such as \"24h\""),
        };
        let reason = match v.get("reason") {
            None | Some(Value::Null) => "banned by the operator",
            Some(Value::String(s)) if s.len() <= 256 => s.as_str(),
            Some(Value::String(_)) => return error(400, "\"reason\" is longer than 256 bytes"),
            Some(_) => return error(400, "\"reason\" must be text"),
        };
        match self.engine.ban(subnet, duration, reason) {
            Ok(s) => {
                let until = self
                    .engine
                    .bans()
                    .into_iter()
                    .find(|(b, _)| *b == s)
                    .map(|(_, b)| b.until);
                Reply {
                    status: 201,
                    body: Body::Json(json!({
                        "banned": s.to_string(),
                        "until": until,
                        "until_date": until.map(date),
                        "reason": reason,
                    })),
                }
            }
            Err(crate::Error::InvalidInput(e)) => error(400, e),
            Err(e) => error(503, e.to_string()),
        }
    }

    fn unban(&self, subnet: &str) -> Reply {
        match self.engine.unban(subnet) {
            Ok(true) => ok(json!({ "unbanned": subnet })),
            Ok(false) => error(404, format!("no ban for {subnet}")),
            Err(crate::Error::InvalidInput(e)) => error(400, e),
            Err(e) => error(503, e.to_string()),
        }
    }

    fn clear_bans(&self) -> Reply {
        let n = self.engine.bans().len();
        match self.engine.clear_bans() {
            Ok(()) => ok(json!({ "cleared": n })),
            Err(e) => error(503, e.to_string()),
        }
    }

    fn chain(&self) -> Reply {
        match self.engine.chain_status() {
            Ok(c) => ok(json!({
                "network": self.engine.config().network.name,
                "tip": { "hash": c.tip_hash.to_string(), "height": c.header_height },
                "headers_height": c.header_height,
                "blocks_height": c.block_height,
                "best_known_height": c.best_known_height,
                "syncing": c.syncing,
                "sync_peer": c.sync_peer.map(|p| p.0),
                "initial_sync": c.initial_sync,
                "headers_per_sec": c.headers_per_sec,
                "blocks_per_sec": c.blocks_per_sec,
                "eta_secs": c.eta_secs,
            })),
            Err(e) => error(503, e.to_string()),
        }
    }

    fn header(&self, at: &str) -> Reply {
        let r = if !at.is_empty() && at.len() <= 10 && at.bytes().all(|b| b.is_ascii_digit()) {
            match at.parse::<u32>() {
                Ok(h) => HeaderRef::Height(h),
                Err(_) => return error(400, format!("height {at} is out of range")),
            }
        } else {
            match at.parse() {
                Ok(h) => HeaderRef::Hash(h),
                Err(_) => {
                    return error(
                        400,
                        format!("{at:?} is neither a height nor a 64-digit block hash"),
                    )
                }
            }
        };
        match self.engine.header(r) {
            Some((h, height)) => ok(json!({
                "hash": h.hash().to_string(),
                "height": height,
                "version": h.version,
                "prev_hash": h.prev_hash.to_string(),
                "merkle_root": h.merkle_root.to_string(),
                "time": h.time,
                "time_date": date(h.time as u64),
                "bits": format!("{:08x}", h.bits),
                "nonce": h.nonce,
            })),
            None => error(404, format!("no header at {at}")),
        }
    }

    fn metrics(&self) -> Reply {
        let m = match self.engine.metrics() {
            Ok(m) => m,
            Err(e) => return error(503, e.to_string()),
        };
        match encode_metrics(m) {
            Ok(text) => Reply {
                status: 200,
                body: Body::Metrics(text),
            },
            Err(_) => error(500, "the metrics did not encode"),
        }
    }
}

fn read_body(req: &mut tiny_http::Request) -> Result<Vec<u8>, Reply> {
    if req.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(error(413, format!("the body is over {MAX_BODY} bytes")));
    }
    let mut body = Vec::new();
    match req
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > MAX_BODY => {
            Err(error(413, format!("the body is over {MAX_BODY} bytes")))
        }
        Ok(_) => Ok(body),
        Err(e) => Err(error(400, format!("the body could not be read: {e}"))),
    }
}

/// A unix time as an RFC 3339 date (UTC), as the API, the logs and `bsn bans` give it.
pub fn date(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A peer's JSON (the fields `bsn peers` prints).
pub(crate) fn peer_json(p: &PeerInfo) -> Value {
    let commands: serde_json::Map<String, Value> = p
        .stats
        .by_command
        .iter()
        .map(|(c, s)| {
            (
                c.to_string(),
                json!({
                    "msgs_in": s.msgs_in,
                    "bytes_in": s.bytes_in,
                    "msgs_out": s.msgs_out,
                    "bytes_out": s.bytes_out,
                }),
            )
        })
        .collect();
    let since = p
        .connected_since
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "id": p.id.0,
        "address": p.addr.to_string(),
        "direction": p.direction.to_string(),
        "ready": p.ready,
        "status": status_name(p.status),
        "score": p.score,
        "version": p.version,
        "user_agent": p.user_agent,
        "services": p.services,
        "height": p.start_height,
        "latency_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
        "connected_since": since,
        "connected_since_date": date(since),
        "queued_bytes": p.queued_bytes,
        "shard": p.shard,
        "association": p.association.map(|a| a.to_string()),
        "stream_policy": p.stream_policy,
        "streams": p.streams.iter().map(|s| json!({
            "kind": s.kind,
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
        })).collect::<Vec<_>>(),
        "errors": p.stats.errors,
        "commands": commands,
    })
}

/// A status's name, as the API and the metrics give it.
pub fn status_name(s: PeerStatus) -> &'static str {
    match s {
        PeerStatus::Unknown => "unknown",
        PeerStatus::Alive => "alive",
        PeerStatus::Dead => "dead",
        PeerStatus::Penalised => "penalised",
        PeerStatus::Banned => "banned",
    }
}

/// Renders metrics in the OpenMetrics text format (what Prometheus scrapes) with the
/// Prometheus project's Rust encoder.
pub fn encode_metrics(m: Metrics) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::with_prefix("bsn");
    registry.register_collector(Box::new(Snapshot(m)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Snapshot(Metrics);

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let m = &self.0;
        let c = &m.core;

        // a family of counters or gauges: name, help, type, (labels, value)...
        fn family<L: prometheus_client::encoding::EncodeLabelSet>(
            enc: &mut prometheus_client::encoding::DescriptorEncoder,
            name: &str,
            help: &str,
            kind: prometheus_client::metrics::MetricType,
            rows: impl IntoIterator<Item = (L, u64)>,
        ) -> Result<(), std::fmt::Error> {
            let mut d = enc.encode_descriptor(name, help, None, kind)?;
            for (labels, v) in rows {
                value(d.encode_family(&labels)?, kind, v)?;
            }
            Ok(())
        }
        fn value(
            mut e: prometheus_client::encoding::MetricEncoder,
            kind: prometheus_client::metrics::MetricType,
            v: u64,
        ) -> Result<(), std::fmt::Error> {
            match kind {
                prometheus_client::metrics::MetricType::Counter => {
                    e.encode_counter::<(), _, u64>(&v, None)
                }
                _ => e.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX)),
            }
        }
        fn one(
            enc: &mut prometheus_client::encoding::DescriptorEncoder,
            name: &str,
            help: &str,
            kind: prometheus_client::metrics::MetricType,
            v: u64,
        ) -> Result<(), std::fmt::Error> {
            value(enc.encode_descriptor(name, help, None, kind)?, kind, v)
        }
        fn histogram(
            enc: &mut prometheus_client::encoding::DescriptorEncoder,
            name: &str,
            help: &str,
            h: &Histogram,
        ) -> Result<(), std::fmt::Error> {
            let mut d = enc.encode_descriptor(
                name,
                help,
                Some(&prometheus_client::registry::Unit::Seconds),
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            let buckets: Vec<(f64, u64)> = h
                .bounds
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(h.counts.iter().copied())
                .collect();
            d.encode_histogram::<()>(h.sum, h.count, &buckets, None)
        }

        family(
            &mut enc,
            "peers",
            "Live connections by direction, handshake state and status",
            Gauge,
            c.peers.iter().map(|((dir, ready, st), n)| {
                (
                    [
                        ("direction", dir.to_string()),
                        (
                            "state",
                            if *ready { "ready" } else { "handshaking" }.to_string(),
                        ),
                        ("status", status_name(*st).to_string()),
                    ],
                    *n as u64,
                )
            }),
        )?;
        let traffic = |what: &'static str| {
            c.traffic.iter().flat_map(move |(cmd, s)| {
                let (i, o) = if what == "msgs" {
                    (s.msgs_in, s.msgs_out)
                } else {
                    (s.bytes_in, s.bytes_out)
                };
                [
                    ([("command", cmd.clone()), ("direction", "in".into())], i),
                    ([("command", cmd.clone()), ("direction", "out".into())], o),
                ]
            })
        };
        family(
            &mut enc,
            "messages",
            "P2P messages by command and direction",
            Counter,
            traffic("msgs"),
        )?;
        family(
            &mut enc,
            "message_bytes",
            "P2P bytes (frames, headers included) by command and direction",
            Counter,
            traffic("bytes"),
        )?;
        family(
            &mut enc,
            "disconnects",
            "Connections ended, by reason",
            Counter,
            c.disconnects.iter().map(|(r, n)| ([("reason", *r)], *n)),
        )?;
        family(
            &mut enc,
            "handshake_failures",
            "Connections that ended before their handshake completed, by reason",
            Counter,
            c.handshake_failures
                .iter()
                .map(|(r, n)| ([("reason", *r)], *n)),
        )?;
        one(
            &mut enc,
            "handshakes",
            "Handshakes completed",
            Counter,
            c.handshakes,
        )?;
        family(
            &mut enc,
            "ban_score_events",
            "Ban score points given, by reason",
            Counter,
            c.ban_score_events
                .iter()
                .map(|(r, n)| ([("reason", r.as_str())], *n)),
        )?;
        one(&mut enc, "bans", "Bans made", Counter, c.bans)?;
        one(
            &mut enc,
            "bans_active",
            "Bans in force",
            Gauge,
            c.bans_active as u64,
        )?;
        one(
            &mut enc,
            "headers_synced",
            "Headers added to the header tree",
            Counter,
            c.headers_synced,
        )?;
        one(
            &mut enc,
            "blocks_synced",
            "Blocks stored and connected",
            Counter,
            c.blocks_synced,
        )?;
        one(
            &mut enc,
            "header_height",
            "Height of the best header",
            Gauge,
            c.header_height as u64,
        )?;
        if let Some(b) = c.block_height {
            one(
                &mut enc,
                "block_height",
                "Height up to which blocks are stored",
                Gauge,
                b as u64,
            )?;
        }
        let shard_gauge = |f: fn(&crate::metrics::ShardMetrics) -> u64| {
            m.shards
                .iter()
                .map(move |s| ([("shard", s.shard.to_string())], f(s)))
        };
        family(
            &mut enc,
            "shard_connections",
            "Connections a shard owns (streams included)",
            Gauge,
            shard_gauge(|s| s.connections as u64),
        )?;
        family(
            &mut enc,
            "shard_send_queue_bytes",
            "Bytes waiting in a shard's send queues",
            Gauge,
            shard_gauge(|s| s.send_queue_bytes),
        )?;
        family(
            &mut enc,
            "shard_backlog",
            "Reports a shard holds until the core's channel has room",
            Gauge,
            shard_gauge(|s| s.backlog as u64),
        )?;
        family(
            &mut enc,
            "shard_command_queue",
            "Commands waiting in a shard's channel",
            Gauge,
            shard_gauge(|s| s.commands_queued as u64),
        )?;
        family(
            &mut enc,
            "core_queue",
            "Work waiting for the node core, by queue",
            Gauge,
            [
                ([("queue", "peer_reports")], c.input_queue as u64),
                ([("queue", "calls")], c.call_queue as u64),
                ([("queue", "events")], c.event_queue as u64),
                ([("queue", "store_writes")], m.store_queue as u64),
            ],
        )?;
        one(
            &mut enc,
            "store_commit_failures",
            "Store batches that failed to commit",
            Counter,
            m.store_failures,
        )?;
        histogram(
            &mut enc,
            "store_commit",
            "How long store commits took",
            &m.store_commit,
        )?;
        histogram(&mut enc, "ping", "Ping round trips", &m.ping())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_dates() {
        assert_eq!(
            percent_decode("10.0.0.0%2F8").as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(percent_decode("fd00%3A%3A").as_deref(), Some("fd00::"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(u64::MAX), "9999-12-31T23:59:59Z");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

//! The admin HTTP listener, tested over real HTTP against a running engine: every endpoint,
//! readiness flipping when a peer completes its handshake, bans by POST that refuse the address
//! (and show in `bsn bans`), the token, bad requests, and `/metrics` read by Python's
//! Prometheus parser with its counters moving as traffic flows.

mod common;

use bsn::admin::AdminServer;
use bsn::wire::Message;
use common::{config, start, ScriptPeer, REGTEST};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-token";

struct Node {
    engine: Arc<bsn::Engine>,
    admin: Option<AdminServer>,
    base: String,
}

impl Node {
    fn start(token: Option<&str>) -> Node {
        let (engine, _ev) = start(config());
        let engine = Arc::new(engine);
        let admin = AdminServer::start(
            engine.clone(),
            "127.0.0.1:0".parse().unwrap(),
            token.map(str::to_string),
        )
        .expect("admin listener starts");
        let base = format!("http://{}", admin.local_addr());
        Node {
            engine,
            admin: Some(admin),
            base,
        }
    }

    fn p2p(&self) -> SocketAddr {
        self.engine.local_addr().unwrap()
    }

    fn admin_addr(&self) -> String {
        self.admin.as_ref().unwrap().local_addr().to_string()
    }

    /// A request: status and JSON (or text) body.
    fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let agent = ureq::AgentBuilder::new().timeout(T).build();
        let mut r = agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(b),
            None => r.call(),
        };
        match res {
            Ok(resp) => (resp.status(), resp.into_string().unwrap()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, text) = self.req(method, path, token, body);
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, v)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.json("GET", path, None, None)
    }

    /// Polls `f` over GET `path` until it returns `Some`, with a deadline.
    fn until<R>(&self, path: &str, what: &str, mut f: impl FnMut(u16, &Value) -> Option<R>) -> R {
        let deadline = Instant::now() + T;
        loop {
            let (s, v) = self.get(path);
            if let Some(r) = f(s, &v) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: last {s} {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(a) = self.admin.take() {
            a.stop();
        }
    }
}

/// `bsn` with these arguments: exit success, stdout, stderr.
fn bsn(args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bsn"));
    c.args(args).env_remove("BSN_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("BSN_ADMIN_TOKEN", t);
    }
    let out = c.output().expect("bsn runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A script peer from `src` that completes its handshake with the node.
fn ready_peer(node: &Node, src: &str) -> ScriptPeer {
    let mut p =
        ScriptPeer::connect_from(src.parse().unwrap(), node.p2p(), REGTEST).expect("connects");
    p.handshake(common::random_u64());
    p
}

#[test]
fn health_peers_chain_and_headers() {
    let node = Node::start(None);
    let (s, v) = node.get("/health/live");
    assert_eq!((s, v["status"].as_str()), (200, Some("live")));

    // no peer yet: not ready, with the reason
    let (s, v) = node.get("/health/ready");
    assert_eq!(s, 503, "{v}");
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("no peer has completed its handshake"),
        "{v}"
    );

    // a peer completes its handshake: ready
    let mut peer = ready_peer(&node, "127.0.0.1");
    node.until("/health/ready", "ready after a handshake", |s, v| {
        (s == 200 && v["status"] == "ready").then_some(())
    });

    // the peer, in the list and by id
    let (s, list) = node.get("/peers");
    assert_eq!(s, 200);
    let p = &list.as_array().unwrap()[0];
    assert_eq!(p["direction"], "inbound");
    assert_eq!(p["ready"], true);
    assert_eq!(p["version"], 70016);
    assert_eq!(p["user_agent"], "/script:0.1/");
    for key in [
        "id",
        "address",
        "status",
        "score",
        "services",
        "height",
        "latency_ms",
        "streams",
        "commands",
        "connected_since_date",
    ] {
        assert!(p.get(key).is_some(), "peer JSON lacks {key}: {p}");
    }
    assert!(
        p["commands"]["version"]["msgs_in"].as_u64() >= Some(1),
        "{p}"
    );
    let id = p["id"].as_u64().unwrap();
    let (s, one) = node.get(&format!("/peers/{id}"));
    assert_eq!((s, &one["id"]), (200, &json!(id)));

    // the chain: regtest genesis, by height and by hash
    let (s, chain) = node.get("/chain");
    assert_eq!(s, 200);
    assert_eq!(chain["network"], "regtest");
    assert_eq!(chain["tip"]["height"], 0);
    assert_eq!(chain["headers_height"], 0);
    assert_eq!(chain["blocks_height"], 0);
    assert_eq!(chain["initial_sync"], false);
    let genesis = chain["tip"]["hash"].as_str().unwrap().to_string();
    let (s, h) = node.get("/chain/headers/0");
    assert_eq!((s, h["hash"].as_str()), (200, Some(genesis.as_str())));
    assert_eq!(h["bits"], "207fffff");
    let (s, h) = node.get(&format!("/chain/headers/{genesis}"));
    assert_eq!((s, &h["height"]), (200, &json!(0)));
    let (s, _) = node.get("/chain/headers/1");
    assert_eq!(s, 404);
    let (s, _) = node.get(&format!("/chain/headers/{}", "ab".repeat(32)));
    assert_eq!(s, 404);
    let (s, v) = node.get("/chain/headers/not-a-block");
    assert_eq!(s, 400, "{v}");
    let (s, _) = node.get("/chain/headers/99999999999");
    assert_eq!(s, 400);

    // the client's status and peers tables read the same answers
    let admin = node.admin_addr();
    let (ok, out, err) = bsn(&["status", "--admin", &admin], None);
    assert!(ok, "{err}");
    assert!(out.contains("network    regtest"), "{out}");
    assert!(out.contains("ready      yes"), "{out}");
    assert!(out.contains(&genesis), "{out}");
    let (ok, out, err) = bsn(&["peers", "--admin", &admin], None);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains("/script:0.1/"), "{out}");
    let (ok, out, _) = bsn(&["peers", "--admin", &admin, "--json"], None);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["id"], json!(id));

    // DELETE /peers/{id} drops it; an unknown id is 404, a bad one 400
    let (s, v) = node.json("DELETE", &format!("/peers/{id}"), None, None);
    assert_eq!(s, 200, "{v}");
    assert!(peer.closed_within(T), "the peer was not disconnected");
    let (s, v) = node.json("DELETE", "/peers/123456", None, None);
    assert_eq!(s, 404, "{v}");
    let (s, _) = node.get("/peers/123456");
    assert_eq!(s, 404);
    let (s, _) = node.get("/peers/abc");
    assert_eq!(s, 400);

    // unknown paths and methods
    let (s, v) = node.get("/nope");
    assert_eq!(s, 404, "{v}");
    let (s, _) = node.json("POST", "/peers", None, Some("{}"));
    assert_eq!(s, 405);
    let (s, _) = node.json("PUT", "/metrics", None, Some("x"));
    assert_eq!(s, 405);
}

#[test]
fn bans_by_post_refuse_and_unban_lets_back() {
    let node = Node::start(Some(TOKEN));
    let admin = node.admin_addr();
    let banned: IpAddr = "127.0.0.9".parse().unwrap();

    // without the token, or with a wrong one: refused, and nothing banned
    let body = r#"{"subnet": "127.0.0.9", "duration": "2h", "reason": "testing"}"#;
    let (s, v) = node.json("POST", "/bans", None, Some(body));
    assert_eq!(s, 401, "{v}");
    let (s, _) = node.json("POST", "/bans", Some("wrong"), Some(body));
    assert_eq!(s, 401);
    let (s, _) = node.json("DELETE", "/bans", None, None);
    assert_eq!(s, 401);
    let (ok, _, err) = bsn(&["ban", "127.0.0.9", "--admin", &admin], None);
    assert!(!ok && err.contains("admin token"), "{err}");
    assert!(!node.engine.is_banned(banned));

    // bad requests: 400 with a JSON error
    for bad in [
        "{not json",
        "[1, 2]",
        r#"{"duration": "2h"}"#,
        r#"{"subnet": "300.1.2.3"}"#,
        r#"{"subnet": "10.0.0.0/99"}"#,
        r#"{"subnet": "10.0.0.1", "duration": "soon"}"#,
        r#"{"subnet": "10.0.0.1", "duration": -5}"#,
    ] {
        let (s, v) = node.json("POST", "/bans", Some(TOKEN), Some(bad));
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (s, v) = node.json("DELETE", "/bans/not-an-ip", Some(TOKEN), None);
    assert_eq!(s, 400, "{v}");
    let (s, v) = node.json("DELETE", "/bans/10.1.2.3", Some(TOKEN), None);
    assert_eq!(s, 404, "{v}");

    // a connected peer from the address, then the ban: it is dropped and refused after
    let mut before = ready_peer(&node, "127.0.0.9");
    let (s, v) = node.json("POST", "/bans", Some(TOKEN), Some(body));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["banned"], "127.0.0.9/32");
    assert!(v["until_date"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(before.closed_within(T), "the banned peer stayed connected");
    let mut refused = ScriptPeer::connect_from(banned, node.p2p(), REGTEST).unwrap();
    refused.send(&Message::Version(common::version_msg(70016, 7)));
    assert!(refused.closed_within(T), "a banned address was let in");

    // in /bans and in `bsn bans`
    let (s, bans) = node.get("/bans");
    assert_eq!(s, 200);
    let b = &bans.as_array().unwrap()[0];
    assert_eq!(
        (b["subnet"].as_str(), b["reason"].as_str()),
        (Some("127.0.0.9/32"), Some("testing"))
    );
    let until = b["until"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 7000..=now + 7300).contains(&until),
        "2h ban until {until}, now {now}"
    );
    let (ok, out, err) = bsn(&["bans", "--admin", &admin], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("127.0.0.9/32") && out.contains("testing"),
        "{out}"
    );
    assert!(out.contains(b["until_date"].as_str().unwrap()), "{out}");

    // a subnet by the client, with its token from the environment
    let (ok, out, err) = bsn(
        &[
            "ban",
            "10.20.0.0/16",
            "--for",
            "30m",
            "--reason",
            "a range",
            "--admin",
            &admin,
        ],
        Some(TOKEN),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("banned 10.20.0.0/16 until "), "{out}");
    assert!(node.engine.is_banned("10.20.3.4".parse().unwrap()));

    // unban (the subnet's slash percent-encoded by the client): the address is let back
    let (ok, out, err) = bsn(&["unban", "127.0.0.9", "--admin", &admin], Some(TOKEN));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "unbanned 127.0.0.9");
    assert!(!node.engine.is_banned(banned));
    let _back = ready_peer(&node, "127.0.0.9");
    let (s, v) = node.json("DELETE", "/bans/10.20.0.0%2F16", Some(TOKEN), None);
    assert_eq!(s, 200, "{v}");
    let (s, v) = node.json("DELETE", "/bans/10.20.0.0%2F16", Some(TOKEN), None);
    assert_eq!(s, 404, "{v}");

    // clear
    let (s, _) = node.json(
        "POST",
        "/bans",
        Some(TOKEN),
        Some(r#"{"address": "10.9.9.9"}"#),
    );
    assert_eq!(s, 201);
    let (s, v) = node.json("DELETE", "/bans", Some(TOKEN), None);
    assert_eq!((s, &v["cleared"]), (200, &json!(1)));
    let (_, bans) = node.get("/bans");
    assert_eq!(bans, json!([]));

    // reads need no token
    let (s, _) = node.get("/peers");
    assert_eq!(s, 200);
}

/// Python with the Prometheus client library's parser (installed when missing).
fn prometheus_parser() -> Option<String> {
    let py = ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(py) = py else {
        eprintln!("SKIPPED: no python3 on this machine to parse /metrics with prometheus_client");
        return None;
    };
    let has = |py: &str| {
        Command::new(py)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(py) {
        let _ = Command::new(py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "prometheus_client",
            ])
            .status();
    }
    assert!(
        has(py),
        "prometheus_client could not be installed for {py} (pip install prometheus_client)"
    );
    Some(py.to_string())
}

/// Parses OpenMetrics text with prometheus_client's parser: every sample as
/// (name, labels, value).
fn parse_metrics(py: &str, text: &str) -> Vec<(String, Value, f64)> {
    use std::io::Write;
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(py)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| *v)
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let Some(py) = prometheus_parser() else {
        return;
    };
    let node = Node::start(None);
    let (s, text) = node.req("GET", "/metrics", None, None);
    assert_eq!(s, 200);
    let first = parse_metrics(&py, &text);
    assert_eq!(sample(&first, "bsn_handshakes_total", &[]), Some(0.0));
    assert_eq!(sample(&first, "bsn_header_height", &[]), Some(0.0));
    for name in [
        "bsn_bans_total",
        "bsn_bans_active",
        "bsn_headers_synced_total",
        "bsn_blocks_synced_total",
        "bsn_store_commit_seconds_count",
        "bsn_ping_seconds_count",
        "bsn_store_commit_failures_total",
    ] {
        assert!(
            sample(&first, name, &[]).is_some(),
            "{name} missing:\n{text}"
        );
    }
    assert!(
        sample(&first, "bsn_shard_connections", &[("shard", "0")]).is_some(),
        "{text}"
    );
    assert!(
        sample(&first, "bsn_core_queue", &[("queue", "peer_reports")]).is_some(),
        "{text}"
    );

    // traffic: a peer handshakes, pings and is answered; a second one fails its handshake
    let mut peer = ready_peer(&node, "127.0.0.1");
    let pings = 25;
    for n in 0..pings {
        peer.send(&Message::Ping(n));
        peer.expect(T, |m| matches!(m, Message::Pong(x) if *x == n));
    }
    // (from another address: speaking another network's magic is scored, and may ban it)
    let mut bad = ScriptPeer::connect_from(
        "127.0.0.3".parse().unwrap(),
        node.p2p(),
        bsn::wire::Magic([1, 2, 3, 4]),
    )
    .unwrap();
    bad.send(&Message::Ping(1));
    assert!(bad.closed_within(T));

    let deadline = Instant::now() + T;
    let (samples, text) = loop {
        let (_, text) = node.req("GET", "/metrics", None, None);
        let m = parse_metrics(&py, &text);
        let ping_in = sample(
            &m,
            "bsn_messages_total",
            &[("command", "ping"), ("direction", "in")],
        );
        let pong_out = sample(
            &m,
            "bsn_messages_total",
            &[("command", "pong"), ("direction", "out")],
        );
        let failed = sample(
            &m,
            "bsn_handshake_failures_total",
            &[("reason", "wrong_network")],
        );
        if ping_in >= Some(pings as f64) && pong_out >= Some(pings as f64) && failed == Some(1.0) {
            break (m, text);
        }
        assert!(
            Instant::now() < deadline,
            "counters did not move: ping in {ping_in:?}, pong out {pong_out:?}, wrong-network \
             handshake failures {failed:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let peers: Vec<_> = samples.iter().filter(|s| s.0 == "bsn_peers").collect();
    assert_eq!(
        sample(&samples, "bsn_handshakes_total", &[]),
        Some(1.0),
        "{peers:?}"
    );
    assert!(
        sample(
            &samples,
            "bsn_message_bytes_total",
            &[("command", "ping"), ("direction", "in")]
        ) >= Some((pings * 32) as f64)
    );
    assert_eq!(
        sample(
            &samples,
            "bsn_peers",
            &[("direction", "inbound"), ("state", "ready")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &samples,
            "bsn_disconnects_total",
            &[("reason", "wrong_network")]
        ) == Some(1.0)
    );
    // histogram buckets are cumulative and end at +Inf with the count
    let inf = sample(
        &samples,
        "bsn_store_commit_seconds_bucket",
        &[("le", "+Inf")],
    );
    assert_eq!(inf, sample(&samples, "bsn_store_commit_seconds_count", &[]));
    assert!(sample(&samples, "bsn_store_commit_seconds_count", &[]) > Some(0.0));
}

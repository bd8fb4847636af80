//! `bsn simnet` end to end: the real binary runs real engines on loopback addresses (127.0.0.x,
//! adversaries on 127.0.1.x), and its JSON summary (field names scripts read) is checked.

mod common;
use common::TempDir;
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `bsn simnet ARGS --json F` with a deadline (killed past it); returns whether it exited
/// 0, its summary, its output, and how long it took.
fn simnet(args: &[&str], deadline: Duration) -> (bool, Value, String, Duration) {
    let dir = TempDir::new("simnet");
    let json = dir.0.join("summary.json");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bsn"))
        .arg("simnet")
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bsn runs");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let output = format!(
        "stdout:\n{}\nstderr:\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    let Some(status) = status else {
        panic!("bsn simnet {args:?} still running after {deadline:?}, killed; {output}");
    };
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no summary at {} ({e}); {output}", json.display()));
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {text}; {output}"));
    (status.success(), v, output, took)
}

/// The contract's percentiles: present, numbers, in order.
fn check_percentiles(v: &Value, field: &str) {
    let p = |q: &str| {
        v[field][q]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}.{q} is not a number: {v}"))
    };
    let (p50, p90, p99) = (p("p50"), p("p90"), p("p99"));
    assert!(
        0.0 <= p50 && p50 <= p90 && p90 <= p99,
        "{field}: {p50} {p90} {p99}"
    );
}

#[test]
fn twenty_real_engines_converge_with_every_transaction_in_under_a_minute() {
    let (ok, v, output, took) = simnet(&["--nodes", "20", "--seed", "7"], Duration::from_secs(120));
    assert!(ok, "exit status not 0; summary {v}; {output}");
    assert_eq!(v["nodes"], 20, "{v}");
    assert_eq!(v["adversaries"], 0, "{v}");
    assert_eq!(v["seed"], 7, "{v}");
    assert_eq!(v["converged"], true, "{v}");
    assert_eq!(v["tx_delivered"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["honest_banned"], 0, "{v}");
    assert_eq!(v["adversaries_banned"], 0, "{v}");
    assert_eq!(v["mode"], "real", "{v}");
    assert_eq!(v["blocks"], 10, "{v}");
    assert_eq!(v["tip_height"], 10, "{v}");
    assert_eq!(v["txs"], 50, "{v}");
    check_percentiles(&v, "block_propagation_ms");
    check_percentiles(&v, "tx_propagation_ms");
    // the bar: under a minute on a 2-core machine
    assert!(took < Duration::from_secs(60), "took {took:?}; {output}");
    assert!(
        output.contains("converged: all 20 nodes at height 10"),
        "{output}"
    );
    eprintln!("bsn simnet --nodes 20 took {took:?}: {v}");
}

#[test]
fn adversaries_that_lie_and_flood_are_banned_and_no_honest_node_is() {
    // adversary 0 sends headers with invalid proof of work, adversary 1 floods inv
    let (ok, v, output, _) = simnet(
        &[
            "--nodes",
            "6",
            "--adversaries",
            "2",
            "--seed",
            "11",
            "--blocks",
            "5",
            "--txs",
            "20",
        ],
        Duration::from_secs(120),
    );
    assert!(ok, "exit status not 0; summary {v}; {output}");
    assert_eq!(v["nodes"], 6, "{v}");
    assert_eq!(v["adversaries"], 2, "{v}");
    assert_eq!(v["adversaries_banned"], 2, "{v}");
    assert_eq!(v["honest_banned"], 0, "{v}");
    assert_eq!(v["converged"], true, "{v}");
    assert_eq!(v["tx_delivered"].as_f64(), Some(1.0), "{v}");
    check_percentiles(&v, "block_propagation_ms");
    check_percentiles(&v, "tx_propagation_ms");
    // each banned for what it did, by honest nodes it was connected to
    let bans = v["bans"].as_array().expect("bans listed");
    let why = |ip: &str| -> Vec<&str> {
        bans.iter()
            .filter(|b| b["subnet"] == format!("{ip}/32"))
            .map(|b| b["reason"].as_str().unwrap_or_default())
            .collect()
    };
    let (liar, flooder) = (why("127.0.1.1"), why("127.0.1.2"));
    assert!(!liar.is_empty(), "{v}");
    assert!(!flooder.is_empty(), "{v}");
    assert!(
        liar.iter()
            .all(|r| r.contains("invalid header proof of work")),
        "{v}"
    );
    assert!(
        flooder.iter().all(|r| r.contains("rate limit exceeded")),
        "{v}"
    );
    assert_eq!(bans.len(), liar.len() + flooder.len(), "{v}");
}

/// The simulated network (virtual clock, node cores in one thread): a thousand nodes, ten
/// blocks and fifty transactions over internet-like links, within the minute (killed
/// past it).
#[test]
fn a_thousand_simulated_nodes_converge_with_every_transaction() {
    let (ok, v, output, took) = simnet(
        &["--virtual", "--nodes", "1000", "--seed", "3"],
        // the bound: about 4 s on an idle 2-core machine
        Duration::from_secs(60),
    );
    assert!(ok, "exit status not 0; summary {v}; {output}");
    assert_eq!(v["mode"], "virtual", "{v}");
    assert_eq!(v["nodes"], 1000, "{v}");
    assert_eq!(v["seed"], 3, "{v}");
    assert_eq!(v["converged"], true, "{v}");
    assert_eq!(v["tx_delivered"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["honest_banned"], 0, "{v}");
    assert_eq!(v["blocks"], 10, "{v}");
    assert_eq!(v["tip_height"], 10, "{v}");
    assert_eq!(v["txs"], 50, "{v}");
    assert_eq!(v["violations"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(v["trace_digest"].is_string(), "{v}");
    check_percentiles(&v, "block_propagation_ms");
    check_percentiles(&v, "tx_propagation_ms");
    assert!(
        output.contains("converged: all 1000 nodes at height 10"),
        "{output}"
    );
    eprintln!("bsn simnet --virtual --nodes 1000 took {took:?}: {v}");
}

/// Adversaries of every kind and a partition in a simulated network: every property holds,
/// every adversary is dealt with as its kind says, the same seed gives the same summary.
#[test]
fn simulated_adversaries_and_a_partition_keep_every_property_and_repeat() {
    let args = [
        "--virtual",
        "--nodes",
        "60",
        "--adversaries",
        "12",
        "--partition",
        "15s",
        "--blocks",
        "6",
        "--txs",
        "20",
        "--block-interval",
        "5s",
        "--seed",
        "5",
    ];
    let (ok, v, output, _) = simnet(&args, Duration::from_secs(120));
    assert!(ok, "exit status not 0; summary {v}; {output}");
    assert_eq!(v["mode"], "virtual", "{v}");
    assert_eq!(v["adversaries"], 12, "{v}");
    assert_eq!(v["converged"], true, "{v}");
    assert_eq!(v["honest_banned"], 0, "{v}");
    let report = v["adversary_report"].as_array().expect("adversary report");
    assert_eq!(report.len(), 12, "{v}");
    let kinds: std::collections::BTreeSet<&str> =
        report.iter().filter_map(|a| a["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 10, "every kind: {kinds:?}");
    assert!(v["adversaries_banned"].as_u64().unwrap_or(0) >= 5, "{v}");
    // the same seed, the same run: every field (duration_ms is virtual time)
    let (_, again, _, _) = simnet(&args, Duration::from_secs(120));
    assert_eq!(v["trace_digest"], again["trace_digest"]);
    assert_eq!(v, again);
}

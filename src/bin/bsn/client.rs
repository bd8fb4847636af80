//! `bsn peers`, `bsn bans`, `bsn ban`, `bsn unban`, `bsn status`: a thin client of a running
//! node's admin API, printing tables (or the API's JSON with `--json`).

use super::{say, ClientArgs};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// A call's outcome: the JSON answer, or what to tell the user.
fn call(c: &ClientArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let (status, v) = call_any(c, method, path, body)?;
    if status >= 400 {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        return Err(match status {
            401 => format!("{msg} (give --admin-token or set BSN_ADMIN_TOKEN)"),
            _ => msg,
        });
    }
    Ok(v)
}

/// A call's status and JSON answer, errors included.
fn call_any(
    c: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let base = if c.admin.contains("://") {
        c.admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", c.admin)
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let mut req = agent.request(method, &format!("{base}{path}"));
    if let Some(t) = &c.admin_token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let (status, resp) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(ureq::Error::Transport(t)) => {
            return Err(format!(
                "cannot reach the node's admin listener at {}: {t} (is `bsn node --admin` running \
                 there? --admin ADDR names another)",
                c.admin
            ))
        }
    };
    let text = resp
        .into_string()
        .map_err(|e| format!("reading the answer: {e}"))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the answer ({status}) is not JSON: {e}: {text:.200}"))?;
    Ok((status, v))
}

/// Runs a call and prints its answer: JSON, or what `table` makes of it.
fn run(
    c: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
    table: impl FnOnce(&Value) -> String,
) -> ExitCode {
    match call(c, method, path, body) {
        Ok(v) => {
            let out = if c.json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                table(&v)
            };
            let _ = say!("{}", out.trim_end_matches('\n'));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn peers(c: &ClientArgs) -> ExitCode {
    run(c, "GET", "/peers", None, |v| {
        let rows: Vec<Vec<String>> = items(v)
            .map(|p| {
                let traffic = |k: &str| {
                    p["commands"]
                        .as_object()
                        .map_or(0, |m| m.values().filter_map(|s| s[k].as_u64()).sum())
                };
                vec![
                    s(&p["id"]),
                    s(&p["address"]),
                    s(&p["direction"]),
                    if p["ready"].as_bool() == Some(true) {
                        s(&p["status"])
                    } else {
                        "handshaking".into()
                    },
                    s(&p["score"]),
                    s(&p["version"]),
                    s(&p["user_agent"]),
                    s(&p["height"]),
                    p["latency_ms"]
                        .as_f64()
                        .map_or("-".into(), |ms| format!("{ms:.1}")),
                    p["streams"].as_array().map_or(0, Vec::len).to_string(),
                    bytes(traffic("bytes_in")),
                    bytes(traffic("bytes_out")),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no peers".into();
        }
        table(
            &[
                "ID", "ADDRESS", "DIR", "STATUS", "SCORE", "VERSION", "AGENT", "HEIGHT", "PING MS",
                "STREAMS", "IN", "OUT",
            ],
            rows,
        )
    })
}

pub fn bans(c: &ClientArgs) -> ExitCode {
    run(c, "GET", "/bans", None, |v| {
        let rows: Vec<Vec<String>> = items(v)
            .map(|b| vec![s(&b["subnet"]), s(&b["until_date"]), s(&b["reason"])])
            .collect();
        if rows.is_empty() {
            return "no bans".into();
        }
        table(&["SUBNET", "UNTIL", "REASON"], rows)
    })
}

pub fn ban(c: &ClientArgs, subnet: &str, duration: Option<&str>, reason: Option<&str>) -> ExitCode {
    let body = json!({ "subnet": subnet, "duration": duration, "reason": reason });
    run(c, "POST", "/bans", Some(body), |v| {
        format!(
            "banned {} until {}: {}",
            s(&v["banned"]),
            s(&v["until_date"]),
            s(&v["reason"])
        )
    })
}

pub fn unban(c: &ClientArgs, subnet: Option<&str>) -> ExitCode {
    match subnet {
        Some(sn) => run(c, "DELETE", &format!("/bans/{}", encode(sn)), None, |v| {
            format!("unbanned {}", s(&v["unbanned"]))
        }),
        None => run(c, "DELETE", "/bans", None, |v| {
            format!("lifted {} bans", s(&v["cleared"]))
        }),
    }
}

pub fn status(c: &ClientArgs) -> ExitCode {
    let chain = match call(c, "GET", "/chain", None) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // readiness answers 503 with its reasons when not ready: both are an answer here
    let ready = call_any(c, "GET", "/health/ready", None)
        .map(|(_, v)| v)
        .unwrap_or_else(|e| json!({ "status": "not ready", "reasons": [e] }));
    let peers = call(c, "GET", "/peers", None).unwrap_or(Value::Null);
    if c.json {
        let v = json!({ "chain": chain, "ready": ready, "peers": peers.as_array().map_or(0, Vec::len) });
        let _ = say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let all = peers.as_array().map_or(&[][..], Vec::as_slice);
    let count = |dir: &str| {
        all.iter()
            .filter(|p| p["direction"] == dir && p["ready"] == true)
            .count()
    };
    let mut out = vec![
        format!("network    {}", s(&chain["network"])),
        format!(
            "tip        {} {}",
            s(&chain["tip"]["height"]),
            s(&chain["tip"]["hash"])
        ),
        format!(
            "headers    {} of {} known{}",
            s(&chain["headers_height"]),
            s(&chain["best_known_height"]),
            rate(&chain["headers_per_sec"])
        ),
    ];
    if !chain["blocks_height"].is_null() {
        out.push(format!(
            "blocks     {}{}",
            s(&chain["blocks_height"]),
            rate(&chain["blocks_per_sec"])
        ));
    }
    if let Some(eta) = chain["eta_secs"].as_u64() {
        out.push(format!(
            "left       {}",
            humantime::format_duration(Duration::from_secs(eta))
        ));
    }
    out.push(format!(
        "peers      {} ready ({} outbound, {} inbound), {} connections",
        count("outbound") + count("inbound"),
        count("outbound"),
        count("inbound"),
        all.len()
    ));
    let reasons: Vec<String> = items(&ready["reasons"]).map(s).collect();
    out.push(if reasons.is_empty() {
        "ready      yes".into()
    } else {
        format!("ready      no: {}", reasons.join("; "))
    });
    let _ = say!("{}", out.join("\n"));
    ExitCode::SUCCESS
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// A value as text (strings without their quotes, null as `-`).
fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn rate(v: &Value) -> String {
    match v.as_f64() {
        Some(r) if r > 0.0 => format!(", {r:.1}/s"),
        _ => String::new(),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Percent-encodes what a path segment cannot hold as is (a subnet's `/`, an IPv6 `:`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Columns padded to their widest cell.
fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        l.trim_end().to_string()
    };
    let mut out = vec![line(head.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

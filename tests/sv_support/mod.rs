//! The Bitcoin SV node v1.2.2 (`../shared/sv-node`, or `$BSN_SV_NODE`) as a real peer for
//! interop tests, like `bcoin_support` for bcoin.
//!
//! [`SvNode::start`] makes sure its Debian runtime libraries are there (`ldd`; missing ones are
//! installed with `apt-get`, as its README lists them), starts a regtest node on free loopback
//! ports in a fresh temporary directory, and waits until its JSON-RPC answers. It is driven over
//! JSON-RPC (batches included) and stopped by RPC, then by SIGKILL, when the handle drops (its
//! log tail is printed when a test panics).
//!
//! When the SV node's directory is absent the tests print a loud SKIPPED line and pass (set
//! `BSN_REQUIRE_SV=1` to make that a failure); when it is there, a failed install or start is a
//! panic with the reason, never a silent skip.
#![allow(dead_code)]

use crate::bcoin_support::{free_ports, json_rpc, json_rpc_batch, json_str, Json};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The runtime libraries the SV node's README lists (Debian 12 package names).
const RUNTIME_PACKAGES: &[&str] = &[
    "libboost-filesystem1.74.0",
    "libboost-program-options1.74.0",
    "libboost-thread1.74.0",
    "libboost-chrono1.74.0",
    "libevent-2.1-7",
    "libevent-core-2.1-7",
    "libevent-pthreads-2.1-7",
    "libtcmalloc-minimal4",
];

/// A regtest address to mine to (nobody holds its key; this build has no wallet anyway).
pub const MINE_TO: &str = "moLJJPxJuG9NMFYyuREzazzV9NjbMJegf8";

static INSTALL: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);

fn loud(s: &str) {
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// Where the SV node's binaries are, if anywhere.
fn sv_dir() -> Option<PathBuf> {
    let d = match std::env::var_os("BSN_SV_NODE") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sv-node"),
    };
    d.join("bitcoind").is_file().then_some(d)
}

/// Libraries `ldd` cannot find for `bin`.
fn missing_libs(bin: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("not found"))
        .map(|l| l.trim().to_string())
        .collect())
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd} {}: {}\n{}",
        args.join(" "),
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 20)
    ))
}

/// Makes sure the node's libraries are there; returns its directory. Once per test process.
fn install(dir: &Path) -> Result<PathBuf, String> {
    let mut done = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = done.as_ref() {
        return r.clone();
    }
    let bin = dir.join("bitcoind");
    let r = (|| {
        if missing_libs(&bin)?.is_empty() {
            return Ok(dir.to_path_buf());
        }
        loud("sv-node: installing its runtime libraries with apt-get");
        run("apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(RUNTIME_PACKAGES);
        run("apt-get", &args)?;
        let still = missing_libs(&bin)?;
        if !still.is_empty() {
            return Err(format!("still missing after apt-get: {still:?}"));
        }
        Ok(dir.to_path_buf())
    })();
    *done = Some(r.clone());
    r
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running SV node on regtest. Stopped when dropped.
pub struct SvNode {
    child: Child,
    dir: PathBuf,
    p2p: u16,
    rpc: u16,
    key: String,
}

impl SvNode {
    /// Starts a node; `extra` are more command-line options (`-connect=...`, ...). `None` (after
    /// a loud SKIPPED line) when the SV node is not on this machine.
    pub fn start(extra: &[String]) -> Option<SvNode> {
        let Some(dir) = sv_dir() else {
            if std::env::var_os("BSN_REQUIRE_SV").is_some() {
                panic!("SV node interop tests: ../shared/sv-node not found (BSN_REQUIRE_SV set)");
            }
            loud(
                "\n!!!!!!!! SKIPPED: SV node interop tests: ../shared/sv-node not found !!!!!!!!\n",
            );
            return None;
        };
        let dir = install(&dir).unwrap_or_else(|e| panic!("SV node runtime: {e}"));
        sweep_stale_dirs();
        let mut last = String::new();
        // a free port can be taken between our probe and the node's bind: try a few times
        for _ in 0..3 {
            match launch(&dir, extra) {
                Ok(n) => return Some(n),
                Err(e) => last = e,
            }
        }
        panic!("SV node did not start: {last}");
    }

    /// Its P2P address.
    pub fn p2p_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.p2p))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("regtest/bitcoind.log")).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// A JSON-RPC call; `params` is a JSON array as text. Errors are the node's message.
    pub fn try_rpc(&self, method: &str, params: &str) -> Result<Json, String> {
        json_rpc(self.rpc, &self.key, method, params)
    }

    /// A JSON-RPC call that must succeed.
    pub fn rpc(&self, method: &str, params: &str) -> Json {
        self.try_rpc(method, params).unwrap_or_else(|e| {
            let shown: String = params.chars().take(200).collect();
            panic!(
                "SV node rpc {method} {shown}: {e}\n--- log tail ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// Several calls in one request (a JSON-RPC batch), results in order; each must succeed.
    pub fn rpc_batch(&self, calls: &[(&str, String)]) -> Vec<Json> {
        json_rpc_batch(self.rpc, &self.key, calls).unwrap_or_else(|e| {
            panic!(
                "SV node rpc batch: {e}\n--- log tail ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// Mines `n` blocks; their hashes.
    pub fn mine(&self, n: u32) -> Vec<String> {
        // in slices: generatetoaddress holds the RPC for the whole run
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(500);
            let r = self.rpc("generatetoaddress", &format!("[{k},{}]", json_str(MINE_TO)));
            out.extend(
                r.as_array()
                    .expect("an array of hashes")
                    .iter()
                    .map(|h| h.as_str().expect("a hash").to_string()),
            );
            left -= k;
        }
        out
    }

    /// Its best height.
    pub fn height(&self) -> u32 {
        self.rpc("getblockcount", "[]").as_i64().expect("a count") as u32
    }

    /// The hashes of its best chain at `heights`.
    pub fn block_hashes(&self, heights: impl IntoIterator<Item = u32>) -> Vec<String> {
        let calls: Vec<(&str, String)> = heights
            .into_iter()
            .map(|h| ("getblockhash", format!("[{h}]")))
            .collect();
        calls
            .chunks(1000)
            .flat_map(|c| self.rpc_batch(c))
            .map(|j| j.as_str().expect("a hash").to_string())
            .collect()
    }

    /// Its best block's hash.
    pub fn best_hash(&self) -> String {
        self.rpc("getbestblockhash", "[]")
            .as_str()
            .expect("a hash")
            .to_string()
    }

    /// `getpeerinfo`.
    pub fn peers(&self) -> Vec<Json> {
        self.rpc("getpeerinfo", "[]")
            .as_array()
            .expect("an array")
            .to_vec()
    }

    /// Waits up to `timeout` for `f` to give a value, polling every 50 ms.
    pub fn until<V>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> Option<V>,
    ) -> V {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?}: {what}\n--- SV node log tail ---\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Log lines where the node holds something against a peer at `port` of 127.0.0.1 (every
    /// bsn engine in these tests listens on, or dials from, loopback).
    pub fn complaints(&self) -> Vec<String> {
        complaints_in(&self.log())
    }
}

/// Lines of an SV node log that score, ban or disconnect a peer for misbehaving.
pub fn complaints_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("misbehaving")
                || l.contains("banning")
                || l.contains("ban score")
                || l.contains("invalid messagestart")
                || l.contains("checksum mismatch")
                || l.contains("oversized")
                || l.contains("protocol violation")
        })
        .map(str::to_string)
        .collect()
}

fn launch(dir: &Path, extra: &[String]) -> Result<SvNode, String> {
    let ports = free_ports(2);
    let (p2p, rpc) = (ports[0], ports[1]);
    let data = std::env::temp_dir().join(format!("bsn-sv-{}-{p2p}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let key = format!("k{p2p}x{rpc}");
    let listen = !extra.iter().any(|a| a == "-listen=0");
    let mut args = vec![
        "-regtest".to_string(),
        format!("-datadir={}", data.display()),
    ];
    if listen {
        args.extend([
            "-listen=1".to_string(),
            "-bind=127.0.0.1".into(),
            format!("-port={p2p}"),
        ]);
    }
    args.extend([
        "-rpcbind=127.0.0.1".to_string(),
        "-rpcallowip=127.0.0.1".into(),
        format!("-rpcport={rpc}"),
        "-rpcuser=x".into(),
        format!("-rpcpassword={key}"),
        "-server=1".into(),
        "-excessiveblocksize=10000000000".into(),
        "-maxstackmemoryusageconsensus=100000000".into(),
        "-minminingtxfee=0.00000500".into(),
        "-debug=net".into(),
        "-logips".into(),
        "-dnsseed=0".into(),
        "-discover=0".into(),
        "-printtoconsole=0".into(),
    ]);
    args.extend(extra.iter().cloned());
    let child = Command::new(dir.join("bitcoind"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn bitcoind: {e}"))?;
    let mut node = SvNode {
        child,
        dir: data,
        p2p,
        rpc,
        key,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = node.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!(
                "bitcoind exited ({status}): {err}\n{}",
                node.log_tail(20)
            ));
        }
        if node.try_rpc("getblockcount", "[]").is_ok() {
            return Ok(node);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "RPC not answering after 60 s\n{}",
                node.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the data directories of earlier test processes killed before their destructors ran,
/// stopping their nodes (their pid file names them).
fn sweep_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("bsn-sv-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(p) = std::fs::read_to_string(e.path().join("regtest/bitcoind.pid")) {
            let _ = Command::new("kill").arg("-9").arg(p.trim()).status();
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

impl Drop for SvNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            loud(&format!(
                "--- SV node (pid {}, p2p {}) log tail ---\n{}",
                self.child.id(),
                self.p2p,
                self.log_tail(40)
            ));
        }
        let _ = self.try_rpc("stop", "[]");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("BSN_SV_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

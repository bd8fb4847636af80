//! bcoin — a real Bitcoin full node in JavaScript, pinned in `tests/bcoin/package.json` — as a
//! peer for interop tests.
//!
//! [`Bcoin::start`] installs it once with npm into a cache directory (`BSN_BCOIN_CACHE`, default
//! `<target dir>/bcoin-cache`), starts a regtest node with an in-memory chain on free loopback
//! ports in a fresh temporary directory, and waits until its RPC answers and its P2P port
//! listens. The node is driven over its JSON-RPC (`rpc`, `mine`, `peers`) and its wallet HTTP API
//! (`wallet`), and is killed by PID when the handle drops, also when a test panics (its log tail is
//! printed then).
//!
//! Without npm on PATH the tests are skipped with a loud line (set `BSN_REQUIRE_BCOIN=1` to make
//! that a failure). With npm, a failed install or start is a panic with npm's or bcoin's output:
//! never a silent skip. `BSN_BCOIN_KEEP=1` keeps the temporary directory (with `bcoin.log`).
#![allow(dead_code)]

use bsn::wire::Magic;
use bsn::{Network, NetworkParams};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The package manifest, embedded so the cache can tell when it changed.
const PACKAGE_JSON: &str = include_str!("../bcoin/package.json");

/// bcoin's regtest network magic (Bitcoin's, wire order); the genesis block is BSV regtest's.
pub const BCOIN_REGTEST_MAGIC: Magic = Magic([0xfa, 0xbf, 0xb5, 0xda]);

/// bsn network parameters for talking to a bcoin regtest node.
pub fn regtest_params() -> NetworkParams {
    Network::Regtest.params().with_magic(BCOIN_REGTEST_MAGIC)
}

/// Longest wait for a started bcoin to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for another process's npm install.
const INSTALL_LOCK_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for one HTTP answer (mining hundreds of blocks takes seconds).
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// Serialises installs between the tests of one binary; the lock file does it between binaries.
static INSTALL: Mutex<()> = Mutex::new(());

/// A running bcoin regtest node. Dropping it kills the process and removes its directory.
pub struct Bcoin {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    p2p_port: u16,
    http_port: u16,
    wallet_port: u16,
    api_key: String,
    address: Mutex<Option<String>>,
}

impl Bcoin {
    /// Starts a node that makes no outbound connections of its own (it only accepts them).
    /// `None` (after a loud SKIPPED line) when npm is not installed.
    pub fn start() -> Option<Bcoin> {
        Bcoin::start_with(&[])
    }

    /// Starts a node that connects out to `peer` only (bcoin's `--only`), e.g. a bsn engine.
    pub fn start_connecting_to(peer: SocketAddr) -> Option<Bcoin> {
        Bcoin::start_with(&[format!("--only={peer}")])
    }

    /// Starts a node with extra command-line options (bcoin's `--name=value` form).
    pub fn start_with(extra: &[String]) -> Option<Bcoin> {
        let entry = install()?;
        let mut last = String::new();
        for _ in 0..3 {
            match launch(&entry, extra) {
                Ok(b) => return Some(b),
                // another process took one of the ports between our probe and bcoin's bind
                Err(Launch::PortTaken(log)) => last = log,
                Err(Launch::Failed(msg)) => panic!("bcoin did not start: {msg}"),
            }
        }
        panic!("bcoin did not start: its ports were taken three times; last log:\n{last}");
    }

    /// Its P2P address.
    pub fn p2p_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.p2p_port))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far (stdout and stderr, debug level).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Calls a node JSON-RPC method; `params` is a JSON array as text, e.g. `r#"[1, "x"]"#`.
    /// Panics (with the log tail) when the call fails.
    pub fn rpc(&self, method: &str, params: &str) -> Json {
        self.try_rpc(method, params).unwrap_or_else(|e| {
            panic!(
                "bcoin rpc {method} {params}: {e}\n--- bcoin log tail ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// Calls a node JSON-RPC method; errors are bcoin's error message or a transport problem.
    pub fn try_rpc(&self, method: &str, params: &str) -> Result<Json, String> {
        json_rpc(self.http_port, &self.api_key, method, params)
    }

    /// Several node JSON-RPC calls in one HTTP request (a JSON-RPC batch); `calls` are (method,
    /// params as a JSON array text). Returns the results in order; panics if any call failed.
    pub fn rpc_batch(&self, calls: &[(&str, String)]) -> Vec<Json> {
        json_rpc_batch(self.http_port, &self.api_key, calls).unwrap_or_else(|e| {
            panic!(
                "bcoin rpc batch of {}: {e}\n--- bcoin log tail ---\n{}",
                calls.len(),
                self.log_tail(40)
            )
        })
    }

    /// The hashes of its best chain at `heights` (`getblockhash`, RPC byte order).
    pub fn block_hashes(&self, heights: impl IntoIterator<Item = u32>) -> Vec<String> {
        let calls: Vec<(&str, String)> = heights
            .into_iter()
            .map(|h| ("getblockhash", format!("[{h}]")))
            .collect();
        self.rpc_batch(&calls)
            .into_iter()
            .map(|h| {
                h.as_str()
                    .unwrap_or_else(|| panic!("getblockhash returned {h}"))
                    .to_string()
            })
            .collect()
    }

    /// Its tip's hash (`getbestblockhash`, RPC byte order).
    pub fn best_hash(&self) -> String {
        let r = self.rpc("getbestblockhash", "[]");
        r.as_str()
            .unwrap_or_else(|| panic!("getbestblockhash returned {r}"))
            .to_string()
    }

    /// The txids in its mempool (`getrawmempool`, RPC byte order).
    pub fn mempool(&self) -> Vec<String> {
        let r = self.rpc("getrawmempool", "[]");
        r.as_array()
            .unwrap_or_else(|| panic!("getrawmempool returned {r}"))
            .iter()
            .map(|t| t.as_str().expect("txid is a string").to_string())
            .collect()
    }

    /// Mines a chain up to `height` whose blocks carry wallet transactions: 101 blocks first
    /// (coinbases mature after 100), then rounds of `txs_per_round` payments (into the mempool)
    /// and `blocks_per_round` blocks, so every round's first block confirms that many
    /// transactions. Returns the txids sent (RPC byte order).
    pub fn mine_with_transactions(
        &self,
        height: i64,
        blocks_per_round: usize,
        txs_per_round: usize,
    ) -> Vec<String> {
        assert!(blocks_per_round > 0);
        let first = (101 - self.height()).clamp(0, height - self.height());
        if first > 0 {
            self.mine(first as usize);
        }
        let mut txids = Vec::new();
        while self.height() < height {
            for _ in 0..txs_per_round {
                txids.push(self.send_to(&self.address(), 100_000_000));
            }
            let n = (blocks_per_round as i64).min(height - self.height());
            self.mine(n as usize);
        }
        txids
    }

    /// A signed payment of `satoshis` to `address` from the primary wallet that is neither
    /// broadcast nor recorded by the wallet; returns (txid, raw transaction hex).
    pub fn create_tx(&self, address: &str, satoshis: u64) -> (String, String) {
        let body = format!(
            r#"{{"outputs":[{{"address":{},"value":{satoshis}}}],"sign":true}}"#,
            json_str(address)
        );
        let tx = self.wallet("POST", "/wallet/primary/create", Some(&body));
        let field = |k: &str| {
            tx[k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {tx}"))
                .to_string()
        };
        (field("hash"), field("hex"))
    }

    /// A wallet HTTP API call, e.g. `wallet("GET", "/wallet/primary/balance", None)`. Panics on
    /// a transport error or an HTTP status other than 200.
    pub fn wallet(&self, method: &str, path: &str, body: Option<&str>) -> Json {
        let r = http(self.wallet_port, method, path, body, &self.api_key).and_then(|(code, t)| {
            let j = Json::parse(&t).map_err(|e| format!("{e} in reply {t:?}"))?;
            if code == 200 {
                Ok(j)
            } else {
                Err(format!("HTTP {code}: {t}"))
            }
        });
        r.unwrap_or_else(|e| {
            panic!(
                "bcoin wallet {method} {path}: {e}\n--- bcoin log tail ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// The primary wallet's receive address (bcoin regtest addresses start with `R`).
    pub fn address(&self) -> String {
        let mut a = self.address.lock().unwrap_or_else(|e| e.into_inner());
        if a.is_none() {
            let acct = self.wallet("GET", "/wallet/primary/account/default", None);
            let s = acct["receiveAddress"]
                .as_str()
                .unwrap_or_else(|| panic!("no receiveAddress in {acct}"))
                .to_string();
            *a = Some(s);
        }
        a.clone().expect("set above")
    }

    /// A fresh address of the primary wallet's default account.
    pub fn new_address(&self) -> String {
        let a = self.wallet(
            "POST",
            "/wallet/primary/address",
            Some(r#"{"account":"default"}"#),
        );
        a["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {a}"))
            .to_string()
    }

    /// Pays `satoshis` to `address` from the primary wallet (which needs mature coinbases:
    /// mine 101 blocks first); returns the txid (RPC byte order).
    pub fn send_to(&self, address: &str, satoshis: u64) -> String {
        let body = format!(
            r#"{{"outputs":[{{"address":{},"value":{satoshis}}}]}}"#,
            json_str(address)
        );
        let tx = self.wallet("POST", "/wallet/primary/send", Some(&body));
        tx["hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no hash in {tx}"))
            .to_string()
    }

    /// Calls a wallet JSON-RPC method (served on the wallet port), e.g. `sendtoaddress [addr,
    /// 1.5]` or `getbalance []`. Panics when the call fails. (bcoin 1.0.2's `getnewaddress`
    /// answers in mainnet format: take addresses from [`Bcoin::new_address`].)
    pub fn wallet_rpc(&self, method: &str, params: &str) -> Json {
        let body = format!(
            r#"{{"method":{},"params":{params},"id":1}}"#,
            json_str(method)
        );
        let reply = self.wallet("POST", "/", Some(&body));
        if !reply["error"].is_null() {
            panic!("bcoin wallet rpc {method} {params}: {}", reply["error"]);
        }
        reply["result"].clone()
    }

    /// Mines `n` blocks paying the primary wallet; returns their hashes (RPC byte order). Returns
    /// once the wallet has seen them too (it follows the chain asynchronously), so coinbases can
    /// be spent right after (they mature after 100 blocks).
    pub fn mine(&self, n: usize) -> Vec<String> {
        let addr = self.address();
        let r = self.rpc("generatetoaddress", &format!("[{n},{}]", json_str(&addr)));
        let hashes: Vec<String> = r
            .as_array()
            .unwrap_or_else(|| panic!("generatetoaddress returned {r}"))
            .iter()
            .map(|h| h.as_str().expect("block hash is a string").to_string())
            .collect();
        let tip = self.height();
        let deadline = Instant::now() + START_TIMEOUT;
        // the heights of the blocks with wallet transactions: every mined block has one
        while !self
            .wallet("GET", "/wallet/primary/block", None)
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h.as_i64() == Some(tip)))
        {
            assert!(
                Instant::now() < deadline,
                "bcoin's wallet did not reach height {tip} in {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        hashes
    }

    /// Its height.
    pub fn height(&self) -> i64 {
        let r = self.rpc("getblockcount", "[]");
        r.as_i64()
            .unwrap_or_else(|| panic!("getblockcount returned {r}"))
    }

    /// Its peers (`getpeerinfo`): objects with `addr`, `subver`, `version`, `inbound`, `pingtime`,
    /// `banscore`, ...
    pub fn peers(&self) -> Vec<Json> {
        let r = self.rpc("getpeerinfo", "[]");
        r.as_array()
            .unwrap_or_else(|| panic!("getpeerinfo returned {r}"))
            .to_vec()
    }
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- bcoin (pid {}, p2p {}) log tail ---\n{}\n--- end of bcoin log ---",
                self.child.id(),
                self.p2p_addr(),
                self.log_tail(60)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("BSN_BCOIN_KEEP").is_some() {
            loud(&format!("bcoin directory kept: {}", self.dir.display()));
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes to the real stderr: the test harness captures `eprintln!`, not the stderr handle.
fn loud(s: &str) {
    let _ = writeln!(std::io::stderr(), "{s}");
}

fn skip(why: &str) -> Option<PathBuf> {
    if std::env::var_os("BSN_REQUIRE_BCOIN").is_some() {
        panic!("bcoin interop tests: {why} (and BSN_REQUIRE_BCOIN is set)");
    }
    loud(&format!(
        "\n!!!!!!!! SKIPPED: bcoin interop tests: {why} !!!!!!!!\n"
    ));
    None
}

/// Whether `tool --version` can be run at all.
fn on_path(tool: &str) -> bool {
    match Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Where bcoin is installed.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BSN_BCOIN_CACHE") {
        return PathBuf::from(d);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => manifest.join(t), // joining an absolute path replaces the base
        None => manifest.join("target"),
    };
    target.join("bcoin-cache")
}

/// Installs bcoin into the cache unless it is there already; returns its entry script.
fn install() -> Option<PathBuf> {
    let _one_thread = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !on_path("node") {
        return skip("node not found");
    }
    let dir = cache_dir();
    let entry = dir.join("node_modules/bcoin/bin/node");
    // The marker holds the package.json it was installed from: a changed pin reinstalls.
    let marker = dir.join(".bsn-installed");
    let done =
        || entry.exists() && fs::read_to_string(&marker).ok().as_deref() == Some(PACKAGE_JSON);
    if done() {
        return Some(entry);
    }
    if !on_path("npm") {
        return skip("npm not found");
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let _one_process = LockFile::acquire(&dir.join("install.lock"));
    if done() {
        return Some(entry); // another test binary installed it while we waited
    }
    let _ = fs::remove_file(&marker);
    fs::write(dir.join("package.json"), PACKAGE_JSON).expect("write package.json to the cache");
    loud(&format!(
        "installing bcoin with npm into {} ...",
        dir.display()
    ));
    let t0 = Instant::now();
    let (ok, output) = npm_install(&dir, false);
    if !ok {
        // Native add-ons (mrmr has no fallback of its own) need a C++ toolchain; without one,
        // install without scripts and run bcoin on its pure JavaScript backend (see `launch`).
        loud(&format!(
            "npm install failed; retrying without install scripts:\n{output}"
        ));
        let _ = fs::remove_dir_all(dir.join("node_modules"));
        let (ok, again) = npm_install(&dir, true);
        if !ok {
            panic!(
                "npm install of bcoin failed in {}:\n{output}\n--- again with --ignore-scripts ---\n{again}",
                dir.display()
            );
        }
    }
    if !entry.exists() {
        panic!(
            "npm install succeeded but {} is missing:\n{output}",
            entry.display()
        );
    }
    fs::write(&marker, PACKAGE_JSON).expect("write the install marker");
    loud(&format!("bcoin installed in {:.1?}", t0.elapsed()));
    Some(entry)
}

/// Runs `npm install` in `dir`; returns whether it succeeded and what it printed.
fn npm_install(dir: &Path, ignore_scripts: bool) -> (bool, String) {
    let mut cmd = Command::new("npm");
    cmd.args(["install", "--no-audit", "--no-fund"]);
    if ignore_scripts {
        cmd.arg("--ignore-scripts");
    }
    let out = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm: {e}"));
    let text = format!(
        "--- npm ({}) stdout ---\n{}\n--- npm stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A lock file created exclusively; removed on drop. A lock left by a dead process (or older
/// than the longest install) is taken over.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: &Path) -> LockFile {
        let deadline = Instant::now() + INSTALL_LOCK_TIMEOUT;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return LockFile(path.to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if lock_is_stale(path) {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                }
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
            if Instant::now() > deadline {
                panic!(
                    "{} still held after {INSTALL_LOCK_TIMEOUT:?}",
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn lock_is_stale(path: &Path) -> bool {
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > INSTALL_LOCK_TIMEOUT);
    let pid = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let dead = match pid {
        // /proc tells whether the holder still runs (Linux); elsewhere only the age counts
        Some(pid) if Path::new("/proc/self").exists() => {
            !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    };
    old || dead
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

enum Launch {
    PortTaken(String),
    Failed(String),
}

/// Ports the kernel considers free right now (bound together, so distinct, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Makes node exit when the process that started it is gone, so that a test binary killed before
/// its destructors ran leaves no bcoin behind.
const WATCHDOG_JS: &str = "\
const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 500).unref();
";

/// Removes the directories of earlier test processes that were killed before their destructors
/// ran (Linux: a process is alive while `/proc/<pid>` exists).
fn sweep_stale_dirs() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("bsn-bcoin-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn launch(entry: &Path, extra: &[String]) -> Result<Bcoin, Launch> {
    sweep_stale_dirs();
    let dir = std::env::temp_dir().join(format!(
        "bsn-bcoin-{}-{:016x}",
        std::process::id(),
        crate::random_u64()
    ));
    fs::create_dir_all(&dir).expect("create bcoin's temporary directory");
    let watchdog = dir.join("watchdog.js");
    fs::write(&watchdog, WATCHDOG_JS).expect("write watchdog.js");
    let log = dir.join("bcoin.log");
    let out = File::create(&log).expect("create bcoin.log");
    let err = out.try_clone().expect("clone the log handle");
    let ports = free_ports(3);
    let (p2p_port, http_port, wallet_port) = (ports[0], ports[1], ports[2]);
    let api_key = format!("bsn{:016x}", crate::random_u64());
    let mut cmd = Command::new("node");
    cmd.arg("--require")
        .arg(&watchdog)
        .arg(entry)
        .args([
            "--network=regtest".to_string(),
            "--memory=true".to_string(),
            format!("--prefix={}", dir.join("data").display()),
            "--workers=false".to_string(),
            // P2P, node HTTP (JSON-RPC) and wallet HTTP: loopback only, explicit ports
            "--host=127.0.0.1".to_string(),
            "--listen=true".to_string(),
            format!("--port={p2p_port}"),
            "--http-host=127.0.0.1".to_string(),
            format!("--http-port={http_port}"),
            "--wallet-http-host=127.0.0.1".to_string(),
            format!("--wallet-http-port={wallet_port}"),
            format!("--api-key={api_key}"),
            // no seeds: regtest's default seed is 127.0.0.1:48444, which may be anything here
            // (an empty list must be spelled "," for bcfg to parse it as a list)
            "--seeds=,".to_string(),
        ])
        .args(extra)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Installed without native add-ons (see `install`), bcoin's modules must be told to use their
    // pure JavaScript backends (mrmr has no automatic fallback).
    let node_modules = entry
        .ancestors()
        .nth(3)
        .expect("entry is node_modules/bcoin/bin/node");
    if !node_modules.join("mrmr/build/Release/mrmr.node").exists() {
        cmd.env("NODE_BACKEND", "js");
    }
    let child = cmd
        .spawn()
        .map_err(|e| Launch::Failed(format!("cannot run node: {e}")))?;
    // From here on the handle owns the process: any early return or panic kills it.
    let mut b = Bcoin {
        child,
        dir,
        log,
        p2p_port,
        http_port,
        wallet_port,
        api_key,
        address: Mutex::new(None),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = b.log();
        if text.contains("EADDRINUSE") {
            return Err(Launch::PortTaken(tail(&text, 30)));
        }
        if let Ok(Some(status)) = b.child.try_wait() {
            return Err(Launch::Failed(format!(
                "bcoin exited ({status}) during start:\n{}",
                tail(&text, 60)
            )));
        }
        if text.contains("Pool server listening")
            && text.contains("Wallet HTTP server listening")
            && b.try_rpc("getblockchaininfo", "[]").is_ok()
        {
            return Ok(b);
        }
        if Instant::now() > deadline {
            return Err(Launch::Failed(format!(
                "bcoin did not answer within {START_TIMEOUT:?}:\n{}",
                tail(&text, 60)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One JSON-RPC call over HTTP with basic auth (user `x`, password `key`) to a node on loopback
/// `port`; `params` is a JSON array as text. Errors are the node's message or a transport
/// problem. Shared by the bcoin and SV node supports.
pub fn json_rpc(port: u16, key: &str, method: &str, params: &str) -> Result<Json, String> {
    let body = format!(
        r#"{{"jsonrpc":"1.0","method":{},"params":{params},"id":1}}"#,
        json_str(method)
    );
    let (_, text) = http(port, "POST", "/", Some(&body), key)?;
    let reply = Json::parse(&text).map_err(|e| format!("{e} in reply {text:?}"))?;
    if !reply["error"].is_null() {
        return Err(format!("node error: {}", reply["error"]));
    }
    Ok(reply["result"].clone())
}

/// A JSON-RPC batch over HTTP with basic auth (user `x`, password `key`) to a node on
/// loopback `port`: the results in order, or the first error (transport or any call's).
/// Shared by the bcoin and SV node supports.
pub fn json_rpc_batch(port: u16, key: &str, calls: &[(&str, String)]) -> Result<Vec<Json>, String> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let body = format!(
        "[{}]",
        calls
            .iter()
            .enumerate()
            .map(|(i, (m, p))| {
                format!(
                    r#"{{"jsonrpc":"1.0","method":{},"params":{p},"id":{i}}}"#,
                    json_str(m)
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    );
    let (_, text) = http(port, "POST", "/", Some(&body), key)?;
    let reply = Json::parse(&text).map_err(|e| format!("{e} in reply {text:?}"))?;
    let answers = reply
        .as_array()
        .ok_or_else(|| format!("not an array: {reply}"))?;
    if answers.len() != calls.len() {
        return Err(format!(
            "{} answers to {} calls",
            answers.len(),
            calls.len()
        ));
    }
    answers
        .iter()
        .zip(calls)
        .map(|(a, (m, p))| {
            if a["error"].is_null() {
                Ok(a["result"].clone())
            } else {
                let shown: String = p.chars().take(200).collect();
                Err(format!("{m} {shown}: {}", a["error"]))
            }
        })
        .collect()
}

/// One HTTP/1.0 request with basic auth (user `x`, password the API key); returns the status
/// code and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    api_key: &str,
) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        base64(format!("x:{api_key}").as_bytes()),
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("bad HTTP answer from {addr}: {raw:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP status line from {addr}: {head:?}"))?;
    Ok((code, body.to_string()))
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON string literal for `s`.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON value: just enough to read bcoin's answers without a JSON crate. Indexing a missing
/// key or position gives `Null`.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    /// Parses a whole document.
    pub fn parse(s: &str) -> Result<Json, String> {
        let mut p = Parser {
            b: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing characters at {}", p.i));
        }
        Ok(v)
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.as_f64()
            .filter(|n| n.fract() == 0.0 && n.abs() < 9.0e15)
            .map(|n| n as i64)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    /// A field of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(o) => o.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::ops::Index<usize> for Json {
    type Output = Json;
    fn index(&self, i: usize) -> &Json {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Num(n) => write!(f, "{n}"),
            Json::Str(s) => f.write_str(&json_str(s)),
            Json::Arr(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Json::Obj(o) => {
                f.write_str("{")?;
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{v}", json_str(k))?;
                }
                f.write_str("}")
            }
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected {:?}", c as char))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.b.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut o = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(o));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    o.push((k, self.value()?));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(o));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(_) => self.number(),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            self.err("unknown literal")
        }
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        while self.i < self.b.len()
            && matches!(
                self.b[self.i],
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'
            )
        {
            self.i += 1;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map(Json::Num)
            .map_or_else(|| self.err("bad number"), Ok)
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        match h {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.err("bad \\u escape"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.b.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.b.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).map_or_else(|_| self.err("bad UTF-8"), Ok);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.b.get(self.i).copied();
                    self.i += 1;
                    let ch = match c {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let cp = if (0xd800..0xdc00).contains(&hi)
                                && self.b[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xd800) << 10) + (lo.wrapping_sub(0xdc00) & 0x3ff)
                            } else {
                                hi
                            };
                            char::from_u32(cp).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                Some(&c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[test]
fn json_and_base64_helpers() {
    let j = Json::parse(r#" {"a": [1, -2.5e1, "x\"\u00e9\ud83d\ude00"], "b": null, "c": true} "#)
        .unwrap();
    assert_eq!(j["a"][0].as_i64(), Some(1));
    assert_eq!(j["a"][1].as_f64(), Some(-25.0));
    assert_eq!(j["a"][2].as_str(), Some("x\"é😀"));
    assert!(j["b"].is_null() && j["missing"].is_null());
    assert_eq!(j["c"].as_bool(), Some(true));
    assert_eq!(Json::parse(&j.to_string()).unwrap(), j);
    assert!(Json::parse("[1,").is_err());
    assert!(Json::parse("{} x").is_err());
    assert_eq!(base64(b"x:k"), "eDpr");
    assert_eq!(base64(b"x:ke"), "eDprZQ==");
    assert_eq!(base64(b"x:key"), "eDprZXk=");
}

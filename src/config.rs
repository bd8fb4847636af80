//! Engine configuration: sane defaults (the SV node's timers and limits), a builder, and
//! validation so that a bad setting is an error at start, never a panic later.

use crate::fsm::bans::{ScoreSettings, Subnet};
use crate::fsm::peer::PeerSettings;
use crate::fsm::ratelimit::RateSettings;
use crate::network::{Network, NetworkParams};
use crate::wire::frame::Limits;
use crate::wire::{Magic, Protoconf};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Protocol version bsn speaks (BSV's, with `extmsg`).
pub const PROTOCOL_VERSION: i32 = 70016;
/// Default lowest protocol version accepted from peers.
pub const DEFAULT_MIN_VERSION: i32 = 70001;

/// Default [`Config::block_file_threshold`]: 32 MiB.
pub const DEFAULT_BLOCK_FILE_THRESHOLD: u64 = 32 * 1024 * 1024;

/// Everything the engine needs to start. Build with [`Config::builder`] or start from
/// [`Config::new`] and set fields; [`Config::validate`] runs at start either way.
#[derive(Clone, Debug)]
pub struct Config {
    /// The chain and its wire magic.
    pub network: NetworkParams,
    /// Address to listen on; `None` for no inbound connections.
    pub listen: Option<SocketAddr>,
    /// Static peers: dialled at start and re-dialled with backoff when they drop.
    pub connect: Vec<SocketAddr>,
    /// Source address of outbound connections (streams included); `None` leaves it to the
    /// system. Nodes sharing a host on addresses of their own (127.0.0.2, 127.0.0.3...) set it
    /// so that their peers see, score and ban each by its own address.
    pub outbound_bind: Option<std::net::IpAddr>,
    /// Data directory (created if missing); `None` keeps nothing on disk.
    pub data_dir: Option<PathBuf>,
    /// Network threads, each with its own event loop and shard of sockets.
    pub shards: usize,
    /// Pin each network thread to a core.
    pub pin_threads: bool,
    /// Most inbound connections.
    pub max_inbound: usize,
    /// Most outbound connections.
    pub max_outbound: usize,
    /// Most connections from one IP address; 0 is no limit (the SV node's default).
    pub max_per_ip: usize,
    /// Time allowed for the version handshake.
    pub handshake_timeout: Duration,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Time a pong may take before the peer is dropped.
    pub ping_timeout: Duration,
    /// Time allowed for an outbound TCP connect.
    pub connect_timeout: Duration,
    /// First re-dial delay for a static peer; doubles on each failed attempt in a row: a dial
    /// that fails, or a connection that ends before it has been ready for `redial_max` (a peer
    /// that takes the connection and drops it, at once or right after the handshake).
    pub redial_base: Duration,
    /// Longest re-dial delay; also how long a connection must stay up (ready) before the
    /// backoff starts over (and before an address book address's retry backoff does).
    pub redial_max: Duration,
    /// How often each shard checks its timers.
    pub tick: Duration,
    /// Bytes queued for one peer before it is dropped as not reading.
    pub max_send_queue: usize,
    /// Bytes queued for a peer past which its socket is not read until the queue is half empty
    /// again (as the SV node pauses a peer over its send buffer): answers to a peer that does
    /// not read cannot pile up, while one that reads is served at full speed. At most
    /// `max_send_queue` (past which the peer is dropped).
    pub read_pause_bytes: usize,
    /// Size limits for what we receive.
    pub limits: Limits,
    /// Lowest protocol version accepted.
    pub min_version: i32,
    /// Service bits we advertise.
    pub services: u64,
    /// User agent we advertise.
    pub user_agent: String,
    /// Whether we ask peers to relay transactions (version relay flag).
    pub relay: bool,
    /// Malformed messages tolerated from a peer before it is dropped.
    pub max_payload_errors: u32,
    /// Headers one peer may add on branches with less work than our best chain (forks,
    /// reorg candidates); past that, a batch that does not make a new best chain is refused and
    /// scored 20, so a peer feeding a cheap fork ends banned while memory stays bounded.
    pub max_fork_headers_per_peer: usize,
    /// Headers on branches with less work than the best chain, in all (past that, such batches
    /// are refused from everyone, unscored).
    pub max_fork_headers: usize,
    /// Stream policies, comma-separated, most preferred first (the SV node's
    /// `-multistreampolicies`): advertised in protoconf, and the first one the peer also has is
    /// used on associations we open. Known: `BlockPriority` (blocks, headers and ping/pong on
    /// a second connection, DATA1) and `Default` (one connection).
    pub stream_policies: String,
    /// BSV multistreams (the SV node's `-multistreams`, on by default): an association ID in
    /// `version` (ours when we dial, the peer's echoed when it dials), and extra connections
    /// (streams) joined to it with `createstrm` as the agreed stream policy asks.
    pub multistreams: bool,
    /// Capacity of the event channel to the embedder.
    pub event_capacity: usize,
    /// Events the core holds for an embedder that does not keep up before it stops taking
    /// work from peers (which then stop being read): no event is ever dropped, and memory
    /// stays bounded by this many events beyond the channel's capacity.
    pub event_high_water: usize,
    /// Reports (messages, connections) the shards may queue for the node core; when the core
    /// falls behind by this many, the shards stop reading their sockets.
    pub core_queue: usize,
    /// How often peer records and statistics are saved (also at every disconnect and at stop).
    pub persist_interval: Duration,
    /// Most entries in the ban list.
    pub max_bans: usize,
    /// Networks never banned (an operator's own nodes). Empty by default: loopback peers are
    /// scored and banned like any other.
    pub never_ban: Vec<Subnet>,
    /// How long a ban made for a ban score lasts.
    pub ban_duration: Duration,
    /// Ban-score threshold, decay and points per reason.
    pub ban_scores: ScoreSettings,
    /// Per-peer rate limits (messages and bytes a second, per command for some).
    pub rate_limits: RateSettings,
    /// Inbound peers connected for less than this are never evicted for a newcomer.
    pub evict_min_age: Duration,
    /// Seed peers (`IP:port`, `IP`, or DNS names, resolved off the event loops) that fill the
    /// address book at start.
    pub seeds: Vec<String>,
    /// Outbound connections kept by dialling from the address book (0: none, only `connect`).
    pub target_outbound: usize,
    /// How often the outbound target is checked.
    pub dial_interval: Duration,
    /// Send `getaddr` to each new outbound peer.
    pub getaddr_on_connect: bool,
    /// Accept loopback and private addresses into the address book (regtest and tests);
    /// refused by default on the other networks.
    pub allow_local_addrs: bool,
    /// Header client mode: sync and serve headers, store no blocks (advertise no NODE_NETWORK).
    pub headers_only: bool,
    /// Blocks of this many bytes or more are written to a file of their own as they arrive
    /// (checked on the way), stored as a reference to it and served from it in pieces: never
    /// whole in memory. The files are in `blocks/` of the data dir (a temporary directory
    /// without one). Default 32 MiB; `u64::MAX` keeps every block in memory and in the store.
    pub block_file_threshold: u64,
    /// Time the sync peer has to answer `getheaders` before another peer is asked.
    pub sync_stall_timeout: Duration,
    /// Time a peer has to deliver a requested block before it is asked of another.
    pub block_timeout: Duration,
    /// What happens to transactions peers send: handed to the embedder (default), or accepted
    /// and relayed at once.
    pub tx_policy: crate::fsm::txrelay::TxPolicy,
    /// How often queued transaction announcements go out, one `inv` per peer (the Bitcoin SV
    /// node's `txnpropagationfreq` is 250 ms).
    pub tx_announce_interval: Duration,
    /// How often, on average, addresses relayed to a peer go out, in one `addr` (Bitcoin nodes
    /// trickle them every 30 s on average; each peer's turn is drawn from half to one and a half
    /// of this).
    pub addr_relay_interval: Duration,
    /// `(height, hash)` pairs the chain must pass through: headers contradicting one are refused
    /// (and their sender scored), and no fork below the highest one reached is accepted.
    pub checkpoints: Vec<(u32, crate::wire::hash::Hash256)>,
}

/// A configuration problem found at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Config {
    /// Defaults for `network`: listening on 127.0.0.1 at the network's port, one shard per core,
    /// the SV node's timers (handshake 60 s, ping every 2 min, pong timeout 20 min).
    pub fn new(network: Network) -> Config {
        Config::with_params(network.params())
    }

    /// Defaults for custom network parameters.
    pub fn with_params(network: NetworkParams) -> Config {
        let port = network.default_port;
        let is_regtest = network.name == "regtest";
        Config {
            network,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            connect: Vec::new(),
            outbound_bind: None,
            data_dir: None,
            shards: cores(),
            pin_threads: true,
            max_inbound: 117,
            max_outbound: 8,
            max_per_ip: 0,
            handshake_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(120),
            ping_timeout: Duration::from_secs(20 * 60),
            connect_timeout: Duration::from_secs(5),
            redial_base: Duration::from_secs(1),
            redial_max: Duration::from_secs(60),
            tick: Duration::from_millis(100),
            max_send_queue: 64 * 1024 * 1024,
            read_pause_bytes: 4 * 1024 * 1024,
            limits: Limits::default(),
            min_version: DEFAULT_MIN_VERSION,
            services: crate::wire::types::NODE_NETWORK,
            user_agent: format!("/bsn:{}/", env!("CARGO_PKG_VERSION")),
            relay: true,
            max_payload_errors: 10,
            max_fork_headers_per_peer: 10_000,
            max_fork_headers: 100_000,
            stream_policies: "BlockPriority,Default".into(),
            multistreams: true,
            event_capacity: 65_536,
            event_high_water: 4096,
            core_queue: 8192,
            persist_interval: Duration::from_secs(5),
            max_bans: 10_000,
            never_ban: Vec::new(),
            ban_duration: Duration::from_secs(24 * 3600),
            ban_scores: ScoreSettings::default(),
            rate_limits: RateSettings::default(),
            evict_min_age: Duration::from_secs(10),
            seeds: Vec::new(),
            target_outbound: 8,
            dial_interval: Duration::from_millis(500),
            getaddr_on_connect: true,
            allow_local_addrs: is_regtest,
            headers_only: false,
            block_file_threshold: DEFAULT_BLOCK_FILE_THRESHOLD,
            sync_stall_timeout: Duration::from_secs(30),
            block_timeout: Duration::from_secs(60),
            tx_policy: crate::fsm::txrelay::TxPolicy::Embedder,
            tx_announce_interval: Duration::from_millis(250),
            addr_relay_interval: Duration::from_secs(5),
            checkpoints: Vec::new(),
        }
    }

    /// A builder starting from [`Config::new`].
    pub fn builder(network: Network) -> ConfigBuilder {
        ConfigBuilder {
            config: Config::new(network),
            errors: Vec::new(),
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = |s: &str| Err(ConfigError(s.to_string()));
        if self.shards == 0 {
            return e("shards must be at least 1");
        }
        if self.shards > 1024 {
            return e("shards must be at most 1024");
        }
        if self.read_pause_bytes == 0 {
            return e("read_pause_bytes must be at least 1");
        }
        if self.event_high_water == 0 || self.core_queue == 0 {
            return e("event_high_water and core_queue must be at least 1");
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
            ("connect_timeout", self.connect_timeout),
            ("tick", self.tick),
            ("redial_base", self.redial_base),
            ("persist_interval", self.persist_interval),
            ("dial_interval", self.dial_interval),
            ("tx_announce_interval", self.tx_announce_interval),
            ("addr_relay_interval", self.addr_relay_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name} must be more than zero")));
            }
        }
        if self.redial_max < self.redial_base {
            return e("redial_max must be at least redial_base");
        }
        if self.max_send_queue < 1024 {
            return e("max_send_queue must be at least 1024 bytes");
        }
        if self.limits.max_payload < crate::fsm::peer::LEGACY_MAX_PAYLOAD {
            return e("limits.max_payload must be at least 1 MiB (the protoconf minimum)");
        }
        if self.limits.max_payload > u32::MAX as u64 {
            return e("limits.max_payload must fit in 32 bits (protoconf carries it as u32)");
        }
        if self.user_agent.len() > 256 {
            return e("user_agent must be at most 256 bytes");
        }
        if self.event_capacity == 0 {
            return e("event_capacity must be at least 1");
        }
        let policies = self.stream_policy_list();
        if policies.is_empty() {
            return e("stream_policies must name at least one policy (Default, BlockPriority)");
        }
        if let Some(p) = policies
            .iter()
            .find(|p| !crate::fsm::peer::KNOWN_STREAM_POLICIES.contains(&p.as_str()))
        {
            return Err(ConfigError(format!(
                "unknown stream policy {p:?} (known: Default, BlockPriority)"
            )));
        }
        for &(height, hash) in &self.checkpoints {
            if height == 0 && hash != self.network.genesis_hash() {
                return Err(ConfigError(format!(
                    "checkpoint at height 0 ({hash}) is not this network's genesis"
                )));
            }
            if self
                .checkpoints
                .iter()
                .any(|&(h, other)| h == height && other != hash)
            {
                return Err(ConfigError(format!(
                    "two different checkpoints at height {height}"
                )));
            }
        }
        Ok(())
    }

    /// The stream policies, most preferred first.
    pub fn stream_policy_list(&self) -> Vec<String> {
        self.stream_policies
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// The per-connection settings derived from this configuration.
    pub fn peer_settings(&self) -> PeerSettings {
        PeerSettings {
            magic: self.network.magic,
            limits: self.limits,
            min_version: self.min_version,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_payload_errors: self.max_payload_errors,
            rates: self.rate_limits.clone(),
            protoconf: Some(Protoconf::new(
                self.limits.max_payload as u32,
                &self.stream_policy_list().join(","),
            )),
            multistreams: self.multistreams,
            stream_policies: self.stream_policy_list(),
            block_files: None,
            block_file_threshold: self.block_file_threshold,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new(Network::Regtest)
    }
}

/// Builds a [`Config`]; address strings are parsed (and names resolved) at `build`.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    config: Config,
    errors: Vec<String>,
}

/// Every address `s` names: `IP:port`, `IP` (at `default_port`), or a DNS name with or without
/// a port (resolved here, so call it off the event loops).
pub fn resolve_addrs(s: &str, default_port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, default_port)]);
    }
    if let Some((_, p)) = s.rsplit_once(':') {
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_err() {
            return Err(format!("{s:?}: port {p} is out of range (0 to 65535)"));
        }
    }
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    match with_port.to_socket_addrs() {
        Ok(it) => {
            let v: Vec<SocketAddr> = it.collect();
            if v.is_empty() {
                Err(format!("{s:?} resolves to no address"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("cannot parse or resolve address {s:?}: {e}")),
    }
}

fn parse_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    resolve_addrs(s, default_port).map(|v| v[0])
}

impl ConfigBuilder {
    /// Custom network parameters.
    pub fn params(mut self, p: NetworkParams) -> Self {
        self.config.network = p;
        self
    }
    /// Overrides the network magic.
    pub fn magic(mut self, m: Magic) -> Self {
        self.config.network.magic = m;
        self
    }
    /// Listen address (`IP:port`, `IP` for the network's port, or `host:port`).
    pub fn listen(mut self, addr: &str) -> Self {
        match parse_addr(addr, self.config.network.default_port) {
            Ok(a) => self.config.listen = Some(a),
            Err(e) => self.errors.push(e),
        }
        self
    }
    /// No listening socket.
    pub fn no_listen(mut self) -> Self {
        self.config.listen = None;
        self
    }
    /// Adds a static peer.
    pub fn connect(mut self, addr: &str) -> Self {
        match parse_addr(addr, self.config.network.default_port) {
            Ok(a) => self.config.connect.push(a),
            Err(e) => self.errors.push(e),
        }
        self
    }
    /// Source address of outbound connections (an IP of this host).
    pub fn outbound_bind(mut self, ip: std::net::IpAddr) -> Self {
        self.config.outbound_bind = Some(ip);
        self
    }
    /// Data directory.
    pub fn data_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.config.data_dir = Some(p.into());
        self
    }
    /// Network threads.
    pub fn shards(mut self, n: usize) -> Self {
        self.config.shards = n;
        self
    }
    /// Thread pinning.
    pub fn pin_threads(mut self, on: bool) -> Self {
        self.config.pin_threads = on;
        self
    }
    /// Most inbound connections.
    pub fn max_inbound(mut self, n: usize) -> Self {
        self.config.max_inbound = n;
        self
    }
    /// Most outbound connections.
    pub fn max_outbound(mut self, n: usize) -> Self {
        self.config.max_outbound = n;
        self
    }
    /// Stream policies, comma-separated, most preferred first.
    pub fn stream_policies(mut self, policies: &str) -> Self {
        self.config.stream_policies = policies.to_string();
        self
    }

    /// BSV multistreams on or off.
    pub fn multistreams(mut self, on: bool) -> Self {
        self.config.multistreams = on;
        self
    }

    /// Most connections from one IP (0: no limit).
    pub fn max_per_ip(mut self, n: usize) -> Self {
        self.config.max_per_ip = n;
        self
    }
    /// Handshake timeout.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.config.handshake_timeout = d;
        self
    }
    /// Ping interval and pong timeout.
    pub fn ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.ping_interval = interval;
        self.config.ping_timeout = timeout;
        self
    }
    /// Timer resolution.
    pub fn tick(mut self, d: Duration) -> Self {
        self.config.tick = d;
        self
    }
    /// Adds a checkpoint written `HEIGHT:HASH` (the hash in the usual reversed hex).
    pub fn checkpoint(mut self, spec: &str) -> Self {
        match parse_checkpoint(spec) {
            Ok(c) => self.config.checkpoints.push(c),
            Err(e) => self.errors.push(e),
        }
        self
    }
    /// Service bits.
    pub fn services(mut self, s: u64) -> Self {
        self.config.services = s;
        self
    }
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(ConfigError(e));
        }
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Parses a checkpoint written `HEIGHT:HASH`.
pub fn parse_checkpoint(spec: &str) -> Result<(u32, crate::wire::hash::Hash256), String> {
    let (h, hash) = spec
        .split_once(':')
        .ok_or_else(|| format!("checkpoint {spec:?}: expected HEIGHT:HASH"))?;
    let height = h
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("checkpoint {spec:?}: bad height: {e}"))?;
    let hash = hash
        .trim()
        .parse()
        .map_err(|_| format!("checkpoint {spec:?}: bad hash (64 hex digits expected)"))?;
    Ok((height, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::DEFAULT_MAX_PAYLOAD;

    #[test]
    fn builder_validates() {
        let c = Config::builder(Network::Regtest)
            .listen("127.0.0.1")
            .build()
            .unwrap();
        assert_eq!(c.listen.unwrap().port(), 18444);
        assert!(Config::builder(Network::Regtest).shards(0).build().is_err());
        assert!(Config::builder(Network::Regtest)
            .listen("not an address:x:y")
            .build()
            .is_err());
        assert!(Config::builder(Network::Regtest)
            .connect("127.0.0.1:99999")
            .build()
            .is_err());
        assert!(Config::builder(Network::Regtest)
            .tick(Duration::ZERO)
            .build()
            .is_err());
        assert_eq!(DEFAULT_MAX_PAYLOAD, Config::default().limits.max_payload);
    }

    #[test]
    fn checkpoints_parse_and_validate() {
        let genesis = Network::Regtest.params().genesis_hash();
        let h = "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048";
        let c = Config::builder(Network::Regtest)
            .checkpoint(&format!("1:{h}"))
            .checkpoint(&format!("0:{genesis}"))
            .build()
            .unwrap();
        assert_eq!(c.checkpoints.len(), 2);
        assert_eq!(c.checkpoints[0], (1, h.parse().unwrap()));
        for bad in ["1", "x:00", &format!("1:{}", &h[1..]), &format!("0:{h}")] {
            assert!(
                Config::builder(Network::Regtest)
                    .checkpoint(bad)
                    .build()
                    .is_err(),
                "{bad}"
            );
        }
        let conflicting = Config::builder(Network::Regtest)
            .checkpoint(&format!("5:{h}"))
            .checkpoint(&format!("5:{genesis}"))
            .build();
        assert!(conflicting
            .unwrap_err()
            .0
            .contains("two different checkpoints"));
    }
}

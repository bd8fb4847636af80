//! The `bsn` command line.

use bsn::admin::AdminServer;
use bsn::decode::{summarize, Format};
use bsn::wire::Magic;
use bsn::{Config, Engine, Event, Network};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Writes a line to stdout; false once stdout is gone (a closed pipe: `bsn node | head -1`),
/// where `println!` would panic.
pub(crate) fn say(args: std::fmt::Arguments) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_ok()
}

macro_rules! say {
    ($($t:tt)*) => {
        say(format_args!($($t)*))
    };
}

#[path = "bsn/client.rs"]
mod client;
#[path = "bsn/simnet.rs"]
mod simnet;

#[derive(Parser)]
#[command(name = "bsn", version, about = "Bitcoin Server Network engine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: listen, dial static peers, keep connections alive. Stops on Ctrl-C / SIGTERM.
    Node(Box<NodeArgs>),
    /// Print a readable summary of a raw block, a raw transaction, a header file, a block file
    /// (blk*.dat records) or a capture of P2P frames. Hex text files are accepted too.
    Decode {
        /// The file to read.
        file: PathBuf,
        /// Force the format instead of detecting it: block, tx, headers, blockfile, frames.
        #[arg(long)]
        format: Option<Format>,
        /// List every transaction id of a block, not just the first five.
        #[arg(long)]
        all: bool,
    },
    /// List a running node's peers (through its admin listener).
    Peers(ClientArgs),
    /// List a running node's bans.
    Bans(ClientArgs),
    /// Ban an IP or a subnet on a running node: its connections are dropped and it is refused.
    Ban {
        /// An IP (1.2.3.4, fd00::1) or a subnet (10.0.0.0/8, fd00::/64).
        subnet: String,
        /// How long: 24h, 30m, 7days... (default: the node's ban time, 24 hours).
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why (kept with the ban).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a ban on a running node (or every ban, with --all).
    Unban {
        /// The IP or subnet, as `bsn bans` lists it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        subnet: Option<String>,
        /// Lift every ban.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A running node's chain, sync and readiness at a glance.
    Status(ClientArgs),
    /// Run a network of nodes in this process, mining and relaying, and measure it.
    ///
    /// Real engines on 127.0.0.x (or, with --virtual, simulated nodes on a virtual clock) in a
    /// random connected topology mine a regtest chain and relay transactions, with adversaries
    /// if asked; a live view, then a summary of convergence, propagation times and bans (also
    /// as JSON with --json). Exit code 0 when every node ends on the tip with every
    /// transaction (and, simulated, every property held), 1 otherwise, 2 for a usage error.
    Simnet(simnet::SimnetArgs),
}

/// How the client commands reach a node.
#[derive(clap::Args)]
struct ClientArgs {
    /// The node's admin listener (`bsn node --admin`).
    #[arg(long, default_value = bsn::admin::DEFAULT_ADDR)]
    admin: String,
    /// The admin token, for calls that change something (`bsn node --admin-token`).
    #[arg(long, env = "BSN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Network: mainnet, testnet, regtest or stn.
    #[arg(long, default_value = "regtest")]
    network: Network,
    /// Override the network magic (8 hex digits, wire order), e.g. fabfb5da for BTC regtest peers.
    #[arg(long)]
    magic: Option<Magic>,
    /// Address to listen on (IP:port, or IP for the network's port). Default: 127.0.0.1 at the
    /// network's port.
    #[arg(long)]
    listen: Option<String>,
    /// Do not listen for inbound connections.
    #[arg(long, conflicts_with = "listen")]
    no_listen: bool,
    /// Static peer to keep connected (IP:port or host:port); repeat for more.
    #[arg(long)]
    connect: Vec<String>,
    /// Source address of outbound connections: an IP of this host, no port (default: the
    /// system's choice). Nodes sharing a host on addresses of their own set it so that their
    /// peers see, score and ban each by its own address.
    #[arg(long, value_name = "IP")]
    outbound_bind: Option<std::net::IpAddr>,
    /// Data directory.
    #[arg(long, default_value = "./bsn-data")]
    data_dir: PathBuf,
    /// Network threads (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Most inbound connections.
    #[arg(long)]
    max_inbound: Option<usize>,
    /// Most outbound connections.
    #[arg(long)]
    max_outbound: Option<usize>,
    /// Most connections per IP address (0: no limit).
    #[arg(long)]
    max_per_ip: Option<usize>,
    /// Do not pin network threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Seed peer for discovery (IP:port, IP, or a DNS name); repeat for more.
    #[arg(long)]
    seed: Vec<String>,
    /// Outbound connections to keep by dialling addresses learned from peers (0: none).
    #[arg(long)]
    target_outbound: Option<usize>,
    /// Never ban this IP or subnet (an operator's own nodes); repeat for more.
    #[arg(long)]
    never_ban: Vec<String>,
    /// Import blocks from a block file (blk*.dat records: disk magic, length, block) at start,
    /// so the node can serve them; repeat for more files, in chain order.
    #[arg(long)]
    import: Vec<PathBuf>,
    /// Header client mode: sync and serve headers, store no blocks.
    #[arg(long)]
    headers_only: bool,
    /// A checkpoint HEIGHT:HASH the chain must pass through; repeat for more.
    #[arg(long)]
    checkpoint: Vec<String>,
    /// Turn BSV multistreams off (one connection per peer; the SV node's -multistreams=0).
    #[arg(long)]
    no_multistreams: bool,
    /// Stream policies, most preferred first (the SV node's -multistreampolicies).
    #[arg(long, default_value = "BlockPriority,Default")]
    stream_policies: String,
    /// Blocks of this many bytes or more go to a file of their own in DATA_DIR/blocks as they
    /// arrive, checked on the way, and are served from it: never whole in memory.
    #[arg(long, default_value_t = bsn::DEFAULT_BLOCK_FILE_THRESHOLD)]
    block_file_threshold: u64,
    /// Serve the admin HTTP API (health, peers, bans, chain, Prometheus metrics) on this
    /// address; without a value, on the default one. Off unless given.
    #[arg(long, num_args = 0..=1, default_missing_value = bsn::admin::DEFAULT_ADDR)]
    admin: Option<String>,
    /// Token the admin API asks of every call that changes something (POST, DELETE).
    #[arg(long, env = "BSN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

fn node(a: NodeArgs) -> ExitCode {
    let mut b = Config::builder(a.network)
        .data_dir(&a.data_dir)
        .pin_threads(!a.no_pin);
    if let Some(m) = a.magic {
        b = b.magic(m);
    }
    b = match (&a.listen, a.no_listen) {
        (_, true) => b.no_listen(),
        (Some(l), _) => b.listen(l),
        (None, _) => b,
    };
    for c in &a.connect {
        b = b.connect(c);
    }
    if let Some(ip) = a.outbound_bind {
        b = b.outbound_bind(ip);
    }
    for c in &a.checkpoint {
        b = b.checkpoint(c);
    }
    if let Some(n) = a.shards {
        b = b.shards(n);
    }
    if let Some(n) = a.max_inbound {
        b = b.max_inbound(n);
    }
    if let Some(n) = a.max_outbound {
        b = b.max_outbound(n);
    }
    if let Some(n) = a.max_per_ip {
        b = b.max_per_ip(n);
    }
    b = b
        .multistreams(!a.no_multistreams)
        .stream_policies(&a.stream_policies);
    let config = match b.build().and_then(|mut c| {
        c.seeds = a.seed.clone();
        c.headers_only = a.headers_only;
        c.block_file_threshold = a.block_file_threshold;
        if let Some(n) = a.target_outbound {
            c.target_outbound = n;
        }
        for s in &a.never_ban {
            c.never_ban.push(s.parse().map_err(bsn::ConfigError)?);
        }
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        eprintln!("error: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    // Block files to import are checked before the node starts (and listens): a bad one is
    // named and nothing runs.
    for f in &a.import {
        let checked = std::fs::read(f).map_err(|e| e.to_string()).and_then(|d| {
            summarize(d.into(), Some(Format::BlockFile), false).map_err(|e| e.to_string())
        });
        if let Err(e) = checked {
            eprintln!("error: import {}: {e}", f.display());
            return ExitCode::FAILURE;
        }
    }
    let admin_addr = match a.admin.as_deref().map(resolve_admin) {
        None => None,
        Some(Ok(addr)) => Some(addr),
        Some(Err(e)) => {
            eprintln!("error: --admin: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::start(config) {
        Ok(e) => std::sync::Arc::new(e),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for f in &a.import {
        match engine.import_block_file(f) {
            Ok((n, h)) => {
                say!("imported {n} blocks from {}: tip height {h}", f.display());
            }
            Err(e) => {
                eprintln!("error: import {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let admin = match admin_addr {
        None => None,
        Some(addr) => match AdminServer::start(engine.clone(), addr, a.admin_token.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let cfg = engine.config();
    let tip = engine
        .best_header()
        .map(|(hash, h)| format!("height {h} {hash}"))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut open = say!(
        "bsn node: network {} magic {}, listening on {}, data dir {}, stored tip {tip}{}",
        cfg.network.name,
        cfg.network.magic,
        engine
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "nothing".into()),
        a.data_dir.display(),
        admin
            .as_ref()
            .map(|s| format!(", admin http://{}", s.local_addr()))
            .unwrap_or_default()
    );
    let events = engine.events();
    // (a closed stdout ends the node quietly, as a closed pipe ends other tools)
    while open {
        crossbeam_channel::select! {
            recv(stop_rx) -> _ => break,
            recv(events) -> ev => match ev {
                Ok(Event::PeerConnected(p)) => open = say!(
                    "connected {} {} {} version {} agent {} height {}",
                    p.id, p.addr, p.direction, p.version, p.user_agent, p.start_height
                ),
                Ok(Event::PeerDisconnected { id, addr, reason, .. }) => open = say!("disconnected {id} {addr}: {reason}"),
                Ok(Event::Message { peer, message }) => log::debug!("{peer}: {}", bsn::decode::describe(&message)),
                Ok(_) => {}
                Err(_) => break,
            },
        }
    }
    say!("stopping");
    drop(admin); // its threads hold the engine
    match std::sync::Arc::try_unwrap(engine) {
        Ok(e) => e.stop(),
        Err(_) => log::error!("the engine is still shared at stop"),
    }
    say!("stopped");
    ExitCode::SUCCESS
}

/// `--admin`'s address: IP:port, or a host name that resolves (localhost:8335).
fn resolve_admin(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e} (give IP:PORT, e.g. {})", bsn::admin::DEFAULT_ADDR))?
        .next()
        .ok_or_else(|| format!("{s} resolves to no address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // (twenty engines' connection logs would bury simnet's live view: warnings only there,
    // and errors only under the table redrawn on a terminal; its summary lists the bans. A
    // simulated network's bans are what its adversaries are for, and its log times would be
    // virtual: errors only)
    let level = match cli.command {
        Cmd::Simnet(ref a) if a.is_virtual() => "error",
        Cmd::Simnet(_) if std::io::IsTerminal::is_terminal(&std::io::stdout()) => "error",
        Cmd::Simnet(_) => "warn",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Cmd::Simnet(a) => simnet::run(a),
        Cmd::Node(a) => node(*a),
        Cmd::Peers(c) => client::peers(&c),
        Cmd::Bans(c) => client::bans(&c),
        Cmd::Ban {
            subnet,
            duration,
            reason,
            client: c,
        } => client::ban(&c, &subnet, duration.as_deref(), reason.as_deref()),
        Cmd::Unban {
            subnet,
            all,
            client: c,
        } => client::unban(&c, subnet.as_deref().filter(|_| !all)),
        Cmd::Status(c) => client::status(&c),
        Cmd::Decode { file, format, all } => {
            let data = match std::fs::read(&file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            match summarize(data.into(), format, all) {
                Ok(s) => {
                    // a closed pipe (`bsn decode --all F | head`) ends it quietly
                    let _ = say!("{}", s.trim_end_matches('\n'));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

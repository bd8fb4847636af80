//! `bsn simnet`: flags, the live view and the summary. The network itself is
//! [`bsn::simnet`]'s.

use super::say;
use bsn::simnet::{Options, Percentiles, Progress, Summary, MAX_NODES};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SimnetArgs {
    /// Honest nodes: 1 to 250 real engines, each on its own loopback address (127.0.0.1,
    /// 127.0.0.2...); 1 to 100,000 with --virtual.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    nodes: u32,
    /// Run a simulated network instead of real engines: node cores in one thread on a virtual
    /// clock, links with internet-like latencies (10 to 150 ms one way, 10 ms of jitter, 1 %
    /// loss), adversaries of ten kinds, and the properties every run must keep checked at the
    /// end. Same seed, same run.
    #[arg(long = "virtual")]
    virtual_net: bool,
    /// Seed for the topology, miners, transactions and adversaries (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Adversaries (0 to 250): scripted peers on 127.0.1.x that lie (headers with invalid
    /// proof of work) or flood (inv over the rate limit), each to a few honest nodes. With
    /// --virtual: ten kinds in turn (see `bsn::simnet::Attack`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=250))]
    adversaries: u16,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Blocks to mine.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    blocks: u32,
    /// Transactions to submit (spread over the mining).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    txs: u32,
    /// Time between blocks: 200ms, 1s... (default 200ms; 10s of virtual time with --virtual)
    #[arg(long, value_parser = humantime::parse_duration)]
    block_interval: Option<Duration>,
    /// Time every node has, after the last block and transaction, to get them all (default
    /// 30s; 300s of virtual time with --virtual).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// With --virtual: split the honest nodes in two halves for this long during the mining
    /// (20s...), then heal.
    #[arg(long, value_parser = humantime::parse_duration, requires = "virtual_net")]
    partition: Option<Duration>,
}

impl SimnetArgs {
    /// A simulated network (`--virtual`).
    pub fn is_virtual(&self) -> bool {
        self.virtual_net
    }
}

fn ms(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("p50 {:.1} p90 {:.1} p99 {:.1} ms", p.p50, p.p90, p.p99),
        None => "-".into(),
    }
}

/// The live view: a small table redrawn in place on a terminal (at most four times a second),
/// a plain line a second otherwise.
struct Live {
    tty: bool,
    open: bool,
    drawn: bool,
    last: Option<Instant>,
}

impl Live {
    fn show(&mut self, p: &Progress) {
        if !self.open {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut bans = format!("bans: honest {}", p.honest_banned);
        if p.adversaries > 0 {
            bans.push_str(&format!(
                ", adversaries {}/{}",
                p.adversaries_banned, p.adversaries
            ));
        }
        let virt = match p.virtual_time {
            Some(v) => format!(" ({:.0}s virtual)", v.as_secs_f64()),
            None => String::new(),
        };
        let head = format!(
            "{:>6.1}s{virt} {:<10} {} nodes, {:.1} peers each, {bans}",
            p.elapsed.as_secs_f64(),
            p.phase,
            p.nodes,
            p.avg_peers,
        );
        let blocks = format!(
            "blocks {}/{}, tip {} at {}/{} nodes",
            p.blocks_mined, p.blocks_target, p.tip_height, p.nodes_at_tip, p.nodes
        );
        let txs = format!(
            "txs {}/{}, {} at every node",
            p.txs_submitted, p.txs_target, p.txs_everywhere
        );
        if self.tty {
            // a small table (lines under 80 columns) redrawn in place
            let table = [
                head,
                format!("  {blocks:<34} {}", ms(p.block_ms)),
                format!("  {txs:<34} {}", ms(p.tx_ms)),
            ];
            let mut out = std::io::stdout().lock();
            let up = if self.drawn {
                format!("\r\x1b[{}A", table.len() - 1)
            } else {
                String::new()
            };
            let body: Vec<String> = table.iter().map(|l| format!("\x1b[2K{l}")).collect();
            self.open = write!(out, "{up}{}", body.join("\n"))
                .and_then(|()| out.flush())
                .is_ok();
            self.drawn = true;
        } else {
            self.open = say!(
                "{head} | {blocks} | block {} | {txs} | tx {}",
                ms(p.block_ms),
                ms(p.tx_ms)
            );
        }
    }

    /// Ends the redrawn table.
    fn end(&mut self) {
        if self.drawn && self.open {
            self.open = say!("");
        }
        self.drawn = false;
    }
}

fn print_summary(s: &Summary, json: Option<&PathBuf>, wall: Duration) -> bool {
    let verdict = if s.converged {
        format!(
            "converged: all {} nodes at height {} ({})",
            s.nodes, s.tip_height, s.tip_hash
        )
    } else {
        format!(
            "NOT converged: not every node is at height {} ({})",
            s.tip_height, s.tip_hash
        )
    };
    let took = if s.mode == "virtual" {
        format!(
            "{:.1} s virtual in {:.1} s",
            s.duration.as_secs_f64(),
            wall.as_secs_f64()
        )
    } else {
        format!("{:.1} s", s.duration.as_secs_f64())
    };
    let mut open = say!(
        "bsn simnet ({}): {} nodes, {} links, seed {}, {took}: {verdict}",
        s.mode,
        s.nodes,
        s.links,
        s.seed,
    );
    open = open
        && say!(
            "  blocks        {:>6}   propagation {}",
            s.blocks,
            ms(s.block_propagation_ms)
        );
    open = open
        && say!(
            "  transactions  {:>6}   propagation {}   seen by every node: {:.1}%",
            s.txs,
            ms(s.tx_propagation_ms),
            s.tx_delivered * 100.0
        );
    open = open
        && say!(
            "  bans          honest nodes banned {}, adversaries banned {} of {}",
            s.honest_banned,
            s.adversaries_banned,
            s.adversaries
        );
    // each banned subnet once: by how many nodes, and why
    let mut seen: Vec<(String, usize, &str)> = Vec::new();
    for b in &s.bans {
        let subnet = b.subnet.to_string();
        match seen.iter_mut().find(|(x, _, _)| *x == subnet) {
            Some(e) => e.1 += 1,
            None => seen.push((subnet, 1, &b.reason)),
        }
    }
    for (subnet, by, reason) in seen {
        open = open
            && say!(
                "    {subnet} banned by {by} node{}: {reason}",
                if by == 1 { "" } else { "s" }
            );
    }
    for a in &s.adversary_report {
        open = open && say!("    {} {}: {}", a.kind, a.ip, a.outcome);
    }
    if s.honest_scored > 0 {
        open = open && say!("  honest nodes scored (not banned): {}", s.honest_scored);
    }
    // (a simulated network lists its errors with the violations)
    for e in s.errors.iter().filter(|_| s.violations.is_empty()) {
        open = open && say!("  problem: {e}");
    }
    for v in &s.violations {
        open = open && say!("  VIOLATED: {v}");
    }
    if let Some(d) = s.trace_digest {
        open = open && say!("  trace digest  {d:016x}");
    }
    if let Some(f) = json {
        open = open && say!("  summary written to {}", f.display());
    }
    open
}

pub fn run(a: SimnetArgs) -> ExitCode {
    let seed = a.seed.unwrap_or_else(bsn::simnet::random_seed);
    let nodes = a.nodes as usize;
    let mut opts = if a.virtual_net {
        Options::virtual_net(nodes, seed)
    } else {
        if nodes > MAX_NODES {
            eprintln!(
                "error: --nodes: at most {MAX_NODES} real engines (one loopback address each); \
                 more with --virtual"
            );
            return ExitCode::from(2);
        }
        Options {
            nodes,
            seed,
            ..Options::default()
        }
    };
    opts.adversaries = a.adversaries as usize;
    opts.blocks = a.blocks;
    opts.txs = a.txs;
    if let Some(i) = a.block_interval {
        opts.block_interval = i;
    }
    if let Some(t) = a.timeout {
        opts.timeout = t;
    }
    opts.partition = a.partition;
    let open = if a.virtual_net {
        let m = &opts.links;
        say!(
            "bsn simnet: {} simulated node{} (virtual clock; links {}-{} ms one way, {} ms \
             jitter, {}% loss{}), {} adversar{}, seed {seed} (repeat with --seed {seed}), {} \
             blocks every {}, {} transactions",
            opts.nodes,
            if opts.nodes == 1 { "" } else { "s" },
            m.latency.0.as_millis(),
            m.latency.1.as_millis(),
            m.jitter.as_millis(),
            m.loss * 100.0,
            match opts.partition {
                Some(p) => format!("; a partition of {}", humantime::format_duration(p)),
                None => String::new(),
            },
            opts.adversaries,
            if opts.adversaries == 1 { "y" } else { "ies" },
            opts.blocks,
            humantime::format_duration(opts.block_interval),
            opts.txs
        )
    } else {
        say!(
            "bsn simnet: {} real engine{} on 127.0.0.1{}, {} adversar{}, seed {seed} (repeat \
             with --seed {seed}), {} blocks every {}, {} transactions",
            opts.nodes,
            if opts.nodes == 1 { "" } else { "s" },
            if opts.nodes == 1 {
                String::new()
            } else {
                format!("-127.0.0.{}", opts.nodes)
            },
            opts.adversaries,
            if opts.adversaries == 1 { "y" } else { "ies" },
            opts.blocks,
            humantime::format_duration(opts.block_interval),
            opts.txs
        )
    };
    let mut live = Live {
        tty: std::io::stdout().is_terminal(),
        open,
        drawn: false,
        last: None,
    };
    let started = Instant::now();
    let result = if a.virtual_net {
        Ok(bsn::simnet::run_virtual(&opts, &mut |p| live.show(p)))
    } else {
        bsn::simnet::run_engines(&opts, &mut |p| live.show(p))
    };
    live.end();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(f) = &a.json {
        if let Err(e) = summary.write_json(f) {
            eprintln!("error: cannot write {}: {e}", f.display());
            return ExitCode::FAILURE;
        }
    }
    if live.open {
        print_summary(&summary, a.json.as_ref(), started.elapsed());
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

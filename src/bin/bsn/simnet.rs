//! `bsn simnet`: flags, the live view and the summary. The network itself is
//! [`bsn::simnet`]'s.

use super::say;
use bsn::simnet::{Options, Percentiles, Progress, Summary};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SimnetArgs {
    /// Honest nodes (1 to 250), each on its own loopback address (127.0.0.1, 127.0.0.2...).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=250))]
    nodes: u16,
    /// Run the simulated network (virtual clock, no sockets) instead of real engines.
    #[arg(long = "virtual")]
    virtual_net: bool,
    /// Seed for the topology, miners, transactions and adversaries (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Adversaries (0 to 250): scripted peers on 127.0.1.x that lie (headers with invalid
    /// proof of work) or flood (inv over the rate limit), each to a few honest nodes.
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
    /// Time between blocks: 200ms, 1s...
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    block_interval: Duration,
    /// Time every node has, after the last block and transaction, to get them all.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
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
        let head = format!(
            "{:>6.1}s {:<10} {} nodes, {:.1} peers each, {bans}",
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

fn print_summary(s: &Summary, json: Option<&PathBuf>) -> bool {
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
    let mut open = say!(
        "bsn simnet ({}): {} nodes, {} links, seed {}, {:.1} s: {verdict}",
        s.mode,
        s.nodes,
        s.links,
        s.seed,
        s.duration.as_secs_f64()
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
    for e in &s.errors {
        open = open && say!("  problem: {e}");
    }
    if let Some(f) = json {
        open = open && say!("  summary written to {}", f.display());
    }
    open
}

pub fn run(a: SimnetArgs) -> ExitCode {
    if a.virtual_net {
        eprintln!(
            "error: --virtual: the simulated network is not available in this build yet; run \
             without --virtual for real engines on loopback"
        );
        return ExitCode::from(2);
    }
    let seed = a.seed.unwrap_or_else(bsn::simnet::random_seed);
    let opts = Options {
        nodes: a.nodes as usize,
        adversaries: a.adversaries as usize,
        seed,
        blocks: a.blocks,
        txs: a.txs,
        block_interval: a.block_interval,
        timeout: a.timeout,
    };
    let open = say!(
        "bsn simnet: {} real engine{} on 127.0.0.1{}, {} adversar{}, seed {seed} (repeat with \
         --seed {seed}), {} blocks every {}, {} transactions",
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
    );
    let mut live = Live {
        tty: std::io::stdout().is_terminal(),
        open,
        drawn: false,
        last: None,
    };
    let result = bsn::simnet::run_engines(&opts, &mut |p| live.show(p));
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
        print_summary(&summary, a.json.as_ref());
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

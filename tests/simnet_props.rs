//! The properties of a simulated network over many seeds (`bsn::simnet::run_virtual`): 200
//! honest nodes, 20 adversaries of every kind (`bsn::simnet::Attack`), internet-like links
//! that lose 1 % of their writes, a partition of the honest nodes in two halves that heals.
//! Every run checks that the honest nodes converge on the most-work chain, that every
//! transaction reaches every honest node exactly once, that every adversary is scored, banned
//! or dropped as its kind should be and no honest node is banned, and that no node's maps
//! grow past their bounds (`Summary::violations`).
//!
//! 300 seeds in the normal suite, in six tests that cargo runs side by side; 2,000 more behind
//! `--ignored`, with 300 seeds of harsher links (5 % loss, up to 400 ms one way, 1 MB/s). A seed that ever failed is kept below as a test of its own. To see what
//! happened in a seed: `bsn::simnet::run_virtual_traced(&props(SEED))`.

use bsn::simnet::{run_virtual, LinkModel, Options, Summary};
use std::time::{Duration, Instant};

/// The run every seed gets: 200 nodes, 10 % adversaries, 6 blocks 5 s apart (the last two
/// after a quiet tip of 20 s, for the stallers to be timed out), 30 transactions, links of 10
/// to 150 ms one way with 1 % loss, a partition of 10 s a quarter into the mining: about 50 s
/// of virtual time.
fn props(seed: u64) -> Options {
    let mut o = Options::virtual_net(200, seed);
    o.adversaries = 20;
    o.blocks = 6;
    o.txs = 30;
    o.block_interval = Duration::from_secs(5);
    o.partition = Some(Duration::from_secs(10));
    o
}

fn check(s: &Summary) -> Result<(), String> {
    let mut problems = s.violations.clone();
    if !s.converged {
        problems.push("not converged".into());
    }
    if s.tx_delivered < 1.0 {
        problems.push(format!("transactions delivered: {}", s.tx_delivered));
    }
    if s.honest_banned > 0 {
        problems.push(format!("{} honest nodes banned", s.honest_banned));
    }
    if s.honest_scored > 0 {
        problems.push(format!("{} honest nodes scored", s.honest_scored));
    }
    if s.nodes != 200 || s.adversaries != 20 || s.blocks != 6 || s.txs != 30 {
        problems.push(format!(
            "ran {} nodes, {} adversaries, {} blocks, {} transactions",
            s.nodes, s.adversaries, s.blocks, s.txs
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "seed {}: {}\n  adversaries: {}",
            s.seed,
            problems.join("\n  "),
            s.adversary_report
                .iter()
                .map(|a| format!("{} {}: {}", a.kind, a.ip, a.outcome))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    }
}

/// Runs `seeds`, panics listing every failure.
fn seeds(range: std::ops::Range<u64>) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut ran = 0;
    for seed in range.clone() {
        ran += 1;
        if let Err(e) = check(&run_virtual(&props(seed), &mut |_| {})) {
            failures.push(e);
        }
    }
    eprintln!(
        "seeds {range:?}: {ran} runs of 200 nodes in {:.1?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// 300 seeds, in six tests that run side by side.
#[test]
fn seeds_0_to_50() {
    seeds(0..50);
}

#[test]
fn seeds_50_to_100() {
    seeds(50..100);
}

#[test]
fn seeds_100_to_150() {
    seeds(100..150);
}

#[test]
fn seeds_150_to_200() {
    seeds(150..200);
}

#[test]
fn seeds_200_to_250() {
    seeds(200..250);
}

#[test]
fn seeds_250_to_300() {
    seeds(250..300);
}

// Thousands more: `cargo test --release --test simnet_props -- --ignored`.
#[test]
#[ignore]
fn thousands_of_seeds_1000_to_1500() {
    seeds(1000..1500);
}

#[test]
#[ignore]
fn thousands_of_seeds_1500_to_2000() {
    seeds(1500..2000);
}

#[test]
#[ignore]
fn thousands_of_seeds_2000_to_2500() {
    seeds(2000..2500);
}

#[test]
#[ignore]
fn thousands_of_seeds_2500_to_3000() {
    seeds(2500..3000);
}

/// Two runs of one seed: the same summary (every count, percentile and ban) and the same
/// trace digest; another seed, another run.
#[test]
fn one_seed_gives_one_run() {
    let one = run_virtual(&props(7), &mut |_| {});
    let two = run_virtual(&props(7), &mut |_| {});
    assert!(one.trace_digest.is_some());
    assert_eq!(one.trace_digest, two.trace_digest);
    assert_eq!(one, two);
    let other = run_virtual(&props(8), &mut |_| {});
    assert_ne!(one.trace_digest, other.trace_digest);
    assert_ne!(one.tip_hash, other.tip_hash);
    check(&one).unwrap_or_else(|e| panic!("{e}"));
}

fn regression(seed: u64) {
    check(&run_virtual(&props(seed), &mut |_| {})).unwrap_or_else(|e| panic!("{e}"));
}

/// A miner's own block lost at equal work to a header whose block a `withholder` kept back;
/// the next block built on it never connected anywhere: the node asked peers for a block only
/// it held (fixed: blocks of the new branch it holds are taken as done after a reorg; found
/// with seed 22 of an earlier form of these runs, 21 of seeds 0 to 304 fail without the fix).
#[test]
fn seed_55_a_block_behind_a_withheld_header() {
    regression(55);
}

/// As seed 55.
#[test]
fn seed_57_a_block_behind_a_withheld_header() {
    regression(57);
}

/// As seed 55.
#[test]
fn seed_137_a_block_behind_a_withheld_header() {
    regression(137);
}

/// A node asked a `withholder` for its block late, and the chain moved past the withheld
/// block before the request timed out: the request was dropped, not the withholder, rightly.
/// The harness first took it for a withholder nobody dealt with (seeds 25, 35 and 37 of an
/// earlier form of these runs); it now counts a block that became useless before its request
/// timed out as dealt with.
#[test]
fn seed_1143_a_withheld_block_the_chain_moved_past() {
    regression(1143);
}

/// As seed 1143.
#[test]
fn seed_2815_a_withheld_block_the_chain_moved_past() {
    regression(2815);
}

/// After the partition healed, a `replay` adversary sent a branch's headers before the honest
/// peers had its blocks; they answered `notfound` and were never asked again, so the node
/// waited for ever once the replayer was dropped for stalling (fixed: a peer's refusals up to
/// the height it announces are forgotten).
#[test]
fn seed_1265_a_block_refused_before_its_holders_had_it() {
    regression(1265);
}

/// As seed 1265.
#[test]
fn seed_1412_a_block_refused_before_its_holders_had_it() {
    regression(1412);
}

/// As seed 1265.
#[test]
fn seed_1570_a_block_refused_before_its_holders_had_it() {
    regression(1570);
}

/// Harsher links than [`props`]: 120 nodes, 12 adversaries, one-way latency 50 to 400 ms
/// with 50 ms of jitter, 5 % of writes lost, 1 MB/s each way, no partition. Over such links
/// a block request can outlast the (scaled) block timeout, so honest peers drop each other as
/// stalled and redial: what the runs below exercise.
fn harsh(seed: u64) -> Options {
    let mut o = Options::virtual_net(120, seed);
    o.adversaries = 12;
    o.blocks = 6;
    o.txs = 30;
    o.block_interval = Duration::from_secs(5);
    o.links = LinkModel {
        latency: (Duration::from_millis(50), Duration::from_millis(400)),
        jitter: Duration::from_millis(50),
        loss: 0.05,
        bandwidth: 1_000_000,
    };
    o
}

fn harsh_regression(seed: u64) {
    holds(&harsh(seed));
}

/// Runs `o`; panics listing what failed unless every property held: converged, every
/// transaction delivered, no honest node banned or scored, no violation.
fn holds(o: &Options) {
    let s = run_virtual(o, &mut |_| {});
    let mut problems = s.violations.clone();
    if !s.converged || s.tx_delivered < 1.0 || s.honest_banned > 0 || s.honest_scored > 0 {
        problems.push(format!(
            "converged {}, transactions delivered {}, honest nodes banned {}, scored {}",
            s.converged, s.tx_delivered, s.honest_banned, s.honest_scored
        ));
    }
    assert!(
        problems.is_empty(),
        "seed {}: {}",
        o.seed,
        problems.join("\n  ")
    );
}

/// Over harsh links a peer dropped as stalled took a node's transaction requests with it, and
/// the other peers that had announced them were never asked (each announces a transaction
/// once): the node never got them (fixed: a failed request is asked of the next announcer).
#[test]
fn harsh_seed_1_a_transaction_request_lost_with_its_peer() {
    harsh_regression(1);
}

/// As harsh seed 1.
#[test]
fn harsh_seed_8_a_transaction_request_lost_with_its_peer() {
    harsh_regression(8);
}

/// As harsh seed 1.
#[test]
fn harsh_seed_60_a_transaction_request_lost_with_its_peer() {
    harsh_regression(60);
}

/// A peer dropped a connection as stalled and redialled; the run ended while the close was
/// still on its way over the lossy link, so the node held both connections. The harness's
/// bound on connections counted that as a leak; it now allows two per link.
#[test]
fn harsh_seed_35_a_close_still_on_its_way() {
    harsh_regression(35);
}

/// Many more adversaries than honest nodes (default links, no partition): every property
/// must hold. `nodes` 5, seed 1: the low-work-fork adversaries filled the honest nodes' total
/// fork budget, and the honest nodes then scored each other for announcing ordinary blocks
/// (fixed: a peer within its own budget is not scored when others used up the total).
/// `nodes` 2, seed 1: adversaries the full honest nodes never took in were counted as
/// attackers nobody dealt with, and blocks gone stale as fork headers past the budget (both
/// the harness's).
fn crowded(nodes: usize, seed: u64) {
    let mut o = Options::virtual_net(nodes, seed);
    o.adversaries = 250;
    holds(&o);
}

#[test]
fn crowded_5_nodes_seed_1_the_fork_budget_used_up_by_adversaries() {
    crowded(5, 1);
}

#[test]
fn crowded_2_nodes_seed_1_adversaries_never_taken_in() {
    crowded(2, 1);
}

/// Five adversaries per honest node and a partition: 20 nodes, 100 adversaries, 6 blocks 5 s
/// apart, 30 transactions, a partition of 8 s.
fn crowded_partition(seed: u64) {
    let mut o = Options::virtual_net(20, seed);
    o.adversaries = 100;
    o.blocks = 6;
    o.txs = 30;
    o.block_interval = Duration::from_secs(5);
    o.partition = Some(Duration::from_secs(8));
    holds(&o);
}

/// A `replay` adversary sent a block again while the node's first copy waited for its
/// parent; the second copy took the first with it, and the node connected the block without
/// holding it, answering `notfound` ever after (12 of 200 seeds; fixed in the node core).
#[test]
fn crowded_partition_seed_187_a_block_sent_twice_while_waiting() {
    crowded_partition(187);
}

/// A node asked a staller for its block, and a reorg moved it past the block before the
/// harness saw the request: the harness now records moving on whether or not it saw the
/// request yet.
#[test]
fn crowded_partition_seed_25_moved_on_before_the_request_was_seen() {
    crowded_partition(25);
}

/// A node asked withholders for their block in turn; its best header chain left the block
/// before the last request timed out (the request dropped with it, rightly), while its
/// connected tip stayed below: the harness now counts the best header chain moving on.
#[test]
fn crowded_partition_seed_267_the_best_header_chain_left_the_withheld_block() {
    crowded_partition(267);
}

/// As crowded partition seed 267.
#[test]
fn crowded_partition_seed_336_the_best_header_chain_left_the_withheld_block() {
    crowded_partition(336);
}

/// Crowded partitions over many seeds: `cargo test --release --test simnet_props -- --ignored`.
#[test]
#[ignore]
fn crowded_partition_seeds_0_to_300() {
    let mut failed = Vec::new();
    for seed in 0..300 {
        if std::panic::catch_unwind(|| crowded_partition(seed)).is_err() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "crowded partition seeds failed: {failed:?}"
    );
}

/// Harsh links over many seeds: `cargo test --release --test simnet_props -- --ignored`.
#[test]
#[ignore]
fn harsh_links_seeds_0_to_300() {
    let mut failed = Vec::new();
    for seed in 0..300 {
        if std::panic::catch_unwind(|| harsh_regression(seed)).is_err() {
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "harsh seeds failed: {failed:?}");
}

/// Runs the seeds of `SIMNET_SEEDS` (`FROM..TO`, default `0..100`) and lists those that fail,
/// with what failed: `SIMNET_SEEDS=3000..4000 cargo test --release --test simnet_props scan --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn scan() {
    let range = std::env::var("SIMNET_SEEDS").unwrap_or_else(|_| "0..100".into());
    let (from, to) = range
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .expect("SIMNET_SEEDS is FROM..TO");
    let started = Instant::now();
    let mut failed = Vec::new();
    for seed in from..to {
        if let Err(e) = check(&run_virtual(&props(seed), &mut |_| {})) {
            eprintln!("{e}");
            failed.push(seed);
        }
    }
    eprintln!(
        "seeds {from}..{to}: {} failed {failed:?}, {:.1?}",
        failed.len(),
        started.elapsed()
    );
}

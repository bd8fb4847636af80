//! Network parameters as data: the four BSV networks and fully custom ones, so an embedder can
//! point bsn at any chain that shares the wire format.

use crate::wire::block::{target_from_compact, BlockHeader};
use crate::wire::frame::Magic;
use crate::wire::hash::Hash256;
use crate::wire::u256::U256;
use std::fmt;
use std::str::FromStr;

/// The networks bsn knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// BSV mainnet.
    Mainnet,
    /// BSV testnet.
    Testnet,
    /// Regression test network (local chains, trivial proof of work).
    Regtest,
    /// BSV scaling test network.
    Stn,
}

impl Network {
    /// Every named network.
    pub const ALL: [Network; 4] = [
        Network::Mainnet,
        Network::Testnet,
        Network::Regtest,
        Network::Stn,
    ];

    /// The lowercase name used on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Regtest => "regtest",
            Network::Stn => "stn",
        }
    }

    /// This network's parameters.
    pub fn params(&self) -> NetworkParams {
        NetworkParams::for_network(*self)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        Network::ALL
            .into_iter()
            .find(|n| n.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown network {s:?} (expected mainnet, testnet, regtest or stn)")
            })
    }
}

/// Everything bsn needs to know about a chain to talk to its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkParams {
    /// A name for logs.
    pub name: String,
    /// First four bytes of every P2P message (the network-isolation check of the handshake).
    pub magic: Magic,
    /// First four bytes of every record in block files (`blk*.dat`); BSV kept Bitcoin's.
    pub disk_magic: Magic,
    /// Default P2P port.
    pub default_port: u16,
    /// The genesis block header.
    pub genesis: BlockHeader,
    /// Highest target (lowest difficulty) a header may claim.
    pub pow_limit: U256,
    /// The header rules that change with height: difficulty adjustment and version floors.
    pub consensus: Consensus,
}

/// The consensus parameters of headers (the SV node's `Consensus::Params` that headers need).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consensus {
    /// Seconds a block should take (600).
    pub target_spacing: u32,
    /// Seconds the original retarget aims a 2,016-block interval at (two weeks).
    pub target_timespan: u32,
    /// Testnet's rule: a block more than two spacings after its parent may have the lowest
    /// difficulty.
    pub allow_min_difficulty: bool,
    /// Regtest's rule: the bits never change.
    pub no_retargeting: bool,
    /// Whether a header's bits are checked against the difficulty adjustment at all (true on
    /// every named network; off only for a custom chain whose rules bsn does not know, where
    /// each header still has to meet its own bits).
    pub check_difficulty: bool,
    /// The first height whose parent is at or above it is adjusted by the DAA (cw-144) instead
    /// of the original retarget and the emergency adjustment (EDA).
    pub daa_height: u32,
    /// From this height a header's version must be at least 2 (BIP34).
    pub bip34_height: u32,
    /// ... at least 3 (BIP66).
    pub bip66_height: u32,
    /// ... at least 4 (BIP65).
    pub bip65_height: u32,
    /// The work an honest best chain has at least (the SV node's `nMinimumChainWork`). Until
    /// a peer's headers are shown to reach it (or the anchor), none of them is stored: see
    /// the README ("Chain sync and serving"). Zero: every header is stored as it validates.
    pub minimum_chain_work: U256,
    /// A block known to be on the honest chain (the SV node's `defaultAssumeValid`): a
    /// peer's headers that reach it are shown honest as if they reached the minimum work.
    pub anchor: Option<Hash256>,
}

impl Consensus {
    /// Blocks between retargets of the original rule (2,016).
    pub fn interval(&self) -> u32 {
        self.target_timespan / self.target_spacing
    }

    /// Rules that never change the bits and set no version floor (regtest's, and the default
    /// of custom networks).
    pub fn fixed() -> Consensus {
        Consensus {
            target_spacing: 600,
            target_timespan: 14 * 24 * 3600,
            allow_min_difficulty: true,
            no_retargeting: true,
            check_difficulty: true,
            daa_height: 0,
            bip34_height: u32::MAX,
            bip66_height: u32::MAX,
            bip65_height: u32::MAX,
            minimum_chain_work: U256::ZERO,
            anchor: None,
        }
    }

    /// No difficulty check and no version floor: for a custom chain whose rules bsn does not
    /// know.
    pub fn unchecked() -> Consensus {
        Consensus {
            check_difficulty: false,
            ..Consensus::fixed()
        }
    }

    /// The SV node's parameters of a named network.
    pub fn for_network(n: Network) -> Consensus {
        let base = Consensus {
            no_retargeting: false,
            allow_min_difficulty: false,
            ..Consensus::fixed()
        };
        match n {
            Network::Mainnet => Consensus {
                minimum_chain_work: limit(
                    "000000000000000000000000000000000000000000a0f3064330647e2f6c4828",
                ),
                anchor: Some(
                    "000000000000000000e45ad2fbcc5ff3e85f0868dd8f00ad4e92dffabe28f8d2"
                        .parse()
                        .expect("constant hash parses"),
                ),
                daa_height: 504_031,
                bip34_height: 227_931,
                bip66_height: 363_725,
                bip65_height: 388_381,
                ..base
            },
            Network::Testnet => Consensus {
                minimum_chain_work: limit(
                    "00000000000000000000000000000000000000000000002a650f6ff7649485da",
                ),
                anchor: Some(
                    "0000000000327972b8470c11755adf8f4319796bafae01f5a6650490b98a17db"
                        .parse()
                        .expect("constant hash parses"),
                ),
                allow_min_difficulty: true,
                daa_height: 1_188_697,
                bip34_height: 21_111,
                bip66_height: 330_776,
                bip65_height: 581_885,
                ..base
            },
            Network::Stn => Consensus {
                daa_height: 2_200,
                bip34_height: 100_000_000,
                bip66_height: 0,
                bip65_height: 0,
                ..base
            },
            Network::Regtest => Consensus {
                bip34_height: 100_000_000,
                bip66_height: 1_251,
                bip65_height: 1_351,
                ..Consensus::fixed()
            },
        }
    }
}

/// Bitcoin's genesis merkle root, shared by all four networks.
const GENESIS_MERKLE_ROOT: &str =
    "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";

fn genesis(time: u32, bits: u32, nonce: u32) -> BlockHeader {
    BlockHeader {
        version: 1,
        prev_hash: Hash256::ZERO,
        merkle_root: GENESIS_MERKLE_ROOT.parse().expect("constant hash parses"),
        time,
        bits,
        nonce,
    }
}

fn limit(hex: &str) -> U256 {
    U256::from_hex(hex).expect("constant pow limit parses")
}

impl NetworkParams {
    /// Parameters of a named BSV network (from the BSV node's chain parameters).
    pub fn for_network(n: Network) -> NetworkParams {
        let std_limit = "00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let (magic, disk, port, genesis, pow_limit) = match n {
            Network::Mainnet => (
                [0xe3, 0xe1, 0xf3, 0xe8],
                [0xf9, 0xbe, 0xb4, 0xd9],
                8333,
                genesis(1231006505, 0x1d00ffff, 2083236893),
                limit(std_limit),
            ),
            Network::Testnet => (
                [0xf4, 0xe5, 0xf3, 0xf4],
                [0x0b, 0x11, 0x09, 0x07],
                18333,
                genesis(1296688602, 0x1d00ffff, 414098458),
                limit(std_limit),
            ),
            Network::Regtest => (
                [0xda, 0xb5, 0xbf, 0xfa],
                [0xfa, 0xbf, 0xb5, 0xda],
                18444,
                genesis(1296688602, 0x207fffff, 2),
                limit("7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
            ),
            Network::Stn => (
                [0xfb, 0xce, 0xc4, 0xf9],
                [0xfb, 0xce, 0xc4, 0xf9],
                9333,
                genesis(1296688602, 0x1d00ffff, 414098458),
                limit(std_limit),
            ),
        };
        NetworkParams {
            name: n.name().to_string(),
            magic: Magic(magic),
            disk_magic: Magic(disk),
            default_port: port,
            genesis,
            pow_limit,
            consensus: Consensus::for_network(n),
        }
    }

    /// Fully custom parameters, e.g. a Bitcoin Core or bcoin regtest node (magic `fabfb5da`),
    /// with fixed difficulty and no version floors ([`Consensus::fixed`]; see
    /// [`NetworkParams::with_consensus`]).
    pub fn custom(
        name: &str,
        magic: Magic,
        disk_magic: Magic,
        default_port: u16,
        genesis: BlockHeader,
        pow_limit: U256,
    ) -> NetworkParams {
        NetworkParams {
            name: name.to_string(),
            magic,
            disk_magic,
            default_port,
            genesis,
            pow_limit,
            consensus: Consensus::fixed(),
        }
    }

    /// The same parameters with other consensus rules.
    pub fn with_consensus(mut self, consensus: Consensus) -> NetworkParams {
        self.consensus = consensus;
        self
    }

    /// The same parameters with another network magic (for peers on the same chain that use a
    /// different magic, such as BTC regtest nodes).
    pub fn with_magic(mut self, magic: Magic) -> NetworkParams {
        self.magic = magic;
        self
    }

    /// Hash of the genesis block.
    pub fn genesis_hash(&self) -> Hash256 {
        self.genesis.hash()
    }

    /// Whether `bits` encodes a valid target at or below this network's proof-of-work limit.
    pub fn bits_within_limit(&self, bits: u32) -> bool {
        target_from_compact(bits).is_some_and(|t| t <= self.pow_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_hashes_are_the_known_ones() {
        let want = [
            (
                Network::Mainnet,
                "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
            ),
            (
                Network::Testnet,
                "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
            ),
            (
                Network::Regtest,
                "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
            ),
            (
                Network::Stn,
                "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
            ),
        ];
        for (n, h) in want {
            let p = n.params();
            assert_eq!(p.genesis_hash().to_string(), h, "{n}");
            assert!(p.genesis.meets_own_target(), "{n}");
            assert!(p.bits_within_limit(p.genesis.bits), "{n}");
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!("STN".parse::<Network>().unwrap(), Network::Stn);
        assert!("btc".parse::<Network>().is_err());
        assert_eq!(
            "e3e1f3e8".parse::<Magic>().unwrap(),
            Network::Mainnet.params().magic
        );
        assert!("e3e1f3".parse::<Magic>().is_err());
    }
}

//! The `bsn` command line.

use bsn::decode::{summarize, Format};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bsn", version, about = "Bitcoin Server Network engine")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    match cli.command {
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
                    print!("{s}");
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

//! `starling-operator`: `crd` prints the CRD, `run` runs the controller.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "starling-operator",
    version,
    about = "Kubernetes operator for Starling brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Broker CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = starling_operator::crd::crd_yaml().context("rendering the CRD")?;
            print!("{yaml}");
            Ok(())
        }
    }
}

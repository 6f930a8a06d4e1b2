//! `txlog bench`: append load against a running cluster (the default mode),
//! and the benches that start their own local cluster because they kill and
//! restart nodes (`failover`, `resync`, `startup`) or publish their feed
//! (`speculative`), and `seal`, `token` and `feed`,
//! which measure a batch seal, a request token and the UDP feed in one process.

mod append;
mod cluster;
mod failover;
mod feed;
#[cfg(feature = "dpdk")]
mod feed_dpdk;
mod resync;
mod seal;
mod speculative;
mod startup;
mod token;

/// `txlog bench [append] …`, `txlog bench failover …`, `txlog bench resync …`, `txlog bench startup …`, `txlog bench seal …`, `txlog bench token …`, `txlog bench feed …`, `txlog bench speculative …`.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    #[command(flatten)]
    pub append: append::BenchArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchMode {
    /// Append load against a running cluster (the default).
    Append(append::BenchArgs),
    /// Kill -9 the leader of a local 3-node cluster N times; time until an append commits under a new leader.
    Failover(failover::FailoverArgs),
    /// Catch-up time and bytes for a node that missed M records: delta path vs wiped (full) path.
    Resync(resync::ResyncArgs),
    /// Restart a node holding N records (clean and kill -9); time until it serves all of them.
    Startup(startup::StartupArgs),
    /// CPU cost of sealing and opening one batch (LZ4, AES-256-GCM, ed25519) and LZ4's ratio, on generated corpora.
    Seal(seal::SealArgs),
    /// CPU cost of issuing and checking one request token (HMAC-SHA256, payload digest, replay memory).
    Token(token::TokenArgs),
    /// The UDP feed on loopback: publisher throughput, latency to N subscribers, priority under overload, loss recovery.
    Feed(feed::FeedBenchArgs),
    /// A local 3-node cluster with the feed's speculative stream on: per record, append -> ack,
    /// -> speculative copy and -> committed copy at a feed subscriber.
    Speculative(speculative::SpeculativeArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command.mode {
        None => append::run(command.append).await,
        Some(BenchMode::Append(args)) => append::run(args).await,
        Some(BenchMode::Failover(args)) => failover::run(args).await,
        Some(BenchMode::Resync(args)) => resync::run(args).await,
        Some(BenchMode::Startup(args)) => startup::run(args).await,
        Some(BenchMode::Seal(args)) => seal::run(args).await,
        Some(BenchMode::Token(args)) => token::run(args).await,
        Some(BenchMode::Feed(args)) => feed::run(args).await,
        Some(BenchMode::Speculative(args)) => speculative::run(args).await,
    }
}

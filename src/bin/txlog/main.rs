//! The `txlog` command. This file only parses the command line and hands
//! each command to the module that runs it:
//!
//! * `node` — one server node (crate `txlog`, the server library);
//! * `dev` — [`dev`]: a local three-region cluster of node processes;
//! * `append`, `read`, `lookup`, `tail` — [`records`]; `status` — [`status`];
//! * `admin …` — [`admin`]; `bench …` — [`bench`]; `keys …` — [`keys`].
//!
//! Flags and `--help` text are in [`args`]; logging and signal handling in
//! [`process`].

mod admin;
mod args;
mod audit;
mod bench;
mod certs;
mod dev;
mod duration;
mod feed;
mod feed_hub;
mod feed_open;
mod keys;
mod process;
mod records;
mod status;
mod token;
mod verify;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use args::Cli;
use args::Command;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("txlog: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("txlog: error: {err:#}");
            // `verify` tells "could not check" (2) from "found damage" (1).
            std::process::ExitCode::from(if err.is::<verify::CannotCheck>() { 2 } else { 1 })
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    // Servers log at info; client commands only warn, so their output stays clean.
    let serves = matches!(command, Command::Dev(_) | Command::Node(_));
    process::init_tracing(if serves { "info" } else { "warn" });
    match command {
        Command::Dev(args) => {
            let shutdown = CancellationToken::new();
            process::cancel_on_signals(shutdown.clone())?;
            dev::run(args, shutdown).await
        }
        Command::Node(settings) => {
            let config = settings.resolve()?;
            let shutdown = CancellationToken::new();
            process::cancel_on_signals(shutdown.clone())?;
            let node = txlog::node::Node::start(config, shutdown).await?;
            node.run_until_shutdown().await?;
            Ok(())
        }
        Command::Append(args) => records::append(args).await,
        Command::Read(args) => records::read(args).await,
        Command::Lookup(args) => records::lookup(args).await,
        Command::Tail(args) => records::tail(args).await,
        Command::Status(args) => status::print_status(&args.cluster, false).await,
        Command::Admin(args) => admin::run(args.command).await,
        Command::Bench(command) => bench::run(*command).await,
        Command::Keys(args) => keys::run(args.command).await,
        Command::Token(args) => token::run(args.command),
        Command::Certs(args) => certs::run(args.command),
        Command::Audit(args) => audit::run(args.command).await,
        Command::Feed(args) => feed::run(args.command).await,
        Command::Verify(args) => verify::run(args),
    }
}

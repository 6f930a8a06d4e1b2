//! `txlog certs`: the cluster CA and its node and client certificates
//! (the work is `txlog::certs`; this prints what was written).

use crate::args::CertsCommand;
use txlog::certs::Holder;

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(args) => {
            for name in args.holders.nodes.iter().chain(&args.holders.clients) {
                txlog::certs::check_name(name).map_err(anyhow::Error::msg)?;
            }
            txlog::certs::init(&args.dir).map_err(anyhow::Error::msg)?;
            eprintln!(
                "wrote the cluster CA to {0}/ca.pem and its key to {0}/ca.key (mode 0600; keep it off the nodes)",
                args.dir.display()
            );
            issue_all(&args.dir, &args.holders, args.days)
        }
        CertsCommand::Issue(args) => {
            if args.holders.nodes.is_empty() && args.holders.clients.is_empty() {
                anyhow::bail!("name at least one --node or --client to issue a certificate for");
            }
            issue_all(&args.dir, &args.holders, args.days)
        }
    }
}

fn issue_all(dir: &std::path::Path, holders: &crate::args::CertHolders, days: u32) -> anyhow::Result<()> {
    let all = holders
        .nodes
        .iter()
        .map(|n| (Holder::Node, n))
        .chain(holders.clients.iter().map(|c| (Holder::Client, c)));
    for (holder, name) in all {
        let files = txlog::certs::issue(dir, holder, name, days).map_err(anyhow::Error::msg)?;
        eprintln!(
            "wrote {holder:?} certificate {name:?} to {} and its key to {} (valid {days} days)",
            files.cert.display(),
            files.key.display()
        );
    }
    Ok(())
}

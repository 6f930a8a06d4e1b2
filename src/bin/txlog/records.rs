//! The record commands: `append`, `read`, `lookup`, `tail`, and how a record
//! is printed (one line, or JSON with `--json`).

use anyhow::Context;
use txlog_client::Client;
use txlog_client::ClientError;
use txlog_client::Credentials;
use txlog_client::TlsFiles;
use txlog_proto::CommittedRecord;

use crate::args::AppendArgs;
use crate::args::ClusterArgs;
use crate::args::LookupArgs;
use crate::args::ReadArgs;
use crate::args::TailArgs;

/// A client of `args.cluster`, signing with `args.credentials` (or the
/// dev cluster's root key when it exists and no file is named), over TLS
/// with `args.tls_*` (or the dev cluster's client certificate).
pub fn client(args: &ClusterArgs) -> anyhow::Result<Client> {
    let mut client = Client::connect(&args.cluster)?;
    let secret_file = args
        .credentials
        .clone()
        .or_else(|| dev_file(txlog_testkit::ROOT_KEY_FILE));
    if let Some(path) = secret_file {
        let credentials = Credentials::from_file(&path, args.claim_roles.clone()).map_err(anyhow::Error::msg)?;
        client = client.with_credentials(credentials);
    }
    if let Some(files) = tls_files(args)? {
        client = client.with_tls(&files.read().map_err(anyhow::Error::msg)?);
    }
    Ok(client)
}

/// The three TLS files named, or the dev cluster's; all or none.
fn tls_files(args: &ClusterArgs) -> anyhow::Result<Option<TlsFiles>> {
    match (&args.tls_ca_file, &args.tls_cert_file, &args.tls_key_file) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })),
        (None, None, None) => Ok(dev_file(txlog_testkit::CERTS_DIR)
            .map(|dir| txlog_testkit::client_tls_files(&dir))
            .filter(|files| files.cert.exists())),
        _ => anyhow::bail!("give all three of --tls-ca-file, --tls-cert-file and --tls-key-file, or none"),
    }
}

/// `name` in the directory `txlog dev` keeps its cluster in, if it exists.
pub fn dev_file(name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TXLOG_DEV_DATA_DIR").map_or_else(|| "txlog-dev-data".into(), std::path::PathBuf::from);
    let path = dir.join(name);
    path.exists().then_some(path)
}

pub async fn append(args: AppendArgs) -> anyhow::Result<()> {
    let AppendArgs {
        channel,
        txid,
        payload,
        payload_file,
        cluster,
    } = args;
    let payload = match (payload, payload_file) {
        (Some(p), _) => p.into_bytes(),
        (None, Some(path)) => std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        (None, None) => unreachable!("clap requires one"),
    };
    let result = client(&cluster)?
        .append_one(&channel, txid.as_bytes(), &payload)
        .await?;
    if cluster.json {
        let value = serde_json::json!({"records": [{"txid": txid, "channel": channel, "seq": result.seq, "channel_seq": result.channel_seq, "duplicate": result.duplicate}]});
        println!("{value}");
    } else if result.duplicate {
        println!(
            "seq {} (txid {txid:?} was already committed; nothing new written)",
            result.seq
        );
    } else {
        println!("seq {}", result.seq);
    }
    Ok(())
}

pub async fn read(args: ReadArgs) -> anyhow::Result<()> {
    let response = client(&args.cluster)?
        .read(args.from, args.limit, args.channel.as_deref(), args.stale)
        .await?;
    if args.cluster.json {
        let records: Vec<_> = response.records.iter().map(record_json).collect();
        println!(
            "{}",
            serde_json::json!({"records": records, "next_seq": response.next_seq, "last_seq": response.last_seq})
        );
        return Ok(());
    }
    for record in &response.records {
        println!("{}", record_line(record));
    }
    if response.records.is_empty() {
        println!(
            "(no records from seq {}; last committed seq is {})",
            args.from, response.last_seq
        );
    }
    Ok(())
}

pub async fn lookup(args: LookupArgs) -> anyhow::Result<()> {
    match client(&args.cluster)?.lookup(args.txid.as_bytes(), args.stale).await? {
        Some(record) if args.cluster.json => println!("{}", record_json(&record)),
        Some(record) => println!("{}", record_line(&record)),
        None => anyhow::bail!("no committed record with txid {:?}", args.txid),
    }
    Ok(())
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = client(&args.cluster)?;
    let from = match args.from {
        Some(f) => f,
        None => client.read(1, 1, None, false).await?.last_seq + 1,
    };
    let mut stream = client.subscribe(from, args.channel.as_deref()).await?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = stream.message() => match next {
                Ok(Some(record)) if args.cluster.json => println!("{}", record_json(&record)),
                Ok(Some(record)) => println!("{}", record_line(&record)),
                Ok(None) => anyhow::bail!("the node closed the stream"),
                Err(status) => return Err(ClientError::Status(status).into()),
            }
        }
    }
}

fn record_line(r: &CommittedRecord) -> String {
    format!(
        "seq={} channel={} channel_seq={} txid={} payload={}",
        r.seq,
        r.channel,
        r.channel_seq,
        String::from_utf8_lossy(&r.txid),
        payload_text(r)
    )
}

/// The payload as text; a key announcement (binary) as what it announces.
fn payload_text(r: &CommittedRecord) -> String {
    if r.channel != txlog_raft::KEYS_CHANNEL {
        return String::from_utf8_lossy(&r.payload).into_owned();
    }
    match txlog_raft::KeyEvent::decode(&r.payload) {
        Ok(txlog_raft::KeyEvent::Signing(a)) => format!("<signing key {} of node {}>", a.id, a.node_id),
        Ok(txlog_raft::KeyEvent::Data(a)) => format!("<data key {}, wrapped under KEK {}>", a.id, a.kek_id),
        Ok(txlog_raft::KeyEvent::Rewrap(a)) => format!("<data key {}, rewrapped under KEK {}>", a.id, a.kek_id),
        Ok(txlog_raft::KeyEvent::Reprove(a)) => format!("<signing key {} of node {}, proven again>", a.id, a.node_id),
        Err(err) => format!("<key event that does not decode: {err}>"),
    }
}

fn record_json(r: &CommittedRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": r.seq,
        "channel": r.channel,
        "channel_seq": r.channel_seq,
        "txid": String::from_utf8_lossy(&r.txid),
        "payload": payload_text(r),
        "commit_time_ns": r.commit_time_ns,
        "log_index": r.log_index,
        "log_term": r.log_term,
        "origin_node": r.origin_node,
    })
}

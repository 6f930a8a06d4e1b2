//! `txlog token`: client secrets and request tokens (see
//! `client/src/token.rs`). `secret` makes a client key's secret file;
//! `issue` prints a token for one call, to pass by hand (e.g. with
//! grpcurl's `-H`); the client library and the CLI make their own.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use prost::Message as _;
use txlog_client::ClientSecret;
use txlog_client::TOKEN_METADATA_KEY;

use crate::args::TokenCommand;
use crate::args::TokenIssueArgs;
use crate::args::TokenSecretArgs;

/// Largest request file `issue` reads: a request's own limit on the wire.
const REQUEST_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Secret(args) => secret(args),
        TokenCommand::Issue(args) => issue(args),
    }
}

fn secret(args: TokenSecretArgs) -> anyhow::Result<()> {
    let key = ClientSecret::generate(&args.key_id)?;
    write_secret(&args.out, &key)?;
    eprintln!(
        "wrote the secret of client key {:?} to {} (mode 0600)",
        key.key_id(),
        args.out.display()
    );
    Ok(())
}

/// Write `key` to a new file `path` (mode 0600; an existing file is never
/// replaced).
pub fn write_secret(path: &Path, key: &ClientSecret) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (an existing file is never replaced)", path.display()))?;
    writeln!(file, "{}", key.to_line())?;
    file.sync_all()?;
    Ok(())
}

/// Read a client secret file, refusing one that group or others may read.
pub fn load_secret(path: &Path) -> anyhow::Result<ClientSecret> {
    ClientSecret::read_file(path).map_err(anyhow::Error::msg)
}

fn issue(args: TokenIssueArgs) -> anyhow::Result<()> {
    let key = load_secret(&args.secret_file)?;
    let request = match &args.request {
        Some(path) => {
            let bytes = std::fs::metadata(path)
                .with_context(|| format!("request file {}", path.display()))?
                .len();
            anyhow::ensure!(
                bytes <= REQUEST_FILE_BYTES_MAX,
                "request file {} holds {bytes} bytes; at most {REQUEST_FILE_BYTES_MAX}",
                path.display()
            );
            std::fs::read(path).with_context(|| format!("read {}", path.display()))?
        }
        None => Vec::new(),
    };
    let digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&request).into()
    };
    let now_ms = txlog_client::wall_clock_ms();
    let token = key.issue(&args.role, args.ttl, now_ms, &args.method, &digest)?;
    let value = base64::engine::general_purpose::STANDARD.encode(token.encode_to_vec());
    if args.header {
        println!("{TOKEN_METADATA_KEY}: {value}");
    } else {
        println!("{value}");
    }
    eprintln!(
        "token of key {:?} for {} (request of {} bytes), roles {:?}, valid {} s",
        key.key_id(),
        args.method,
        request.len(),
        args.role,
        args.ttl.as_secs()
    );
    Ok(())
}

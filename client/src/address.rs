//! Node addresses as the client takes them: `HOST:PORT`, `http://` optional.

use crate::ClientError;

/// Normalise one address: strip `http://` and a trailing `/`, require `HOST:PORT`.
pub fn normalize_address(address: &str) -> Result<String, ClientError> {
    let trimmed = address.trim();
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    match bare.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(bare.to_string()),
        _ => Err(ClientError::BadCluster(format!("{address:?} is not HOST:PORT"))),
    }
}

/// A comma-separated list of addresses, normalised; at least one.
pub(crate) fn parse_cluster(cluster: &str) -> Result<Vec<String>, ClientError> {
    let endpoints = cluster
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(normalize_address)
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(ClientError::BadCluster("no addresses given".into()));
    }
    Ok(endpoints)
}

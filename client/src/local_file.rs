//! Reading the small local files a client is given (its secret, its TLS
//! certificate and key): bounded in size, and a private one refused when
//! group or others may read it.

use std::path::Path;

/// Read `path` (`what` names it in errors), refusing one over `bytes_max`
/// and, when `private`, one that group or others may read.
pub(crate) fn read_bounded(path: &Path, what: &str, bytes_max: u64, private: bool) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    if metadata.len() > bytes_max {
        return Err(format!(
            "{what} {shown}: {} bytes, more than the {bytes_max} such a file may have",
            metadata.len()
        ));
    }
    let mode = metadata.permissions().mode();
    if private && mode & 0o077 != 0 {
        return Err(format!(
            "{what} {shown} has mode {:o}: group or others may read it; `chmod 600` it (and consider it exposed)",
            mode & 0o777
        ));
    }
    std::fs::read(path).map_err(|e| format!("{what} {shown}: {e}"))
}

//! The generated token-encryption secret, for a proxy started without `SYNCV3_SECRET`.
//!
//! It is made once, kept in a file only its owner may read, and read back on every later
//! start: tokens stored under one secret cannot be decrypted under another.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Random bytes in a generated secret (hex-encoded in the file).
const SECRET_BYTES: usize = 32;

/// Why the secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create it: {0}")]
    Io(#[from] io::Error),
    #[error(
        "it is empty; delete it only if no token was ever stored under it, or set SYNCV3_SECRET"
    )]
    Empty,
}

/// The secret kept at `path`, made (with its directory) if there is none. Returns it and
/// whether it was made now.
pub fn load_or_create(path: &Path) -> Result<(String, bool), SecretError> {
    match fs::read_to_string(path) {
        Ok(kept) => return read(&kept).map(|secret| (secret, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let secret = hex::encode(rand::random::<[u8; SECRET_BYTES]>());
    // Written whole under a temporary name, then linked into place: a link never replaces
    // an existing file, so of two proxies starting at once on one directory the second
    // reads the first one's secret instead of overwriting it, and nobody ever reads a
    // half-written file.
    // Random, not the pid: in a container every start is pid 1, and a temporary left by a
    // killed start must not be in the next one's way.
    let temporary = path.with_extension(format!("tmp{:016x}", rand::random::<u64>()));
    let written = write_private(&temporary, &secret).and_then(|()| fs::hard_link(&temporary, path));
    let _ = fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok((secret, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read(&fs::read_to_string(path)?).map(|secret| (secret, false))
        }
        Err(e) => Err(e.into()),
    }
}

fn read(kept: &str) -> Result<String, SecretError> {
    let secret = kept.trim();
    if secret.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(secret.to_owned())
}

fn write_private(path: &Path, secret: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The mode given at creation is narrowed by the umask, never widened; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "slidesync-secret-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        dir.join("nested").join("slidesync.secret")
    }

    #[test]
    fn a_secret_is_made_once_private_and_read_back() {
        let path = scratch();
        let (made, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(made.len(), 2 * SECRET_BYTES);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again, made);
        fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn an_empty_secret_file_is_refused_not_replaced() {
        let path = scratch();
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "\n").unwrap();
        assert!(matches!(load_or_create(&path), Err(SecretError::Empty)));
        assert_eq!(fs::read_to_string(&path).unwrap(), "\n");
        fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
    }
}

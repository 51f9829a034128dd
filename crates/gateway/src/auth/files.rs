//! `JWT_KEYS_DIR`: a directory of verification keys, one per file, reloaded on change so a key
//! rotation needs no restart.
//!
//! Every regular file directly in the directory whose name does not start with `.` is one key,
//! and its name is the key's `kid` (a mounted Kubernetes Secret: one key per Secret key; the
//! `..data` symlink and timestamped directories start with `.`). Symlinks are followed. Content:
//! a PEM public key (RSA → RS256, EC P-256 → ES256) or else an HS256 secret (the bytes, one
//! trailing newline trimmed, at least 32 bytes outside `--dev`).
//!
//! A reload is all or nothing: one bad file, or an empty directory, refuses the whole new set and
//! the last good set stays (`live_jwt_key_reloads_total{source="dir",result="failure"}` and a
//! warning naming the file). At startup the same refusal is fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::keys::{Key, KeyRing, KeySource};
use super::watch::{Trigger, changed, watch_dir};
use crate::metrics::Metrics;

/// Most key files a directory may hold: rotation needs two or three; a bound keeps a token
/// without `kid` from being tried against hundreds of keys.
pub const MAX_KEY_FILES: usize = 32;
/// Largest key file: a 4096-bit RSA PEM is under 1 KiB.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The directory's key files as (name, content), sorted by name, or why it cannot be read.
pub type Snapshot = Result<Vec<(String, Vec<u8>)>, String>;

/// Reads the key files of `dir` (blocking).
pub fn read_dir(dir: &Path) -> Snapshot {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(format!(
                "{}: a file name is not UTF-8",
                entry.path().display()
            ));
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // A symlink to a key that a Secret update just removed dangles for an instant.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(format!(
                "{}: {} bytes, more than {MAX_KEY_FILE_BYTES}",
                path.display(),
                meta.len()
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push((name, bytes));
    }
    if files.len() > MAX_KEY_FILES {
        return Err(format!(
            "{}: {} key files, more than {MAX_KEY_FILES}",
            dir.display(),
            files.len()
        ));
    }
    files.sort();
    Ok(files)
}

/// The keys of a snapshot; any bad file refuses the whole set.
pub fn parse(snapshot: &Snapshot, allow_weak: bool) -> Result<Vec<Key>, String> {
    let files = snapshot.as_ref().map_err(Clone::clone)?;
    if files.is_empty() {
        return Err("no key files (every file whose name does not start with '.' is a key)".into());
    }
    files
        .iter()
        .map(|(kid, bytes)| {
            Key::from_file(kid, bytes, allow_weak).map_err(|e| format!("key file {kid:?}: {e}"))
        })
        .collect()
}

/// Loads `dir` at startup.
pub fn load(dir: &Path, allow_weak: bool) -> Result<(Vec<Key>, Snapshot), String> {
    let snapshot = read_dir(dir);
    let keys = parse(&snapshot, allow_weak).map_err(|e| format!("JWT_KEYS_DIR: {e}"))?;
    Ok((keys, snapshot))
}

/// Reloads `dir` into `ring` on every change until `stop`. `loaded` is what startup loaded.
pub fn spawn_reloader(
    dir: PathBuf,
    loaded: Snapshot,
    allow_weak: bool,
    ring: Arc<KeyRing>,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut triggers = watch_dir(&dir, stop)?;
    tokio::spawn(async move {
        let mut last = loaded;
        while let Some(trigger) = triggers.recv().await {
            let read_dir_again = {
                let dir = dir.clone();
                move || read_dir(&dir)
            };
            let Some(snapshot) =
                changed(read_dir_again, Some(&last), trigger == Trigger::Signal).await
            else {
                continue;
            };
            match parse(&snapshot, allow_weak) {
                Ok(keys) => {
                    let kids: Vec<&str> = keys.iter().filter_map(Key::kid).collect();
                    let kids = kids.join(",");
                    let changed = ring.replace(KeySource::Dir, keys);
                    metrics.key_reload("dir", "success");
                    tracing::info!(?trigger, changed, kids, "JWT_KEYS_DIR reloaded");
                }
                Err(e) => {
                    metrics.key_reload("dir", "failure");
                    tracing::warn!(
                        ?trigger,
                        "JWT_KEYS_DIR reload refused, keeping the last good keys: {e}"
                    );
                }
            }
            last = snapshot;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::tests::{EC_PUBLIC, SECRET_A, SECRET_B};

    #[test]
    fn every_visible_regular_file_is_a_key_named_by_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), SECRET_B).unwrap();
        std::fs::write(dir.path().join("a"), [SECRET_A, b"\n"].concat()).unwrap();
        std::fs::write(dir.path().join("ec"), EC_PUBLIC).unwrap();
        std::fs::write(dir.path().join(".hidden"), "not a key").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let (keys, _) = load(dir.path(), false).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid().unwrap()).collect();
        assert_eq!(kids, ["a", "b", "ec"]);
    }

    #[test]
    fn a_kubernetes_secret_mount_is_read_through_its_symlinks() {
        // The kubelet's layout: ..2026_01_01/<key>, ..data -> ..2026_01_01, <key> -> ..data/<key>.
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("..2026_01_01");
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("k1"), SECRET_A).unwrap();
        std::os::unix::fs::symlink("..2026_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/k1", dir.path().join("k1")).unwrap();
        // A key just removed by an update: its symlink dangles for a moment.
        std::os::unix::fs::symlink("..data/gone", dir.path().join("gone")).unwrap();
        let (keys, _) = load(dir.path(), false).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid(), Some("k1"));
    }

    #[test]
    fn one_bad_file_or_no_file_refuses_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), false).unwrap_err();
        assert!(err.contains("no key files"), "{err}");
        std::fs::write(dir.path().join("good"), SECRET_A).unwrap();
        std::fs::write(dir.path().join("weak"), "short\n").unwrap();
        let err = load(dir.path(), false).unwrap_err();
        assert!(err.contains("\"weak\"") && err.contains("32"), "{err}");
        assert_eq!(
            load(dir.path(), true).unwrap().0.len(),
            2,
            "--dev allows it"
        );
        assert!(load(&dir.path().join("missing"), false).is_err());
    }

    #[tokio::test]
    async fn a_written_key_is_added_and_a_removed_one_dropped_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), SECRET_A).unwrap();
        let (keys, snapshot) = load(dir.path(), false).unwrap();
        let metrics = Metrics::new();
        let ring = KeyRing::new(None, metrics.clone());
        ring.replace(KeySource::Dir, keys);
        let mut rx = ring.subscribe();
        let stop = CancellationToken::new();
        spawn_reloader(
            dir.path().to_owned(),
            snapshot,
            false,
            ring.clone(),
            metrics.clone(),
            stop.clone(),
        )
        .unwrap();
        let a = Key::from_file("a", SECRET_A, false).unwrap().tag();
        let b = Key::from_file("b", SECRET_B, false).unwrap().tag();

        std::fs::write(dir.path().join("b"), SECRET_B).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let set = rx.borrow_and_update().clone();
        assert!(set.contains(a) && set.contains(b));

        std::fs::remove_file(dir.path().join("a")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let set = rx.borrow_and_update().clone();
        assert!(!set.contains(a) && set.contains(b));

        // A bad file keeps the last good set.
        std::fs::write(dir.path().join("c"), "weak").unwrap();
        let failures = metrics
            .jwt_key_reloads
            .with_label_values(&["dir", "failure"]);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while failures.get() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap();
        assert!(ring.current().contains(b));
        assert_eq!(ring.current().len(), 1);
        stop.cancel();
    }
}

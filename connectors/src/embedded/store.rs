//! The embedded state store: one fjall keyspace of ordered keys, written in
//! atomic batches. The runtime keeps shard snapshots, consumed offsets, the
//! webhook outbox and its metadata (organizations, keys, segments, endpoints)
//! here, every key prefixed by its tenant.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use xeno_engine::ports::{KeyValues, PortError, StatePort, StateWrite};

fn failed(e: impl std::fmt::Display) -> PortError {
    PortError::retryable(format!("state store: {e}"))
}

/// The store. Cheap to share behind an `Arc`.
pub struct StateStore {
    db: Database,
    keyspace: Keyspace,
}

impl StateStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore, PortError> {
        std::fs::create_dir_all(dir).map_err(failed)?;
        let db = Database::builder(dir).open().map_err(failed)?;
        let keyspace = db
            .keyspace("state", KeyspaceCreateOptions::default)
            .map_err(failed)?;
        Ok(StateStore { db, keyspace })
    }
}

impl StatePort for StateStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PortError> {
        Ok(self.keyspace.get(key).map_err(failed)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyValues, PortError> {
        let mut out = Vec::new();
        let start = match after {
            Some(after) => {
                let mut k = after.to_vec();
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        for guard in self.keyspace.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = guard.into_inner().map_err(failed)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, writes: Vec<StateWrite>, durable: bool) -> Result<(), PortError> {
        let mut batch = self.db.batch();
        for write in writes {
            match write {
                StateWrite::Put(k, v) => batch.insert(&self.keyspace, k, v),
                StateWrite::Delete(k) => batch.remove(&self.keyspace, k),
            }
        }
        batch.commit().map_err(failed)?;
        if durable {
            self.db.persist(PersistMode::SyncAll).map_err(failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_atomic_scans_are_ordered_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store
                .commit(
                    vec![
                        StateWrite::Put(b"t1/b".to_vec(), b"2".to_vec()),
                        StateWrite::Put(b"t1/a".to_vec(), b"1".to_vec()),
                        StateWrite::Put(b"t2/a".to_vec(), b"x".to_vec()),
                        StateWrite::Put(b"t1/c".to_vec(), b"3".to_vec()),
                    ],
                    true,
                )
                .unwrap();
            store
                .commit(vec![StateWrite::Delete(b"t1/c".to_vec())], true)
                .unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let all = store.scan(b"t1/", None, 10).unwrap();
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [b"t1/a".as_slice(), b"t1/b"]);
        let page = store.scan(b"t1/", Some(b"t1/a"), 10).unwrap();
        assert_eq!(page, vec![(b"t1/b".to_vec(), b"2".to_vec())]);
        assert_eq!(store.get(b"t2/a").unwrap(), Some(b"x".to_vec()));
        assert_eq!(store.get(b"t1/c").unwrap(), None);
    }
}

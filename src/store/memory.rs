//! An in-memory [`Store`] for tests and simulations: the same semantics as LMDB (atomic batches,
//! ordered scans), no files.

use super::{check_schema, Batch, Op, Store, StoreResult, Table};
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

/// Tables in memory.
#[derive(Default)]
pub struct MemoryStore {
    tables: RwLock<HashMap<Table, BTreeMap<Vec<u8>, bytes::Bytes>>>,
}

impl MemoryStore {
    /// An empty store with the schema version written.
    pub fn new() -> MemoryStore {
        let s = MemoryStore::default();
        check_schema(&s).expect("an empty memory store takes the schema version");
        s
    }
}

impl Store for MemoryStore {
    fn with_value(
        &self,
        t: Table,
        key: &[u8],
        f: &mut dyn FnMut(Option<&[u8]>),
    ) -> StoreResult<()> {
        let g = self.tables.read().expect("memory store lock");
        f(g.get(&t).and_then(|m| m.get(key)).map(|v| &v[..]));
        Ok(())
    }

    fn scan(
        &self,
        t: Table,
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let g = self.tables.read().expect("memory store lock");
        if let Some(m) = g.get(&t) {
            for (k, v) in m.range(from.to_vec()..) {
                if !f(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: &Batch) -> StoreResult<()> {
        let mut g = self.tables.write().expect("memory store lock");
        for op in &batch.ops {
            match op {
                Op::Put(t, k, v) => {
                    g.entry(*t).or_default().insert(k.to_vec(), v.clone());
                }
                Op::Delete(t, k) => {
                    if let Some(m) = g.get_mut(t) {
                        m.remove(&k[..]);
                    }
                }
            }
        }
        Ok(())
    }
}

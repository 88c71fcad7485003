//! The S3 backend's block cache: a bounded LRU of fixed-size blocks of
//! packs. One reader fetches a block while others wanting it wait on its slot.

use crate::ids::PackId;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

enum SlotState {
    Pending,
    Ready(Bytes),
    Failed(String),
}

/// One block being fetched or fetched; readers wait on it.
pub(super) struct Slot {
    state: Mutex<SlotState>,
    cond: Condvar,
}

impl Slot {
    pub(super) fn wait(&self) -> std::result::Result<Bytes, String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*s {
                SlotState::Pending => s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
                SlotState::Ready(b) => return Ok(b.clone()),
                SlotState::Failed(m) => return Err(m.clone()),
            }
        }
    }
}

pub(super) enum Lookup {
    Ready(Bytes),
    /// Another thread is fetching it.
    Wait(Arc<Slot>),
    /// The caller must fetch it and call `complete`.
    Fetch(Arc<Slot>),
}

struct CacheInner {
    blocks: HashMap<(PackId, u64), (Arc<Slot>, u64)>,
    tick: u64,
}

/// A bounded LRU of pack blocks.
pub(super) struct BlockCache {
    cap: usize,
    inner: Mutex<CacheInner>,
}

impl BlockCache {
    pub(super) fn new(cap: usize) -> Self {
        BlockCache { cap, inner: Mutex::new(CacheInner { blocks: HashMap::new(), tick: 0 }) }
    }

    pub(super) fn lookup_or_claim(&self, id: PackId, k: u64) -> Lookup {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.tick += 1;
        let tick = g.tick;
        if let Some((slot, t)) = g.blocks.get_mut(&(id, k)) {
            *t = tick;
            let slot = slot.clone();
            drop(g);
            let ready = match &*slot.state.lock().unwrap_or_else(|p| p.into_inner()) {
                SlotState::Ready(b) => Some(b.clone()),
                _ => None,
            };
            return match ready {
                Some(b) => Lookup::Ready(b),
                None => Lookup::Wait(slot),
            };
        }
        let slot = Arc::new(Slot { state: Mutex::new(SlotState::Pending), cond: Condvar::new() });
        g.blocks.insert((id, k), (slot.clone(), tick));
        while g.blocks.len() > self.cap {
            // Evict the least recently used block that is not being fetched.
            let victim = g
                .blocks
                .iter()
                .filter(|(_, (s, _))| !matches!(*s.state.lock().unwrap_or_else(|p| p.into_inner()), SlotState::Pending))
                .min_by_key(|(_, (_, t))| *t)
                .map(|(key, _)| *key);
            match victim {
                Some(v) => {
                    g.blocks.remove(&v);
                }
                None => break,
            }
        }
        Lookup::Fetch(slot)
    }

    pub(super) fn complete(&self, id: PackId, k: u64, slot: &Arc<Slot>, r: std::result::Result<Bytes, String>) {
        let failed = r.is_err();
        *slot.state.lock().unwrap_or_else(|p| p.into_inner()) = match r {
            Ok(b) => SlotState::Ready(b),
            Err(m) => SlotState::Failed(m),
        };
        slot.cond.notify_all();
        if failed {
            // Let the next reader try again.
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.blocks.get(&(id, k)).is_some_and(|(s, _)| Arc::ptr_eq(s, slot)) {
                g.blocks.remove(&(id, k));
            }
        }
    }

    pub(super) fn contains(&self, id: PackId, k: u64) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).blocks.contains_key(&(id, k))
    }

    pub(super) fn forget(&self, id: PackId) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).blocks.retain(|(p, _), _| *p != id);
    }
}

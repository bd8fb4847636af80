//! The store's one writing thread. Batches arrive over a channel; whatever is waiting is merged
//! into one transaction (so many small writes cost one commit), then each sender is told its
//! batch's sequence number is committed. A periodic sync flushes to disk.

use super::{Batch, Store, StoreError, StoreResult};
use crate::metrics::{AtomicHistogram, Histogram, COMMIT_BUCKETS};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes merged into one transaction.
const MAX_MERGE_BYTES: usize = 64 << 20;
/// Batches waiting for the writer, at most: a writer that falls behind holds up whoever writes
/// (the node core, and through it the peers), instead of letting the queue grow.
const QUEUE: usize = 256;

/// Called with a batch's outcome once it is committed (on the writer thread: keep it short).
pub type Ack = Box<dyn FnOnce(StoreResult<u64>) + Send>;

enum Req {
    Write(u64, Batch, Option<Ack>),
    Flush(Sender<StoreResult<u64>>),
    Stop,
}

/// Handle to the writer thread. Cheap to share behind an `Arc`.
pub struct StoreWriter {
    tx: Sender<Req>,
    next_seq: AtomicU64,
    committed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// How long each commit took.
    commits: Arc<AtomicHistogram>,
    /// Closes (its sender is dropped) when the writer thread has done its last work.
    done: Receiver<()>,
    store: Arc<dyn Store>,
}

impl StoreWriter {
    /// Starts the thread over `store`, syncing to disk every `sync_every`.
    pub fn start(store: Arc<dyn Store>, sync_every: Duration) -> std::io::Result<StoreWriter> {
        let (tx, rx) = bounded(QUEUE);
        let committed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let commits = Arc::new(AtomicHistogram::new(COMMIT_BUCKETS));
        let (c, f, s, h) = (
            committed.clone(),
            failed.clone(),
            store.clone(),
            commits.clone(),
        );
        let (done_tx, done) = bounded::<()>(0);
        std::thread::Builder::new()
            .name("bsn-store".into())
            .spawn(move || {
                let _done = done_tx; // dropped as the thread ends, panics included
                run(s, rx, c, f, h, sync_every)
            })?;
        Ok(StoreWriter {
            tx,
            next_seq: AtomicU64::new(1),
            committed,
            failed,
            commits,
            done,
            store,
        })
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Queues a batch; returns its sequence number without waiting.
    pub fn submit(&self, b: Batch) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Req::Write(seq, b, None));
        seq
    }

    /// Queues a batch; `ack` is called with its outcome once it is committed. Fails when the
    /// writer thread is gone.
    pub fn submit_then(&self, b: Batch, ack: Ack) -> StoreResult<u64> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Req::Write(seq, b, Some(ack)))
            .map_err(|_| StoreError::Closed)?;
        Ok(seq)
    }

    /// Writes a batch and waits until it is committed.
    pub fn write(&self, b: Batch) -> StoreResult<u64> {
        let (tx, rx) = bounded(1);
        self.submit_then(
            b,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Waits until everything queued before is committed and synced to disk.
    pub fn flush(&self) -> StoreResult<u64> {
        let (tx, rx) = bounded(1);
        self.tx
            .send(Req::Flush(tx))
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Highest sequence number committed.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// How long commits took (each merged write, to the store's commit).
    pub fn commit_latency(&self) -> Histogram {
        self.commits.snapshot()
    }

    /// Batches waiting for the writer thread.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// Batches that failed to commit.
    pub fn failures(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Commits what is queued, syncs, and ends the thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Req::Stop);
        // nothing is ever sent: this returns when the thread has ended (at once after that)
        let _ = self.done.recv();
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    store: Arc<dyn Store>,
    rx: Receiver<Req>,
    committed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    commits: Arc<AtomicHistogram>,
    sync_every: Duration,
) {
    let mut dirty = false;
    let mut last_sync = Instant::now();
    loop {
        let first = match rx.recv_timeout(sync_every) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Req::Stop),
        };
        let mut merged = Batch::new();
        let mut acks = Vec::new();
        let mut flushes = Vec::new();
        let mut last_seq = 0;
        let mut stop = false;
        let mut next = first;
        while let Some(req) = next.take() {
            match req {
                Req::Write(seq, b, ack) => {
                    merged.extend(b);
                    last_seq = seq;
                    if let Some(a) = ack {
                        acks.push((seq, a));
                    }
                }
                Req::Flush(a) => flushes.push(a),
                Req::Stop => stop = true,
            }
            if merged.size() < MAX_MERGE_BYTES && !stop {
                next = rx.try_recv().ok();
            }
        }
        let result = if merged.is_empty() {
            Ok(())
        } else {
            let t = Instant::now();
            let r = store.write(&merged);
            commits.observe(t.elapsed());
            r
        };
        match &result {
            Ok(()) if last_seq > 0 => {
                committed.store(last_seq, Ordering::Release);
                dirty = true;
            }
            Ok(()) => {}
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                log::error!("store write of {} operations failed: {e}", merged.ops.len());
            }
        }
        for (seq, a) in acks {
            a(match &result {
                Ok(()) => Ok(seq),
                Err(e) => Err(StoreError::Backend(e.to_string())),
            });
        }
        if dirty && (!flushes.is_empty() || stop || last_sync.elapsed() >= sync_every) {
            if let Err(e) = store.sync() {
                log::error!("store sync failed: {e}");
            }
            dirty = false;
            last_sync = Instant::now();
        }
        let c = committed.load(Ordering::Acquire);
        for a in flushes {
            let _ = a.send(
                result
                    .as_ref()
                    .map(|_| c)
                    .map_err(|e| StoreError::Backend(e.to_string())),
            );
        }
        if stop {
            return;
        }
    }
}

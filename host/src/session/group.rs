//! Group commit of acknowledged changes, per destination set and per
//! turn of the runtime.
//!
//! With `sync-ack`, every change waits for its holders' acknowledgement.
//! The first change for a set of members opens a group and yields once to
//! the runtime (to the back of its queue, after the I/O driver was polled);
//! the changes for the same set made by the tasks that run meanwhile join
//! the group, and it leaves as one frame, with one receive, one apply pass
//! and one ACK per member. Nothing waits for an earlier frame: a group
//! taken is closed, the next change opens the next one, and frames are in
//! flight side by side as before. A lone change costs one yield. (Redis
//! does the same with its replicas: what a turn of its event loop wrote
//! leaves in one write.)
//!
//! Each change returns only after the frame that carried it was
//! acknowledged by every destination (or failed: then every change in it
//! reports the failure). A group holds only changes whose requests wait for
//! it; one frame carries at most `max_items` changes and about `max_bytes`
//! bytes (more leave as several frames, a larger change alone).
//!
//! A group of more than one change is sent by a task of its own, so a
//! request dropped (its client went away) cannot take its neighbours'
//! changes with it; a leader dropped before its group left hands it on the
//! same way.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Sends one frame of changes to a lane's destinations; true when every
/// destination acknowledged it.
pub(crate) trait SendBatch<K, T>: Clone + Send + Sync + 'static {
    /// The send.
    fn send(&self, key: &K, items: Vec<T>) -> impl Future<Output = bool> + Send;
}

/// One change and the request waiting for it (none: the leader's own).
struct Waiting<T> {
    item: T,
    bytes: usize,
    done: Option<oneshot::Sender<bool>>,
}

/// Group commit over lanes keyed by `K` (a destination set).
pub(crate) struct GroupCommit<K, T> {
    /// Open groups: the changes that joined each.
    open: Mutex<HashMap<K, Vec<Waiting<T>>>>,
    max_items: usize,
    max_bytes: usize,
    /// Frames sent, and changes carried by them.
    frames: AtomicU64,
    items: AtomicU64,
}

impl<K, T> GroupCommit<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    /// Frames of at most `max_items` changes and about `max_bytes` bytes
    /// (`max_items` 1: no grouping, every change its own frame at once).
    pub(crate) fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            max_items: max_items.max(1),
            max_bytes,
            frames: AtomicU64::new(0),
            items: AtomicU64::new(0),
        }
    }

    /// Frames sent and changes they carried, since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.items.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Vec<Waiting<T>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `item` to `key`'s destinations, alone or with the changes
    /// made beside it; true when the frame carrying it was acknowledged.
    pub(crate) async fn submit<S: SendBatch<K, T>>(
        self: &Arc<Self>,
        key: K,
        item: T,
        bytes: usize,
        sender: &S,
    ) -> bool {
        if self.max_items == 1 {
            return self.sent(sender, &key, vec![item]).await;
        }
        let joined = {
            let mut open = self.lock();
            match open.get_mut(&key) {
                Some(group) => {
                    let (done, rx) = oneshot::channel();
                    group.push(Waiting {
                        item,
                        bytes,
                        done: Some(done),
                    });
                    Some(rx)
                }
                None => {
                    open.insert(
                        key.clone(),
                        vec![Waiting {
                            item,
                            bytes,
                            done: None,
                        }],
                    );
                    None
                }
            }
        };
        if let Some(rx) = joined {
            return rx.await.unwrap_or(false);
        }
        // Lead: let the tasks ready now run (and join), then take the
        // group. Dropped before that, the guard sends it.
        let mut guard = Handover {
            group: self.clone(),
            key: Some(key),
            sender: sender.clone(),
        };
        tokio::task::yield_now().await;
        let key = guard.key.take().expect("set above");
        let members = self.lock().remove(&key).unwrap_or_default();
        if members.len() <= 1 {
            // Alone: send in this task.
            let items = members.into_iter().map(|w| w.item).collect();
            return self.sent(sender, &key, items).await;
        }
        let (done, rx) = oneshot::channel();
        let mut members = members;
        if let Some(own) = members.iter_mut().find(|w| w.done.is_none()) {
            own.done = Some(done);
        }
        tokio::spawn(self.clone().send_all(key, members, sender.clone()));
        rx.await.unwrap_or(false)
    }

    async fn sent<S: SendBatch<K, T>>(&self, sender: &S, key: &K, items: Vec<T>) -> bool {
        if items.is_empty() {
            return false;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items.len() as u64, Ordering::Relaxed);
        sender.send(key, items).await
    }

    /// Sends a group as frames within the bounds, side by side, and tells
    /// each change's request how its frame fared.
    async fn send_all<S: SendBatch<K, T>>(
        self: Arc<Self>,
        key: K,
        group: Vec<Waiting<T>>,
        sender: S,
    ) {
        let mut frames: Vec<(Vec<T>, Vec<oneshot::Sender<bool>>, usize)> = Vec::new();
        for w in group {
            let fits = frames.last().is_some_and(|(items, _, bytes)| {
                items.len() < self.max_items && bytes + w.bytes <= self.max_bytes
            });
            if !fits {
                frames.push((Vec::new(), Vec::new(), 0));
            }
            let last = frames.last_mut().expect("pushed above");
            last.0.push(w.item);
            last.1.extend(w.done);
            last.2 += w.bytes;
        }
        let sends = frames.into_iter().map(|(items, waiting, _)| {
            let (me, sender, key) = (&self, &sender, &key);
            async move {
                let ok = me.sent(sender, key, items).await;
                for w in waiting {
                    let _ = w.send(ok);
                }
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// Sends a group whose leader was dropped before it left.
struct Handover<K, T, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + 'static,
    S: SendBatch<K, T>,
{
    group: Arc<GroupCommit<K, T>>,
    key: Option<K>,
    sender: S,
}

impl<K, T, S> Drop for Handover<K, T, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Send + 'static,
    S: SendBatch<K, T>,
{
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        // The leader's own change goes too: it was applied here.
        let Some(members) = self.group.lock().remove(&key) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(
                self.group
                    .clone()
                    .send_all(key, members, self.sender.clone()),
            );
        }
        // Without a runtime (it is shutting down) the waiters' receivers
        // fail with the dropped senders: "not replicated".
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Records each frame; waits for a permit before acknowledging.
    #[derive(Clone)]
    struct Gate {
        frames: Arc<Mutex<Vec<Vec<u32>>>>,
        permits: Arc<tokio::sync::Semaphore>,
        fail: Arc<AtomicUsize>,
    }

    impl SendBatch<u8, u32> for Gate {
        async fn send(&self, _key: &u8, items: Vec<u32>) -> bool {
            self.frames.lock().unwrap().push(items);
            self.permits.acquire().await.unwrap().forget();
            self.fail.load(Ordering::Relaxed) == 0
        }
    }

    fn gate() -> Gate {
        Gate {
            frames: Arc::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
            fail: Arc::default(),
        }
    }

    /// A task's answer, or a failure when it does not come.
    async fn answer(t: tokio::task::JoinHandle<bool>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("a change was left waiting")
            .unwrap()
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn spawn(
        g: &Arc<GroupCommit<u8, u32>>,
        s: &Gate,
        key: u8,
        item: u32,
    ) -> tokio::task::JoinHandle<bool> {
        let (g, s) = (g.clone(), s.clone());
        tokio::spawn(async move { g.submit(key, item, 10, &s).await })
    }

    #[tokio::test]
    async fn changes_made_in_one_turn_leave_as_one_frame() {
        let g = Arc::new(GroupCommit::<u8, u32>::new(64, 1 << 20));
        let s = gate();
        let tasks: Vec<_> = (0..5).map(|i| spawn(&g, &s, 1, i)).collect();
        settle().await;
        assert_eq!(*s.frames.lock().unwrap(), vec![vec![0, 1, 2, 3, 4]]);
        assert!(!tasks[3].is_finished(), "answered before its frame's ACK");
        // A group taken is closed: the next change does not wait for the
        // unacknowledged frame.
        let next = spawn(&g, &s, 1, 5);
        settle().await;
        assert_eq!(s.frames.lock().unwrap().len(), 2);
        s.permits.add_permits(2);
        for t in tasks {
            assert!(answer(t).await);
        }
        assert!(answer(next).await);
        assert_eq!(g.counts(), (2, 6));
        assert!(g.lock().is_empty(), "no group left open");
    }

    #[tokio::test]
    async fn destination_sets_are_grouped_apart_and_frames_bounded() {
        let g = Arc::new(GroupCommit::<u8, u32>::new(2, 25));
        let s = gate();
        let mut tasks: Vec<_> = (0..5).map(|i| spawn(&g, &s, 2, i)).collect();
        tasks.push(spawn(&g, &s, 1, 100));
        settle().await;
        let mut frames = s.frames.lock().unwrap().clone();
        frames.sort();
        // At most two changes of 10 bytes (25 bytes) per frame, sent side
        // by side; the other destination set in a frame of its own.
        assert_eq!(frames, vec![vec![0, 1], vec![2, 3], vec![4], vec![100]]);
        s.permits.add_permits(4);
        for t in tasks {
            assert!(answer(t).await);
        }
    }

    #[tokio::test]
    async fn a_failed_frame_fails_every_change_in_it() {
        let g = Arc::new(GroupCommit::<u8, u32>::new(64, 1 << 20));
        let s = gate();
        s.fail.store(1, Ordering::Relaxed);
        let tasks: Vec<_> = (0..3).map(|i| spawn(&g, &s, 1, i)).collect();
        s.permits.add_permits(1);
        for t in tasks {
            assert!(!answer(t).await);
        }
        assert_eq!(g.counts(), (1, 3));
    }

    #[tokio::test]
    async fn a_leader_dropped_before_its_group_left_hands_it_on() {
        use futures_util::FutureExt;
        let g = Arc::new(GroupCommit::<u8, u32>::new(64, 1 << 20));
        let s = gate();
        let mut leader = Box::pin(g.submit(1, 0, 10, &s));
        assert!((&mut leader).now_or_never().is_none(), "the leader yields");
        let follower = spawn(&g, &s, 1, 1);
        settle().await;
        assert!(s.frames.lock().unwrap().is_empty());
        drop(leader);
        settle().await;
        assert_eq!(*s.frames.lock().unwrap(), vec![vec![0, 1]]);
        s.permits.add_permits(1);
        assert!(answer(follower).await);
    }

    #[tokio::test]
    async fn one_per_frame_sends_at_once() {
        let g = Arc::new(GroupCommit::<u8, u32>::new(1, 1 << 20));
        let s = gate();
        let tasks: Vec<_> = (0..3).map(|i| spawn(&g, &s, 1, i)).collect();
        settle().await;
        assert_eq!(*s.frames.lock().unwrap(), vec![vec![0], vec![1], vec![2]]);
        s.permits.add_permits(3);
        for t in tasks {
            assert!(answer(t).await);
        }
    }
}

//! Recycled f32 buffers for the fused path.
//!
//! A training step allocates the same few dozen activation buffers layer
//! after layer and step after step; fresh allocations of that size come
//! from the kernel as zeroed pages, and clearing them cost about a tenth of
//! a step. The pool hands back buffers of the right size instead. Buffers
//! come back with whatever they held (every user overwrites them); the pool
//! keeps no more than the most that was ever in use at once, so it does not
//! raise the peak.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// A set of free buffers shared by one model's fused nodes.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    free: Vec<Vec<f32>>,
    free_elems: usize,
    live_elems: usize,
    peak_live: usize,
}

impl Inner {
    /// Drops free buffers, oldest first, until `extra` more live elements
    /// fit under the high-water mark.
    fn make_room(&mut self, extra: usize) {
        while !self.free.is_empty() && self.free_elems + self.live_elems + extra > self.peak_live {
            let v = self.free.remove(0);
            self.free_elems -= v.capacity();
        }
    }
}

/// A buffer on loan from a [`Pool`]; goes back when dropped.
pub(crate) struct Buf {
    v: Vec<f32>,
    pool: Arc<Pool>,
}

impl Pool {
    /// A buffer of `len` values with unspecified (but initialised) contents.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> Buf {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let hit = g
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() <= 2 * len.max(1024))
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        let v = match hit {
            Some(i) => {
                let mut v = g.free.swap_remove(i);
                g.free_elems -= v.capacity();
                v.resize(len, 0.0);
                v
            }
            None => {
                g.make_room(len);
                drop(g);
                let v = vec![0f32; len];
                g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                v
            }
        };
        g.live_elems += v.capacity();
        g.peak_live = g.peak_live.max(g.live_elems);
        Buf { v, pool: self.clone() }
    }

    /// Frees the pooled buffers (those on loan come back later and are kept
    /// again); the model calls it when it leaves the fused path, e.g. to
    /// generate.
    pub(crate) fn clear(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.free.clear();
        g.free_elems = 0;
        g.peak_live = g.live_elems;
    }

    fn give(&self, v: Vec<f32>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.live_elems -= v.capacity();
        if v.capacity() > 0 {
            g.free_elems += v.capacity();
            g.free.push(v);
        }
        g.make_room(0);
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_the_pool_stays_under_the_peak() {
        let pool = Arc::new(Pool::default());
        let a = pool.take(4096);
        let pa = a.as_ptr();
        drop(a);
        let b = pool.take(4000);
        assert_eq!(b.as_ptr(), pa, "a freed buffer of a close size is reused");
        assert_eq!(b.len(), 4000);
        let c = pool.take(100_000);
        drop(b);
        drop(c);
        // Peak was 4096 + 100_000 elements; both buffers fit in it.
        assert_eq!(pool.inner.lock().unwrap().free.len(), 2);
        // A new size evicts stale buffers rather than growing past the peak.
        let d = pool.take(104_000);
        {
            let g = pool.inner.lock().unwrap();
            assert!(g.free_elems + g.live_elems <= g.peak_live);
        }
        drop(d);
        pool.clear();
        assert!(pool.inner.lock().unwrap().free.is_empty());
    }
}

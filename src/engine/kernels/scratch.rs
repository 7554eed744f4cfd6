//! Scratch buffers of the kernels' worker tasks (im2col patches, padded images, Winograd
//! tiles), kept per thread across tasks and calls.
//!
//! rayon's `for_each_init` / `map_init` make a fresh value for every job split, so buffers
//! made there were allocated and zeroed many times per conv (memset and page faults were ~5%
//! of a ResNet-20 x1 training step in `perf`). A [`Scratch`] instead takes a buffer from its
//! thread's free list and hands it back when dropped. A scratch buffer's contents are stale:
//! every kernel writes each value before reading it (as it already did for a buffer reused
//! across the tasks of one job), so results do not depend on which buffer a task gets.

use std::cell::RefCell;

thread_local! {
    /// Buffers handed back on this thread.
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Most buffers a thread keeps (more are freed): a few per task kind is all a worker holds
/// at once.
const KEEP: usize = 8;

/// One scratch buffer, taken from the thread's free list on first use and handed back on
/// drop.
#[derive(Default)]
pub(crate) struct Scratch(Option<Vec<f32>>);

impl Scratch {
    /// The buffer as a `Vec` (its length is whatever it was last left at; callers that need
    /// an exact length set it).
    pub(crate) fn vec(&mut self) -> &mut Vec<f32> {
        self.0
            .get_or_insert_with(|| FREE.with(|f| f.borrow_mut().pop()).unwrap_or_default())
    }

    /// The first `len` values of the buffer (stale contents; grown with zeros only past its
    /// longest earlier length).
    pub(crate) fn slice(&mut self, len: usize) -> &mut [f32] {
        let v = self.vec();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        &mut v[..len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            FREE.with(|f| {
                let mut f = f.borrow_mut();
                f.push(v);
                if f.len() > KEEP {
                    // keep the largest
                    f.sort_unstable_by_key(Vec::capacity);
                    f.remove(0);
                }
            });
        }
    }
}

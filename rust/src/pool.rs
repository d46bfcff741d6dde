//! A bounded pool of the buffers the micro-batch kernel fills ([`crate::microbatch`]).
//!
//! A step's batches are a few MB that live until the training loop is done with them. Freed to
//! the allocator, glibc hands such buffers back to the OS (heap trimming, munmap), and the next
//! step pays a page fault and a kernel page clear per 4 KiB: measured with `perf`, that was
//! most of the kernel's time. Buffers given back here (the Python bindings do it when numpy
//! and torch are done with one) are reused instead. The pool holds at most
//! [`MAX_POOLED_BYTES`]; it does not grow with the dataset.

use std::sync::{Mutex, MutexGuard};

/// Upper bound of the memory the pool keeps (a few steps' batches).
pub const MAX_POOLED_BYTES: usize = 256 << 20;

pub struct Pool<T> {
    free: Vec<Vec<T>>,
    bytes: usize,
}

static I64: Mutex<Pool<i64>> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});
static F32: Mutex<Pool<f32>> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});
static BOOL: Mutex<Pool<bool>> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// Element types with a pool.
pub trait Pooled: Copy + Sized + 'static {
    fn pool() -> &'static Mutex<Pool<Self>>;
}

impl Pooled for i64 {
    fn pool() -> &'static Mutex<Pool<i64>> {
        &I64
    }
}

impl Pooled for f32 {
    fn pool() -> &'static Mutex<Pool<f32>> {
        &F32
    }
}

// A pooled buffer's old contents are never read (`with_capacity` clears it), so bytes a numpy
// view wrote into a bool buffer never reach Rust as a `bool`.
impl Pooled for bool {
    fn pool() -> &'static Mutex<Pool<bool>> {
        &BOOL
    }
}

fn lock<T: Pooled>() -> MutexGuard<'static, Pool<T>> {
    // A panic while the lock was held cannot leave the list inconsistent: keep using it.
    T::pool().lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty vector with room for at least `capacity` elements: the smallest pooled buffer
/// that is large enough, else a new one.
pub fn with_capacity<T: Pooled>(capacity: usize) -> Vec<T> {
    let found = {
        let mut pool = lock::<T>();
        let best = pool
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= capacity)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| {
            let v = pool.free.swap_remove(i);
            pool.bytes -= v.capacity() * std::mem::size_of::<T>();
            v
        })
    };
    match found {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(capacity),
    }
}

/// `vec![value; len]`, in a pooled buffer when one is large enough.
pub fn filled<T: Pooled>(len: usize, value: T) -> Vec<T> {
    let mut v = with_capacity(len);
    v.resize(len, value);
    v
}

/// Gives a buffer back for reuse; it is freed instead when the pool is full.
pub fn give<T: Pooled>(v: Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    let mut pool = lock::<T>();
    if bytes > 0 && pool.bytes + bytes <= MAX_POOLED_BYTES {
        pool.bytes += bytes;
        pool.free.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        // f32 only here: other tests run in parallel and use the i64 pool.
        let v = filled(1000, 1.5f32);
        assert_eq!(v.len(), 1000);
        let ptr = v.as_ptr();
        give(v);
        let w: Vec<f32> = filled(10, 2.0);
        assert_eq!((w.as_ptr(), w.as_slice()), (ptr, &[2.0; 10][..]));
        give(w);
        let big = MAX_POOLED_BYTES / 4 + 1;
        give(Vec::<f32>::with_capacity(big)); // over the bound: freed, not kept
        assert!(lock::<f32>().bytes <= MAX_POOLED_BYTES);
        assert!(with_capacity::<f32>(big).capacity() >= big);
    }
}

//! Large zeroed buffers backed by transparent huge pages where the OS allows it (as numpy
//! does for its arrays). On this kind of machine, faulting in fresh memory 4 KiB at a time
//! costs about as much as the kernels themselves at 10M rows, and random access into a large
//! table of 4 KiB pages is dominated by TLB misses.

/// Buffers smaller than this are left alone.
const HUGE_PAGE_THRESHOLD: usize = 8 << 20;

/// `vec![T::default(); len]` for plain numbers (all-zero bits), with huge pages requested for
/// large buffers. The allocation comes from `calloc`, so its pages are untouched until the
/// caller writes them, and the advice applies to every page.
pub fn zeroed_vec<T: Copy + Default + Zeroable>(len: usize) -> Vec<T> {
    let mut buf = vec![T::default(); len];
    advise_huge_pages(&mut buf);
    buf
}

/// Number types whose default is all-zero bits, so `vec![T::default(); n]` becomes `calloc`.
pub trait Zeroable {}
impl Zeroable for f64 {}
impl Zeroable for u64 {}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(buf: &mut [T]) {
    let bytes = std::mem::size_of_val(buf);
    if bytes < HUGE_PAGE_THRESHOLD {
        return;
    }
    const PAGE: usize = 4096;
    let begin = buf.as_mut_ptr() as usize;
    let start = begin.next_multiple_of(PAGE);
    let end = (begin + bytes) / PAGE * PAGE;
    // SAFETY: advice only, on whole pages inside `buf`'s allocation, which stays valid. A
    // failure (no THP support, another page size) is harmless and ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_buf: &mut [T]) {}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed() {
        let v: Vec<f64> = super::zeroed_vec(3 << 20);
        assert!(v.iter().all(|&x| x == 0.0));
        assert!(super::zeroed_vec::<u64>(0).is_empty());
    }
}

//! Group runs: the rows of one group are contiguous and share one `group_id`.
//!
//! [`find_runs`] turns a column of ids into run offsets in one pass and rejects an id that
//! comes back after a different id (the rows were not sorted by `group_id`).

// The Python binding (group ids from Arrow columns), beside the kernel it binds.
#[cfg(feature = "python")]
pub(crate) mod py;

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// A column of group ids that can be compared row by row without allocating.
pub trait GroupKeys {
    /// A borrowed, cheap-to-compare view of one id (an integer or the bytes of a string).
    type Key<'a>: Copy + Eq + Ord + Hash
    where
        Self: 'a;

    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `row`; `row < self.len()`.
    fn key(&self, row: usize) -> Self::Key<'_>;

    /// The id at `row`, for error messages.
    fn describe(&self, row: usize) -> String;
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl GroupKeys for [$t] {
            type Key<'a> = $t;

            fn len(&self) -> usize {
                <[$t]>::len(self)
            }

            #[inline(always)]
            fn key(&self, row: usize) -> $t {
                self[row]
            }

            fn describe(&self, row: usize) -> String {
                self[row].to_string()
            }
        }
    )*};
}
int_keys!(i32, i64, u32, u64);

impl GroupKeys for [&str] {
    type Key<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn len(&self) -> usize {
        <[&str]>::len(self)
    }

    fn key(&self, row: usize) -> &[u8] {
        self[row].as_bytes()
    }

    fn describe(&self, row: usize) -> String {
        format!("{:?}", self[row])
    }
}

/// An id that reappears after a different id: its rows are not contiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonContiguous {
    /// The id, formatted by [`GroupKeys::describe`].
    pub id: String,
    /// First row of the earlier run of this id.
    pub first_row: usize,
    /// Row where the id starts again after a different id.
    pub row: usize,
}

impl fmt::Display for NonContiguous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group_id {} is not contiguous: its rows start at row {} and again at row {} after a \
             different group_id; sort rows by group_id so that each group's rows are contiguous",
            self.id, self.first_row, self.row
        )
    }
}

impl std::error::Error for NonContiguous {}

/// More runs than [`find_runs`] can check for repeats (run numbers are kept in 32 bits).
pub const MAX_RUNS: usize = u32::MAX as usize - 1;

/// Why [`find_runs`] rejected the ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsError {
    NonContiguous(NonContiguous),
    TooManyGroups(usize),
}

impl fmt::Display for RunsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunsError::NonContiguous(e) => e.fmt(f),
            RunsError::TooManyGroups(n) => write!(
                f,
                "group_id has {n} groups, more than the {MAX_RUNS} this check supports; \
                 split the table"
            ),
        }
    }
}

impl std::error::Error for RunsError {}

impl From<NonContiguous> for RunsError {
    fn from(e: NonContiguous) -> Self {
        RunsError::NonContiguous(e)
    }
}

/// Offsets of the runs of equal consecutive ids: group `g` is rows `offsets[g]..offsets[g + 1]`.
/// Always starts with 0 and ends with `keys.len()`, so an empty column gives `[0]`.
///
/// Contiguity: while scanning, the run ids are checked for strict monotonicity (sorted data,
/// the usual case), which rules out repeats at no cost. Otherwise every run id goes into a
/// hash set, one insert per group, and the first id seen twice is reported.
pub fn find_runs<K: GroupKeys + ?Sized>(keys: &K) -> Result<Vec<usize>, RunsError> {
    let n = keys.len();
    let mut offsets = Vec::with_capacity(n / 4 + 2);
    offsets.push(0);
    if n == 0 {
        return Ok(offsets);
    }

    let mut direction = Ordering::Equal; // unknown until the second run
    let mut monotonic = true;
    let mut prev = keys.key(0);
    for row in 1..n {
        let key = keys.key(row);
        if key == prev {
            continue;
        }
        if monotonic {
            let step = key.cmp(&prev);
            if direction == Ordering::Equal {
                direction = step;
            }
            monotonic = step == direction;
        }
        offsets.push(row);
        prev = key;
    }
    if !monotonic {
        check_no_repeats(keys, &offsets)?;
    }
    offsets.push(n);
    Ok(offsets)
}

/// Fails on the first run (in row order) whose id was the id of an earlier run.
///
/// An open-addressing table of `(32-bit hash tag, run number)` in one `u64` per slot, at most
/// 70% full. The runs are hashed in batches and their slots read ahead, so the cache misses
/// of a batch overlap instead of queueing: with a million groups the table is far larger than
/// the cache, and this is several times faster than a std `HashSet`.
fn check_no_repeats<K: GroupKeys + ?Sized>(keys: &K, starts: &[usize]) -> Result<(), RunsError> {
    const BATCH: usize = 64;
    let runs = starts.len();
    if runs > MAX_RUNS {
        return Err(RunsError::TooManyGroups(runs));
    }
    let capacity = (runs * 10 / 7 + 1).next_power_of_two().max(BATCH);
    let mask = capacity - 1;
    let mut slots: Vec<u64> = crate::mem::zeroed_vec(capacity); // 0 = empty
    let hasher = BuildHasherDefault::<FastHasher>::default();
    let mut hashes = [0u64; BATCH];
    for first in (0..runs).step_by(BATCH) {
        let batch = first..(first + BATCH).min(runs);
        for (hash, run) in hashes.iter_mut().zip(batch.clone()) {
            *hash = hasher.hash_one(keys.key(starts[run]));
        }
        // Read ahead: a tight loop of independent loads, so they are all in flight at once.
        let touched = hashes[..batch.len()]
            .iter()
            .fold(0u64, |acc, &hash| acc ^ slots[hash as usize & mask]);
        std::hint::black_box(touched); // keep the loads
        for (&hash, run) in hashes.iter().zip(batch) {
            let tag = hash >> 32;
            let mut i = hash as usize & mask;
            loop {
                let slot = slots[i];
                if slot == 0 {
                    // `run + 1` keeps the slot non-zero; runs <= MAX_RUNS, so it fits 32 bits.
                    slots[i] = tag << 32 | (run as u64 + 1);
                    break;
                }
                if slot >> 32 == tag {
                    let earlier = starts[(slot & 0xffff_ffff) as usize - 1];
                    let row = starts[run];
                    if keys.key(earlier) == keys.key(row) {
                        return Err(NonContiguous {
                            id: keys.describe(row),
                            first_row: earlier,
                            row,
                        }
                        .into());
                    }
                }
                i = (i + 1) & mask;
            }
        }
    }
    Ok(())
}

/// A small multiplicative hasher with a murmur3 finalizer. The std SipHash would cost more
/// than the rest of the kernel; HashDoS is not a concern for ids in a local table.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    #[inline]
    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    #[inline]
    fn write_i32(&mut self, value: i32) {
        self.write_u64(value as u64);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // murmur3 fmix64: spreads the product into the low bits the table indexes with.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_and_single() {
        let empty: &[i64] = &[];
        assert_eq!(find_runs(empty).unwrap(), vec![0]);
        assert_eq!(find_runs(&[5i64][..]).unwrap(), vec![0, 1]);
    }

    #[test]
    fn runs_of_ints_and_strings() {
        assert_eq!(
            find_runs(&[3i64, 3, 1, 1, 1, 7][..]).unwrap(),
            vec![0, 2, 5, 6]
        );
        assert_eq!(
            find_runs(&["b", "b", "a", "c", "c"][..]).unwrap(),
            vec![0, 2, 3, 5]
        );
        assert_eq!(find_runs(&[9u64, 8, 7][..]).unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn repeat_in_monotonic_prefix_is_caught() {
        let err = find_runs(&[1i64, 1, 2, 1][..]).unwrap_err();
        assert_eq!(
            err,
            RunsError::NonContiguous(NonContiguous {
                id: "1".into(),
                first_row: 0,
                row: 3
            })
        );
        assert!(err.to_string().contains("sort rows by group_id"));
    }

    #[test]
    fn repeat_after_unsorted_runs_is_caught() {
        let err = find_runs(&["x", "a", "a", "z", "a"][..]).unwrap_err();
        let RunsError::NonContiguous(err) = err else {
            panic!("{err}")
        };
        assert_eq!((err.id.as_str(), err.first_row, err.row), ("\"a\"", 1, 4));
    }

    #[test]
    fn many_unsorted_runs() {
        // 20k distinct ids in scrambled order, 3 rows each: many batches, probe chains.
        let ids: Vec<u64> = (0..20_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20)
            .flat_map(|id| [id; 3])
            .collect();
        let offsets = find_runs(&ids[..]).unwrap();
        assert_eq!(offsets.len(), 20_001);
        let mut repeated = ids.clone();
        repeated.push(ids[30_000]); // the id of run 10_000 comes back at the end
        let err = find_runs(&repeated[..]).unwrap_err();
        assert_eq!(
            err,
            RunsError::NonContiguous(NonContiguous {
                id: ids[30_000].to_string(),
                first_row: 30_000,
                row: 60_000
            })
        );
    }

    proptest! {
        #[test]
        fn matches_naive(ids in proptest::collection::vec(0i64..6, 0..60)) {
            // Naive: split into runs, then a run id seen before is an error.
            let mut runs: Vec<(i64, usize)> = Vec::new();
            for (row, &id) in ids.iter().enumerate() {
                if runs.last().map(|r| r.0) != Some(id) {
                    runs.push((id, row));
                }
            }
            let mut expected_err = None;
            for (k, &(id, row)) in runs.iter().enumerate() {
                if let Some(&(_, first)) = runs[..k].iter().find(|r| r.0 == id) {
                    expected_err = Some((id.to_string(), first, row));
                    break;
                }
            }
            match (find_runs(&ids[..]), expected_err) {
                (Ok(offsets), None) => {
                    let mut expected: Vec<usize> = runs.iter().map(|r| r.1).collect();
                    expected.push(ids.len());
                    if ids.is_empty() {
                        expected = vec![0];
                    }
                    prop_assert_eq!(offsets, expected);
                }
                (Err(RunsError::NonContiguous(e)), Some((id, first, row))) => {
                    prop_assert_eq!((e.id, e.first_row, e.row), (id, first, row));
                }
                (got, want) => prop_assert!(false, "got {:?}, want error {:?}", got, want),
            }
        }
    }
}

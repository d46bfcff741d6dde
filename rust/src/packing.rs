//! Token-budget packing with best-fit decreasing (BFD).
//!
//! Items are taken longest first (ties by index, so the result is deterministic) and each goes
//! into the open bin with the least remaining room that still fits it, or a new bin. Open bins
//! sit in an ordered set keyed by (remaining room, bin number), so each placement is
//! O(log bins) and the whole packing O(n log n).

// The Python binding (`pack_bfd`, `pack_groups_bfd`), beside the kernel it binds.
#[cfg(feature = "python")]
pub(crate) mod py;

use std::collections::BTreeSet;
use std::fmt;

/// The packing: `bin_of_item[i]` is the bin of item `i`; bins are numbered 0..n_bins in the
/// order they were opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    pub bin_of_item: Vec<u32>,
    pub n_bins: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    Budget(i64),
    NotPositive {
        index: usize,
        length: i64,
    },
    TooLong {
        index: usize,
        length: i64,
        budget: i64,
    },
    /// The summed length of the group that starts at `first_row` is over the budget.
    GroupTooLong {
        first_row: usize,
        total: u64,
        budget: i64,
    },
    TooManyItems(usize),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::Budget(b) => {
                write!(f, "budget must be a positive number of tokens, got {b}")
            }
            PackError::NotPositive { index, length } => write!(
                f,
                "lengths[{index}] = {length}: every length must be >= 1; drop empty sequences first"
            ),
            PackError::TooLong {
                index,
                length,
                budget,
            } => write!(
                f,
                "lengths[{index}] = {length} is over the budget of {budget} tokens; truncate the \
                 sequence or raise the budget"
            ),
            PackError::GroupTooLong {
                first_row,
                total,
                budget,
            } => write!(
                f,
                "the group starting at row {first_row} has {total} tokens in all, over the budget \
                 of {budget}; a group is packed as one unit, so raise the budget or split the group"
            ),
            PackError::TooManyItems(n) => {
                write!(
                    f,
                    "lengths has {n} items; at most {} can be packed",
                    u32::MAX
                )
            }
        }
    }
}

impl std::error::Error for PackError {}

fn check_lengths<T: Copy + Into<i64>>(lengths: &[T], budget: i64) -> Result<(), PackError> {
    if budget <= 0 {
        return Err(PackError::Budget(budget));
    }
    if u32::try_from(lengths.len()).is_err() {
        return Err(PackError::TooManyItems(lengths.len()));
    }
    for (index, &length) in lengths.iter().enumerate() {
        let length = length.into();
        if length <= 0 {
            return Err(PackError::NotPositive { index, length });
        }
        if length > budget {
            return Err(PackError::TooLong {
                index,
                length,
                budget,
            });
        }
    }
    Ok(())
}

/// Packs items of the given lengths into bins of at most `budget` tokens.
pub fn pack_bfd<T: Copy + Into<i64>>(lengths: &[T], budget: i64) -> Result<Packing, PackError> {
    check_lengths(lengths, budget)?;
    // Checked above: every length is in 1..=budget.
    let sizes: Vec<u64> = lengths.iter().map(|&l| l.into().unsigned_abs()).collect();
    let (bin_of_item, n_bins) = bfd(&sizes, budget.unsigned_abs());
    Ok(Packing {
        bin_of_item,
        n_bins,
    })
}

/// Like [`pack_bfd`], but the items of each group `offsets[g]..offsets[g + 1]` (see
/// [`crate::groups::find_runs`]) stay together: BFD over groups, each sized by its total length.
pub fn pack_groups_bfd<T: Copy + Into<i64>>(
    lengths: &[T],
    offsets: &[usize],
    budget: i64,
) -> Result<Packing, PackError> {
    check_lengths(lengths, budget)?;
    let mut totals = Vec::with_capacity(offsets.len().saturating_sub(1));
    for bounds in offsets.windows(2) {
        let total = lengths[bounds[0]..bounds[1]]
            .iter()
            .fold(0u64, |acc, &l| acc.saturating_add(l.into().unsigned_abs()));
        if total > budget.unsigned_abs() {
            return Err(PackError::GroupTooLong {
                first_row: bounds[0],
                total,
                budget,
            });
        }
        totals.push(total);
    }
    let (bin_of_group, n_bins) = bfd(&totals, budget.unsigned_abs());
    let mut bin_of_item = vec![0u32; lengths.len()];
    for (bounds, &bin) in offsets.windows(2).zip(&bin_of_group) {
        bin_of_item[bounds[0]..bounds[1]].fill(bin);
    }
    Ok(Packing {
        bin_of_item,
        n_bins,
    })
}

/// BFD over sizes in 1..=budget; at most u32::MAX of them (checked by the callers).
fn bfd(sizes: &[u64], budget: u64) -> (Vec<u32>, usize) {
    let mut order: Vec<u32> = (0..sizes.len() as u32).collect();
    // Stable: equal sizes keep index order.
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i as usize]));

    let mut bin_of = vec![0u32; sizes.len()];
    let mut open: BTreeSet<(u64, u32)> = BTreeSet::new(); // (room left, bin)
    let mut n_bins = 0u32;
    for i in order {
        let size = sizes[i as usize];
        // Tightest fit: least room >= size; among equal room, the lowest bin number.
        let bin = match open.range((size, 0)..).next().copied() {
            Some(entry) => {
                open.remove(&entry);
                if entry.0 > size {
                    open.insert((entry.0 - size, entry.1));
                }
                entry.1
            }
            None => {
                let bin = n_bins;
                n_bins += 1;
                if budget > size {
                    open.insert((budget - size, bin));
                }
                bin
            }
        };
        bin_of[i as usize] = bin;
    }
    (bin_of, n_bins as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loads(lengths: &[i64], p: &Packing) -> Vec<i64> {
        let mut loads = vec![0; p.n_bins];
        for (&l, &b) in lengths.iter().zip(&p.bin_of_item) {
            loads[b as usize] += l;
        }
        loads
    }

    /// Plain first fit in input order: the baseline BFD should not lose to.
    fn first_fit_bins(lengths: &[i64], budget: i64) -> usize {
        let mut loads: Vec<i64> = Vec::new();
        for &l in lengths {
            match loads.iter_mut().find(|load| **load + l <= budget) {
                Some(load) => *load += l,
                None => loads.push(l),
            }
        }
        loads.len()
    }

    #[test]
    fn by_hand() {
        // Decreasing: 6→bin0 (room 4), 5→bin1 (room 5), 4→bin0 (tightest, room 0),
        // 3→bin1 (room 2), 2→bin1 (room 0), 1→bin2.
        let p = pack_bfd(&[3i64, 6, 2, 5, 4, 1], 10).unwrap();
        assert_eq!(p.bin_of_item, vec![1, 0, 1, 1, 0, 2]);
        assert_eq!(p.n_bins, 3);
        assert_eq!(pack_bfd(&[] as &[i64], 10).unwrap().n_bins, 0);
        assert_eq!(pack_bfd(&[4i32, 4], 4).unwrap().bin_of_item, vec![0, 1]);
    }

    #[test]
    fn errors_name_the_item() {
        let e = pack_bfd(&[1i64, 11], 10).unwrap_err();
        assert_eq!(
            e,
            PackError::TooLong {
                index: 1,
                length: 11,
                budget: 10
            }
        );
        assert!(e.to_string().contains("lengths[1] = 11"));
        let e = pack_bfd(&[1i64, 0], 10).unwrap_err();
        assert!(e.to_string().contains("lengths[1] = 0"));
        assert!(pack_bfd(&[-3i64], 10).is_err());
        assert_eq!(pack_bfd(&[1i64], 0).unwrap_err(), PackError::Budget(0));
    }

    #[test]
    fn groups_by_hand() {
        // Groups [4, 4] (8), [3] (3), [2, 5] (7) with budget 10: 8→bin0, 7→bin1, 3→bin1.
        let p = pack_groups_bfd(&[4i64, 4, 3, 2, 5], &[0, 2, 3, 5], 10).unwrap();
        assert_eq!(p.bin_of_item, vec![0, 0, 1, 1, 1]);
        assert_eq!(p.n_bins, 2);
        let e = pack_groups_bfd(&[6i64, 6, 1], &[0, 2, 3], 10).unwrap_err();
        assert_eq!(
            e,
            PackError::GroupTooLong {
                first_row: 0,
                total: 12,
                budget: 10
            }
        );
    }

    #[test]
    fn no_worse_than_first_fit_on_random_data() {
        // A fixed xorshift stream: deterministic, so this check cannot flake.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let n = 1 + (next() % 200) as usize;
            let budget = 16 + (next() % 4096) as i64;
            let lengths: Vec<i64> = (0..n)
                .map(|_| 1 + (next() % budget as u64) as i64)
                .collect();
            let p = pack_bfd(&lengths, budget).unwrap();
            assert!(p.n_bins <= first_fit_bins(&lengths, budget));
            let total: i64 = lengths.iter().sum();
            assert!(p.n_bins as i64 >= (total + budget - 1) / budget);
        }
    }

    proptest! {
        #[test]
        fn invariants(lengths in prop::collection::vec(1i64..=100, 0..200), budget in 100i64..400) {
            let p = pack_bfd(&lengths, budget).unwrap();
            prop_assert_eq!(p.bin_of_item.len(), lengths.len());
            prop_assert!(p.bin_of_item.iter().all(|&b| (b as usize) < p.n_bins));
            let loads = loads(&lengths, &p);
            prop_assert!(loads.iter().all(|&l| l > 0 && l <= budget));
            // Bins are numbered in creation order, i.e. by their longest item.
            prop_assert_eq!(pack_bfd(&lengths, budget).unwrap(), p);
        }

        #[test]
        fn group_invariants(
            groups in prop::collection::vec(prop::collection::vec(1i64..=40, 1..=6), 0..50),
            budget in 240i64..400,
        ) {
            let mut lengths = Vec::new();
            let mut offsets = vec![0];
            for g in &groups {
                lengths.extend_from_slice(g);
                offsets.push(lengths.len());
            }
            let p = pack_groups_bfd(&lengths, &offsets, budget).unwrap();
            prop_assert!(loads(&lengths, &p).iter().all(|&l| l > 0 && l <= budget));
            for bounds in offsets.windows(2) {
                let bins = &p.bin_of_item[bounds[0]..bounds[1]];
                prop_assert!(bins.iter().all(|&b| b == bins[0]));
            }
            prop_assert_eq!(pack_groups_bfd(&lengths, &offsets, budget).unwrap(), p);
        }
    }
}

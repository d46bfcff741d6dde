//! GRAO group-relative advantages.
//!
//! Each prompt has a reference answer `y` and `G` sampled responses `o_1..o_G`; the reward
//! `R(o_i, y)` is measured relative to the reference, so by construction `R(y, y) = 0`. The
//! reference therefore takes part in the group statistics as one more member with reward 0
//! (`reference_in_group`), or is scored against the samples' statistics (the other modes).
//!
//! With `R_1..R_n` the valid rewards of a group (null, NaN and ±inf are invalid and excluded):
//!
//! | mode                 | sample advantage `Â_i`              | reference `Â_y`       | σ over          |
//! |----------------------|-------------------------------------|-----------------------|-----------------|
//! | `reference_in_group` | `(R_i − μ)/(σ + eps)`, μ over n+1   | `(0 − μ)/(σ + eps)`   | `{R_1..R_n, 0}` |
//! | `samples_only`       | `(R_i − μ)/(σ + eps)`, μ over n     | `(0 − μ)/(σ + eps)`   | `{R_1..R_n}`    |
//! | `leave_one_out`      | `R_i − (S − R_i)/(n − 1)`, `S = ΣR` | `0 − S/n`             | `{R_1..R_n}`    |
//! | `rank`               | `2·rank_i/n − 1`                    | `2·rank_y/n − 1`      | `{R_1..R_n, 0}` |
//!
//! σ is the population standard deviation; ranks are 0-based average ranks among the n+1
//! values `{R_1..R_n, 0}` (ties share their mean rank), so rank advantages lie in [−1, 1] with
//! mean 0. A group is *degenerate* when `n < min_valid`, when σ is below `std_floor` or not
//! finite, or when the mode is undefined for `n` (no samples; `leave_one_out` with one sample):
//! then every advantage of the group, the reference's included, is 0.

// The Python binding (`group_advantages`), beside the kernel it binds.
#[cfg(feature = "python")]
pub(crate) mod py;

use std::fmt;

use crate::bitmap::{BitWriter, Bitmap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    ReferenceInGroup,
    SamplesOnly,
    LeaveOneOut,
    Rank,
}

impl Mode {
    /// Every mode. Python reads their names as `_native.ADVANTAGE_MODES`, which a test holds
    /// equal to the config's `score.advantage.mode` choices (grao_pipe/enums.py).
    pub const ALL: [Mode; 4] = [
        Mode::ReferenceInGroup,
        Mode::SamplesOnly,
        Mode::LeaveOneOut,
        Mode::Rank,
    ];

    /// The mode's name in the config and in Python.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::ReferenceInGroup => "reference_in_group",
            Mode::SamplesOnly => "samples_only",
            Mode::LeaveOneOut => "leave_one_out",
            Mode::Rank => "rank",
        }
    }

    /// The names of [`Mode::ALL`].
    pub fn names() -> [&'static str; 4] {
        Mode::ALL.map(Mode::name)
    }

    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the reference's reward 0 is one of the values the statistics run over.
    fn reference_is_member(self) -> bool {
        matches!(self, Mode::ReferenceInGroup | Mode::Rank)
    }

    /// Fewest valid samples for which the mode's formula is defined.
    fn min_samples(self) -> usize {
        match self {
            Mode::LeaveOneOut => 2,
            _ => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub mode: Mode,
    /// Added to σ before dividing (`reference_in_group`, `samples_only`).
    pub eps: f64,
    /// A group whose σ is below this is degenerate.
    pub std_floor: f64,
    /// A group with fewer valid samples than this is degenerate.
    pub min_valid: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mode: Mode::ReferenceInGroup,
            eps: 1e-6,
            std_floor: 1e-6,
            min_valid: 2,
        }
    }
}

/// A parameter outside its domain; the message names it and says what is allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError(pub String);

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParamError {}

impl Params {
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(ParamError(format!(
                "eps must be a finite number >= 0, got {}",
                self.eps
            )));
        }
        if !(self.std_floor.is_finite() && self.std_floor >= 0.0) {
            return Err(ParamError(format!(
                "std_floor must be a finite number >= 0, got {}",
                self.std_floor
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub n_groups: usize,
    pub n_degenerate_groups: usize,
    pub n_invalid_rewards: usize,
}

/// The per-row flags and the counts; the advantages go into the caller's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    /// Row's group is degenerate (all its advantages are 0).
    pub degenerate: Bitmap,
    /// Row's reward is present and finite.
    pub reward_valid: Bitmap,
    pub summary: Summary,
}

/// Groups at most this long are ranked by counting (no sort, no scratch memory).
const RANK_BY_COUNTING: usize = 32;

/// Below this many rows per extra thread, one thread does all the work.
const ROWS_PER_THREAD: usize = 1 << 20;

/// Computes the advantages of every group `offsets[g]..offsets[g + 1]` (see
/// [`crate::groups::find_runs`]) into `advantage` and `reference_advantage` (the group's `Â_y`
/// on each of its rows), which must be as long as `rewards`; every slot is written.
///
/// `not_null(row)` says whether the reward at `row` is present (the Arrow validity bitmap); a
/// present reward is also invalid when NaN or ±inf.
///
/// Large inputs are split at group boundaries over up to `threads` scoped threads.
///
/// # Panics
/// If the buffers are not as long as `rewards` or `offsets` do not cover it (a caller bug).
pub fn group_advantages<T, F>(
    offsets: &[usize],
    rewards: &[T],
    not_null: F,
    params: &Params,
    advantage: &mut [f64],
    reference_advantage: &mut [f64],
    threads: usize,
) -> Flags
where
    T: Copy + Into<f64> + Sync,
    F: Fn(usize) -> bool + Sync,
{
    let n_rows = rewards.len();
    assert!(
        advantage.len() == n_rows && reference_advantage.len() == n_rows,
        "output buffers must have one slot per reward"
    );
    assert!(
        offsets.first() == Some(&0) && offsets.last() == Some(&n_rows),
        "offsets must cover the rewards"
    );
    let threads = threads.clamp(1, 1 + n_rows / ROWS_PER_THREAD);
    if threads == 1 {
        return advantages_serial(
            offsets,
            0,
            rewards,
            &not_null,
            params,
            advantage,
            reference_advantage,
        );
    }

    // Cut the groups into `threads` parts of about equal rows.
    let mut cuts = vec![0usize];
    for t in 1..threads {
        let target = n_rows * t / threads;
        let g = offsets.partition_point(|&o| o < target);
        cuts.push(g.max(*cuts.last().unwrap_or(&0)));
    }
    cuts.push(offsets.len() - 1);

    let parts: Vec<Flags> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let (mut adv_rest, mut ref_rest) = (advantage, reference_advantage);
        for w in cuts.windows(2) {
            let part = &offsets[w[0]..=w[1]];
            let rows = part[0]..part[part.len() - 1];
            let (adv, a) = std::mem::take(&mut adv_rest).split_at_mut(rows.len());
            let (refs, r) = std::mem::take(&mut ref_rest).split_at_mut(rows.len());
            (adv_rest, ref_rest) = (a, r);
            let not_null = &not_null;
            handles.push(scope.spawn(move || {
                let base = rows.start;
                advantages_serial(
                    part,
                    base,
                    &rewards[rows],
                    |row| not_null(base + row),
                    params,
                    adv,
                    refs,
                )
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });

    let mut degenerate = BitWriter::with_capacity(n_rows);
    let mut reward_valid = BitWriter::with_capacity(n_rows);
    let mut summary = Summary::default();
    for part in &parts {
        degenerate.extend(&part.degenerate);
        reward_valid.extend(&part.reward_valid);
        summary.n_groups += part.summary.n_groups;
        summary.n_degenerate_groups += part.summary.n_degenerate_groups;
        summary.n_invalid_rewards += part.summary.n_invalid_rewards;
    }
    Flags {
        degenerate: degenerate.finish(),
        reward_valid: reward_valid.finish(),
        summary,
    }
}

/// One thread's share: the groups one after the other. `offsets` are row numbers of the whole
/// input; the slices (and `not_null`) start at row `base`.
fn advantages_serial<T: Copy + Into<f64>>(
    offsets: &[usize],
    base: usize,
    rewards: &[T],
    not_null: impl Fn(usize) -> bool,
    params: &Params,
    advantage: &mut [f64],
    reference_advantage: &mut [f64],
) -> Flags {
    let n_rows = rewards.len();
    let mut summary = Summary {
        n_groups: offsets.len() - 1,
        ..Summary::default()
    };
    let mut out = GroupOut {
        degenerate: BitWriter::with_capacity(n_rows),
        reward_valid: BitWriter::with_capacity(n_rows),
        values: Vec::new(),
        ranks: Vec::new(),
    };
    for b in offsets.windows(2) {
        let (start, end) = (b[0] - base, b[1] - base);
        let not_null = |j: usize| not_null(start + j);
        // Typical group sizes get a copy of `one_group` with a constant length, which the
        // compiler unrolls; this is most of the kernel's speed.
        macro_rules! call {
            ($len:expr) => {
                one_group(
                    &rewards[start..start + $len],
                    not_null,
                    params,
                    &mut advantage[start..start + $len],
                    &mut reference_advantage[start..start + $len],
                    &mut out,
                )
            };
        }
        let (n_valid, is_degenerate) = match end - start {
            4 => call!(4),
            8 => call!(8),
            16 => call!(16),
            len => call!(len),
        };
        summary.n_invalid_rewards += end - start - n_valid;
        summary.n_degenerate_groups += usize::from(is_degenerate);
    }
    Flags {
        degenerate: out.degenerate.finish(),
        reward_valid: out.reward_valid.finish(),
        summary,
    }
}

/// Per-row flags and reusable scratch, shared by the groups of one thread.
struct GroupOut {
    degenerate: BitWriter,
    reward_valid: BitWriter,
    /// A group's rewards as f64 with NaN for the invalid ones (groups with invalid rewards).
    values: Vec<f64>,
    /// Rank mode, groups over [`RANK_BY_COUNTING`] rows only.
    ranks: Vec<(f64, usize)>,
}

/// One group; returns (valid rewards, degenerate).
#[inline(always)]
fn one_group<T: Copy + Into<f64>>(
    rewards: &[T],
    not_null: impl Fn(usize) -> bool,
    params: &Params,
    advantage: &mut [f64],
    reference_advantage: &mut [f64],
    out: &mut GroupOut,
) -> (usize, bool) {
    let len = rewards.len();
    // Pass 1: validity only. Nothing is stored here and re-read later: a wide load from
    // narrow stores stalls on store forwarding, which used to dominate this loop.
    let mut n = 0usize;
    let mut mask = 0u64;
    for (j, &r) in rewards.iter().enumerate() {
        let ok = r.into().is_finite() && not_null(j);
        n += usize::from(ok);
        if len <= 64 {
            mask |= u64::from(ok) << j;
        } else {
            out.reward_valid.push(ok);
        }
    }
    if len <= 64 {
        out.reward_valid.push_bits(mask, len);
    }

    let degenerate = if n == len {
        // All valid (the usual case): straight from the rewards.
        write_group(
            rewards,
            |_| true,
            n,
            params,
            &mut out.ranks,
            advantage,
            reference_advantage,
        )
    } else {
        // Mark the invalid rewards NaN in a copy; NaN fails every comparison below.
        out.values.clear();
        out.values.extend(rewards.iter().enumerate().map(|(j, &r)| {
            let r: f64 = r.into();
            if r.is_finite() && not_null(j) {
                r
            } else {
                f64::NAN
            }
        }));
        let values = &out.values[..];
        let ranks = &mut out.ranks;
        write_group(
            values,
            |x| !x.is_nan(),
            n,
            params,
            ranks,
            advantage,
            reference_advantage,
        )
    };
    out.degenerate.push_n(len, degenerate);
    (n, degenerate)
}

/// Statistics and advantages of one group with `n` valid values (`valid(x)`); invalid slots
/// get 0. Returns whether the group is degenerate (then everything is 0).
#[inline(always)]
fn write_group<T: Copy + Into<f64>>(
    values: &[T],
    valid: impl Fn(f64) -> bool + Copy,
    n: usize,
    params: &Params,
    ranks: &mut Vec<(f64, usize)>,
    advantage: &mut [f64],
    reference_advantage: &mut [f64],
) -> bool {
    // Mean and population σ over the mode's value set: the valid rewards, plus the
    // reference's 0 where it is a member.
    let mode = params.mode;
    let with_reference = mode.reference_is_member();
    let (mean, sigma) = if n == 0 {
        (0.0, 0.0)
    } else {
        // The group loop is latency-bound (sum → mean → variance → sqrt → divide), so: one
        // reciprocal instead of three divisions, and sums in four interleaved lanes.
        let inv_m = 1.0 / (n + usize::from(with_reference)) as f64;
        let mean = lane_sum(values, |x| if valid(x) { x } else { 0.0 }) * inv_m;
        // Corrected two-pass algorithm (Chan, Golub & LeVeque): `dev`, zero in exact
        // arithmetic, removes most of the rounding error of the mean.
        let centred = |x: f64| if valid(x) { x - mean } else { 0.0 };
        let mut dev = lane_sum(values, centred);
        let mut dev2 = lane_sum(values, |x| centred(x) * centred(x));
        if with_reference {
            dev -= mean;
            dev2 += mean * mean;
        }
        let var = (dev2 - dev * dev * inv_m) * inv_m;
        // Rounding can make a zero variance slightly negative; NaN (overflow) stays NaN.
        (mean, if var < 0.0 { 0.0 } else { var.sqrt() })
    };

    let scaled = matches!(mode, Mode::ReferenceInGroup | Mode::SamplesOnly);
    let mut degenerate = n < params.min_valid.max(mode.min_samples())
        || !sigma.is_finite()
        || sigma < params.std_floor
        || (scaled && sigma + params.eps <= 0.0); // sigma is finite here

    if !degenerate {
        let a_ref = match mode {
            Mode::ReferenceInGroup | Mode::SamplesOnly => {
                let inv = 1.0 / (sigma + params.eps);
                map_valid(values, valid, advantage, |x| (x - mean) * inv);
                -mean * inv
            }
            Mode::LeaveOneOut => {
                // R_i − (S − R_i)/(n − 1) = n/(n − 1)·(R_i − S/n): the centred form rounds
                // better.
                let k = n as f64 / (n - 1) as f64;
                map_valid(values, valid, advantage, |x| k * (x - mean));
                -mean
            }
            Mode::Rank => rank_advantages(values, valid, n, ranks, advantage),
        };
        // Last guard against overflow (rewards near f64::MAX): never emit inf or NaN.
        let finite = advantage
            .iter()
            .fold(a_ref.is_finite(), |ok, a| ok & a.is_finite());
        if finite {
            reference_advantage.fill(a_ref);
        } else {
            degenerate = true;
        }
    }
    if degenerate {
        advantage.fill(0.0);
        reference_advantage.fill(0.0);
    }
    degenerate
}

/// `advantage[j] = f(values[j])` for valid values, 0 for the others.
#[inline(always)]
fn map_valid<T: Copy + Into<f64>>(
    values: &[T],
    valid: impl Fn(f64) -> bool,
    advantage: &mut [f64],
    f: impl Fn(f64) -> f64,
) {
    for (a, &x) in advantage.iter_mut().zip(values) {
        let x: f64 = x.into();
        *a = if valid(x) { f(x) } else { 0.0 };
    }
}

/// Sum of `f(x)` over `xs` in four interleaved lanes: shorter dependency chains than a
/// running sum, and no less accurate.
#[inline(always)]
fn lane_sum<T: Copy + Into<f64>>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = xs.chunks_exact(4);
    for c in &mut chunks {
        for k in 0..4 {
            acc[k] += f(c[k].into());
        }
    }
    for (k, &x) in chunks.remainder().iter().enumerate() {
        acc[k] += f(x.into());
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Rank mode: average 0-based ranks among `{R_1..R_n, 0}` (the `n` valid values and the
/// reference's 0), mapped to `2·rank/n − 1`. Writes the samples' advantages (invalid -> 0)
/// and returns the reference's. Needs `n >= 1`.
#[inline(always)]
fn rank_advantages<T: Copy + Into<f64>>(
    values: &[T],
    valid: impl Fn(f64) -> bool,
    n: usize,
    scratch: &mut Vec<(f64, usize)>,
    advantage: &mut [f64],
) -> f64 {
    let scale = 2.0 / n as f64;
    // rank = #below + (#equal − 1)/2, with #equal counting the value itself.
    let to_advantage =
        |below: usize, equal: usize| (2 * below + equal - 1) as f64 * 0.5 * scale - 1.0;
    let value = |j: usize| -> f64 {
        let x: f64 = values[j].into();
        if valid(x) {
            x
        } else {
            f64::NAN
        }
    };

    if values.len() <= RANK_BY_COUNTING {
        // O(k²) counting: cheaper than sorting for small groups. NaN compares false, so
        // invalid slots drop out of the counts by themselves; 0.0 == -0.0 tie as they should.
        let mut copy = [0.0f64; RANK_BY_COUNTING];
        let copy = &mut copy[..values.len()];
        for (j, c) in copy.iter_mut().enumerate() {
            *c = value(j);
        }
        // (#below, #equal) among the copy: one pass, branch-free.
        let counts = |v: f64| {
            copy.iter().fold((0usize, 0usize), |(lt, eq), &y| {
                (lt + usize::from(y < v), eq + usize::from(y == v))
            })
        };
        for (a, &v) in advantage.iter_mut().zip(copy.iter()) {
            *a = if v.is_nan() {
                0.0
            } else {
                let (below, equal) = counts(v);
                // The reference's 0 is one more value.
                to_advantage(below + usize::from(0.0 < v), equal + usize::from(v == 0.0))
            };
        }
        let (below, equal) = counts(0.0);
        return to_advantage(below, equal + 1);
    }

    scratch.clear();
    scratch.extend(
        (0..values.len())
            .map(|j| (value(j), j))
            .filter(|(x, _)| !x.is_nan()),
    );
    rank_by_sorting(scratch, n, advantage)
}

/// Rank advantages of large groups: sort the `(value, slot)` pairs of the valid rewards.
#[inline(never)]
fn rank_by_sorting(pairs: &mut Vec<(f64, usize)>, n: usize, advantage: &mut [f64]) -> f64 {
    const REFERENCE: usize = usize::MAX;
    let scale = 2.0 / n as f64;
    pairs.push((0.0, REFERENCE));
    // All values are finite here; -0.0 and 0.0 must tie, so compare with partial_cmp.
    pairs.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    advantage.fill(0.0); // invalid slots stay 0; valid ones are overwritten below
    let mut a_ref = 0.0;
    let mut lo = 0;
    while lo < pairs.len() {
        let mut hi = lo + 1;
        while hi < pairs.len() && pairs[hi].0 == pairs[lo].0 {
            hi += 1;
        }
        // Positions lo..hi tie: they share the mean of those ranks, (lo + hi − 1)/2.
        let a = (lo + hi - 1) as f64 * 0.5 * scale - 1.0;
        for &(_, slot) in &pairs[lo..hi] {
            if slot == REFERENCE {
                a_ref = a;
            } else {
                advantage[slot] = a;
            }
        }
        lo = hi;
    }
    a_ref
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Result_ {
        advantage: Vec<f64>,
        reference: Vec<f64>,
        degenerate: Vec<bool>,
        valid: Vec<bool>,
        summary: Summary,
    }

    fn run(offsets: &[usize], rewards: &[Option<f64>], params: &Params) -> Result_ {
        let n = rewards.len();
        let values: Vec<f64> = rewards.iter().map(|r| r.unwrap_or(0.0)).collect();
        let mut advantage = vec![f64::NAN; n];
        let mut reference = vec![f64::NAN; n];
        let flags = group_advantages(
            offsets,
            &values,
            |i| rewards[i].is_some(),
            params,
            &mut advantage,
            &mut reference,
            1,
        );
        Result_ {
            advantage,
            reference,
            degenerate: flags.degenerate.iter().collect(),
            valid: flags.reward_valid.iter().collect(),
            summary: flags.summary,
        }
    }

    fn params(mode: Mode) -> Params {
        Params {
            mode,
            ..Params::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, *w), "got {got:?}, want {want:?}");
        }
    }

    const EXAMPLE: [Option<f64>; 4] = [Some(1.0), Some(-1.0), Some(0.0), Some(1.0)];

    #[test]
    fn reference_in_group_by_hand() {
        // Values {1, -1, 0, 1, 0}: μ = 0.2, σ = sqrt(0.56).
        let r = run(&[0, 4], &EXAMPLE, &params(Mode::ReferenceInGroup));
        let d = 0.56f64.sqrt() + 1e-6;
        assert_close(&r.advantage, &[0.8 / d, -1.2 / d, -0.2 / d, 0.8 / d]);
        assert_close(&r.reference, &[-0.2 / d; 4]);
        assert_eq!(r.degenerate, [false; 4]);
        assert_eq!(r.valid, [true; 4]);
        assert_eq!(
            r.summary,
            Summary {
                n_groups: 1,
                n_degenerate_groups: 0,
                n_invalid_rewards: 0
            }
        );
    }

    #[test]
    fn samples_only_by_hand() {
        // Values {1, -1, 0, 1}: μ = 0.25, σ² = (0.5625 + 1.5625 + 0.0625 + 0.5625)/4 = 0.6875.
        let r = run(&[0, 4], &EXAMPLE, &params(Mode::SamplesOnly));
        let d = 0.6875f64.sqrt() + 1e-6;
        assert_close(&r.advantage, &[0.75 / d, -1.25 / d, -0.25 / d, 0.75 / d]);
        assert_close(&r.reference, &[-0.25 / d; 4]);
    }

    #[test]
    fn leave_one_out_by_hand() {
        // S = 1: Â_i = R_i − (1 − R_i)/3; Â_y = −1/4.
        let r = run(&[0, 4], &EXAMPLE, &params(Mode::LeaveOneOut));
        assert_close(&r.advantage, &[1.0, -1.0 - 2.0 / 3.0, -1.0 / 3.0, 1.0]);
        assert_close(&r.reference, &[-0.25; 4]);
    }

    #[test]
    fn rank_by_hand() {
        // Sorted {-1, 0, 0(ref), 1, 1}: ranks -1→0, the zeros→1.5, the ones→3.5; n = 4.
        let r = run(&[0, 4], &EXAMPLE, &params(Mode::Rank));
        assert_close(&r.advantage, &[0.75, -1.0, -0.25, 0.75]);
        assert_close(&r.reference, &[-0.25; 4]);
    }

    #[test]
    fn invalid_rewards_are_excluded_and_zeroed() {
        let rewards = [
            Some(1.0),
            None,
            Some(f64::NAN),
            Some(-1.0),
            Some(f64::INFINITY),
        ];
        let r = run(&[0, 5], &rewards, &params(Mode::SamplesOnly));
        // Valid {1, -1}: μ = 0, σ = 1.
        let d = 1.0 + 1e-6;
        assert_close(&r.advantage, &[1.0 / d, 0.0, 0.0, -1.0 / d, 0.0]);
        assert_close(&r.reference, &[0.0; 5]);
        assert_eq!(r.valid, [true, false, false, true, false]);
        assert_eq!(r.summary.n_invalid_rewards, 3);
    }

    #[test]
    fn degenerate_groups() {
        // Group 0: all equal (σ = 0 for samples); group 1: one valid sample (< min_valid);
        // group 2: fine.
        let rewards = [Some(0.5), Some(0.5), Some(1.0), None, Some(1.0), Some(0.0)];
        let offsets = [0, 2, 4, 6];
        for mode in [Mode::SamplesOnly, Mode::LeaveOneOut] {
            let r = run(&offsets, &rewards, &params(mode));
            assert_eq!(r.degenerate, [true, true, true, true, false, false]);
            assert_eq!(&r.advantage[..4], &[0.0; 4]);
            assert_eq!(&r.reference[..4], &[0.0; 4]);
            assert_eq!(r.summary.n_degenerate_groups, 2);
        }
        // With the reference's 0 in the set, equal non-zero rewards are not degenerate.
        let r = run(&offsets, &rewards, &params(Mode::ReferenceInGroup));
        assert_eq!(r.degenerate, [false, false, true, true, false, false]);
        // But all-zero rewards are.
        let zeros = [Some(0.0), Some(-0.0), Some(0.0)];
        for mode in [Mode::ReferenceInGroup, Mode::Rank] {
            let r = run(&[0, 3], &zeros, &params(mode));
            assert_eq!(r.degenerate, [true; 3]);
            assert_eq!(r.advantage, [0.0; 3]);
        }
    }

    #[test]
    fn zero_eps_and_floor_never_divide_by_zero() {
        let p = Params {
            mode: Mode::SamplesOnly,
            eps: 0.0,
            std_floor: 0.0,
            min_valid: 0,
        };
        let r = run(&[0, 2, 3], &[Some(2.0), Some(2.0), None], &p);
        assert_eq!(r.degenerate, [true; 3]);
        assert!(r.advantage.iter().chain(&r.reference).all(|v| *v == 0.0));
    }

    #[test]
    fn huge_rewards_stay_finite() {
        let rewards = [Some(f64::MAX), Some(-f64::MAX), Some(f64::MAX)];
        for mode in [
            Mode::ReferenceInGroup,
            Mode::SamplesOnly,
            Mode::LeaveOneOut,
            Mode::Rank,
        ] {
            let r = run(&[0, 3], &rewards, &params(mode));
            assert!(r
                .advantage
                .iter()
                .chain(&r.reference)
                .all(|v| v.is_finite()));
        }
    }

    #[test]
    fn empty_input() {
        let r = run(&[0], &[], &Params::default());
        assert!(r.advantage.is_empty());
        assert_eq!(r.summary, Summary::default());
    }

    #[test]
    fn float32_rewards() {
        let values = [1.0f32, -1.0, 0.0, 1.0];
        let (mut a, mut r) = ([0.0; 4], [0.0; 4]);
        group_advantages(
            &[0, 4],
            &values,
            |_| true,
            &Params::default(),
            &mut a,
            &mut r,
            1,
        );
        let want = run(&[0, 4], &EXAMPLE, &Params::default());
        assert_close(&a, &want.advantage);
        assert_close(&r, &want.reference);
    }

    #[test]
    fn threads_agree_with_one_thread() {
        // Big enough for three parts; groups of 1..=9 rows, some invalid rewards.
        let mut offsets = vec![0];
        let mut rewards = Vec::new();
        let mut state = 7u64;
        while rewards.len() < 3 * ROWS_PER_THREAD + 5 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = 1 + (state >> 60) as usize % 9;
            for j in 0..size {
                let x = ((state >> (j * 3)) % 7) as f64 - 3.0;
                rewards.push(if x == 3.0 { f64::NAN } else { x });
            }
            offsets.push(rewards.len());
        }
        let n = rewards.len();
        for mode in [Mode::ReferenceInGroup, Mode::Rank] {
            let p = params(mode);
            let run_with = |threads| {
                let (mut a, mut r) = (vec![0.0; n], vec![0.0; n]);
                let flags =
                    group_advantages(&offsets, &rewards, |_| true, &p, &mut a, &mut r, threads);
                (a, r, flags)
            };
            assert!(run_with(1) == run_with(3), "mode {mode:?}");
        }
    }

    #[test]
    fn params_are_validated() {
        let bad = Params {
            eps: -1.0,
            ..Params::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("eps"));
        let bad = Params {
            std_floor: f64::NAN,
            ..Params::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("std_floor"));
        assert_eq!(Mode::parse("rank"), Some(Mode::Rank));
        assert_eq!(Mode::parse("bogus"), None);
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.name()), Some(m));
        }
    }

    // ---- Property tests against a deliberately plain reference implementation ----

    /// Returns (advantages, reference advantage, degenerate) for one group.
    fn naive_group(rewards: &[Option<f64>], p: &Params) -> (Vec<f64>, f64, bool) {
        let valid: Vec<f64> = rewards
            .iter()
            .filter_map(|r| r.filter(|v| v.is_finite()))
            .collect();
        let n = valid.len();
        let mut set = valid.clone();
        if matches!(p.mode, Mode::ReferenceInGroup | Mode::Rank) {
            set.push(0.0);
        }
        let std = |xs: &[f64]| -> (f64, f64) {
            if xs.is_empty() {
                return (0.0, 0.0);
            }
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / xs.len() as f64;
            (mean, var.sqrt())
        };
        let (mean, sigma) = std(&set);
        let min_n = if p.mode == Mode::LeaveOneOut { 2 } else { 1 };
        if n < p.min_valid.max(min_n) || sigma < p.std_floor || !sigma.is_finite() {
            return (vec![0.0; rewards.len()], 0.0, true);
        }
        let s: f64 = valid.iter().sum();
        let rank = |x: f64| -> f64 {
            let below = set.iter().filter(|&&v| v < x).count() as f64;
            let equal = set.iter().filter(|&&v| v == x).count() as f64;
            below + (equal - 1.0) / 2.0
        };
        let f = |x: f64| -> f64 {
            match p.mode {
                Mode::ReferenceInGroup | Mode::SamplesOnly => (x - mean) / (sigma + p.eps),
                Mode::LeaveOneOut => x - (s - x) / (n as f64 - 1.0),
                Mode::Rank => 2.0 * rank(x) / n as f64 - 1.0,
            }
        };
        let adv = rewards
            .iter()
            .map(|r| match r {
                Some(x) if x.is_finite() => f(*x),
                _ => 0.0,
            })
            .collect();
        let a_ref = match p.mode {
            Mode::LeaveOneOut => -s / n as f64,
            _ => f(0.0),
        };
        (adv, a_ref, false)
    }

    fn reward() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            4 => prop::sample::select(vec![-1.0, 0.0, 1.0]).prop_map(Some),
            4 => (-5.0f64..5.0).prop_map(Some),
            1 => Just(Some(f64::NAN)),
            1 => Just(Some(f64::NEG_INFINITY)),
            1 => Just(None),
        ]
    }

    fn group() -> impl Strategy<Value = Vec<Option<f64>>> {
        prop_oneof![
            4 => prop::collection::vec(reward(), 1..=12),
            // All-equal groups (and all-equal with an invalid one mixed in).
            1 => (prop::sample::select(vec![-1.0, 0.0, 0.3, 1.0]), 1usize..=12, any::<bool>())
                .prop_map(|(v, k, with_nan)| {
                    let mut g = vec![Some(v); k];
                    if with_nan {
                        g[k / 2] = Some(f64::NAN);
                    }
                    g
                }),
        ]
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop::sample::select(vec![
            Mode::ReferenceInGroup,
            Mode::SamplesOnly,
            Mode::LeaveOneOut,
            Mode::Rank,
        ])
    }

    fn check_against_naive(groups: &[Vec<Option<f64>>], p: &Params) -> Result<(), TestCaseError> {
        let mut offsets = vec![0];
        let mut rewards = Vec::new();
        for g in groups {
            rewards.extend_from_slice(g);
            offsets.push(rewards.len());
        }
        let r = run(&offsets, &rewards, p);
        prop_assert!(r
            .advantage
            .iter()
            .chain(&r.reference)
            .all(|v| v.is_finite()));

        let mut n_degenerate = 0;
        for (g, bounds) in groups.iter().zip(offsets.windows(2)) {
            let rows = bounds[0]..bounds[1];
            let (adv, a_ref, degenerate) = naive_group(g, p);
            n_degenerate += usize::from(degenerate);
            prop_assert!(r.degenerate[rows.clone()].iter().all(|&d| d == degenerate));
            for (got, want) in r.advantage[rows.clone()].iter().zip(&adv) {
                prop_assert!(
                    close(*got, *want),
                    "mode {:?} group {:?}: got {:?}, want {:?}",
                    p.mode,
                    g,
                    &r.advantage[rows.clone()],
                    adv
                );
            }
            for got in &r.reference[rows.clone()] {
                prop_assert!(close(*got, a_ref), "ref: got {}, want {}", got, a_ref);
            }
            for (v, x) in r.valid[rows].iter().zip(g) {
                prop_assert_eq!(*v, x.is_some_and(f64::is_finite));
            }
        }
        prop_assert_eq!(r.summary.n_groups, groups.len());
        prop_assert_eq!(r.summary.n_degenerate_groups, n_degenerate);
        prop_assert_eq!(
            r.summary.n_invalid_rewards,
            rewards
                .iter()
                .filter(|x| !x.is_some_and(f64::is_finite))
                .count()
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn large_groups_match_naive_reference(
            groups in prop::collection::vec(prop::collection::vec(reward(), 25..=70), 1..4),
            mode in mode(),
        ) {
            // Past RANK_BY_COUNTING the rank mode sorts instead of counting.
            check_against_naive(&groups, &params(mode))?;
        }

        #[test]
        fn matches_naive_reference(
            groups in prop::collection::vec(group(), 0..20),
            mode in mode(),
            min_valid in 0usize..4,
        ) {
            let p = Params { mode, min_valid, ..Params::default() };
            check_against_naive(&groups, &p)?;
        }
    }
}

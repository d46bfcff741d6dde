//! The learner's micro-batches, written straight from the Arrow buffers of score rows.
//!
//! A group is a run of score rows (one per sample) sharing a prompt and a reference answer.
//! For the groups of a step this module
//! - resolves each group ([`resolve`]): its sample sequences (prompt + response) and its
//!   reference sequence (prompt + reference), cut to `max_seq_len` or left out as
//!   `train.overlong` says, as borrowed slices of the column buffers (nothing is copied);
//! - splits the groups into micro-batches by token budget ([`split_by_tokens`]);
//! - writes a micro-batch's padded layout ([`padded`]): per group its G sample slots (a 1-token
//!   dummy where a group has fewer samples), then all references, right-padded, with the loss
//!   mask and the per-token log-probs aligned with the shifted targets;
//! - and its packed layout ([`packed`]): the same sequences in rows placed by best-fit
//!   decreasing, position ids restarting per sequence, segment ids, and the index maps from
//!   the rows' next-token log-probs back to the padded layout.
//!
//! These are the Rust twins of `GroupStore.group`, `micro_batches`, `collate` and `pack` in
//! python/grao_pipe/learner/data.py, equal to them bit for bit (tests/unit/test_loader_native.py).
//! Row width of the packed layout: see [`RowWidth`].

// The Python binding (`MicroBatcher`, `fit_rows` and the typed micro-batch classes), beside the kernel it binds.
#[cfg(feature = "python")]
pub(crate) mod py;

use std::fmt;
use std::ops::Range;

use crate::packing::{self, PackError, Packing};
use crate::pool;

// ---- Input: borrowed Arrow buffers ----

/// A validity bitmap in Arrow's layout (bit `i` is bit `i % 8` of byte `i / 8`), from bit
/// `offset` on.
#[derive(Debug, Clone, Copy)]
pub struct Bits<'a> {
    pub bytes: &'a [u8],
    pub offset: usize,
}

impl Bits<'_> {
    /// Bit `i`; a bit past the end of the buffer reads as unset (null).
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        let bit = self.offset + i;
        self.bytes
            .get(bit / 8)
            .is_some_and(|b| (b >> (bit % 8)) & 1 == 1)
    }
}

/// A `list<T>` column with 32-bit offsets: row `r` is `values[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone, Copy)]
pub struct Lists<'a, T> {
    /// The column's name, for error messages.
    pub name: &'static str,
    pub offsets: &'a [i32],
    pub values: &'a [T],
    /// None: no nulls.
    pub validity: Option<Bits<'a>>,
}

impl<'a, T> Lists<'a, T> {
    /// Row `row`'s list; None where it is null. Offsets are checked, never trusted.
    fn get(&self, row: usize) -> Result<Option<&'a [T]>, Problem> {
        if self.validity.is_some_and(|v| !v.get(row)) {
            return Ok(None);
        }
        let (Some(&start), Some(&end)) = (self.offsets.get(row), self.offsets.get(row + 1)) else {
            return Err(Problem::OutOfRange(self.name));
        };
        let bad = Problem::BadOffsets(self.name);
        let start = usize::try_from(start).map_err(|_| bad)?;
        let end = usize::try_from(end).map_err(|_| bad)?;
        self.values.get(start..end).map(Some).ok_or(bad)
    }

    /// Row `row`'s list, which must not be null.
    fn required(&self, row: usize) -> Result<&'a [T], Problem> {
        self.get(row)?.ok_or(Problem::Null(self.name))
    }

    /// Row `row`'s list, empty where it is null.
    fn or_empty(&self, row: usize) -> Result<&'a [T], Problem> {
        Ok(self.get(row)?.unwrap_or_default())
    }
}

/// The columns of one table of score rows (the kept rows of one shard) that a batch reads.
#[derive(Debug, Clone, Copy)]
pub struct Shard<'a> {
    pub prompt: Lists<'a, i32>,
    pub response: Lists<'a, i32>,
    pub reference: Lists<'a, i32>,
    /// Per-token behaviour log-probs of the response (null: unknown).
    pub behaviour: Lists<'a, f32>,
    /// Per-token reference-model log-probs of the response (null: not computed).
    pub ref_logprobs: Lists<'a, f32>,
    /// Per-token reference-model log-probs of the reference answer (null: not computed).
    pub ref_reference: Lists<'a, f32>,
    /// The dataset's rejected answer (+ EOS; null: none) and its reference-model log-probs,
    /// for DPO on the dataset's pairs. None: rejected answers are not read (no extra rows).
    pub rejected: Option<(Lists<'a, i32>, Lists<'a, f32>)>,
    pub advantage: &'a [f64],
    pub reference_advantage: &'a [f64],
    pub reward: &'a [f64],
    /// Validity of `reward` (None: no nulls); a null reward counts as 0.
    pub reward_valid: Option<Bits<'a>>,
}

fn scalar(values: &[f64], row: usize, name: &'static str) -> Result<f64, Problem> {
    values.get(row).copied().ok_or(Problem::OutOfRange(name))
}

/// The rows of one group: `shard`'s rows `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub shard: usize,
    pub start: usize,
    pub len: usize,
}

/// What happens to a sequence longer than `max_len` (`train.overlong`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    Truncate,
    Skip,
}

impl Overlong {
    /// Both choices. Python reads their names as `_native.OVERLONG_MODES`, which a test holds
    /// equal to the config's `train.overlong` choices (grao_pipe/enums.py).
    pub const ALL: [Overlong; 2] = [Overlong::Truncate, Overlong::Skip];

    /// The name in the config and in Python.
    pub const fn name(self) -> &'static str {
        match self {
            Overlong::Truncate => "truncate",
            Overlong::Skip => "skip",
        }
    }

    /// The names of [`Overlong::ALL`].
    pub fn names() -> [&'static str; 2] {
        Overlong::ALL.map(Overlong::name)
    }

    pub fn parse(name: &str) -> Option<Overlong> {
        Overlong::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// `train.max_seq_len` and `train.overlong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    pub max_len: Option<usize>,
    pub overlong: Overlong,
}

impl Fit {
    /// No limit.
    pub const ANY: Fit = Fit {
        max_len: None,
        overlong: Overlong::Truncate,
    };

    /// The continuation cut so that prompt + continuation fit: (continuation, whether it was
    /// cut), or None when it is left out (`_fit` in learner/data.py).
    fn apply<'a>(&self, prompt_len: usize, cont: &'a [i32]) -> Option<(&'a [i32], bool)> {
        match self.max_len {
            Some(max) if prompt_len + cont.len() > max => {
                if self.overlong == Overlong::Skip || prompt_len >= max {
                    None
                } else {
                    Some((&cont[..max - prompt_len], true))
                }
            }
            _ => Some((cont, false)),
        }
    }
}

// ---- Errors ----

/// What is wrong with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The row is past the end of the column.
    OutOfRange(&'static str),
    /// The list offsets point outside the values (a corrupt file).
    BadOffsets(&'static str),
    /// A null where the column must have a value.
    Null(&'static str),
    /// The prompt has no tokens: no position predicts the first continuation token.
    EmptyPrompt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// `spans[span]` names a table that does not exist.
    NoSuchShard {
        span: usize,
        shard: usize,
        shards: usize,
    },
    /// `spans[span]` has no rows.
    EmptySpan {
        span: usize,
    },
    /// A bad row.
    Row {
        shard: usize,
        row: usize,
        problem: Problem,
    },
    Pack(PackError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NoSuchShard {
                span,
                shard,
                shards,
            } => write!(
                f,
                "spans[{span}] names table {shard}, but there are {shards} tables"
            ),
            LoadError::EmptySpan { span } => {
                write!(f, "spans[{span}] has no rows; every group has at least one")
            }
            LoadError::Row {
                shard,
                row,
                problem,
            } => {
                write!(f, "table {shard}, row {row}: ")?;
                match problem {
                    Problem::OutOfRange(c) => write!(f, "column {c} has no such row"),
                    Problem::BadOffsets(c) => write!(
                        f,
                        "column {c} has list offsets outside its values (a corrupt file)"
                    ),
                    Problem::Null(c) => write!(f, "column {c} is null; it needs a value"),
                    Problem::EmptyPrompt => write!(
                        f,
                        "prompt_token_ids is empty; a sequence needs at least one prompt token"
                    ),
                }
            }
            LoadError::Pack(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<PackError> for LoadError {
    fn from(e: PackError) -> Self {
        LoadError::Pack(e)
    }
}

// ---- Resolved groups ----

/// One sequence: `prompt ++ cont`; the loss reads the targets `cont`, i.e. positions
/// `prompt.len() - 1 ..` of the shifted layout. `prompt` is never empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seq<'a> {
    prompt: &'a [i32],
    cont: &'a [i32],
    /// Log-probs of the first `behaviour.len() <= cont.len()` continuation tokens.
    behaviour: &'a [f32],
    reference: &'a [f32],
    /// The row had behaviour log-probs (not null), even if none remain after the cut.
    behaviour_known: bool,
}

impl<'a> Seq<'a> {
    /// None when `prompt` is empty. Log-probs are cut to the continuation's length.
    pub fn new(
        prompt: &'a [i32],
        cont: &'a [i32],
        behaviour: &'a [f32],
        reference: &'a [f32],
    ) -> Option<Self> {
        if prompt.is_empty() {
            return None;
        }
        let cut = |x: &'a [f32]| &x[..x.len().min(cont.len())];
        Some(Seq {
            prompt,
            cont,
            behaviour: cut(behaviour),
            reference: cut(reference),
            behaviour_known: false,
        })
    }

    /// The same sequence, marked as having (or not) behaviour log-probs.
    fn known(self, behaviour_known: bool) -> Self {
        Seq {
            behaviour_known,
            ..self
        }
    }

    /// The whole prompt without a continuation: no targets.
    fn prompt_only(&self) -> Self {
        Seq {
            prompt: self.prompt,
            cont: &[],
            behaviour: &[],
            reference: &[],
            behaviour_known: false,
        }
    }

    /// The 1-token placeholder of an empty sample slot: no targets.
    fn dummy(prompt: &'a [i32]) -> Self {
        Seq {
            prompt: &prompt[..1.min(prompt.len())],
            cont: &[],
            behaviour: &[],
            reference: &[],
            behaviour_known: false,
        }
    }

    pub fn len(&self) -> usize {
        self.prompt.len() + self.cont.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the tokens into `out[..self.len()]`.
    #[inline]
    fn write_tokens(&self, out: &mut [i64]) {
        let (head, tail) = out.split_at_mut(self.prompt.len());
        widen(self.prompt, head);
        widen(self.cont, &mut tail[..self.cont.len()]);
    }
}

#[inline]
fn widen(src: &[i32], dst: &mut [i64]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = i64::from(s);
    }
}

/// A sample of a group: its sequence, advantage and reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub seq: Seq<'a>,
    pub advantage: f64,
    /// 0 where the reward is null.
    pub reward: f64,
}

/// A resolved group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group<'a> {
    /// Its samples, in row order: `Resolved::samples[samples]`.
    pub samples: Range<usize>,
    /// Prompt + reference answer; when the reference cannot fit, the prompt alone (no
    /// targets) and `reference_fits` is false: objectives that read y give the group no weight.
    pub reference: Seq<'a>,
    pub reference_fits: bool,
    /// Prompt + the dataset's rejected answer, when the shard's rejected answers are read
    /// (the prompt alone where the row has none or it cannot fit: `rejected_usable` false).
    pub rejected: Option<Seq<'a>>,
    pub rejected_usable: bool,
    pub reference_advantage: f64,
    /// Sequences of the group cut to `max_len`.
    pub truncated: u32,
    /// Sequences of the group left out.
    pub skipped: u32,
    /// Tokens of all its sequences.
    pub tokens: u64,
}

/// The groups of a step, resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved<'a> {
    pub groups: Vec<Group<'a>>,
    pub samples: Vec<Sample<'a>>,
}

/// Resolves the groups `spans` of `shards`: the sequences each would train on, as slices of
/// the column buffers (`GroupStore.group` in learner/data.py).
pub fn resolve<'a>(
    shards: &[Shard<'a>],
    spans: &[Span],
    fit: Fit,
) -> Result<Resolved<'a>, LoadError> {
    let mut out = Resolved {
        groups: Vec::with_capacity(spans.len()),
        samples: Vec::with_capacity(spans.iter().map(|s| s.len).sum()),
    };
    for (i, span) in spans.iter().enumerate() {
        let shard = shards.get(span.shard).ok_or(LoadError::NoSuchShard {
            span: i,
            shard: span.shard,
            shards: shards.len(),
        })?;
        if span.len == 0 {
            return Err(LoadError::EmptySpan { span: i });
        }
        resolve_group(shard, span, fit, &mut out).map_err(|(row, problem)| LoadError::Row {
            shard: span.shard,
            row,
            problem,
        })?;
    }
    Ok(out)
}

fn resolve_group<'a>(
    shard: &Shard<'a>,
    span: &Span,
    fit: Fit,
    out: &mut Resolved<'a>,
) -> Result<(), (usize, Problem)> {
    let first = span.start;
    let at = |row: usize| move |p: Problem| (row, p);
    let prompt = shard.prompt.required(first).map_err(at(first))?;
    let (mut truncated, mut skipped) = (0u32, 0u32);
    let fitted = fit.apply(
        prompt.len(),
        shard.reference.required(first).map_err(at(first))?,
    );
    let reference = match fitted {
        None => {
            skipped += 1;
            Seq::new(prompt, &[], &[], &[])
        }
        Some((cont, cut)) => {
            truncated += u32::from(cut);
            Seq::new(
                prompt,
                cont,
                &[],
                shard.ref_reference.or_empty(first).map_err(at(first))?,
            )
        }
    }
    .ok_or((first, Problem::EmptyPrompt))?;
    let reference_advantage =
        scalar(shard.reference_advantage, first, "reference_advantage").map_err(at(first))?;
    let start = out.samples.len();
    let mut tokens = reference.len() as u64;
    let (mut rejected, mut rejected_usable) = (None, false);
    if let Some((answers, logprobs)) = &shard.rejected {
        // No pair where the row has no rejected answer or it cannot fit (not counted).
        let cont = match answers.get(first).map_err(at(first))? {
            Some(answer) => fit.apply(prompt.len(), answer).map(|(c, _)| c),
            None => None,
        };
        rejected_usable = cont.is_some_and(|c| !c.is_empty());
        let seq = match cont.filter(|c| !c.is_empty()) {
            Some(c) => Seq::new(prompt, c, &[], logprobs.or_empty(first).map_err(at(first))?),
            None => Seq::new(prompt, &[], &[], &[]),
        }
        .ok_or((first, Problem::EmptyPrompt))?;
        tokens += seq.len() as u64;
        rejected = Some(seq);
    }
    for row in span.start..span.start + span.len {
        let response = shard.response.required(row).map_err(at(row))?;
        let Some((cont, cut)) = fit.apply(prompt.len(), response) else {
            skipped += 1;
            continue;
        };
        truncated += u32::from(cut);
        let behaviour = shard.behaviour.get(row).map_err(at(row))?;
        let ref_lp = shard.ref_logprobs.or_empty(row).map_err(at(row))?;
        let seq = Seq::new(prompt, cont, behaviour.unwrap_or_default(), ref_lp)
            .ok_or((row, Problem::EmptyPrompt))?
            .known(behaviour.is_some());
        let valid = shard.reward_valid.map_or(true, |v| v.get(row));
        let reward = if valid {
            scalar(shard.reward, row, "reward").map_err(at(row))?
        } else {
            0.0
        };
        tokens += seq.len() as u64;
        out.samples.push(Sample {
            seq,
            advantage: scalar(shard.advantage, row, "advantage").map_err(at(row))?,
            reward,
        });
    }
    out.groups.push(Group {
        samples: start..out.samples.len(),
        reference,
        reference_fits: fitted.is_some(),
        rejected,
        rejected_usable,
        reference_advantage,
        truncated,
        skipped,
        tokens,
    });
    Ok(())
}

/// Consecutive groups in micro-batches of at most `budget` tokens each (a group is never
/// split; one larger than the budget gets a micro-batch of its own); budget 0: one
/// micro-batch (`micro_batches` in learner/data.py).
pub fn split_by_tokens(tokens: &[u64], budget: u64) -> Vec<Range<usize>> {
    if budget == 0 {
        #[allow(clippy::single_range_in_vec_init)] // one micro-batch of all groups
        return vec![0..tokens.len()];
    }
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut used = budget.saturating_add(1);
    for (i, &n) in tokens.iter().enumerate() {
        if used.saturating_add(n) > budget {
            out.push(i..i);
            used = 0;
        }
        if let Some(last) = out.last_mut() {
            last.end = i + 1;
        }
        used = used.saturating_add(n);
    }
    out
}

// ---- Padded layout ----

/// The sequences of a micro-batch in the padded layout's order: per group `g` sample slots
/// (a dummy where the group has fewer samples), then every group's reference, then (when
/// rejected answers are read) every group's rejected answer. Returns the sequences and `g`,
/// the most samples of any group.
pub fn sequences<'a>(resolved: &Resolved<'a>, groups: &[Group<'a>]) -> (Vec<Seq<'a>>, usize) {
    let g = groups.iter().map(|x| x.samples.len()).max().unwrap_or(0);
    let mut seqs = Vec::with_capacity(groups.len() * (g + 1));
    for grp in groups {
        let samples = &resolved.samples[grp.samples.clone()];
        seqs.extend(samples.iter().map(|s| s.seq));
        seqs.extend((samples.len()..g).map(|_| Seq::dummy(grp.reference.prompt)));
    }
    seqs.extend(groups.iter().map(|grp| grp.reference));
    if groups.iter().any(|grp| grp.rejected.is_some()) {
        seqs.extend(
            groups
                .iter()
                .map(|grp| grp.rejected.unwrap_or_else(|| grp.reference.prompt_only())),
        );
    }
    (seqs, g)
}

/// A micro-batch in the padded layout (`Batch` in learner/data.py), row-major flat buffers.
/// N = B·G + B sequences (samples, then references; + B rejected answers when read), T tokens
/// each.
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    pub n: usize,
    pub t: usize,
    pub b: usize,
    pub g: usize,
    /// [N, T], right-padded with the pad id.
    pub input_ids: Vec<i64>,
    /// [N, T], 1 on real tokens.
    pub attention_mask: Vec<i64>,
    /// [N, T-1] over the shifted targets: 1 on continuation tokens.
    pub loss_mask: Vec<f32>,
    /// [N, T-1] behaviour log-prob of each target (0 where unknown).
    pub behaviour: Vec<f32>,
    /// [N, T-1] reference-model log-prob of each target (0 where unknown).
    pub reference: Vec<f32>,
    /// [B, G] advantages, rewards and 1 for a real sample (0 for an empty slot).
    pub advantage: Vec<f32>,
    pub reward: Vec<f32>,
    pub sample_mask: Vec<f32>,
    /// [B] reference advantages.
    pub reference_advantage: Vec<f32>,
    /// [N] true where the sequence has behaviour log-probs.
    pub behaviour_known: Vec<bool>,
    /// [B] 1 where the group's reference fits; 1 where it has a usable rejected answer.
    pub reference_fits: Vec<f32>,
    pub rejected_mask: Vec<f32>,
    pub real_tokens: usize,
}

/// Writes the padded layout of `groups` (`collate` in learner/data.py).
pub fn padded(resolved: &Resolved<'_>, groups: &[Group<'_>], pad_id: i64) -> Padded {
    let (seqs, g) = sequences(resolved, groups);
    write_padded(&seqs, g, resolved, groups, pad_id)
}

/// A micro-batch of `groups`: its padded layout and, given a row width, its packed layout.
pub fn micro_batch(
    resolved: &Resolved<'_>,
    groups: &[Group<'_>],
    pad_id: i64,
    width: Option<RowWidth>,
) -> Result<(Padded, Option<Packed>), PackError> {
    let (seqs, g) = sequences(resolved, groups);
    let pad = write_padded(&seqs, g, resolved, groups, pad_id);
    let pack = width.map(|w| packed(&seqs, w, pad_id)).transpose()?;
    Ok((pad, pack))
}

/// The padded layout of `seqs`, the output of [`sequences`] for `groups`.
fn write_padded(
    seqs: &[Seq<'_>],
    g: usize,
    resolved: &Resolved<'_>,
    groups: &[Group<'_>],
    pad_id: i64,
) -> Padded {
    let b = groups.len();
    let n = seqs.len();
    let t = seqs.iter().map(Seq::len).max().unwrap_or(1);
    let w = t - 1; // t >= 1: every sequence has a prompt token
    let mut out = Padded {
        n,
        t,
        b,
        g,
        input_ids: pool::filled(n * t, pad_id),
        attention_mask: pool::filled(n * t, 0i64),
        loss_mask: pool::filled(n * w, 0.0),
        behaviour: pool::filled(n * w, 0.0),
        reference: pool::filled(n * w, 0.0),
        advantage: pool::filled(b * g, 0.0),
        reward: pool::filled(b * g, 0.0),
        sample_mask: pool::filled(b * g, 0.0),
        reference_advantage: groups
            .iter()
            .map(|x| x.reference_advantage as f32)
            .collect(),
        behaviour_known: seqs.iter().map(|s| s.behaviour_known).collect(),
        reference_fits: groups
            .iter()
            .map(|x| f32::from(u8::from(x.reference_fits)))
            .collect(),
        rejected_mask: groups
            .iter()
            .map(|x| f32::from(u8::from(x.rejected_usable)))
            .collect(),
        real_tokens: seqs.iter().map(Seq::len).sum(),
    };
    for (k, s) in seqs.iter().enumerate() {
        let len = s.len();
        s.write_tokens(&mut out.input_ids[k * t..(k + 1) * t]);
        out.attention_mask[k * t..k * t + len].fill(1);
        // Targets s[p..] are predicted from positions p-1 .. len-2.
        let first = k * w + s.prompt.len() - 1;
        out.loss_mask[first..k * w + len - 1].fill(1.0);
        out.behaviour[first..first + s.behaviour.len()].copy_from_slice(s.behaviour);
        out.reference[first..first + s.reference.len()].copy_from_slice(s.reference);
    }
    for (i, grp) in groups.iter().enumerate() {
        for (j, s) in resolved.samples[grp.samples.clone()].iter().enumerate() {
            out.advantage[i * g + j] = s.advantage as f32;
            out.reward[i * g + j] = s.reward as f32;
            out.sample_mask[i * g + j] = 1.0;
        }
    }
    out
}

// ---- Packed layout ----

/// How wide the packed rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowWidth {
    /// Best-fit decreasing into rows of exactly `max(w, longest sequence)` tokens (`pack` in
    /// learner/data.py with that budget).
    Exactly(u64),
    /// Rows of at most `max(cap, longest sequence)` tokens, as narrow as the packing allows:
    /// see [`fit_rows`]. Never more padded tokens than the padded layout.
    AtMost(u64),
}

/// A micro-batch's sequences packed into rows (`Packed` in learner/data.py). R rows of W
/// tokens; K = Σ (len − 1) next-token positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub rows: usize,
    pub width: usize,
    /// [R, W] tokens, the pad id after a row's last sequence.
    pub input_ids: Vec<i64>,
    /// [R, W] position in the sequence, restarting at 0; the row padding counts from 0 too.
    pub position_ids: Vec<i64>,
    /// [R, W] index of the token's sequence in the padded layout, -1 on row padding.
    pub segment: Vec<i64>,
    /// [K] row and column of each position that predicts a next token of its sequence ...
    pub src_row: Vec<i64>,
    pub src_col: Vec<i64>,
    /// [K] ... and where that log-prob goes in the padded layout's [N, T-1].
    pub dst_seq: Vec<i64>,
    pub dst_pos: Vec<i64>,
    pub real_tokens: usize,
}

/// A packing and its row width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub packing: Packing,
    pub width: u64,
}

impl Rows {
    pub fn padded_tokens(&self) -> u64 {
        self.packing.n_bins as u64 * self.width
    }
}

/// Best-fit decreasing at `budget`, with the width cut to the fullest row.
fn bfd_fitted(lengths: &[i64], budget: u64) -> Result<Rows, PackError> {
    let packing = packing::pack_bfd(lengths, i64::try_from(budget).unwrap_or(i64::MAX))?;
    let mut loads = vec![0u64; packing.n_bins];
    for (&bin, &len) in packing.bin_of_item.iter().zip(lengths) {
        loads[bin as usize] += len.unsigned_abs();
    }
    let width = loads.into_iter().max().unwrap_or(0);
    Ok(Rows { packing, width })
}

/// Rows of at most `cap` tokens (at least the longest sequence) with the fewest padded tokens
/// (rows × width) among the packings this tries, the narrowest on ties:
/// - best-fit decreasing at `cap`, with the width cut to its fullest row: packs short
///   sequences tightly;
/// - the narrowest width that keeps that row count (binary search): spreads the last, partly
///   empty row's share over all rows;
/// - best-fit decreasing at the longest sequence: never more padded tokens than the padded
///   layout (N × longest), e.g. when sequences are a bit longer than half of `cap`, so that
///   `cap`-wide rows would hold one each and be half empty.
pub fn fit_rows(lengths: &[i64], cap: u64) -> Result<Rows, PackError> {
    let longest = lengths
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1)
        .unsigned_abs();
    let cap = cap.max(longest);
    let mut best = bfd_fitted(lengths, cap)?;
    let target = best.packing.n_bins;
    let consider = |rows: Rows, best: &mut Rows| {
        if (rows.padded_tokens(), rows.width) < (best.padded_tokens(), best.width) {
            *best = rows;
        }
    };
    let total: u64 = lengths.iter().map(|l| l.unsigned_abs()).sum();
    let mut lo = longest.max(total.div_ceil(target.max(1) as u64));
    let mut hi = best.width;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let rows = bfd_fitted(lengths, mid)?;
        if rows.packing.n_bins <= target {
            hi = rows.width.min(mid);
            consider(rows, &mut best);
        } else {
            lo = mid + 1;
        }
    }
    consider(bfd_fitted(lengths, longest)?, &mut best);
    Ok(best)
}

/// Packs `seqs` (in the padded layout's order) into rows (`pack` in learner/data.py).
pub fn packed(seqs: &[Seq<'_>], width: RowWidth, pad_id: i64) -> Result<Packed, PackError> {
    let lengths: Vec<i64> = seqs.iter().map(|s| s.len() as i64).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0).unsigned_abs();
    let rows = match width {
        RowWidth::Exactly(w) => {
            let w = w.max(longest);
            let packing = packing::pack_bfd(&lengths, i64::try_from(w).unwrap_or(i64::MAX))?;
            Rows { packing, width: w }
        }
        RowWidth::AtMost(cap) => fit_rows(&lengths, cap)?,
    };
    Ok(write_packed(seqs, &rows, pad_id))
}

/// Writes the packed layout of `seqs` placed by `rows` (every row's load fits its width).
pub fn write_packed(seqs: &[Seq<'_>], rows: &Rows, pad_id: i64) -> Packed {
    let (r, w) = (rows.packing.n_bins, rows.width as usize);
    let real: usize = seqs.iter().map(Seq::len).sum();
    let k = real - seqs.len();
    let mut out = Packed {
        rows: r,
        width: w,
        input_ids: pool::filled(r * w, pad_id),
        position_ids: pool::filled(r * w, 0),
        segment: pool::filled(r * w, -1),
        src_row: pool::with_capacity(k),
        src_col: pool::with_capacity(k),
        dst_seq: pool::with_capacity(k),
        dst_pos: pool::with_capacity(k),
        real_tokens: real,
    };
    let mut fill = vec![0usize; r];
    for (n, (s, &row)) in seqs.iter().zip(&rows.packing.bin_of_item).enumerate() {
        let (row, len) = (row as usize, s.len());
        let o = fill[row];
        let at = row * w + o..row * w + o + len;
        s.write_tokens(&mut out.input_ids[at.clone()]);
        for (p, pos) in out.position_ids[at.clone()].iter_mut().enumerate() {
            *pos = p as i64;
        }
        out.segment[at].fill(n as i64);
        let m = len - 1;
        out.src_row.extend(std::iter::repeat(row as i64).take(m));
        out.src_col.extend((o..o + m).map(|c| c as i64));
        out.dst_seq.extend(std::iter::repeat(n as i64).take(m));
        out.dst_pos.extend((0..m).map(|p| p as i64));
        fill[row] = o + len;
    }
    // Row padding: its own segment (-1), positions restarting at 0.
    for (row, &used) in fill.iter().enumerate() {
        for (p, pos) in out.position_ids[row * w + used..(row + 1) * w]
            .iter_mut()
            .enumerate()
        {
            *pos = p as i64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Owned columns of one table, for building [`Shard`] views in tests.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Table {
        prompt: Vec<Vec<i32>>,
        response: Vec<Vec<i32>>,
        reference: Vec<Vec<i32>>,
        behaviour: Vec<Option<Vec<f32>>>,
        ref_logprobs: Vec<Option<Vec<f32>>>,
        ref_reference: Vec<Option<Vec<f32>>>,
        advantage: Vec<f64>,
        reference_advantage: Vec<f64>,
        reward: Vec<Option<f64>>,
        /// None: rejected answers are not read.
        rejected: Option<Vec<Option<Vec<i32>>>>,
        ref_rejected: Vec<Option<Vec<f32>>>,
    }

    /// Flat Arrow-style buffers of a table.
    struct Flat {
        lists_i32: [(Vec<i32>, Vec<i32>); 3],
        lists_f32: [(Vec<i32>, Vec<f32>, Vec<u8>); 3],
        reward: Vec<f64>,
        reward_bits: Vec<u8>,
        rejected: Option<(FlatList<i32>, FlatList<f32>)>,
    }

    /// Offsets, values and validity bits of a nullable list column.
    type FlatList<T> = (Vec<i32>, Vec<T>, Vec<u8>);

    fn bits(valid: impl Iterator<Item = bool>) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, v) in valid.enumerate() {
            if i % 8 == 0 {
                out.push(0);
            }
            if v {
                *out.last_mut().unwrap() |= 1 << (i % 8);
            }
        }
        out
    }

    fn flat_lists<T: Copy + Default>(rows: &[Option<Vec<T>>]) -> FlatList<T> {
        let mut offsets = vec![0i32];
        let mut values = Vec::new();
        for r in rows {
            if let Some(r) = r {
                values.extend_from_slice(r);
            } else {
                values.push(T::default()); // a null slot may still span values
            }
            offsets.push(values.len() as i32);
        }
        (offsets, values, bits(rows.iter().map(Option::is_some)))
    }

    impl Table {
        fn flat(&self) -> Flat {
            let ints = |c: &Vec<Vec<i32>>| {
                let (o, v, _) = flat_lists(&c.iter().cloned().map(Some).collect::<Vec<_>>());
                (o, v)
            };
            Flat {
                lists_i32: [
                    ints(&self.prompt),
                    ints(&self.response),
                    ints(&self.reference),
                ],
                lists_f32: [
                    flat_lists(&self.behaviour),
                    flat_lists(&self.ref_logprobs),
                    flat_lists(&self.ref_reference),
                ],
                reward: self.reward.iter().map(|r| r.unwrap_or(f64::NAN)).collect(),
                reward_bits: bits(self.reward.iter().map(Option::is_some)),
                rejected: self.rejected.as_ref().map(|r| {
                    let mut lp = self.ref_rejected.clone();
                    lp.resize(r.len(), None);
                    (flat_lists(r), flat_lists(&lp))
                }),
            }
        }
    }

    fn nullable_lists<'a, T>(
        x: &'a (Vec<i32>, Vec<T>, Vec<u8>),
        name: &'static str,
    ) -> Lists<'a, T> {
        Lists {
            name,
            offsets: &x.0,
            values: &x.1,
            validity: Some(Bits {
                bytes: &x.2,
                offset: 0,
            }),
        }
    }

    impl Flat {
        fn shard<'a>(&'a self, t: &'a Table) -> Shard<'a> {
            let ints = |i: usize, name| Lists {
                name,
                offsets: &self.lists_i32[i].0,
                values: &self.lists_i32[i].1,
                validity: None,
            };
            let floats = |i: usize, name| Lists {
                name,
                offsets: &self.lists_f32[i].0,
                values: &self.lists_f32[i].1,
                validity: Some(Bits {
                    bytes: &self.lists_f32[i].2,
                    offset: 0,
                }),
            };
            Shard {
                prompt: ints(0, "prompt_token_ids"),
                response: ints(1, "response_token_ids"),
                reference: ints(2, "reference_token_ids"),
                behaviour: floats(0, "behaviour_logprobs"),
                ref_logprobs: floats(1, "ref_logprobs"),
                ref_reference: floats(2, "ref_reference_logprobs"),
                advantage: &t.advantage,
                reference_advantage: &t.reference_advantage,
                reward: &self.reward,
                reward_valid: Some(Bits {
                    bytes: &self.reward_bits,
                    offset: 0,
                }),
                rejected: self.rejected.as_ref().map(|(a, l)| {
                    (
                        nullable_lists(a, "reference_rejected_token_ids"),
                        nullable_lists(l, "ref_reference_rejected_logprobs"),
                    )
                }),
            }
        }
    }

    // ---- A plain reference: the Python code, transcribed with Vecs ----

    struct RefGroup {
        prompt: Vec<i32>,
        reference: Vec<i32>,
        reference_fits: bool,
        rejected: Option<Vec<i32>>,
        ref_rejected: Option<Vec<f32>>,
        ref_reference: Option<Vec<f32>>,
        reference_advantage: f64,
        responses: Vec<Vec<i32>>,
        advantages: Vec<f64>,
        rewards: Vec<f64>,
        behaviour: Vec<Option<Vec<f32>>>,
        ref_lp: Vec<Option<Vec<f32>>>,
        truncated: u32,
        skipped: u32,
    }

    fn ref_fit(plen: usize, cont: &[i32], fit: Fit) -> Option<Vec<i32>> {
        match fit.max_len {
            None => Some(cont.to_vec()),
            Some(m) if plen + cont.len() <= m => Some(cont.to_vec()),
            Some(m) if fit.overlong == Overlong::Skip || plen >= m => None,
            Some(m) => Some(cont[..m - plen].to_vec()),
        }
    }

    fn ref_group(t: &Table, span: Span, fit: Fit) -> RefGroup {
        let f = span.start;
        let prompt = t.prompt[f].clone();
        let plen = prompt.len();
        let (mut truncated, mut skipped) = (0, 0);
        let cut = |x: &Option<Vec<f32>>, n: usize| x.as_ref().map(|v| v[..v.len().min(n)].to_vec());
        let fitted = ref_fit(plen, &t.reference[f], fit);
        let reference_fits = fitted.is_some();
        let (reference, ref_reference) = match fitted {
            None => {
                skipped += 1;
                (vec![], None)
            }
            Some(r) => {
                truncated += u32::from(r.len() != t.reference[f].len());
                let lp = cut(&t.ref_reference[f], r.len());
                (r, lp)
            }
        };
        let rejected = t.rejected.as_ref().map(|r| {
            r[f].as_ref()
                .and_then(|a| ref_fit(plen, a, fit))
                .unwrap_or_default()
        });
        let ref_rejected = match &rejected {
            Some(r) if !r.is_empty() => cut(&t.ref_rejected[f], r.len()),
            _ => None,
        };
        let mut grp = RefGroup {
            prompt,
            reference,
            reference_fits,
            rejected,
            ref_rejected,
            ref_reference,
            reference_advantage: t.reference_advantage[f],
            responses: vec![],
            advantages: vec![],
            rewards: vec![],
            behaviour: vec![],
            ref_lp: vec![],
            truncated: 0,
            skipped: 0,
        };
        for row in span.start..span.start + span.len {
            let Some(resp) = ref_fit(plen, &t.response[row], fit) else {
                skipped += 1;
                continue;
            };
            truncated += u32::from(resp.len() != t.response[row].len());
            grp.behaviour.push(cut(&t.behaviour[row], resp.len()));
            grp.ref_lp.push(cut(&t.ref_logprobs[row], resp.len()));
            grp.responses.push(resp);
            grp.advantages.push(t.advantage[row]);
            grp.rewards.push(t.reward[row].unwrap_or(0.0));
        }
        grp.truncated = truncated;
        grp.skipped = skipped;
        grp
    }

    type RefSeq = (Vec<i32>, usize, Option<Vec<f32>>, Option<Vec<f32>>);

    fn ref_seqs(groups: &[RefGroup]) -> (Vec<RefSeq>, usize) {
        let g = groups.iter().map(|x| x.responses.len()).max().unwrap_or(0);
        let mut seqs = vec![];
        for grp in groups {
            for j in 0..g {
                if j < grp.responses.len() {
                    let s = [grp.prompt.clone(), grp.responses[j].clone()].concat();
                    seqs.push((
                        s,
                        grp.prompt.len(),
                        grp.behaviour[j].clone(),
                        grp.ref_lp[j].clone(),
                    ));
                } else {
                    seqs.push((grp.prompt[..1].to_vec(), 1, None, None));
                }
            }
        }
        for grp in groups {
            let s = [grp.prompt.clone(), grp.reference.clone()].concat();
            seqs.push((s, grp.prompt.len(), None, grp.ref_reference.clone()));
        }
        if groups.iter().any(|grp| grp.rejected.is_some()) {
            for grp in groups {
                let rej = grp.rejected.clone().unwrap_or_default();
                let s = [grp.prompt.clone(), rej].concat();
                seqs.push((s, grp.prompt.len(), None, grp.ref_rejected.clone()));
            }
        }
        (seqs, g)
    }

    fn ref_padded(groups: &[RefGroup], pad: i64) -> Padded {
        let (seqs, g) = ref_seqs(groups);
        let (n, b) = (seqs.len(), groups.len());
        let t = seqs.iter().map(|s| s.0.len()).max().unwrap();
        let mut p = Padded {
            n,
            t,
            b,
            g,
            input_ids: vec![pad; n * t],
            attention_mask: vec![0; n * t],
            loss_mask: vec![0.0; n * (t - 1)],
            behaviour: vec![0.0; n * (t - 1)],
            reference: vec![0.0; n * (t - 1)],
            advantage: vec![0.0; b * g],
            reward: vec![0.0; b * g],
            sample_mask: vec![0.0; b * g],
            reference_advantage: groups
                .iter()
                .map(|x| x.reference_advantage as f32)
                .collect(),
            behaviour_known: seqs.iter().map(|s| s.2.is_some()).collect(),
            reference_fits: groups
                .iter()
                .map(|x| if x.reference_fits { 1.0 } else { 0.0 })
                .collect(),
            rejected_mask: groups
                .iter()
                .map(|x| match &x.rejected {
                    Some(r) if !r.is_empty() => 1.0,
                    _ => 0.0,
                })
                .collect(),
            real_tokens: 0,
        };
        for (k, (s, plen, beh, rf)) in seqs.iter().enumerate() {
            for (c, &tok) in s.iter().enumerate() {
                p.input_ids[k * t + c] = tok as i64;
                p.attention_mask[k * t + c] = 1;
                p.real_tokens += 1;
            }
            for c in plen - 1..s.len() - 1 {
                p.loss_mask[k * (t - 1) + c] = 1.0;
            }
            for (c, &x) in beh.iter().flatten().enumerate() {
                p.behaviour[k * (t - 1) + plen - 1 + c] = x;
            }
            for (c, &x) in rf.iter().flatten().enumerate() {
                p.reference[k * (t - 1) + plen - 1 + c] = x;
            }
        }
        for (i, grp) in groups.iter().enumerate() {
            for j in 0..grp.responses.len() {
                p.advantage[i * g + j] = grp.advantages[j] as f32;
                p.reward[i * g + j] = grp.rewards[j] as f32;
                p.sample_mask[i * g + j] = 1.0;
            }
        }
        p
    }

    fn ref_packed(seqs: &[RefSeq], budget: usize, pad: i64) -> Packed {
        let lengths: Vec<i64> = seqs.iter().map(|s| s.0.len() as i64).collect();
        let p = packing::pack_bfd(&lengths, budget as i64).unwrap();
        let r = p.n_bins;
        let mut out = Packed {
            rows: r,
            width: budget,
            input_ids: vec![pad; r * budget],
            position_ids: vec![0; r * budget],
            segment: vec![-1; r * budget],
            src_row: vec![],
            src_col: vec![],
            dst_seq: vec![],
            dst_pos: vec![],
            real_tokens: 0,
        };
        let mut fill = vec![0; r];
        for (n, s) in seqs.iter().enumerate() {
            let row = p.bin_of_item[n] as usize;
            let o = fill[row];
            for (c, &tok) in s.0.iter().enumerate() {
                out.input_ids[row * budget + o + c] = tok as i64;
                out.position_ids[row * budget + o + c] = c as i64;
                out.segment[row * budget + o + c] = n as i64;
            }
            for c in 0..s.0.len() - 1 {
                out.src_row.push(row as i64);
                out.src_col.push((o + c) as i64);
                out.dst_seq.push(n as i64);
                out.dst_pos.push(c as i64);
            }
            fill[row] += s.0.len();
        }
        for (row, &used) in fill.iter().enumerate() {
            for c in used..budget {
                out.position_ids[row * budget + c] = (c - used) as i64;
            }
        }
        out.real_tokens = fill.iter().sum();
        out
    }

    // ---- Generators ----

    fn lp(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| -((i + seed) as f32) / 7.0).collect()
    }

    /// A table of `groups` groups; group k has `sizes[k]` rows.
    fn table(sizes: &[usize], lens: &[usize]) -> (Table, Vec<Span>) {
        let mut t = Table::default();
        let mut spans = vec![];
        let mut li = 0;
        let mut next = || {
            li += 1;
            lens[li % lens.len()]
        };
        for (k, &size) in sizes.iter().enumerate() {
            let start = t.prompt.len();
            let prompt: Vec<i32> = (0..1 + next() % 6)
                .map(|i| (k * 10 + i) as i32 + 1)
                .collect();
            let reference: Vec<i32> = (0..next() % 7).map(|i| 100 + i as i32).collect();
            let rl = next();
            let rref = match rl % 3 {
                0 => None,
                1 => Some(lp(reference.len(), k)),
                _ => Some(lp(reference.len() + 2, k)), // longer than its tokens
            };
            for j in 0..size {
                let n = next() % 9;
                t.prompt.push(prompt.clone());
                t.reference.push(reference.clone());
                t.ref_reference.push(rref.clone());
                t.response
                    .push((0..n).map(|i| 200 + (j * 9 + i) as i32).collect());
                let sel = next();
                t.behaviour
                    .push((sel % 4 != 0).then(|| lp((n + 1).saturating_sub(sel % 3), j)));
                t.ref_logprobs.push((sel % 4 == 1).then(|| lp(n, j + 3)));
                t.advantage.push(j as f64 * 0.37 - 1.1 + k as f64);
                t.reference_advantage.push(0.123 * k as f64);
                t.reward.push((sel % 5 != 0).then_some(j as f64 - 0.5));
            }
            spans.push(Span {
                shard: 0,
                start,
                len: size,
            });
        }
        (t, spans)
    }

    /// Gives every row of `t` a rejected answer column: some null, some empty, log-probs that
    /// may be missing or longer than their tokens.
    fn add_rejected(t: &mut Table) {
        let rows = t.prompt.len();
        t.rejected = Some(
            (0..rows)
                .map(|r| (r % 4 != 3).then(|| (0..(r * 7) % 6).map(|i| 300 + i as i32).collect()))
                .collect(),
        );
        t.ref_rejected = (0..rows)
            .map(|r| (r % 3 != 0).then(|| lp((r * 7) % 6 + r % 2, r)))
            .collect();
    }

    fn fits() -> impl Strategy<Value = Fit> {
        (prop::option::of(2usize..16), any::<bool>()).prop_map(|(max_len, skip)| Fit {
            max_len,
            overlong: if skip {
                Overlong::Skip
            } else {
                Overlong::Truncate
            },
        })
    }

    fn check_against_reference(t: &Table, spans: &[Span], fit: Fit, budget: u64) {
        let flat = t.flat();
        let shard = flat.shard(t);
        let resolved = resolve(&[shard], spans, fit).unwrap();
        let reference: Vec<RefGroup> = spans.iter().map(|&s| ref_group(t, s, fit)).collect();
        for (got, want) in resolved.groups.iter().zip(&reference) {
            assert_eq!((got.truncated, got.skipped), (want.truncated, want.skipped));
        }
        let want = ref_padded(&reference, -7);
        let (got, pk) = micro_batch(
            &resolved,
            &resolved.groups,
            -7,
            Some(RowWidth::Exactly(budget)),
        )
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(got, padded(&resolved, &resolved.groups, -7));
        let (rseqs, _) = ref_seqs(&reference);
        let width = budget.max(got.t as u64);
        assert_eq!(pk, Some(ref_packed(&rseqs, width as usize, -7)));
    }

    #[test]
    fn by_hand() {
        // Group 0: prompt [1, 2], reference [9]; samples [5, 6, 7] and [8].
        let t = Table {
            prompt: vec![vec![1, 2]; 3],
            response: vec![vec![5, 6, 7], vec![8], vec![3]],
            reference: vec![vec![9], vec![9], vec![4, 4]],
            behaviour: vec![Some(vec![-0.5, -0.25, -1.0]), None, None],
            ref_logprobs: vec![None, Some(vec![-2.0]), None],
            ref_reference: vec![Some(vec![-3.0]), Some(vec![-3.0]), None],
            advantage: vec![1.0, -1.0, 0.5],
            reference_advantage: vec![0.25, 0.25, 0.0],
            reward: vec![Some(1.0), None, Some(0.0)],
            ..Table::default()
        };
        let flat = t.flat();
        let spans = [
            Span {
                shard: 0,
                start: 0,
                len: 2,
            },
            Span {
                shard: 0,
                start: 2,
                len: 1,
            },
        ];
        let r = resolve(&[flat.shard(&t)], &spans, Fit::ANY).unwrap();
        assert_eq!(r.groups[0].tokens, 5 + 3 + 3);
        let p = padded(&r, &r.groups, 0);
        assert_eq!((p.n, p.t, p.b, p.g), (6, 5, 2, 2));
        #[rustfmt::skip]
        assert_eq!(p.input_ids, vec![
            1, 2, 5, 6, 7,
            1, 2, 8, 0, 0,
            1, 2, 3, 0, 0,
            1, 0, 0, 0, 0, // group 1's empty slot: a 1-token dummy
            1, 2, 9, 0, 0,
            1, 2, 4, 4, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(p.loss_mask, vec![
            0., 1., 1., 1.,
            0., 1., 0., 0.,
            0., 1., 0., 0.,
            0., 0., 0., 0.,
            0., 1., 0., 0.,
            0., 1., 1., 0.,
        ]);
        assert_eq!(&p.behaviour[..4], &[0., -0.5, -0.25, -1.0]);
        assert_eq!(&p.reference[4..8], &[0., -2.0, 0., 0.]);
        assert_eq!(&p.reference[16..20], &[0., -3.0, 0., 0.]);
        assert_eq!(p.reward, vec![1.0, 0.0, 0.0, 0.0]); // a null reward counts 0
        assert_eq!(p.sample_mask, vec![1.0, 1.0, 1.0, 0.0]);
        assert_eq!(p.reference_advantage, vec![0.25, 0.0]);
        assert_eq!(p.real_tokens, 5 + 3 + 3 + 1 + 3 + 4);
        // Only sample 0 has behaviour log-probs; dummies and references never do.
        assert_eq!(p.behaviour_known, [true, false, false, false, false, false]);
        assert_eq!(
            (p.reference_fits, p.rejected_mask),
            (vec![1.0, 1.0], vec![0.0, 0.0])
        );

        let (seqs, _) = sequences(&r, &r.groups);
        let pk = packed(&seqs, RowWidth::Exactly(8), 0).unwrap();
        // Decreasing: 5 (seq 0) → row 0, 4 (seq 5) → row 1, 3s: seq 1 → row 0 (room 3),
        // seq 2 → row 1 (room 4 → 1), seq 4 → row 2, 1 (seq 3) → row 1.
        assert_eq!(pk.rows, 3);
        #[rustfmt::skip]
        assert_eq!(pk.segment, vec![
            0, 0, 0, 0, 0, 1, 1, 1,
            2, 2, 2, 3, 5, 5, 5, 5, // in sequence order within a row
            4, 4, 4, -1, -1, -1, -1, -1,
        ]);
        assert_eq!(&pk.position_ids[16..24], &[0, 1, 2, 0, 1, 2, 3, 4]);
        assert_eq!(pk.src_row.len(), p.real_tokens - 6);
        assert_eq!(&pk.src_col[..6], &[0, 1, 2, 3, 5, 6]);
        assert_eq!(&pk.dst_pos[..6], &[0, 1, 2, 3, 0, 1]);
    }

    #[test]
    fn fit_and_skip() {
        let t = Table {
            prompt: vec![vec![1, 2, 3]; 2],
            response: vec![vec![5, 6, 7], vec![8]],
            reference: vec![vec![9, 9, 9, 9]; 2],
            behaviour: vec![Some(vec![-0.5, -0.25, -1.0]), None],
            ref_logprobs: vec![None; 2],
            ref_reference: vec![Some(vec![-1.0, -2.0, -3.0, -4.0]); 2],
            advantage: vec![1.0, -1.0],
            reference_advantage: vec![0.0; 2],
            reward: vec![Some(1.0); 2],
            ..Table::default()
        };
        let flat = t.flat();
        let span = [Span {
            shard: 0,
            start: 0,
            len: 2,
        }];
        let truncate = Fit {
            max_len: Some(5),
            overlong: Overlong::Truncate,
        };
        let r = resolve(&[flat.shard(&t)], &span, truncate).unwrap();
        assert_eq!((r.groups[0].truncated, r.groups[0].skipped), (2, 0));
        assert_eq!(r.groups[0].reference.cont, &[9, 9]);
        assert_eq!(r.groups[0].reference.reference, &[-1.0, -2.0]);
        assert_eq!(r.samples[0].seq.behaviour, &[-0.5, -0.25]);
        let skip = Fit {
            overlong: Overlong::Skip,
            ..truncate
        };
        let r = resolve(&[flat.shard(&t)], &span, skip).unwrap();
        assert_eq!((r.groups[0].truncated, r.groups[0].skipped), (0, 2));
        assert_eq!(r.samples.len(), 1);
        // The reference is left out: no stand-in tokens, and the group is marked.
        assert_eq!(
            (r.groups[0].reference.cont, r.groups[0].reference.reference),
            (&[][..], &[][..])
        );
        assert!(!r.groups[0].reference_fits);
        assert_eq!(padded(&r, &r.groups, 0).reference_fits, vec![0.0]);
        // A prompt that alone reaches the limit: every sequence is left out.
        let tight = Fit {
            max_len: Some(3),
            ..truncate
        };
        let r = resolve(&[flat.shard(&t)], &span, tight).unwrap();
        assert_eq!((r.samples.len(), r.groups[0].skipped), (0, 3));
        let p = padded(&r, &r.groups, 0);
        assert_eq!((p.n, p.g, p.t), (1, 0, 3)); // the reference row: the prompt alone
    }

    #[test]
    fn rejected_answers_follow_the_references() {
        // Group 0 has a rejected answer [7, 7] (with log-probs), group 1 none (null).
        let mut t = Table {
            prompt: vec![vec![1, 2], vec![1, 2], vec![3]],
            response: vec![vec![5], vec![6], vec![8]],
            reference: vec![vec![9], vec![9], vec![4]],
            behaviour: vec![None; 3],
            ref_logprobs: vec![None; 3],
            ref_reference: vec![None; 3],
            advantage: vec![0.0; 3],
            reference_advantage: vec![0.0; 3],
            reward: vec![Some(0.0); 3],
            ..Table::default()
        };
        t.rejected = Some(vec![Some(vec![7, 7]), Some(vec![7, 7]), None]);
        t.ref_rejected = vec![Some(vec![-1.0, -2.0]), Some(vec![-1.0, -2.0]), None];
        let flat = t.flat();
        let spans = [
            Span {
                shard: 0,
                start: 0,
                len: 2,
            },
            Span {
                shard: 0,
                start: 2,
                len: 1,
            },
        ];
        let r = resolve(&[flat.shard(&t)], &spans, Fit::ANY).unwrap();
        assert_eq!(r.groups[0].tokens, 3 + 3 + 3 + 4);
        let p = padded(&r, &r.groups, 0);
        assert_eq!((p.n, p.t, p.b, p.g), (8, 4, 2, 2));
        #[rustfmt::skip]
        assert_eq!(&p.input_ids[16..], &[
            1, 2, 9, 0, // references
            3, 4, 0, 0,
            1, 2, 7, 7, // rejected answers; group 1: its prompt alone
            3, 0, 0, 0,
        ]);
        assert_eq!(&p.loss_mask[18..], &[0., 1., 1., 0., 0., 0.]);
        assert_eq!(&p.reference[18..21], &[0., -1.0, -2.0]);
        assert_eq!(p.rejected_mask, vec![1.0, 0.0]);
        // Too long for max_len 3 with overlong=skip: no pair, and nothing counted.
        let skip = Fit {
            max_len: Some(3),
            overlong: Overlong::Skip,
        };
        let r = resolve(&[flat.shard(&t)], &spans[..1], skip).unwrap();
        assert_eq!(
            (r.groups[0].rejected_usable, r.groups[0].skipped),
            (false, 0)
        );
    }

    #[test]
    fn bad_rows_are_errors() {
        let (t, spans) = table(&[2, 3], &[3, 1, 4, 1, 5, 9, 2, 6]);
        let mut flat = t.flat();
        let s = flat.shard(&t);
        let far = Span {
            shard: 0,
            start: 4,
            len: 3,
        };
        let e = resolve(&[s], &[far], Fit::ANY).unwrap_err();
        assert_eq!(
            e,
            LoadError::Row {
                shard: 0,
                row: 5,
                problem: Problem::OutOfRange("response_token_ids")
            }
        );
        assert!(e.to_string().contains("table 0, row 5"));
        let e = resolve(
            &[s],
            &[Span {
                shard: 2,
                ..spans[0]
            }],
            Fit::ANY,
        )
        .unwrap_err();
        assert!(e.to_string().contains("spans[0] names table 2"));
        let e = resolve(&[s], &[Span { len: 0, ..spans[0] }], Fit::ANY).unwrap_err();
        assert_eq!(e, LoadError::EmptySpan { span: 0 });
        flat.lists_i32[1].0[1] = 10_000; // offsets beyond the values
        let e = resolve(&[flat.shard(&t)], &spans, Fit::ANY).unwrap_err();
        assert!(
            e.to_string()
                .contains("response_token_ids has list offsets outside"),
            "{e}"
        );
        flat.lists_i32[0].0[1] = 0; // row 0's prompt is empty
        let e = resolve(&[flat.shard(&t)], &spans, Fit::ANY).unwrap_err();
        assert!(e.to_string().contains("prompt_token_ids is empty"), "{e}");
    }

    #[test]
    fn micro_batches_by_tokens() {
        assert_eq!(split_by_tokens(&[5, 5, 5], 10), vec![0..2, 2..3]);
        assert_eq!(
            split_by_tokens(&[12, 3, 11, 4], 10),
            vec![0..1, 1..2, 2..3, 3..4]
        );
        let all = split_by_tokens(&[1, 2, 3], 0);
        assert_eq!((all.len(), all.first()), (1, Some(&(0..3))));
        assert!(split_by_tokens(&[], 5).is_empty());
    }

    /// Issue #14 item 5: sequences a bit longer than half the row budget, one group per
    /// micro-batch. Rows as wide as the budget hold one sequence each and are half empty
    /// (more padding than right-padding to the longest); fitted rows never are.
    #[test]
    fn fitted_rows_never_pad_more_than_the_padded_layout() {
        let lengths: Vec<i64> = vec![1100, 1180, 1240, 1090, 1300, 1150, 1210, 1120, 700];
        let longest = 1300u64;
        let fixed = packing::pack_bfd(&lengths, 2048).unwrap();
        let padded_tokens = lengths.len() as u64 * longest;
        assert!(fixed.n_bins as u64 * 2048 > padded_tokens); // the bad case: rows of 2048
        let rows = fit_rows(&lengths, 2048).unwrap();
        assert!(rows.padded_tokens() <= padded_tokens);
        assert!(rows.width <= 2048 && rows.width >= longest);
        // Many short sequences: the last row's slack is spread over all rows.
        let short: Vec<i64> = (0..40).map(|i| 60 + (i * 37) % 90).collect();
        let total: i64 = short.iter().sum();
        let rows = fit_rows(&short, 2048).unwrap();
        let fixed = packing::pack_bfd(&short, 2048).unwrap();
        assert!(rows.padded_tokens() < fixed.n_bins as u64 * 2048);
        assert!(
            rows.padded_tokens() as f64 <= total as f64 * 1.05,
            "{rows:?}"
        );
    }

    proptest! {
        #[test]
        fn equals_the_plain_reference(
            sizes in prop::collection::vec(1usize..5, 1..6),
            lens in prop::collection::vec(0usize..40, 8..32),
            fit in fits(),
            budget in 1u64..40,
            rejected in any::<bool>(),
        ) {
            let (mut t, spans) = table(&sizes, &lens);
            if rejected {
                add_rejected(&mut t);
            }
            check_against_reference(&t, &spans, fit, budget);
        }

        #[test]
        fn fitted_rows_are_valid_and_no_worse(
            lengths in prop::collection::vec(1i64..300, 1..80),
            cap in 1u64..700,
        ) {
            let rows = fit_rows(&lengths, cap).unwrap();
            let longest = *lengths.iter().max().unwrap() as u64;
            let total: i64 = lengths.iter().sum();
            prop_assert!(rows.width >= longest && rows.width <= cap.max(longest));
            let mut loads = vec![0u64; rows.packing.n_bins];
            for (&b, &l) in rows.packing.bin_of_item.iter().zip(&lengths) {
                loads[b as usize] += l as u64;
            }
            prop_assert!(loads.iter().all(|&l| l > 0 && l <= rows.width));
            // Never worse than right-padding, nor than rows of the full cap.
            prop_assert!(rows.padded_tokens() <= lengths.len() as u64 * longest);
            let fixed = packing::pack_bfd(&lengths, cap.max(longest) as i64).unwrap();
            prop_assert!(rows.padded_tokens() <= fixed.n_bins as u64 * cap.max(longest));
            prop_assert!(rows.padded_tokens() >= total as u64);
        }
    }
}

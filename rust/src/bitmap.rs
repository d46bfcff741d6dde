//! Append-only bitmaps in the Arrow layout (bit `i` is bit `i % 8` of byte `i / 8`), kept in
//! little-endian `u64` words so the bindings can hand them to Arrow without repacking.

/// A finished bitmap of `len` bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit {i} out of range (len {})", self.len);
        u64::from_le(self.words[i / 64]) >> (i % 64) & 1 == 1
    }

    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.get(i))
    }

    /// The words (little-endian, so their bytes are the Arrow bitmap) and the length in bits.
    pub fn into_words(self) -> (Vec<u64>, usize) {
        (self.words, self.len)
    }
}

/// Appends bits one at a time (or in runs) into a [`Bitmap`].
#[derive(Debug, Default)]
pub struct BitWriter {
    words: Vec<u64>,
    current: u64,
    /// Bits used in `current`, 0..64.
    used: u32,
}

impl BitWriter {
    pub fn with_capacity(bits: usize) -> Self {
        BitWriter {
            words: Vec::with_capacity(bits.div_ceil(64)),
            current: 0,
            used: 0,
        }
    }

    #[inline(always)]
    pub fn push(&mut self, bit: bool) {
        self.current |= u64::from(bit) << self.used;
        self.used += 1;
        if self.used == 64 {
            self.flush();
        }
    }

    /// Appends the low `count` bits of `bits` (`count <= 64`; higher bits must be 0).
    #[inline(always)]
    pub fn push_bits(&mut self, bits: u64, count: usize) {
        debug_assert!(count <= 64 && (count == 64 || bits >> count == 0));
        self.current |= bits << self.used; // overflowing bits are carried below
        let total = self.used as usize + count;
        if total >= 64 {
            self.words.push(self.current.to_le());
            // The bits that did not fit; `64 - used` is in 1..=64.
            self.current = bits.checked_shr(64 - self.used).unwrap_or(0);
            self.used = (total - 64) as u32;
        } else {
            self.used = total as u32;
        }
    }

    /// Appends all bits of `other`.
    pub fn extend(&mut self, other: &Bitmap) {
        let full = other.len / 64;
        for &word in &other.words[..full] {
            self.push_bits(u64::from_le(word), 64);
        }
        let rest = other.len % 64;
        if rest > 0 {
            self.push_bits(u64::from_le(other.words[full]) & ((1u64 << rest) - 1), rest);
        }
    }

    /// Appends `n` copies of `bit`.
    #[inline]
    pub fn push_n(&mut self, mut n: usize, bit: bool) {
        let fill = if bit { u64::MAX } else { 0 };
        // Top up the current word, then whole words, then the rest.
        let room = (64 - self.used) as usize;
        if n < room {
            if bit {
                self.current |= ((1u64 << n) - 1) << self.used;
            }
            self.used += n as u32;
            return;
        }
        self.current |= fill << self.used; // shift < 64 here: used < 64
        self.flush();
        n -= room;
        while n >= 64 {
            self.words.push(fill.to_le());
            n -= 64;
        }
        if bit && n > 0 {
            self.current = (1u64 << n) - 1;
        }
        self.used = n as u32;
    }

    #[inline(always)]
    fn flush(&mut self) {
        self.words.push(self.current.to_le());
        self.current = 0;
        self.used = 0;
    }

    pub fn finish(mut self) -> Bitmap {
        let len = self.words.len() * 64 + self.used as usize;
        if self.used > 0 {
            self.words.push(self.current.to_le());
        }
        Bitmap {
            words: self.words,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(bool),
        PushN(usize, bool),
        PushBits(u64, usize),
        Extend(Vec<bool>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<bool>().prop_map(Op::Push),
            (0usize..150, any::<bool>()).prop_map(|(n, b)| Op::PushN(n, b)),
            (any::<u64>(), 1usize..=64).prop_map(|(bits, count)| {
                let mask = if count == 64 {
                    u64::MAX
                } else {
                    (1 << count) - 1
                };
                Op::PushBits(bits & mask, count)
            }),
            prop::collection::vec(any::<bool>(), 0..200).prop_map(Op::Extend),
        ]
    }

    proptest! {
        #[test]
        fn matches_bools(ops in prop::collection::vec(op(), 0..40)) {
            let mut writer = BitWriter::with_capacity(10);
            let mut want = Vec::new();
            for op in ops {
                match op {
                    Op::Push(bit) => {
                        writer.push(bit);
                        want.push(bit);
                    }
                    Op::PushN(n, bit) => {
                        writer.push_n(n, bit);
                        want.extend(std::iter::repeat_n(bit, n));
                    }
                    Op::PushBits(bits, count) => {
                        writer.push_bits(bits, count);
                        want.extend((0..count).map(|i| bits >> i & 1 == 1));
                    }
                    Op::Extend(bools) => {
                        let mut other = BitWriter::default();
                        bools.iter().for_each(|&b| other.push(b));
                        writer.extend(&other.finish());
                        want.extend(bools);
                    }
                }
            }
            let bitmap = writer.finish();
            prop_assert_eq!(bitmap.len(), want.len());
            prop_assert_eq!(bitmap.iter().collect::<Vec<_>>(), want);
        }
    }
}

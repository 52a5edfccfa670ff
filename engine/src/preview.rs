//! Audience preview: evaluates a compiled rule over whole columns.
//!
//! Rows are processed in blocks of [`BLOCK`] rows; each node of the rule turns a
//! block into a bit mask (one `u64` per 64 rows), and `and`/`or`/`not` combine
//! masks word by word. Leaf loops read one column slice and compare with a
//! constant, with no branches, so the compiler turns them into SIMD compares.
//! Nodes without a columnar loop (lists, `performed`) fall back to the row
//! evaluator, so the result is by construction the row-by-row answer.
//!
//! Columns are stored narrow (see [`crate::table`]), and the scan reads them
//! narrow: a test on a number column held as scaled integers is translated once
//! into a test on the integer codes (see [`ScaledTest`]), and a string test
//! becomes a test on dictionary codes of the column's width, decided once per
//! dictionary entry (the dictionary is small compared with the rows).
//!
//! The block loop short-circuits: an `and` whose mask is already empty skips its
//! remaining children for that block, an `or` whose mask is full likewise.
//! Large scans are split across threads by row range.

use crate::rule::CompareOp;
use crate::rule::compile::{
    CompiledRule, EvalContext, Node, NumberTest, StrTest, TimeTest, eval_node, str_test, time_test,
};
use crate::shard::Preview;
use crate::table::{CodeInt, CodeValues, Column, Dictionary, NumberValues, ScaledInt};
use crate::time::Timestamp;

/// Rows per block: 32 words of mask, small enough to stay in L1 with a few
/// temporaries.
pub const BLOCK: usize = 2048;
const WORDS: usize = BLOCK / 64;
/// Below this many rows a scan stays on the calling thread.
const PARALLEL_ROWS: usize = 1 << 17;

/// A node prepared for scanning: constants translated into each column's
/// storage domain.
enum ScanNode<'a> {
    Const(bool),
    And(Vec<ScanNode<'a>>),
    Or(Vec<ScanNode<'a>>),
    Not(Box<ScanNode<'a>>),
    Float(&'a [f64], &'a NumberTest),
    FloatExists(&'a [f64]),
    Scaled(ScaledLeaf<'a>),
    Time(&'a [i64], &'a TimeTest),
    Code(CodeLeaf<'a>),
    Bool(&'a [u8], u8),
    /// Anything else: per-row evaluation.
    Row(&'a Node),
}

/// A test on a number column stored as scaled integers, in the codes' type.
enum ScaledLeaf<'a> {
    I8(&'a [i8], IntTest<i8>),
    I16(&'a [i16], IntTest<i16>),
    I32(&'a [i32], IntTest<i32>),
}

/// [`ScaledTest`] with its bounds in the column's code type.
enum IntTest<T> {
    Within(T, T),
    Outside(T, T),
    In(Vec<T>, bool),
}

/// A test on a number column stored as codes `c` meaning `c as f64 / scale`,
/// translated into the code domain: the set of codes whose decoded value passes
/// the test, among the present codes `low..=high` (the missing code lies below
/// `low`, so no variant ever matches it, which is the rule semantics for a
/// missing value, `!=` and `not in` included).
///
/// Decoding is monotone, strictly for these scales and widths, so the codes of
/// `x > v` are `c >= c*` for the least such `c*`. It is found from the estimate
/// `floor(v * scale)` by stepping one code at a time while checking the test
/// on the decoded value, so the translation is exact, not only close:
///
/// ```text
///   x > 12.345 at scale 100:   floor(1234.5) = 1234 -> 12.34 > 12.345? no
///                              1235 -> 12.35 > 12.345? yes      => c >= 1235
///   x = 12.345 at scale 100:   no code decodes to 12.345        => nothing
/// ```
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ScaledTest {
    /// No code matches.
    Nothing,
    /// Codes `lo..=hi` (`low <= lo <= hi <= high`).
    Within(i64, i64),
    /// Present codes outside `lo..=hi` (`low <= lo <= hi <= high`).
    Outside(i64, i64),
    /// Present codes in the set, or, negated, not in it. Sorted, no duplicates.
    In(Vec<i64>, bool),
}

impl ScaledTest {
    /// Translates `test` for codes at `scale` whose present values are `low..=high`.
    pub(crate) fn translate(test: &NumberTest, scale: f64, low: i64, high: i64) -> ScaledTest {
        // The least present code whose value is > v (strict) or >= v; `high + 1`
        // if there is none.
        let least = |v: f64, strict: bool| -> i64 {
            if v.is_nan() {
                return high + 1;
            }
            let passes = |c: i64| {
                let x = c as f64 / scale;
                if strict { x > v } else { x >= v }
            };
            let mut c = (v * scale).floor().clamp(low as f64, high as f64) as i64;
            while c > low && passes(c - 1) {
                c -= 1;
            }
            while c <= high && !passes(c) {
                c += 1;
            }
            c
        };
        let within = |lo: i64, hi: i64| {
            if lo <= hi {
                ScaledTest::Within(lo, hi)
            } else {
                ScaledTest::Nothing
            }
        };
        // The codes equal to v: one code or none, as decoding is strictly monotone.
        let equal = |v: f64| (least(v, false), least(v, true) - 1);
        match *test {
            // `x != NaN` holds for every present value, every other test fails.
            NumberTest::Cmp(CompareOp::Ne, v) if v.is_nan() => within(low, high),
            NumberTest::Cmp(_, v) if v.is_nan() => ScaledTest::Nothing,
            NumberTest::Cmp(CompareOp::Gt, v) => within(least(v, true), high),
            NumberTest::Cmp(CompareOp::Ge, v) => within(least(v, false), high),
            NumberTest::Cmp(CompareOp::Lt, v) => within(low, least(v, false) - 1),
            NumberTest::Cmp(CompareOp::Le, v) => within(low, least(v, true) - 1),
            NumberTest::Cmp(CompareOp::Eq, v) => {
                let (lo, hi) = equal(v);
                within(lo, hi)
            }
            NumberTest::Cmp(CompareOp::Ne, v) => match equal(v) {
                (lo, hi) if lo <= hi => ScaledTest::Outside(lo, hi),
                _ => within(low, high),
            },
            NumberTest::Between(lo, hi) if lo.is_nan() || hi.is_nan() => ScaledTest::Nothing,
            NumberTest::Between(lo, hi) => within(least(lo, false), least(hi, true) - 1),
            NumberTest::In(ref values, negated) => {
                let mut codes: Vec<i64> = values
                    .iter()
                    .map(|v| equal(*v))
                    .filter(|(lo, hi)| lo <= hi)
                    .map(|(lo, _)| lo)
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                if codes.is_empty() {
                    if negated {
                        within(low, high)
                    } else {
                        ScaledTest::Nothing
                    }
                } else {
                    ScaledTest::In(codes, negated)
                }
            }
        }
    }

    /// Whether the code `c` passes; the reference for the scan loops.
    #[cfg(test)]
    fn matches(&self, c: i64, low: i64, high: i64) -> bool {
        let present = (low..=high).contains(&c);
        match self {
            ScaledTest::Nothing => false,
            ScaledTest::Within(lo, hi) => (lo..=hi).contains(&&c),
            ScaledTest::Outside(lo, hi) => present && !(lo..=hi).contains(&&c),
            ScaledTest::In(codes, negated) => present && codes.contains(&c) != *negated,
        }
    }

    /// The test in `T`'s domain, or `None` if no code matches.
    fn typed<T: ScaledInt>(test: &NumberTest, scale: f64) -> Option<IntTest<T>> {
        let code = T::from_i64;
        Some(match ScaledTest::translate(test, scale, T::LOW, T::HIGH) {
            ScaledTest::Nothing => return None,
            ScaledTest::Within(lo, hi) => IntTest::Within(code(lo), code(hi)),
            ScaledTest::Outside(lo, hi) => IntTest::Outside(code(lo), code(hi)),
            ScaledTest::In(codes, negated) => {
                IntTest::In(codes.into_iter().map(code).collect(), negated)
            }
        })
    }
}

/// Every present code.
fn present<T: ScaledInt>() -> IntTest<T> {
    IntTest::Within(T::from_i64(T::LOW), T::from_i64(T::HIGH))
}

fn scaled_node<'a, T: ScaledInt>(
    values: &'a [T],
    test: Option<IntTest<T>>,
    leaf: fn(&'a [T], IntTest<T>) -> ScaledLeaf<'a>,
) -> ScanNode<'a> {
    match test {
        Some(test) => ScanNode::Scaled(leaf(values, test)),
        None => ScanNode::Const(false),
    }
}

/// A test on dictionary codes of one width.
enum CodeLeaf<'a> {
    U8(&'a [u8], CodeTest<u8>),
    U16(&'a [u16], CodeTest<u16>),
    U32(&'a [u32], CodeTest<u32>),
}

enum CodeTest<T> {
    /// Exactly this code.
    Equals(T),
    /// Codes whose table entry is 1; the missing code is never in the table.
    Table(Vec<u8>),
    Present,
}

/// Which dictionary test `test` is, for codes of type `T`; `None` if it matches
/// no row.
fn code_test<T: CodeInt>(test: &StrTest, dict: &Dictionary) -> Option<CodeTest<T>> {
    Some(match test {
        StrTest::Cmp(CompareOp::Eq, value, false) => {
            // A code the width cannot hold is not in the column either.
            CodeTest::Equals(T::from_code(dict.code(value)?)?)
        }
        _ => CodeTest::Table(dict.iter().map(|(_, s)| str_test(test, s) as u8).collect()),
    })
}

fn code_node<'a, T: CodeInt>(
    codes: &'a [T],
    test: Option<CodeTest<T>>,
    leaf: fn(&'a [T], CodeTest<T>) -> CodeLeaf<'a>,
) -> ScanNode<'a> {
    match test {
        Some(test) => ScanNode::Code(leaf(codes, test)),
        None => ScanNode::Const(false),
    }
}

fn prepare<'a>(node: &'a Node, ctx: &EvalContext<'a>) -> ScanNode<'a> {
    match node {
        Node::Const(b) => ScanNode::Const(*b),
        Node::And(c) => ScanNode::And(c.iter().map(|n| prepare(n, ctx)).collect()),
        Node::Or(c) => ScanNode::Or(c.iter().map(|n| prepare(n, ctx)).collect()),
        Node::Not(n) => ScanNode::Not(Box::new(prepare(n, ctx))),
        Node::Number(f, test) => match ctx.column(*f) {
            Column::Number(v) => match v.values() {
                NumberValues::F64(values) => ScanNode::Float(values, test),
                NumberValues::I8(codes, scale) => {
                    scaled_node(codes, ScaledTest::typed(test, scale), ScaledLeaf::I8)
                }
                NumberValues::I16(codes, scale) => {
                    scaled_node(codes, ScaledTest::typed(test, scale), ScaledLeaf::I16)
                }
                NumberValues::I32(codes, scale) => {
                    scaled_node(codes, ScaledTest::typed(test, scale), ScaledLeaf::I32)
                }
            },
            _ => ScanNode::Row(node),
        },
        Node::Time(f, test) => match ctx.column(*f) {
            Column::Timestamp(v) => ScanNode::Time(v, test),
            _ => ScanNode::Row(node),
        },
        Node::Bool(f, want) => match ctx.column(*f) {
            Column::Bool(v) => ScanNode::Bool(v, *want as u8),
            _ => ScanNode::Row(node),
        },
        Node::Exists(f) => match ctx.column(*f) {
            Column::Number(v) => match v.values() {
                NumberValues::F64(values) => ScanNode::FloatExists(values),
                NumberValues::I8(codes, _) => ScanNode::Scaled(ScaledLeaf::I8(codes, present())),
                NumberValues::I16(codes, _) => ScanNode::Scaled(ScaledLeaf::I16(codes, present())),
                NumberValues::I32(codes, _) => ScanNode::Scaled(ScaledLeaf::I32(codes, present())),
            },
            Column::String { codes, .. } => ScanNode::Code(match codes.values() {
                CodeValues::U8(codes) => CodeLeaf::U8(codes, CodeTest::Present),
                CodeValues::U16(codes) => CodeLeaf::U16(codes, CodeTest::Present),
                CodeValues::U32(codes) => CodeLeaf::U32(codes, CodeTest::Present),
            }),
            _ => ScanNode::Row(node),
        },
        Node::Str(f, test) => match ctx.column(*f) {
            Column::String { codes, dict } => match codes.values() {
                CodeValues::U8(codes) => code_node(codes, code_test(test, dict), CodeLeaf::U8),
                CodeValues::U16(codes) => code_node(codes, code_test(test, dict), CodeLeaf::U16),
                CodeValues::U32(codes) => code_node(codes, code_test(test, dict), CodeLeaf::U32),
            },
            _ => ScanNode::Row(node),
        },
        Node::List(..) | Node::Performed { .. } => ScanNode::Row(node),
    }
}

/// Packs `f(x)` for up to 64 values into one word per chunk.
///
/// A whole chunk is first turned into 64 flag bytes, a loop the compiler
/// vectorises for any element width; shifting each result straight into the
/// word instead makes it shuffle 64-bit lanes, several times slower.
#[inline(always)]
fn pack<T: Copy>(values: &[T], out: &mut [u64], f: impl Fn(T) -> bool) {
    let chunks = values.chunks_exact(64);
    let rest = chunks.remainder();
    let mut words = out.iter_mut();
    // `chunks` first: `zip` stops on it without taking a word.
    for (chunk, word) in chunks.zip(words.by_ref()) {
        let mut flags = [0u8; 64];
        for (flag, &x) in flags.iter_mut().zip(chunk) {
            *flag = f(x) as u8;
        }
        *word = flag_bits(&flags);
    }
    if let Some(word) = words.next() {
        let mut bits = 0u64;
        for (i, &x) in rest.iter().enumerate() {
            bits |= (f(x) as u64) << i;
        }
        *word = bits;
    }
}

/// Bit `i` of the result is `flags[i]` (each 0 or 1).
#[inline(always)]
fn flag_bits(flags: &[u8; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SSE2 is part of every x86_64 CPU: one `pmovmskb` per 16 flags.
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_slli_epi16};
        let mut bits = 0u64;
        for (i, sixteen) in flags.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is enabled on every x86_64 target, and the unaligned
            // load reads exactly the 16 bytes of `sixteen`. The shift moves each
            // flag into its byte's top bit, the bit `pmovmskb` gathers.
            let top = unsafe {
                let v = _mm_loadu_si128(sixteen.as_ptr().cast::<__m128i>());
                _mm_movemask_epi8(_mm_slli_epi16::<7>(v))
            };
            bits |= u64::from(top as u16) << (16 * i);
        }
        bits
    }
    #[cfg(not(target_arch = "x86_64"))]
    flag_bits_portable(flags)
}

/// [`flag_bits`] without SIMD intrinsics.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn flag_bits_portable(flags: &[u8; 64]) -> u64 {
    // Multiplying eight 0/1 bytes by this constant gathers byte `k` into bit
    // `56 + k`, with no carries between the partial products.
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let mut bits = 0u64;
    for (i, eight) in flags.chunks_exact(8).enumerate() {
        let eight = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
        bits |= (eight.wrapping_mul(GATHER) >> 56) << (8 * i);
    }
    bits
}

fn pack_float(values: &[f64], out: &mut [u64], test: &NumberTest) {
    // NaN (missing) compares false everywhere, except `!=`, guarded explicitly.
    match *test {
        NumberTest::Cmp(CompareOp::Eq, v) => pack(values, out, |x| x == v),
        NumberTest::Cmp(CompareOp::Ne, v) => pack(values, out, |x| x != v && !x.is_nan()),
        NumberTest::Cmp(CompareOp::Lt, v) => pack(values, out, |x| x < v),
        NumberTest::Cmp(CompareOp::Le, v) => pack(values, out, |x| x <= v),
        NumberTest::Cmp(CompareOp::Gt, v) => pack(values, out, |x| x > v),
        NumberTest::Cmp(CompareOp::Ge, v) => pack(values, out, |x| x >= v),
        NumberTest::Between(lo, hi) => pack(values, out, |x| lo <= x && x <= hi),
        NumberTest::In(ref set, negated) => pack(values, out, |x| {
            !x.is_nan() && (set.contains(&x) != negated)
        }),
    }
}

#[inline(always)]
fn pack_scaled<T: ScaledInt>(codes: &[T], out: &mut [u64], test: &IntTest<T>) {
    // Non-short-circuit `&`/`|` keep the loops branch-free.
    match *test {
        IntTest::Within(lo, hi) => pack(codes, out, |c| (c >= lo) & (c <= hi)),
        IntTest::Outside(lo, hi) => pack(codes, out, |c| (c != T::MISSING) & ((c < lo) | (c > hi))),
        IntTest::In(ref set, negated) => pack(codes, out, |c| {
            (c != T::MISSING) & (set.contains(&c) != negated)
        }),
    }
}

#[inline(always)]
fn pack_codes<T: CodeInt>(codes: &[T], out: &mut [u64], test: &CodeTest<T>) {
    match test {
        CodeTest::Equals(k) => {
            let k = *k;
            pack(codes, out, |c| c == k)
        }
        CodeTest::Present => pack(codes, out, |c| c != T::MISSING),
        CodeTest::Table(table) => pack(codes, out, |c| {
            table.get(c.index()).is_some_and(|hit| *hit == 1)
        }),
    }
}

struct Scratch {
    pool: Vec<[u64; WORDS]>,
}

impl Scratch {
    fn take(&mut self) -> [u64; WORDS] {
        self.pool.pop().unwrap_or([0; WORDS])
    }
    fn give(&mut self, buffer: [u64; WORDS]) {
        self.pool.push(buffer);
    }
}

/// Evaluates `node` for rows `start..start + len` (len <= BLOCK) into `out`.
fn eval_block(
    node: &ScanNode<'_>,
    ctx: &EvalContext<'_>,
    start: usize,
    len: usize,
    now: i64,
    out: &mut [u64; WORDS],
    scratch: &mut Scratch,
) {
    let words = len.div_ceil(64);
    let out_words = &mut out[..words];
    match node {
        ScanNode::Const(b) => out_words.fill(if *b { !0 } else { 0 }),
        ScanNode::And(children) => {
            let mut tmp = scratch.take();
            for (i, child) in children.iter().enumerate() {
                if i == 0 {
                    eval_block(child, ctx, start, len, now, out, scratch);
                } else {
                    if out[..words].iter().all(|w| *w == 0) {
                        break;
                    }
                    eval_block(child, ctx, start, len, now, &mut tmp, scratch);
                    for (o, t) in out[..words].iter_mut().zip(&tmp[..words]) {
                        *o &= *t;
                    }
                }
            }
            scratch.give(tmp);
        }
        ScanNode::Or(children) => {
            let mut tmp = scratch.take();
            for (i, child) in children.iter().enumerate() {
                if i == 0 {
                    eval_block(child, ctx, start, len, now, out, scratch);
                } else {
                    if out[..words].iter().all(|w| *w == !0) {
                        break;
                    }
                    eval_block(child, ctx, start, len, now, &mut tmp, scratch);
                    for (o, t) in out[..words].iter_mut().zip(&tmp[..words]) {
                        *o |= *t;
                    }
                }
            }
            scratch.give(tmp);
        }
        ScanNode::Not(inner) => {
            eval_block(inner, ctx, start, len, now, out, scratch);
            out[..words].iter_mut().for_each(|w| *w = !*w);
        }
        ScanNode::Float(values, test) => pack_float(&values[start..start + len], out_words, test),
        ScanNode::FloatExists(values) => {
            pack(&values[start..start + len], out_words, |x: f64| !x.is_nan())
        }
        ScanNode::Scaled(leaf) => match leaf {
            ScaledLeaf::I8(codes, test) => pack_scaled(&codes[start..start + len], out_words, test),
            ScaledLeaf::I16(codes, test) => {
                pack_scaled(&codes[start..start + len], out_words, test)
            }
            ScaledLeaf::I32(codes, test) => {
                pack_scaled(&codes[start..start + len], out_words, test)
            }
        },
        ScanNode::Time(values, test) => pack(&values[start..start + len], out_words, |t| {
            time_test(test, t, now).0
        }),
        ScanNode::Code(leaf) => match leaf {
            CodeLeaf::U8(codes, test) => pack_codes(&codes[start..start + len], out_words, test),
            CodeLeaf::U16(codes, test) => pack_codes(&codes[start..start + len], out_words, test),
            CodeLeaf::U32(codes, test) => pack_codes(&codes[start..start + len], out_words, test),
        },
        ScanNode::Bool(values, want) => {
            let want = *want;
            pack(&values[start..start + len], out_words, |b| b == want)
        }
        ScanNode::Row(node) => {
            out_words.fill(0);
            for i in 0..len {
                if eval_node(node, ctx, start + i, now) {
                    out_words[i / 64] |= 1 << (i % 64);
                }
            }
        }
    }
    // Bits past the end of a short block must never count.
    if !len.is_multiple_of(64) {
        out[words - 1] &= (1u64 << (len % 64)) - 1;
    }
}

fn scan_range(
    root: &ScanNode<'_>,
    ctx: &EvalContext<'_>,
    rows: std::ops::Range<usize>,
    now: i64,
    sample: usize,
) -> Preview {
    let mut scratch = Scratch { pool: Vec::new() };
    let mut mask = [0u64; WORDS];
    let mut count = 0u64;
    let mut picked = Vec::new();
    let mut start = rows.start;
    while start < rows.end {
        let len = BLOCK.min(rows.end - start);
        eval_block(root, ctx, start, len, now, &mut mask, &mut scratch);
        let words = &mask[..len.div_ceil(64)];
        count += words.iter().map(|w| w.count_ones() as u64).sum::<u64>();
        if picked.len() < sample {
            for (wi, word) in words.iter().enumerate() {
                let mut w = *word;
                while w != 0 && picked.len() < sample {
                    let bit = w.trailing_zeros() as usize;
                    picked.push((start + wi * 64 + bit) as u32);
                    w &= w - 1;
                }
            }
        }
        start += len;
    }
    Preview {
        count,
        sample: picked,
    }
}

/// Evaluates `compiled` over rows `1..rows` (row 0 is the empty customer) at `now`.
pub(crate) fn scan(
    compiled: &CompiledRule,
    ctx: &EvalContext<'_>,
    rows: usize,
    now: Timestamp,
    sample: usize,
) -> Preview {
    let root = prepare(&compiled.root, ctx);
    let total = rows.saturating_sub(1);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if total < PARALLEL_ROWS || threads == 1 {
        return scan_range(&root, ctx, 1..rows.max(1), now.0, sample);
    }
    // Split on block boundaries so every thread runs whole blocks.
    let per = total.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
    let parts: Vec<Preview> = std::thread::scope(|s| {
        let root = &root;
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let begin = (1 + i * per).min(rows);
                let end = (1 + (i + 1) * per).min(rows);
                s.spawn(move || scan_range(root, ctx, begin..end, now.0, sample))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan threads do not panic"))
            .collect()
    });
    let mut result = Preview {
        count: 0,
        sample: Vec::new(),
    };
    for part in parts {
        result.count += part.count;
        let room = sample - result.sample.len();
        result.sample.extend(part.sample.into_iter().take(room));
    }
    result
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rule::compile::number_test;

    const OPS: [CompareOp; 6] = CompareOp::ALL;

    /// A threshold, relative to the code at the centre of the tested codes so
    /// that it lands on, between and just beside the values they decode to.
    #[derive(Debug, Clone)]
    enum Threshold {
        /// The value of the code `centre + d`.
        Code(i64),
        /// Between the values of codes `centre + d` and `centre + d + 1`.
        Fraction(i64, f64),
        /// The next `f64` above (`true`) or below the value of `centre + d`.
        Beside(i64, bool),
        Any(f64),
    }

    impl Threshold {
        fn value(&self, centre: i64, scale: f64) -> f64 {
            match *self {
                Threshold::Code(d) => (centre + d) as f64 / scale,
                Threshold::Fraction(d, f) => ((centre + d) as f64 + f) / scale,
                Threshold::Beside(d, up) => {
                    let x = (centre + d) as f64 / scale;
                    if x == 0.0 {
                        let tiny = f64::from_bits(1);
                        return if up { tiny } else { -tiny };
                    }
                    // Away from zero is one bit up in magnitude.
                    let away = (x > 0.0) == up;
                    f64::from_bits(if away {
                        x.to_bits() + 1
                    } else {
                        x.to_bits() - 1
                    })
                }
                Threshold::Any(x) => x,
            }
        }
    }

    fn arb_threshold() -> impl Strategy<Value = Threshold> {
        prop_oneof![
            3 => (-4i64..4).prop_map(Threshold::Code),
            3 => (-4i64..4, 0.0f64..1.0).prop_map(|(d, f)| Threshold::Fraction(d, f)),
            2 => (-4i64..4, any::<bool>()).prop_map(|(d, up)| Threshold::Beside(d, up)),
            1 => any::<f64>().prop_map(Threshold::Any),
            1 => prop::sample::select(vec![
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                1e12,
                -1e12,
                0.0,
                -0.0,
            ])
            .prop_map(Threshold::Any),
        ]
    }

    /// Every test the scan translates: the six comparisons, `between`, `in`
    /// and `not_in`, as `(kind, thresholds, negated)`.
    fn arb_test_shape() -> impl Strategy<Value = (usize, Vec<Threshold>, bool)> {
        (
            0usize..9,
            prop::collection::vec(arb_threshold(), 2..5),
            any::<bool>(),
        )
    }

    fn build_test(kind: usize, thresholds: &[f64], negated: bool) -> NumberTest {
        match kind {
            0..6 => NumberTest::Cmp(OPS[kind], thresholds[0]),
            6 => NumberTest::Between(thresholds[0], thresholds[1]),
            7 => {
                let (low, high) = (
                    thresholds[0].min(thresholds[1]),
                    thresholds[0].max(thresholds[1]),
                );
                NumberTest::Between(low, high)
            }
            _ => NumberTest::In(thresholds.to_vec(), negated),
        }
    }

    /// Checks the translated test, and the scan loop built from it, against
    /// the `f64` test on every decoded value of the codes near `centre`, the
    /// missing code included.
    fn check<T: ScaledInt>(
        centre_position: f64,
        scale: f64,
        shape: &(usize, Vec<Threshold>, bool),
    ) -> Result<(), TestCaseError> {
        let missing = T::MISSING.to_i64();
        let span = (T::HIGH - missing) as f64;
        let centre = missing + (centre_position * span).round() as i64;
        let thresholds: Vec<f64> = shape.1.iter().map(|t| t.value(centre, scale)).collect();
        let test = build_test(shape.0, &thresholds, shape.2);
        let mut codes: Vec<T> = (centre - 70..=centre + 70)
            .map(|c| T::from_i64(c.clamp(missing, T::HIGH)))
            .collect();
        codes.push(T::MISSING);
        let decode = |c: T| {
            if c == T::MISSING {
                f64::NAN
            } else {
                c.to_i64() as f64 / scale
            }
        };

        let translated = ScaledTest::translate(&test, scale, T::LOW, T::HIGH);
        let mut bits = vec![0u64; codes.len().div_ceil(64)];
        if let Some(typed) = ScaledTest::typed::<T>(&test, scale) {
            pack_scaled(&codes, &mut bits, &typed);
        }
        for (i, &c) in codes.iter().enumerate() {
            let want = number_test(&test, decode(c));
            prop_assert_eq!(
                translated.matches(c.to_i64(), T::LOW, T::HIGH),
                want,
                "code {:?} ({}) under {:?} at scale {}: {:?}",
                c,
                decode(c),
                test,
                scale,
                translated
            );
            prop_assert_eq!(
                bits[i / 64] >> (i % 64) & 1 == 1,
                want,
                "scan of code {:?} ({}) under {:?} at scale {}",
                c,
                decode(c),
                test,
                scale
            );
        }
        Ok(())
    }

    fn arb_centre() -> impl Strategy<Value = f64> {
        prop_oneof![
            3 => 0.0f64..1.0,
            1 => prop::sample::select(vec![0.0, 0.5, 1.0]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn code_domain_tests_agree_with_f64_tests(
            width in 0usize..3,
            scale in prop::sample::select(crate::table::SCALES.to_vec()),
            centre in arb_centre(),
            shape in arb_test_shape(),
        ) {
            match width {
                0 => check::<i8>(centre, scale, &shape)?,
                1 => check::<i16>(centre, scale, &shape)?,
                _ => check::<i32>(centre, scale, &shape)?,
            }
        }
    }

    proptest! {
        #[test]
        fn flag_bits_put_flag_i_in_bit_i(bits in any::<u64>()) {
            let flags: [u8; 64] = std::array::from_fn(|i| (bits >> i) as u8 & 1);
            prop_assert_eq!(flag_bits(&flags), bits);
            prop_assert_eq!(flag_bits_portable(&flags), bits);
        }

        #[test]
        fn pack_fills_whole_and_partial_words(
            values in prop::collection::vec(any::<i16>(), 0..300),
            threshold in any::<i16>(),
        ) {
            let mut words = vec![!0u64; values.len().div_ceil(64)];
            pack(&values, &mut words, |x| x < threshold);
            for (i, x) in values.iter().enumerate() {
                prop_assert_eq!(words[i / 64] >> (i % 64) & 1 == 1, *x < threshold, "value {}", i);
            }
            if values.len() % 64 != 0 {
                prop_assert_eq!(words[values.len() / 64] >> (values.len() % 64), 0);
            }
        }
    }

    #[test]
    fn thresholds_between_codes_round_to_the_right_side() {
        let scale = 100.0;
        let (low, high) = (i32::LOW, i32::HIGH);
        let translate = |test| ScaledTest::translate(&test, scale, low, high);
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Gt, 12.345)),
            ScaledTest::Within(1235, high)
        );
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Le, 12.345)),
            ScaledTest::Within(low, 1234)
        );
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Eq, 12.345)),
            ScaledTest::Nothing
        );
        // No value is unequal to 12.345 except missing ones.
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Ne, 12.345)),
            ScaledTest::Within(low, high)
        );
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Ne, 12.34)),
            ScaledTest::Outside(1234, 1234)
        );
        assert_eq!(
            translate(NumberTest::In(vec![0.5, 12.345, 0.5, -3.0], true)),
            ScaledTest::In(vec![-300, 50], true)
        );
        // Past the width's range: everything present, or nothing.
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Lt, 1e300)),
            ScaledTest::Within(low, high)
        );
        assert_eq!(
            translate(NumberTest::Cmp(CompareOp::Gt, 1e300)),
            ScaledTest::Nothing
        );
    }
}

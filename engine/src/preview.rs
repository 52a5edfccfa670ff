//! Audience preview: evaluates a compiled rule over whole columns.
//!
//! Rows are processed in blocks of [`BLOCK`] rows; each node of the rule turns a
//! block into a bit mask (one `u64` per 64 rows), and `and`/`or`/`not` combine
//! masks word by word. Leaf loops read one column slice and compare with a
//! constant, with no branches, so the compiler turns them into SIMD compares.
//! String tests are decided once per dictionary entry (the dictionary is small
//! compared with the rows) and then looked up by code. Nodes without a columnar
//! loop (lists, `performed`) fall back to the row evaluator, so the result is by
//! construction the row-by-row answer.
//!
//! The block loop short-circuits: an `and` whose mask is already empty skips its
//! remaining children for that block, an `or` whose mask is full likewise.
//! Large scans are split across threads by row range.

use crate::rule::CompareOp;
use crate::rule::compile::{
    CompiledRule, EvalContext, Node, NumberTest, StrTest, TimeTest, eval_node, str_test, time_test,
};
use crate::shard::Preview;
use crate::table::{Column, MISSING_CODE};
use crate::time::Timestamp;

/// Rows per block: 32 words of mask, small enough to stay in L1 with a few
/// temporaries.
pub const BLOCK: usize = 2048;
const WORDS: usize = BLOCK / 64;
/// Below this many rows a scan stays on the calling thread.
const PARALLEL_ROWS: usize = 1 << 17;

/// A node prepared for scanning: string tests turned into per-code tables.
enum ScanNode<'a> {
    Const(bool),
    And(Vec<ScanNode<'a>>),
    Or(Vec<ScanNode<'a>>),
    Not(Box<ScanNode<'a>>),
    Number(&'a [f64], &'a NumberTest),
    NumberExists(&'a [f64]),
    Time(&'a [i64], &'a TimeTest),
    Code(&'a [u32], CodeTest),
    Bool(&'a [u8], u8),
    /// Anything else: per-row evaluation.
    Row(&'a Node),
}

enum CodeTest {
    /// Exactly this code.
    Equals(u32),
    /// Codes whose table entry is 1; the missing code is never in the table.
    Table(Vec<u8>),
    Exists,
}

fn prepare<'a>(node: &'a Node, ctx: &EvalContext<'a>) -> ScanNode<'a> {
    match node {
        Node::Const(b) => ScanNode::Const(*b),
        Node::And(c) => ScanNode::And(c.iter().map(|n| prepare(n, ctx)).collect()),
        Node::Or(c) => ScanNode::Or(c.iter().map(|n| prepare(n, ctx)).collect()),
        Node::Not(n) => ScanNode::Not(Box::new(prepare(n, ctx))),
        Node::Number(f, test) => match ctx.column(*f) {
            Column::Number(v) => ScanNode::Number(v.as_slice(), test),
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
            Column::Number(v) => ScanNode::NumberExists(v.as_slice()),
            Column::String { codes, .. } => ScanNode::Code(codes, CodeTest::Exists),
            _ => ScanNode::Row(node),
        },
        Node::Str(f, test) => match ctx.column(*f) {
            Column::String { codes, dict } => {
                let code_test = match test {
                    StrTest::Cmp(CompareOp::Eq, value, false) => {
                        CodeTest::Equals(dict.code(value).unwrap_or(MISSING_CODE))
                    }
                    _ => {
                        CodeTest::Table(dict.iter().map(|(_, s)| str_test(test, s) as u8).collect())
                    }
                };
                ScanNode::Code(codes, code_test)
            }
            _ => ScanNode::Row(node),
        },
        Node::List(..) | Node::Performed { .. } => ScanNode::Row(node),
    }
}

/// Packs `f(x)` for up to 64 values into one word per chunk.
#[inline(always)]
fn pack<T: Copy>(values: &[T], out: &mut [u64], f: impl Fn(T) -> bool) {
    for (word, chunk) in out.iter_mut().zip(values.chunks(64)) {
        let mut bits = 0u64;
        for (i, &x) in chunk.iter().enumerate() {
            bits |= (f(x) as u64) << i;
        }
        *word = bits;
    }
}

fn pack_number(values: &[f64], out: &mut [u64], test: &NumberTest) {
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
        ScanNode::Number(values, test) => pack_number(&values[start..start + len], out_words, test),
        ScanNode::NumberExists(values) => {
            pack(&values[start..start + len], out_words, |x: f64| !x.is_nan())
        }
        ScanNode::Time(values, test) => pack(&values[start..start + len], out_words, |t| {
            time_test(test, t, now).0
        }),
        ScanNode::Code(codes, test) => {
            let codes = &codes[start..start + len];
            match test {
                CodeTest::Equals(k) => {
                    let k = *k;
                    if k == MISSING_CODE {
                        out_words.fill(0);
                    } else {
                        pack(codes, out_words, |c| c == k);
                    }
                }
                CodeTest::Exists => pack(codes, out_words, |c| c != MISSING_CODE),
                CodeTest::Table(table) => pack(codes, out_words, |c| {
                    table.get(c as usize).is_some_and(|hit| *hit == 1)
                }),
            }
        }
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

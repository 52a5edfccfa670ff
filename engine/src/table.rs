//! Columnar customer state: one typed column per attribute or computed trait,
//! indexed by the customer's dense id.
//!
//! The same columns serve the incremental path (one row read per evaluation) and
//! audience preview (tight loops over whole columns), so there is no second copy
//! of the data to keep in sync. Missing values use sentinels so that scans need no
//! separate validity bitmap: `NaN` for numbers (every comparison with `NaN` is
//! false, which is exactly the rule semantics for a missing value), `i64::MIN` for
//! timestamps, [`MISSING_CODE`] for string codes and `2` for booleans.
//!
//! A scan reads every row of the columns it tests, so numbers and string codes
//! are stored as narrowly as their values allow, losslessly: numbers as scaled `i8`/`i16`/
//! `i32` when every value is a short decimal (see [`NumberColumn`]), string codes
//! as `u8`/`u16`/`u32` by dictionary size (see [`CodeColumn`]). Their readers see
//! `f64` and `u32` through `get`; scans read the narrow slices and translate their
//! constants into the narrow domain instead (see `preview`).

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::model::{AttrType, AttrValue};
use crate::time::Timestamp;

pub const MISSING_CODE: u32 = u32::MAX;
pub const MISSING_TIME: i64 = i64::MIN;
pub const MISSING_BOOL: u8 = 2;

/// Interned strings of one column. Codes are stable: the dictionary only grows.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "Vec<Box<str>>", into = "Vec<Box<str>>")]
pub struct Dictionary {
    strings: Vec<Box<str>>,
    codes: FxHashMap<Box<str>, u32>,
}

impl From<Vec<Box<str>>> for Dictionary {
    fn from(strings: Vec<Box<str>>) -> Self {
        let codes = strings
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        Dictionary { strings, codes }
    }
}

impl From<Dictionary> for Vec<Box<str>> {
    fn from(dictionary: Dictionary) -> Self {
        dictionary.strings
    }
}

impl Dictionary {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&code) = self.codes.get(s) {
            return code;
        }
        let code = self.strings.len() as u32;
        debug_assert!(code != MISSING_CODE);
        self.strings.push(s.into());
        self.codes.insert(s.into(), code);
        code
    }

    pub fn code(&self, s: &str) -> Option<u32> {
        self.codes.get(s).copied()
    }

    pub fn get(&self, code: u32) -> &str {
        &self.strings[code as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.strings
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32, &**s))
    }

    /// Forgets the string of `code`; the last string takes its code. The
    /// caller rewrites the rows that held the last code (see
    /// [`Column::purge_row`]): this is the one exception to stable codes, for
    /// strings no row holds any more.
    fn swap_remove(&mut self, code: u32) {
        let removed = self.strings.swap_remove(code as usize);
        self.codes.remove(&removed);
        if let Some(moved) = self.strings.get(code as usize) {
            self.codes.insert(moved.clone(), code);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.strings.iter().map(|s| 2 * s.len() + 16).sum::<usize>()
            + self.codes.capacity() * 24
            + self.strings.capacity() * 16
    }
}

// ---------------------------------------------------------------------------
// Numbers: scaled integers when lossless, else f64
// ---------------------------------------------------------------------------

/// Decimal scales a number column can use, smallest first: the value `x` is
/// stored as the integer `round(x * scale)`.
pub const SCALES: [f64; 5] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0];

/// Bound on the codes used to find a value's scale: below 2^53 every integer is
/// an exact `f64`, so `code as f64 / scale` is the correctly rounded quotient.
const EXACT_INTEGER: i64 = 1 << 53;

/// The code of `x` at `scale` if it lies in `low..=high` and decodes back to `x`
/// exactly (`code as f64 / scale == x`); `None` for `NaN` and for every value the
/// scale cannot hold losslessly.
///
/// Decoding is a correctly rounded division, so the round trip is exact precisely
/// when this equality holds. `-0.0` encodes as `0` and decodes as `+0.0`, which
/// compares equal to it: no rule can tell the two apart.
#[inline]
pub fn encode_scaled(x: f64, scale: f64, low: i64, high: i64) -> Option<i64> {
    let code = (x * scale).round();
    // Written so that `NaN` fails the range test.
    if !(code >= low as f64 && code <= high as f64) {
        return None;
    }
    let code = code as i64;
    (code as f64 / scale == x).then_some(code)
}

/// An integer type that holds scaled numbers. Its `MIN` marks a missing value,
/// so the codes of present values are `LOW..=HIGH`.
pub trait ScaledInt: Copy + Ord + std::fmt::Debug + Send + Sync + 'static {
    const MISSING: Self;
    const LOW: i64;
    const HIGH: i64;
    fn to_i64(self) -> i64;
    /// `code` is in `LOW..=HIGH`, or the missing code.
    fn from_i64(code: i64) -> Self;
}

macro_rules! scaled_int {
    ($($t:ty),*) => {$(
        impl ScaledInt for $t {
            const MISSING: Self = <$t>::MIN;
            const LOW: i64 = <$t>::MIN as i64 + 1;
            const HIGH: i64 = <$t>::MAX as i64;
            #[inline(always)]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline(always)]
            fn from_i64(code: i64) -> Self {
                debug_assert!(<$t>::try_from(code).is_ok(), "code {code} out of range");
                code as $t
            }
        }
    )*};
}
scaled_int!(i8, i16, i32);

#[inline(always)]
fn decode_scaled<T: ScaledInt>(code: T, scale: f64) -> f64 {
    if code == T::MISSING {
        f64::NAN
    } else {
        code.to_i64() as f64 / scale
    }
}

/// `x`'s code in `T` at `scale` (the missing code for `NaN`), if lossless.
#[inline(always)]
fn encode_as<T: ScaledInt>(x: f64, scale: f64) -> Option<T> {
    if x.is_nan() {
        return Some(T::MISSING);
    }
    encode_scaled(x, scale, T::LOW, T::HIGH).map(T::from_i64)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum NumberStorage {
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    F64(Vec<f64>),
}

/// Integer widths in the order a column widens through them.
const INTEGER_WIDTHS: [(i64, i64); 3] = [
    (<i8 as ScaledInt>::LOW, <i8 as ScaledInt>::HIGH),
    (<i16 as ScaledInt>::LOW, <i16 as ScaledInt>::HIGH),
    (<i32 as ScaledInt>::LOW, <i32 as ScaledInt>::HIGH),
];

impl NumberStorage {
    /// Position in `INTEGER_WIDTHS`; `F64` comes after them all.
    fn width(&self) -> usize {
        match self {
            NumberStorage::I8(_) => 0,
            NumberStorage::I16(_) => 1,
            NumberStorage::I32(_) => 2,
            NumberStorage::F64(_) => 3,
        }
    }
}

/// A read-only view of a number column's storage, for scans.
#[derive(Debug, Clone, Copy)]
pub enum NumberValues<'a> {
    /// Codes `c` meaning `c as f64 / scale`; `i8::MIN` is missing.
    I8(&'a [i8], f64),
    I16(&'a [i16], f64),
    I32(&'a [i32], f64),
    /// Plain values; `NaN` is missing.
    F64(&'a [f64]),
}

/// A column of numbers; `NaN` marks a missing value on the API side.
///
/// Stored as narrowly as the values allow, losslessly, as a columnar store does:
/// scaled integers `i8`, `i16` or `i32` with a decimal scale from [`SCALES`]
/// (a price `1234.56` is the `i32` `123456` at scale 100), or `f64` when no such
/// encoding holds every value. The integer type's `MIN` is the missing value.
///
/// A write the current encoding cannot hold re-encodes the whole column to the
/// narrowest encoding (width first, then scale) that holds every value and is
/// no narrower than the current one in either width or scale. Encodings only
/// widen, so a column is re-encoded at most seven times in its life:
///
/// ```text
///   i8 ─► i16 ─► i32 ─► f64        (each at scale 1 ─► 10 ─► … ─► 10_000)
/// ```
///
/// Values are never rounded: `get` returns a value equal to the one `set`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumberColumn {
    storage: NumberStorage,
    /// Index into [`SCALES`]; unused for `F64`.
    scale: usize,
}

impl Default for NumberColumn {
    fn default() -> Self {
        NumberColumn {
            storage: NumberStorage::I8(Vec::new()),
            scale: 0,
        }
    }
}

impl NumberColumn {
    pub fn len(&self) -> usize {
        match &self.storage {
            NumberStorage::I8(v) => v.len(),
            NumberStorage::I16(v) => v.len(),
            NumberStorage::I32(v) => v.len(),
            NumberStorage::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, row: usize) -> f64 {
        let scale = SCALES[self.scale];
        match &self.storage {
            NumberStorage::I8(v) => decode_scaled(v[row], scale),
            NumberStorage::I16(v) => decode_scaled(v[row], scale),
            NumberStorage::I32(v) => decode_scaled(v[row], scale),
            NumberStorage::F64(v) => v[row],
        }
    }

    #[inline]
    pub fn set(&mut self, row: usize, value: f64) {
        if !self.try_set(row, value) {
            self.widen_for(value);
            let stored = self.try_set(row, value);
            debug_assert!(stored, "{value} fits the widened column");
        }
    }

    /// Stores `value` if the current encoding holds it.
    #[inline]
    fn try_set(&mut self, row: usize, value: f64) -> bool {
        fn store<T: ScaledInt>(slot: &mut T, value: f64, scale: f64) -> bool {
            encode_as(value, scale).map(|code| *slot = code).is_some()
        }
        let scale = SCALES[self.scale];
        match &mut self.storage {
            NumberStorage::I8(v) => store(&mut v[row], value, scale),
            NumberStorage::I16(v) => store(&mut v[row], value, scale),
            NumberStorage::I32(v) => store(&mut v[row], value, scale),
            NumberStorage::F64(v) => {
                v[row] = value;
                true
            }
        }
    }

    fn holds(&self, value: f64) -> bool {
        let scale = SCALES[self.scale];
        match &self.storage {
            NumberStorage::I8(_) => encode_as::<i8>(value, scale).is_some(),
            NumberStorage::I16(_) => encode_as::<i16>(value, scale).is_some(),
            NumberStorage::I32(_) => encode_as::<i32>(value, scale).is_some(),
            NumberStorage::F64(_) => true,
        }
    }

    /// Grows (or shrinks) the column to `rows` rows; new rows hold `fill`.
    pub fn resize(&mut self, rows: usize, fill: f64) {
        if rows <= self.len() {
            self.truncate(rows);
            return;
        }
        if !self.holds(fill) {
            self.widen_for(fill);
        }
        fn grow<T: ScaledInt>(v: &mut Vec<T>, rows: usize, fill: f64, scale: f64) {
            let code = encode_as(fill, scale).expect("the column was widened for the fill");
            v.resize(rows, code);
        }
        let scale = SCALES[self.scale];
        match &mut self.storage {
            NumberStorage::I8(v) => grow(v, rows, fill, scale),
            NumberStorage::I16(v) => grow(v, rows, fill, scale),
            NumberStorage::I32(v) => grow(v, rows, fill, scale),
            NumberStorage::F64(v) => v.resize(rows, fill),
        }
    }

    /// Appends one row holding `value`: [`Self::resize`] by one, without its
    /// checks, for the row a new customer adds.
    #[inline]
    pub fn push(&mut self, value: f64) {
        fn push_as<T: ScaledInt>(v: &mut Vec<T>, value: f64, scale: f64) -> bool {
            encode_as(value, scale).map(|code| v.push(code)).is_some()
        }
        let scale = SCALES[self.scale];
        let pushed = match &mut self.storage {
            NumberStorage::I8(v) => push_as(v, value, scale),
            NumberStorage::I16(v) => push_as(v, value, scale),
            NumberStorage::I32(v) => push_as(v, value, scale),
            NumberStorage::F64(v) => {
                v.push(value);
                true
            }
        };
        if !pushed {
            self.resize(self.len() + 1, value);
        }
    }

    fn truncate(&mut self, rows: usize) {
        match &mut self.storage {
            NumberStorage::I8(v) => v.truncate(rows),
            NumberStorage::I16(v) => v.truncate(rows),
            NumberStorage::I32(v) => v.truncate(rows),
            NumberStorage::F64(v) => v.truncate(rows),
        }
    }

    /// Re-encodes the column so that it holds every current value and `value`.
    #[cold]
    fn widen_for(&mut self, value: f64) {
        // One pass finds the finest scale any value needs and the value range;
        // the range at that scale then picks the width.
        let mut scale = self.scale;
        let mut needs_f64 = false;
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut note = |x: f64| {
            if x.is_nan() || needs_f64 {
                return;
            }
            match (scale..SCALES.len())
                .find(|&k| encode_scaled(x, SCALES[k], -EXACT_INTEGER, EXACT_INTEGER).is_some())
            {
                Some(k) => scale = k,
                None => needs_f64 = true,
            }
            min = min.min(x);
            max = max.max(x);
        };
        for row in 0..self.len() {
            note(self.get(row));
        }
        note(value);
        let width = if needs_f64 {
            None
        } else if min > max {
            // Nothing but missing values: only a finer scale was asked for.
            Some(self.storage.width())
        } else {
            let (low, high) = ((min * SCALES[scale]).round(), (max * SCALES[scale]).round());
            (self.storage.width()..INTEGER_WIDTHS.len())
                .find(|&w| low >= INTEGER_WIDTHS[w].0 as f64 && high <= INTEGER_WIDTHS[w].1 as f64)
        };
        let widened = width.and_then(|width| self.reencode(width, scale));
        debug_assert!(
            needs_f64 || width.is_none() || widened.is_some(),
            "a value that fits no chosen encoding"
        );
        match widened {
            Some(storage) => {
                self.storage = storage;
                self.scale = scale;
            }
            None => {
                let mut values = Vec::with_capacity(self.capacity());
                values.extend((0..self.len()).map(|row| self.get(row)));
                self.storage = NumberStorage::F64(values);
                self.scale = 0;
            }
        }
        debug_assert!(self.holds(value));
    }

    /// The column in integer width `width` at `SCALES[scale]`, if that holds
    /// every value.
    fn reencode(&self, width: usize, scale: usize) -> Option<NumberStorage> {
        fn encode_all<T: ScaledInt>(column: &NumberColumn, scale: f64) -> Option<Vec<T>> {
            let mut codes = Vec::with_capacity(column.capacity());
            for row in 0..column.len() {
                codes.push(encode_as(column.get(row), scale)?);
            }
            Some(codes)
        }
        let s = SCALES[scale];
        Some(match width {
            0 => NumberStorage::I8(encode_all(self, s)?),
            1 => NumberStorage::I16(encode_all(self, s)?),
            2 => NumberStorage::I32(encode_all(self, s)?),
            _ => return None,
        })
    }

    fn capacity(&self) -> usize {
        match &self.storage {
            NumberStorage::I8(v) => v.capacity(),
            NumberStorage::I16(v) => v.capacity(),
            NumberStorage::I32(v) => v.capacity(),
            NumberStorage::F64(v) => v.capacity(),
        }
    }

    /// The stored codes, for scans.
    pub fn values(&self) -> NumberValues<'_> {
        let scale = SCALES[self.scale];
        match &self.storage {
            NumberStorage::I8(v) => NumberValues::I8(v, scale),
            NumberStorage::I16(v) => NumberValues::I16(v, scale),
            NumberStorage::I32(v) => NumberValues::I32(v, scale),
            NumberStorage::F64(v) => NumberValues::F64(v),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match &self.storage {
            NumberStorage::I8(v) => v.capacity(),
            NumberStorage::I16(v) => v.capacity() * 2,
            NumberStorage::I32(v) => v.capacity() * 4,
            NumberStorage::F64(v) => v.capacity() * 8,
        }
    }
}

// ---------------------------------------------------------------------------
// String dictionary codes: u8, u16 or u32 by dictionary size
// ---------------------------------------------------------------------------

/// An unsigned type that holds dictionary codes; its `MAX` marks a missing value.
pub trait CodeInt: Copy + Eq + std::fmt::Debug + Send + Sync + 'static {
    const MISSING: Self;
    /// The code, or `None` if this width cannot hold it.
    fn from_code(code: u32) -> Option<Self>;
    fn index(self) -> usize;
}

macro_rules! code_int {
    ($($t:ty),*) => {$(
        impl CodeInt for $t {
            const MISSING: Self = <$t>::MAX;
            #[inline(always)]
            fn from_code(code: u32) -> Option<Self> {
                <$t>::try_from(code).ok().filter(|c| *c != Self::MISSING)
            }
            #[inline(always)]
            fn index(self) -> usize {
                self as usize
            }
        }
    )*};
}
code_int!(u8, u16, u32);

#[inline(always)]
fn widen_code<T: CodeInt>(code: T) -> u32 {
    if code == T::MISSING {
        MISSING_CODE
    } else {
        code.index() as u32
    }
}

/// A read-only view of a code column's storage, for scans. The width's `MAX` is
/// missing.
#[derive(Debug, Clone, Copy)]
pub enum CodeValues<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CodeStorage {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

/// Dictionary codes of a string column, one per row, in the narrowest unsigned
/// type that holds every code: `u8` up to 255 distinct strings, then `u16`,
/// then `u32`. The type's `MAX` is the missing value; [`CodeColumn::get`]
/// reports it as [`MISSING_CODE`] whatever the width. Writing a code the width
/// cannot hold re-encodes the column one size up (at most twice in its life).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeColumn {
    storage: CodeStorage,
}

impl Default for CodeColumn {
    fn default() -> Self {
        CodeColumn {
            storage: CodeStorage::U8(Vec::new()),
        }
    }
}

impl CodeColumn {
    pub fn len(&self) -> usize {
        match &self.storage {
            CodeStorage::U8(v) => v.len(),
            CodeStorage::U16(v) => v.len(),
            CodeStorage::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The code at `row`, or [`MISSING_CODE`].
    #[inline]
    pub fn get(&self, row: usize) -> u32 {
        match &self.storage {
            CodeStorage::U8(v) => widen_code(v[row]),
            CodeStorage::U16(v) => widen_code(v[row]),
            CodeStorage::U32(v) => widen_code(v[row]),
        }
    }

    /// Stores `code` ([`MISSING_CODE`] for missing) at `row`.
    #[inline]
    pub fn set(&mut self, row: usize, code: u32) {
        fn store<T: CodeInt>(slot: &mut T, code: u32) -> bool {
            if code == MISSING_CODE {
                *slot = T::MISSING;
                return true;
            }
            T::from_code(code).map(|c| *slot = c).is_some()
        }
        let stored = match &mut self.storage {
            CodeStorage::U8(v) => store(&mut v[row], code),
            CodeStorage::U16(v) => store(&mut v[row], code),
            CodeStorage::U32(v) => store(&mut v[row], code),
        };
        if !stored {
            self.widen_for(code);
            self.set(row, code);
        }
    }

    /// Grows (or shrinks) the column to `rows` rows; new rows are missing.
    pub fn resize(&mut self, rows: usize) {
        match &mut self.storage {
            CodeStorage::U8(v) => v.resize(rows, u8::MISSING),
            CodeStorage::U16(v) => v.resize(rows, u16::MISSING),
            CodeStorage::U32(v) => v.resize(rows, u32::MISSING),
        }
    }

    /// Appends one missing row.
    #[inline]
    pub fn push_missing(&mut self) {
        match &mut self.storage {
            CodeStorage::U8(v) => v.push(u8::MISSING),
            CodeStorage::U16(v) => v.push(u16::MISSING),
            CodeStorage::U32(v) => v.push(u32::MISSING),
        }
    }

    #[cold]
    fn widen_for(&mut self, code: u32) {
        fn recode<T: CodeInt>(column: &CodeColumn, capacity: usize) -> Vec<T> {
            let mut codes = Vec::with_capacity(capacity);
            codes.extend((0..column.len()).map(|row| match column.get(row) {
                MISSING_CODE => T::MISSING,
                c => T::from_code(c).expect("a wider type holds every narrower code"),
            }));
            codes
        }
        let capacity = match &self.storage {
            CodeStorage::U8(v) => v.capacity(),
            CodeStorage::U16(v) => v.capacity(),
            CodeStorage::U32(v) => v.capacity(),
        };
        self.storage = if u16::from_code(code).is_some() {
            CodeStorage::U16(recode(self, capacity))
        } else {
            CodeStorage::U32(recode(self, capacity))
        };
    }

    /// Whether some row other than `except` holds `code`.
    fn holds_elsewhere(&self, code: u32, except: usize) -> bool {
        fn scan<T: CodeInt>(codes: &[T], code: u32, except: usize) -> bool {
            let Some(code) = T::from_code(code) else {
                return false;
            };
            codes
                .iter()
                .enumerate()
                .any(|(row, c)| *c == code && row != except)
        }
        match &self.storage {
            CodeStorage::U8(v) => scan(v, code, except),
            CodeStorage::U16(v) => scan(v, code, except),
            CodeStorage::U32(v) => scan(v, code, except),
        }
    }

    /// Rewrites every `from` to `to`, a code no wider than `from`.
    fn replace(&mut self, from: u32, to: u32) {
        fn rewrite<T: CodeInt>(codes: &mut [T], from: u32, to: u32) {
            let (Some(from), Some(to)) = (T::from_code(from), T::from_code(to)) else {
                return;
            };
            codes
                .iter_mut()
                .filter(|c| **c == from)
                .for_each(|c| *c = to);
        }
        debug_assert!(to <= from);
        match &mut self.storage {
            CodeStorage::U8(v) => rewrite(v, from, to),
            CodeStorage::U16(v) => rewrite(v, from, to),
            CodeStorage::U32(v) => rewrite(v, from, to),
        }
    }

    /// The stored codes, for scans.
    pub fn values(&self) -> CodeValues<'_> {
        match &self.storage {
            CodeStorage::U8(v) => CodeValues::U8(v),
            CodeStorage::U16(v) => CodeValues::U16(v),
            CodeStorage::U32(v) => CodeValues::U32(v),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match &self.storage {
            CodeStorage::U8(v) => v.capacity(),
            CodeStorage::U16(v) => v.capacity() * 2,
            CodeStorage::U32(v) => v.capacity() * 4,
        }
    }
}

/// One typed column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Column {
    Number(NumberColumn),
    Bool(Vec<u8>),
    String {
        codes: CodeColumn,
        dict: Dictionary,
    },
    Timestamp(Vec<i64>),
    ListOfStrings {
        lists: Vec<Option<Box<[u32]>>>,
        dict: Dictionary,
    },
}

impl Column {
    pub fn new(ty: AttrType) -> Column {
        match ty {
            AttrType::Number => Column::Number(NumberColumn::default()),
            AttrType::Bool => Column::Bool(Vec::new()),
            AttrType::String => Column::String {
                codes: CodeColumn::default(),
                dict: Dictionary::default(),
            },
            AttrType::Timestamp => Column::Timestamp(Vec::new()),
            AttrType::ListOfStrings => Column::ListOfStrings {
                lists: Vec::new(),
                dict: Dictionary::default(),
            },
        }
    }

    pub fn attr_type(&self) -> AttrType {
        match self {
            Column::Number(_) => AttrType::Number,
            Column::Bool(_) => AttrType::Bool,
            Column::String { .. } => AttrType::String,
            Column::Timestamp(_) => AttrType::Timestamp,
            Column::ListOfStrings { .. } => AttrType::ListOfStrings,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Column::Number(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::String { codes, .. } => codes.len(),
            Column::Timestamp(v) => v.len(),
            Column::ListOfStrings { lists, .. } => lists.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grows the column to `rows` rows, filling with `default` (or missing).
    pub fn resize(&mut self, rows: usize, default: Option<&AttrValue>) {
        match (self, default) {
            (Column::Number(v), Some(AttrValue::Number(d))) => v.resize(rows, *d),
            (Column::Number(v), _) => v.resize(rows, f64::NAN),
            (Column::Bool(v), _) => v.resize(rows, MISSING_BOOL),
            (Column::String { codes, .. }, _) => codes.resize(rows),
            (Column::Timestamp(v), _) => v.resize(rows, MISSING_TIME),
            (Column::ListOfStrings { lists, .. }, _) => lists.resize(rows, None),
        }
    }

    /// Appends one row holding what [`Self::resize`] fills new rows with: the
    /// cheap form of `resize(len + 1, default)` for the row a new customer adds.
    #[inline]
    pub fn push_row(&mut self, default: Option<&AttrValue>) {
        match (self, default) {
            (Column::Number(v), Some(AttrValue::Number(d))) => v.push(*d),
            (Column::Number(v), _) => v.push(f64::NAN),
            (Column::Bool(v), _) => v.push(MISSING_BOOL),
            (Column::String { codes, .. }, _) => codes.push_missing(),
            (Column::Timestamp(v), _) => v.push(MISSING_TIME),
            (Column::ListOfStrings { lists, .. }, _) => lists.push(None),
        }
    }

    /// Reads one row.
    pub fn get(&self, row: u32) -> Option<AttrValue> {
        let row = row as usize;
        match self {
            Column::Number(v) => (row < v.len())
                .then(|| v.get(row))
                .filter(|x| !x.is_nan())
                .map(AttrValue::Number),
            Column::Bool(v) => match v.get(row) {
                Some(0) => Some(AttrValue::Bool(false)),
                Some(1) => Some(AttrValue::Bool(true)),
                _ => None,
            },
            Column::String { codes, dict } => (row < codes.len())
                .then(|| codes.get(row))
                .filter(|c| *c != MISSING_CODE)
                .map(|c| AttrValue::String(dict.get(c).to_string())),
            Column::Timestamp(v) => v
                .get(row)
                .copied()
                .filter(|t| *t != MISSING_TIME)
                .map(|t| AttrValue::Timestamp(Timestamp(t))),
            Column::ListOfStrings { lists, dict } => {
                lists.get(row).and_then(|l| l.as_ref()).map(|codes| {
                    AttrValue::ListOfStrings(
                        codes.iter().map(|c| dict.get(*c).to_string()).collect(),
                    )
                })
            }
        }
    }

    /// Whether row `row` holds exactly `value` (`None`: is missing), without
    /// materialising the stored value (no string is allocated).
    pub fn holds(&self, row: u32, value: Option<&AttrValue>) -> bool {
        let r = row as usize;
        match (self, value) {
            (Column::Number(v), Some(AttrValue::Number(n))) => v.get(r) == *n,
            (Column::Bool(v), Some(AttrValue::Bool(b))) => v[r] == *b as u8,
            (Column::String { codes, dict }, Some(AttrValue::String(s))) => {
                let code = codes.get(r);
                code != MISSING_CODE && dict.get(code) == s
            }
            (Column::Timestamp(v), Some(AttrValue::Timestamp(t))) => v[r] == t.0,
            (Column::ListOfStrings { lists, dict }, Some(AttrValue::ListOfStrings(items))) => {
                lists[r].as_ref().is_some_and(|codes| {
                    codes.len() == items.len()
                        && codes.iter().zip(items).all(|(c, s)| dict.get(*c) == s)
                })
            }
            (column, None) => crate::rule::compile::is_missing(column, r),
            _ => false,
        }
    }

    /// [`Self::holds`] of a string value, borrowed.
    fn holds_str(&self, row: u32, value: &str) -> bool {
        match self {
            Column::String { codes, dict } => {
                let code = codes.get(row as usize);
                code != MISSING_CODE && dict.get(code) == value
            }
            _ => false,
        }
    }

    /// [`Self::set`] of a string value, borrowed: nothing is allocated when the
    /// dictionary holds the string already. Any column but a string column is
    /// a type mismatch, which clears the row as [`Self::set`] does.
    fn set_str(&mut self, row: u32, value: &str) {
        match self {
            Column::String { codes, dict } => codes.set(row as usize, dict.intern(value)),
            column => {
                debug_assert!(false, "a string written to a {} column", column.attr_type());
                column.set(row, None);
            }
        }
    }

    /// Writes one row. The caller has checked the type; a mismatch clears the row
    /// (and trips a debug assertion).
    pub fn set(&mut self, row: u32, value: Option<&AttrValue>) {
        let row = row as usize;
        debug_assert!(value.is_none_or(|v| v.attr_type() == self.attr_type()));
        match self {
            Column::Number(v) => v.set(
                row,
                match value {
                    Some(AttrValue::Number(n)) => *n,
                    _ => f64::NAN,
                },
            ),
            Column::Bool(v) => {
                v[row] = match value {
                    Some(AttrValue::Bool(b)) => *b as u8,
                    _ => MISSING_BOOL,
                }
            }
            Column::String { codes, dict } => codes.set(
                row,
                match value {
                    Some(AttrValue::String(s)) => dict.intern(s),
                    _ => MISSING_CODE,
                },
            ),
            Column::Timestamp(v) => {
                v[row] = match value {
                    Some(AttrValue::Timestamp(t)) => t.0,
                    _ => MISSING_TIME,
                }
            }
            Column::ListOfStrings { lists, dict } => {
                lists[row] = match value {
                    Some(AttrValue::ListOfStrings(items)) => {
                        Some(items.iter().map(|s| dict.intern(s)).collect())
                    }
                    _ => None,
                }
            }
        }
    }

    /// Clears row `row` and forgets every string only that row held, so that
    /// nothing of the value is left (a customer's right to be forgotten): a
    /// merely cleared row would leave its strings in the dictionary, and in
    /// every snapshot.
    ///
    /// Costs a pass over the column per string that goes: the string moves
    /// out, the dictionary's last string takes its code, and the rows holding
    /// that last code are rewritten.
    pub fn purge_row(&mut self, row: u32) {
        let r = row as usize;
        match self {
            Column::String { codes, dict } => {
                let code = codes.get(r);
                codes.set(r, MISSING_CODE);
                if code == MISSING_CODE || codes.holds_elsewhere(code, r) {
                    return;
                }
                let last = dict.len() as u32 - 1;
                dict.swap_remove(code);
                if code != last {
                    codes.replace(last, code);
                }
            }
            Column::ListOfStrings { lists, dict } => {
                let Some(held) = lists[r].take() else {
                    return;
                };
                let mut orphans = held.into_vec();
                orphans.sort_unstable();
                orphans.dedup();
                let mut used = vec![false; orphans.len()];
                for codes in lists.iter().flatten() {
                    for code in codes.iter() {
                        if let Ok(i) = orphans.binary_search(code) {
                            used[i] = true;
                        }
                    }
                }
                // Highest first, so that the last string, which moves into a
                // freed code, is never one still to be removed.
                for (code, _) in orphans.into_iter().zip(used).rev().filter(|(_, u)| !u) {
                    let last = dict.len() as u32 - 1;
                    dict.swap_remove(code);
                    if code != last {
                        lists
                            .iter_mut()
                            .flatten()
                            .flat_map(|codes| codes.iter_mut())
                            .filter(|c| **c == last)
                            .for_each(|c| *c = code);
                    }
                }
            }
            column => column.set(row, None),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            Column::Number(v) => v.heap_bytes(),
            Column::Bool(v) => v.capacity(),
            Column::String { codes, dict } => codes.heap_bytes() + dict.heap_bytes(),
            Column::Timestamp(v) => v.capacity() * 8,
            Column::ListOfStrings { lists, dict } => {
                lists.capacity() * 16
                    + lists
                        .iter()
                        .map(|l| l.as_ref().map_or(0, |l| l.len() * 4))
                        .sum::<usize>()
                    + dict.heap_bytes()
            }
        }
    }
}

/// An attribute column plus, per row, the timestamp of the write that set it, so
/// that a late identify never overwrites a newer value (last writer by event time
/// wins; ties broken by value so the result does not depend on arrival order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributeColumn {
    pub column: Column,
    pub written_at: Vec<i64>,
}

impl AttributeColumn {
    pub fn new(ty: AttrType) -> Self {
        AttributeColumn {
            column: Column::new(ty),
            written_at: Vec::new(),
        }
    }

    pub fn resize(&mut self, rows: usize) {
        self.column.resize(rows, None);
        self.written_at.resize(rows, MISSING_TIME);
    }

    /// Appends one row with no value: `resize(len + 1)`, for the row a new
    /// customer adds, without `resize`'s general path (it runs for every
    /// attribute of every new customer).
    #[inline]
    pub fn push_row(&mut self) {
        self.column.push_row(None);
        self.written_at.push(MISSING_TIME);
        debug_assert_eq!(self.column.len(), self.written_at.len());
    }

    /// Clears row `row` and its write time, leaving nothing of the value (see
    /// [`Column::purge_row`]).
    pub fn purge_row(&mut self, row: u32) {
        self.column.purge_row(row);
        self.written_at[row as usize] = MISSING_TIME;
    }

    /// Applies a write made at `at`; returns whether the stored value changed.
    /// `None` unsets the attribute (a JSON `null` trait).
    pub fn write(&mut self, row: u32, at: Timestamp, value: Option<&AttrValue>) -> bool {
        self.write_incoming(row, at, Incoming::Value(value))
    }

    /// [`Self::write`] of a string to a string column, borrowed from the event,
    /// so that storing a string the dictionary holds already allocates nothing
    /// (an identify carries mostly such strings: cities, plans, countries).
    pub fn write_str(&mut self, row: u32, at: Timestamp, value: &str) -> bool {
        debug_assert_eq!(self.column.attr_type(), AttrType::String);
        self.write_incoming(row, at, Incoming::Str(value))
    }

    fn write_incoming(&mut self, row: u32, at: Timestamp, value: Incoming<'_>) -> bool {
        let r = row as usize;
        let current_at = self.written_at[r];
        if at.0 < current_at {
            return false;
        }
        if at.0 == current_at {
            // Same instant: the greater value wins; an unset loses to any value.
            // (Rare, so reading the stored value out is fine here.)
            let wins = match (self.column.get(row), value) {
                (_, Incoming::Value(None)) => false,
                (None, _) => true,
                (Some(c), Incoming::Value(Some(v))) => {
                    v.tie_break_cmp(&c) == std::cmp::Ordering::Greater
                }
                (Some(c), Incoming::Str(s)) => {
                    AttrValue::String(s.to_string()).tie_break_cmp(&c)
                        == std::cmp::Ordering::Greater
                }
            };
            if !wins {
                return false;
            }
        }
        self.written_at[r] = at.0;
        match value {
            Incoming::Value(value) => {
                if self.column.holds(row, value) {
                    return false;
                }
                self.column.set(row, value);
            }
            Incoming::Str(s) => {
                if self.column.holds_str(row, s) {
                    return false;
                }
                self.column.set_str(row, s);
            }
        }
        true
    }
}

/// A value [`AttributeColumn::write_incoming`] stores: owned by the caller, or a
/// string borrowed from the event.
#[derive(Debug, Clone, Copy)]
enum Incoming<'a> {
    Value(Option<&'a AttrValue>),
    Str(&'a str),
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn holds_compares_without_reading_out() {
        use super::{AttrType, AttrValue, Column};
        let cases = [
            (
                AttrType::String,
                AttrValue::String("Pune".into()),
                AttrValue::String("pune".into()),
            ),
            (
                AttrType::Number,
                AttrValue::Number(2.5),
                AttrValue::Number(2.0),
            ),
            (
                AttrType::Bool,
                AttrValue::Bool(true),
                AttrValue::Bool(false),
            ),
            (
                AttrType::Timestamp,
                AttrValue::Timestamp(crate::time::Timestamp(5)),
                AttrValue::Timestamp(crate::time::Timestamp(6)),
            ),
            (
                AttrType::ListOfStrings,
                AttrValue::ListOfStrings(vec!["a".into(), "b".into()]),
                AttrValue::ListOfStrings(vec!["a".into()]),
            ),
        ];
        for (ty, stored, other) in cases {
            let mut column = Column::new(ty);
            column.resize(2, None);
            assert!(column.holds(1, None), "{ty}: missing before a write");
            column.set(1, Some(&stored));
            assert!(column.holds(1, Some(&stored)), "{ty}");
            assert!(!column.holds(1, Some(&other)), "{ty}");
            assert!(!column.holds(1, None), "{ty}");
            assert_eq!(
                column.holds(1, Some(&stored)),
                column.get(1).as_ref() == Some(&stored)
            );
        }
    }

    use super::*;

    /// `(width, scale)` of a column: width 0..=2 for `i8`/`i16`/`i32`, 3 for `f64`.
    fn encoding(column: &NumberColumn) -> (usize, f64) {
        (column.storage.width(), SCALES[column.scale])
    }

    fn column_of(values: &[f64]) -> NumberColumn {
        let mut column = NumberColumn::default();
        column.resize(values.len(), f64::NAN);
        for (row, x) in values.iter().enumerate() {
            column.set(row, *x);
        }
        column
    }

    /// Same value, with every `NaN` counted as one value (missing).
    fn same(a: f64, b: f64) -> bool {
        a == b || (a.is_nan() && b.is_nan())
    }

    fn assert_holds(column: &NumberColumn, values: &[f64]) {
        assert_eq!(column.len(), values.len());
        for (row, x) in values.iter().enumerate() {
            let got = column.get(row);
            assert!(same(got, *x), "row {row}: set {x:?}, got {got:?}");
        }
    }

    /// The narrowest encoding, width first then scale, that holds all `values`,
    /// by trying each in turn.
    fn narrowest(values: &[f64]) -> (usize, f64) {
        for (width, (low, high)) in INTEGER_WIDTHS.iter().enumerate() {
            for scale in SCALES {
                let holds = |x: &f64| x.is_nan() || encode_scaled(*x, scale, *low, *high).is_some();
                if values.iter().all(holds) {
                    return (width, scale);
                }
            }
        }
        (3, 1.0)
    }

    #[test]
    fn benchmark_columns_are_stored_as_small_integers() {
        // Money in cents: i32 at scale 100. Visit counts: i8.
        let spend: Vec<f64> = (0..1_000_000u64)
            .map(|i| (i * 7_919 % 1_000_000) as f64 / 100.0)
            .collect();
        let visits: Vec<f64> = (0..1_000u64).map(|i| (i % 10) as f64).collect();
        let spend_column = column_of(&spend);
        let visits_column = column_of(&visits);
        assert_eq!(encoding(&spend_column), (2, 100.0));
        assert_eq!(encoding(&visits_column), (0, 1.0));
        assert_holds(&spend_column, &spend);
        assert_holds(&visits_column, &visits);
        // Memory reflects the narrow storage: 4 and 1 bytes a row.
        assert!(spend_column.heap_bytes() < 5 * spend.len());
        assert!(visits_column.heap_bytes() < 2 * visits.len());
    }

    #[test]
    fn sums_that_are_not_short_decimals_widen_to_f64() {
        let mut column = NumberColumn::default();
        column.resize(3, 0.0);
        column.set(0, 0.1);
        column.set(1, 7.0);
        assert_eq!(encoding(&column), (0, 10.0));
        column.set(0, column.get(0) + 0.2);
        assert_eq!(encoding(&column), (3, 1.0));
        assert_holds(&column, &[0.1 + 0.2, 7.0, 0.0]);
        assert_ne!(column.get(0), 0.3);
    }

    #[test]
    fn encodings_widen_on_demand_and_keep_earlier_values() {
        let mut column = NumberColumn::default();
        column.resize(8, f64::NAN);
        let mut expected = vec![f64::NAN; 8];
        let steps = [
            (0, 5.0, (0, 1.0)),
            (1, 127.0, (0, 1.0)),
            // i8::MIN is the missing code, so -128 needs i16.
            (2, -128.0, (1, 1.0)),
            (3, 12.5, (1, 10.0)),
            (4, 3276.7, (1, 10.0)),
            (5, 3276.8, (2, 10.0)),
            (6, 0.0001, (2, 10_000.0)),
            // 214748.3648 * 10_000 is past i32::MAX.
            (7, 214_748.364_8, (3, 1.0)),
        ];
        for (row, x, after) in steps {
            column.set(row, x);
            expected[row] = x;
            assert_eq!(encoding(&column), after, "after setting {x}");
            assert_holds(&column, &expected);
        }
        // Overwriting the wide values never narrows the column back.
        column.set(7, 1.0);
        assert_eq!(encoding(&column), (3, 1.0));
    }

    #[test]
    fn integer_limits_and_large_values() {
        for (x, want) in [
            (2_147_483_647.0, (2, 1.0)),
            (-2_147_483_647.0, (2, 1.0)),
            (-2_147_483_648.0, (3, 1.0)),
            (2_147_483_648.0, (3, 1.0)),
            (214_748.364_7, (2, 10_000.0)),
            (-32_767.0, (1, 1.0)),
            (-32_768.0, (2, 1.0)),
            (1e15, (3, 1.0)),
            (-1e300, (3, 1.0)),
            (f64::INFINITY, (3, 1.0)),
            (f64::NEG_INFINITY, (3, 1.0)),
            (f64::MIN_POSITIVE, (3, 1.0)),
            (1.0 / 3.0, (3, 1.0)),
            (0.12345, (3, 1.0)),
        ] {
            let column = column_of(&[x]);
            assert_eq!(encoding(&column), want, "{x}");
            assert_holds(&column, &[x]);
        }
    }

    #[test]
    fn negative_zero_reads_back_equal() {
        let column = column_of(&[-0.0, 0.5, -1.25]);
        assert_eq!(encoding(&column), (0, 100.0));
        // Stored as the code 0: the sign is gone, the value compares equal.
        assert_eq!(column.get(0), -0.0);
        assert_eq!(column.get(0), 0.0);
        assert_holds(&column, &[-0.0, 0.5, -1.25]);
    }

    #[test]
    fn missing_values_stay_missing_through_widening() {
        let mut column = NumberColumn::default();
        column.resize(4, f64::NAN);
        column.set(1, 3.0);
        column.set(2, f64::NAN);
        assert_eq!(encoding(&column), (0, 1.0));
        assert_holds(&column, &[f64::NAN, 3.0, f64::NAN, f64::NAN]);
        column.set(3, 70_000.5);
        assert_eq!(encoding(&column), (2, 10.0));
        assert_holds(&column, &[f64::NAN, 3.0, f64::NAN, 70_000.5]);
        column.set(1, f64::NAN);
        column.set(3, 0.1 + 0.2);
        assert_holds(&column, &[f64::NAN, f64::NAN, f64::NAN, 0.1 + 0.2]);
        // A fill the encoding cannot hold widens it first.
        let mut filled = NumberColumn::default();
        filled.resize(2, 0.0);
        filled.resize(5, 0.25);
        assert_eq!(encoding(&filled), (0, 100.0));
        assert_holds(&filled, &[0.0, 0.0, 0.25, 0.25, 0.25]);
        // Shrinking never widens.
        filled.resize(1, 1e300);
        assert_eq!(encoding(&filled), (0, 100.0));
    }

    /// A value as rules and events produce them: short decimals of every
    /// magnitude and sign, and values no decimal encoding holds.
    fn arb_number() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (-1_000_000i64..1_000_000, 0u32..5)
                .prop_map(|(n, digits)| n as f64 / 10f64.powi(digits as i32)),
            2 => (-100i64..100, 0u32..5)
                .prop_map(|(n, digits)| n as f64 / 10f64.powi(digits as i32)),
            1 => (-3e9f64..3e9).prop_map(f64::round),
            1 => any::<f64>(),
            1 => prop::sample::select(vec![
                0.1 + 0.2,
                -0.0,
                0.0,
                f64::NAN,
                -128.0,
                -32_768.0,
                2_147_483_647.0,
                214_748.364_7,
                1e-5,
            ]),
        ]
    }

    proptest! {
        #[test]
        fn number_column_round_trips_in_the_narrowest_encoding(
            values in prop::collection::vec(arb_number(), 1..60),
        ) {
            let column = column_of(&values);
            for (row, x) in values.iter().enumerate() {
                let got = column.get(row);
                prop_assert!(same(got, *x), "row {}: set {:?}, got {:?}", row, x, got);
            }
            prop_assert_eq!(encoding(&column), narrowest(&values));
            let bytes = [1, 2, 4, 8][column.storage.width()];
            prop_assert_eq!(column.heap_bytes(), column.capacity() * bytes);
        }
    }

    #[test]
    fn code_columns_widen_with_the_dictionary() {
        let mut codes = CodeColumn::default();
        codes.resize(4);
        assert_eq!(codes.get(0), MISSING_CODE);
        codes.set(0, 0);
        codes.set(1, 254);
        assert!(matches!(codes.values(), CodeValues::U8(_)));
        assert_eq!(codes.heap_bytes(), code_capacity(&codes));
        // 255 is u8's missing code.
        codes.set(2, 255);
        assert!(matches!(codes.values(), CodeValues::U16(_)));
        assert_eq!(
            (0..4).map(|row| codes.get(row)).collect::<Vec<_>>(),
            [0, 254, 255, MISSING_CODE]
        );
        codes.set(3, 65_534);
        assert!(matches!(codes.values(), CodeValues::U16(_)));
        codes.set(3, 65_535);
        assert!(matches!(codes.values(), CodeValues::U32(_)));
        codes.set(0, MISSING_CODE);
        codes.resize(5);
        assert_eq!(
            (0..5).map(|row| codes.get(row)).collect::<Vec<_>>(),
            [MISSING_CODE, 254, 255, 65_535, MISSING_CODE]
        );
        assert_eq!(codes.heap_bytes(), 4 * code_capacity(&codes));
    }

    fn code_capacity(codes: &CodeColumn) -> usize {
        match &codes.storage {
            CodeStorage::U8(v) => v.capacity(),
            CodeStorage::U16(v) => v.capacity(),
            CodeStorage::U32(v) => v.capacity(),
        }
    }

    #[test]
    fn string_columns_read_back_through_narrow_codes() {
        let mut column = Column::new(AttrType::String);
        column.resize(600, None);
        for row in 0..600u32 {
            if row % 7 != 0 {
                let value = AttrValue::String(format!("s{}", row % 300));
                column.set(row, Some(&value));
            }
        }
        let Column::String { codes, .. } = &column else {
            unreachable!()
        };
        assert!(matches!(codes.values(), CodeValues::U16(_)));
        for row in 0..600u32 {
            let want = (row % 7 != 0).then(|| AttrValue::String(format!("s{}", row % 300)));
            assert_eq!(column.get(row), want, "row {row}");
        }
        assert_eq!(column.get(600), None);
    }

    fn dictionary_of(column: &Column) -> &Dictionary {
        match column {
            Column::String { dict, .. } | Column::ListOfStrings { dict, .. } => dict,
            _ => unreachable!(),
        }
    }

    /// The strings a purged row held leave the dictionary unless another row
    /// still holds them, and every other row reads what it read before, across
    /// the code moves (also past the u8 width, and in list columns).
    fn check_purges(ty: AttrType, values: Vec<Option<Vec<u16>>>, purges: Vec<usize>) {
        let value_of = |items: &Vec<u16>| match ty {
            AttrType::String => AttrValue::String(format!("s{}", items[0])),
            _ => AttrValue::ListOfStrings(items.iter().map(|i| format!("s{i}")).collect()),
        };
        let mut column = Column::new(ty);
        column.resize(values.len(), None);
        let mut expected: Vec<Option<AttrValue>> = Vec::new();
        for (row, items) in values.iter().enumerate() {
            let value = items.as_ref().map(value_of);
            column.set(row as u32, value.as_ref());
            expected.push(value);
        }
        for purge in purges {
            let row = purge % values.len();
            column.purge_row(row as u32);
            expected[row] = None;
            for (r, want) in expected.iter().enumerate() {
                assert_eq!(&column.get(r as u32), want, "row {r} after purging {row}");
            }
            let mut held: Vec<String> = expected
                .iter()
                .flatten()
                .flat_map(|v| match v {
                    AttrValue::String(s) => vec![s.clone()],
                    AttrValue::ListOfStrings(items) => items.clone(),
                    _ => unreachable!(),
                })
                .collect();
            held.sort();
            held.dedup();
            let dict = dictionary_of(&column);
            let mut known: Vec<String> = dict.iter().map(|(_, s)| s.to_string()).collect();
            known.sort();
            // Each row was written once, so the dictionary holds exactly the
            // strings some row still holds.
            assert_eq!(known, held);
            for (code, s) in dict.iter() {
                assert_eq!(dict.code(s), Some(code), "{s}");
            }
        }
        let dict = dictionary_of(&column);
        let rows_left = expected.iter().flatten().count();
        if rows_left == 0 {
            assert!(dict.is_empty(), "{:?}", dict.iter().collect::<Vec<_>>());
        }
    }

    proptest! {
        #[test]
        fn purged_rows_leave_no_string_behind(
            values in prop::collection::vec(prop::option::of(prop::collection::vec(0u16..400, 1..2)), 1..700),
            purges in prop::collection::vec(any::<usize>(), 0..40),
        ) {
            check_purges(AttrType::String, values, purges);
        }

        #[test]
        fn purged_lists_leave_no_string_behind(
            values in prop::collection::vec(prop::option::of(prop::collection::vec(0u16..60, 0..4)), 1..80),
            purges in prop::collection::vec(any::<usize>(), 0..40),
        ) {
            check_purges(AttrType::ListOfStrings, values, purges);
        }
    }

    /// Every column type, with the defaults `resize` honours (a number
    /// default the column must widen for included).
    #[test]
    fn pushed_rows_read_as_resized_rows() {
        let cases = [
            (AttrType::Number, None),
            (AttrType::Number, Some(AttrValue::Number(0.0))),
            (AttrType::Number, Some(AttrValue::Number(0.25))),
            (AttrType::Number, Some(AttrValue::Number(1e300))),
            (AttrType::Bool, None),
            (AttrType::String, None),
            (AttrType::Timestamp, None),
            (AttrType::ListOfStrings, None),
            (AttrType::String, Some(AttrValue::String("x".into()))),
        ];
        for (ty, default) in cases {
            let mut pushed = Column::new(ty);
            let mut resized = Column::new(ty);
            for rows in 1..4u32 {
                pushed.push_row(default.as_ref());
                resized.resize(rows as usize, default.as_ref());
                assert_eq!(pushed.len(), rows as usize);
                for row in 0..rows {
                    assert_eq!(pushed.get(row), resized.get(row), "{ty} {default:?}");
                }
            }
            if let (Column::Number(p), Column::Number(r)) = (&pushed, &resized) {
                assert_eq!(encoding(p), encoding(r), "{default:?}");
            }
        }
    }

    fn write_sequence() -> impl Strategy<Value = Vec<(u32, i64, Option<String>)>> {
        let value = prop::option::of(prop::sample::select(vec!["", "Pune", "Paris", "pune"]));
        prop::collection::vec(
            (0u32..3, 0i64..4, value.prop_map(|v| v.map(str::to_string))),
            1..40,
        )
    }

    proptest! {
        /// Writing a borrowed string does what writing the owned value does,
        /// same-instant tie-breaks included.
        #[test]
        fn borrowed_string_writes_match_owned_writes(writes in write_sequence()) {
            let mut owned = AttributeColumn::new(AttrType::String);
            let mut borrowed = AttributeColumn::new(AttrType::String);
            owned.resize(3);
            for _ in 0..3 {
                borrowed.push_row();
            }
            for (row, at, value) in writes {
                let at = Timestamp(at);
                let typed = value.clone().map(AttrValue::String);
                let expected = owned.write(row, at, typed.as_ref());
                let got = match &value {
                    Some(s) => borrowed.write_str(row, at, s),
                    None => borrowed.write(row, at, None),
                };
                prop_assert_eq!(got, expected);
                for r in 0..3 {
                    prop_assert_eq!(borrowed.column.get(r), owned.column.get(r));
                }
                prop_assert_eq!(&borrowed.written_at, &owned.written_at);
            }
        }
    }

    #[test]
    fn purging_every_row_empties_the_dictionary() {
        for ty in [AttrType::String, AttrType::ListOfStrings] {
            let values: Vec<Option<Vec<u16>>> =
                (0..600u16).map(|i| Some(vec![i % 300, i % 7])).collect();
            check_purges(ty, values, (0..600).rev().collect());
        }
    }

    #[test]
    fn purging_a_unique_string_removes_it_and_keeps_shared_ones() {
        let mut column = Column::new(AttrType::String);
        column.resize(4, None);
        for (row, s) in ["ada@example.com", "Pune", "Pune", "zed@example.com"]
            .iter()
            .enumerate()
        {
            column.set(row as u32, Some(&AttrValue::String(s.to_string())));
        }
        column.purge_row(0);
        column.purge_row(1);
        let dict = dictionary_of(&column);
        assert_eq!(dict.code("ada@example.com"), None);
        assert!(dict.code("Pune").is_some(), "row 2 still holds it");
        assert_eq!(
            column.get(3),
            Some(AttrValue::String("zed@example.com".into()))
        );
        assert_eq!(dict.len(), 2);
    }
}

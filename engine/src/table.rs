//! Columnar customer state: one typed column per attribute or computed trait,
//! indexed by the customer's dense id.
//!
//! The same columns serve the incremental path (one row read per evaluation) and
//! audience preview (tight loops over whole columns), so there is no second copy
//! of the data to keep in sync. Missing values use sentinels so that scans need no
//! separate validity bitmap: `NaN` for numbers (every comparison with `NaN` is
//! false, which is exactly the rule semantics for a missing value), `i64::MIN` for
//! timestamps, `u32::MAX` for string codes and `2` for booleans.

use rustc_hash::FxHashMap;

use crate::model::{AttrType, AttrValue};
use crate::time::Timestamp;

pub const MISSING_CODE: u32 = u32::MAX;
pub const MISSING_TIME: i64 = i64::MIN;
pub const MISSING_BOOL: u8 = 2;

/// Interned strings of one column. Codes are stable: the dictionary only grows.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    strings: Vec<Box<str>>,
    codes: FxHashMap<Box<str>, u32>,
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

    fn heap_bytes(&self) -> usize {
        self.strings.iter().map(|s| 2 * s.len() + 16).sum::<usize>()
            + self.codes.capacity() * 24
            + self.strings.capacity() * 16
    }
}

/// A column of numbers; `NaN` marks a missing value.
///
/// Kept behind methods so that the storage can change (for example to a narrower
/// encoding) without touching readers.
#[derive(Debug, Default, Clone)]
pub struct NumberColumn {
    values: Vec<f64>,
}

impl NumberColumn {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    #[inline]
    pub fn get(&self, row: usize) -> f64 {
        self.values[row]
    }

    #[inline]
    pub fn set(&mut self, row: usize, value: f64) {
        self.values[row] = value;
    }

    pub fn resize(&mut self, rows: usize, fill: f64) {
        self.values.resize(rows, fill);
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.values
    }

    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * 8
    }
}

/// One typed column.
#[derive(Debug, Clone)]
pub enum Column {
    Number(NumberColumn),
    Bool(Vec<u8>),
    String {
        codes: Vec<u32>,
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
                codes: Vec::new(),
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
            (Column::String { codes, .. }, _) => codes.resize(rows, MISSING_CODE),
            (Column::Timestamp(v), _) => v.resize(rows, MISSING_TIME),
            (Column::ListOfStrings { lists, .. }, _) => lists.resize(rows, None),
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
            Column::String { codes, dict } => codes
                .get(row)
                .copied()
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
            Column::String { codes, dict } => {
                codes[row] = match value {
                    Some(AttrValue::String(s)) => dict.intern(s),
                    _ => MISSING_CODE,
                }
            }
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

    pub fn heap_bytes(&self) -> usize {
        match self {
            Column::Number(v) => v.heap_bytes(),
            Column::Bool(v) => v.capacity(),
            Column::String { codes, dict } => codes.capacity() * 4 + dict.heap_bytes(),
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
#[derive(Debug, Clone)]
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

    /// Applies a write made at `at`; returns whether the stored value changed.
    /// `None` unsets the attribute (a JSON `null` trait).
    pub fn write(&mut self, row: u32, at: Timestamp, value: Option<&AttrValue>) -> bool {
        let r = row as usize;
        let current_at = self.written_at[r];
        if at.0 < current_at {
            return false;
        }
        let current = self.column.get(row);
        if at.0 == current_at {
            // Same instant: the greater value wins; an unset loses to any value.
            let wins = match (&current, value) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(c), Some(v)) => v.tie_break_cmp(c) == std::cmp::Ordering::Greater,
            };
            if !wins {
                return false;
            }
        }
        self.written_at[r] = at.0;
        if current.as_ref() == value {
            return false;
        }
        self.column.set(row, value);
        true
    }
}

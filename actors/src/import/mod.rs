//! CSV import of customer lists: reading (csv), column mapping (mapping).

pub mod csv;
pub mod mapping;

mod job;
pub use job::*;

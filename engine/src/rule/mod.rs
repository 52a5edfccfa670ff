//! The rule language: AST ([`ast`]), text DSL ([`dsl`]), validation against a tenant
//! schema and compilation to an evaluator ([`compile`]).

pub mod ast;
pub mod compile;
pub mod dsl;

pub use ast::{CompareOp, Condition, Performed, Quantifier, Rule, Scalar, Test, TextOp};

/// Deepest nesting of `and`/`or`/`not`/parentheses/`where` a rule may have.
pub const MAX_RULE_DEPTH: usize = 32;
/// Most AST nodes (every `Rule` value counts one) a rule may have.
pub const MAX_RULE_NODES: usize = 2_000;
/// Longest string literal, field name or event name, in bytes.
pub const MAX_STRING_BYTES: usize = 1_024;
/// Most elements in an `in`/`not_in` list.
pub const MAX_LIST_ITEMS: usize = 1_000;
/// Longest DSL text, in bytes.
pub const MAX_RULE_TEXT_BYTES: usize = 64 * 1024;

//! Changing an attribute's type with data in place.
//!
//! Every value is converted with [`AttrValue::convert`] into a new column
//! (string to anything by parsing, anything to string by rendering, nothing
//! else), keeping each value's write time so that last-writer-wins still orders
//! later writes against it. The change is all or nothing: one value that does
//! not convert, or one segment whose rule no longer compiles with the new type,
//! and the shard is left as it was. The segments that read the field are then
//! recompiled and re-evaluated over every customer, as a rule change would be.

use crate::model::{AttrId, AttrType, AttrValue};
use crate::rule::compile::{CompiledRule, FieldRef, Resolver, compile};
use crate::table::{AttributeColumn, Column};

use super::{Delta, SegmentId, Shard, State};

/// Most example customers [`Shard::check_field_type`] names.
const MAX_EXAMPLES: usize = 5;

/// What a change of a field's type would meet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTypeCheck {
    /// Customers whose value cannot be converted (customers with no value
    /// never block a change).
    pub offending: u64,
    /// External ids of up to five of them, in row order.
    pub examples: Vec<String>,
}

/// Why a field's type was not changed. All are the caller's to fix; retrying
/// the same change cannot help until the data or the segments change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldTypeError {
    #[error("no attribute named `{0}`")]
    Unknown(String),
    #[error("`{0}` is a computed trait: its type follows from its definition")]
    Computed(String),
    #[error(
        "cannot change the type of `{field}`: customers whose value does not convert: {offending} (for example {})",
        examples.join(", ")
    )]
    Offending {
        field: String,
        offending: u64,
        examples: Vec<String>,
    },
    #[error("segment {segment:?} would no longer be valid: {reason}")]
    Segment { segment: SegmentId, reason: String },
}

/// The shard's fields, with one attribute given another type: what the rules
/// would compile against after the change.
struct Retyped<'a> {
    state: &'a State,
    attr: u32,
    ty: AttrType,
}

impl Resolver for Retyped<'_> {
    fn resolve(&self, name: &str) -> Option<(FieldRef, AttrType)> {
        self.state.resolve(name).map(|(field, ty)| {
            if field == FieldRef::Attr(self.attr) {
                (field, self.ty)
            } else {
                (field, ty)
            }
        })
    }
}

impl Shard {
    /// Counts the customers whose value of attribute `name` would not convert
    /// to `ty` (see [`AttrValue::convert`]), without changing anything: what
    /// [`Self::change_field_type`] would refuse over. Removed customers are
    /// not counted. Segments that would stop compiling are not checked here.
    pub fn check_field_type(
        &self,
        name: &str,
        ty: AttrType,
    ) -> Result<FieldTypeCheck, FieldTypeError> {
        let attr = self.retypable(name)?;
        let mut check = FieldTypeCheck::default();
        self.convert_values(attr, ty, |row, converted| {
            if converted.is_none() {
                check.note(self.state.external_ids[row as usize].to_string());
            }
        });
        Ok(check)
    }

    /// Changes attribute `name` to type `ty`, converting every customer's
    /// value, and re-evaluates the segments that read it, appending their
    /// membership changes (cause `RuleChange`: the rule's meaning changed) to
    /// `out`. Segments keep their version, as their rule text is the same.
    ///
    /// Refused with nothing changed when a value does not convert
    /// ([`FieldTypeError::Offending`]) or a segment's rule would not compile
    /// with the new type, say `plan = "pro"` when `plan` becomes a number
    /// ([`FieldTypeError::Segment`]). A change to the field's own type only
    /// marks it declared. Values of removed customers are dropped.
    ///
    /// ```text
    ///   "12" "7.5" "abc"  --Number-->  refused: 1 offending (abc's customer)
    ///   "12" "7.5" "3"    --Number-->  12, 7.5, 3; `spend > 5` re-evaluated
    /// ```
    pub fn change_field_type(
        &mut self,
        name: &str,
        ty: AttrType,
        out: &mut Vec<Delta>,
    ) -> Result<(), FieldTypeError> {
        let attr = self.retypable(name)?;
        let id = AttrId(attr);
        if self.state.schema.field(id).ty == ty {
            self.state.schema.retype(id, ty);
            return Ok(());
        }
        let mut column = AttributeColumn::new(ty);
        column.resize(self.state.rows());
        let mut check = FieldTypeCheck::default();
        self.convert_values(attr, ty, |row, converted| match converted {
            Some(value) => column.column.set(row, Some(&value)),
            None => check.note(self.state.external_ids[row as usize].to_string()),
        });
        if check.offending > 0 {
            return Err(FieldTypeError::Offending {
                field: name.to_string(),
                offending: check.offending,
                examples: check.examples,
            });
        }
        // Also the times of unsets (a `null` trait), which a value written
        // later in event time must still beat.
        column
            .written_at
            .clone_from(&self.state.attrs[attr as usize].written_at);

        let slots = self.segments.by_attr[attr as usize].clone();
        let retyped = Retyped {
            state: &self.state,
            attr,
            ty,
        };
        let mut recompiled: Vec<(u32, CompiledRule)> = Vec::with_capacity(slots.len());
        for &slot in &slots {
            let segment = self.segments.slots[slot as usize]
                .as_ref()
                .expect("indexed slots are occupied");
            let mut compiled =
                compile(&segment.rule, &retyped).map_err(|e| FieldTypeError::Segment {
                    segment: segment.id,
                    reason: e.to_string(),
                })?;
            // `performed` conditions read event properties, not attributes:
            // the rule needs the very counters it holds.
            debug_assert_eq!(compiled.counters.len(), segment.counter_ids.len());
            compiled.link(&segment.counter_ids);
            recompiled.push((slot, compiled));
        }

        self.state.attrs[attr as usize] = column;
        self.state.schema.retype(id, ty);
        for (slot, compiled) in recompiled {
            let segment = self.segments.slots[slot as usize]
                .as_ref()
                .expect("indexed slots are occupied");
            let (rule, counter_ids) = (segment.rule.clone(), segment.counter_ids.clone());
            self.reinstall(slot, rule, compiled, counter_ids, false, out);
        }
        Ok(())
    }

    /// The attribute `name` if its type may change.
    fn retypable(&self, name: &str) -> Result<u32, FieldTypeError> {
        if self.state.trait_by_name.contains_key(name) {
            return Err(FieldTypeError::Computed(name.to_string()));
        }
        self.state
            .schema
            .get(name)
            .map(|(id, _)| id.0)
            .ok_or_else(|| FieldTypeError::Unknown(name.to_string()))
    }

    /// Calls `visit(row, converted)` for every live customer holding a value
    /// of attribute `attr`, in row order; `converted` is `None` when the value
    /// does not convert to `ty`.
    fn convert_values(
        &self,
        attr: u32,
        ty: AttrType,
        mut visit: impl FnMut(u32, Option<AttrValue>),
    ) {
        let column = &self.state.attrs[attr as usize].column;
        let removed = &self.state.removed;
        let live = (1..self.state.rows() as u32).filter(|row| !removed.contains(*row));
        match column {
            // Many customers share few strings: parse each string once.
            Column::String { codes, dict } => {
                let parsed: Vec<Option<AttrValue>> = dict
                    .iter()
                    .map(|(_, s)| AttrValue::parse_text(s, ty).ok())
                    .collect();
                for row in live {
                    let code = codes.get(row as usize);
                    if code != crate::table::MISSING_CODE {
                        visit(row, parsed[code as usize].clone());
                    }
                }
            }
            _ => {
                for row in live {
                    if let Some(value) = column.get(row) {
                        visit(row, value.convert(ty));
                    }
                }
            }
        }
    }
}

impl FieldTypeCheck {
    fn note(&mut self, external_id: String) {
        self.offending += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(external_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Event, FieldOrigin};
    use crate::rule::dsl;
    use crate::shard::{Cause, Transition};
    use crate::time::Timestamp;

    const T0: i64 = 1_767_225_600_000;

    fn identify(shard: &mut Shard, n: usize, user: &str, at: i64, traits: serde_json::Value) {
        let event = Event::identify(format!("m{n}"), user, Timestamp(at), traits);
        let mut deltas = Vec::new();
        shard.apply(&event, Timestamp(T0), &mut deltas).unwrap();
    }

    fn value(shard: &Shard, user: &str, field: &str) -> Option<AttrValue> {
        shard
            .customer(user)
            .unwrap()
            .attributes
            .into_iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| v)
    }

    fn add(shard: &mut Shard, id: u64, rule: &str) {
        let no_history: Vec<Event> = Vec::new();
        let rule = dsl::parse(rule).unwrap();
        shard
            .add_segment(SegmentId(id), rule, &no_history, &mut Vec::new())
            .unwrap();
    }

    fn members(shard: &Shard, id: u64) -> Vec<&str> {
        let members = shard.members(SegmentId(id)).unwrap();
        assert_eq!(
            Some(members.clone()),
            shard.evaluate_from_scratch(SegmentId(id)),
            "incremental membership equals a from-scratch evaluation"
        );
        members
            .iter()
            .map(|row| shard.customer_id(row).unwrap())
            .collect()
    }

    /// Customers ada, bob, cy, each with one value of field `field` written at T0.
    fn shard_with(field: &str, values: [&str; 3]) -> Shard {
        let mut shard = Shard::new(Default::default());
        for (n, (user, v)) in ["ada", "bob", "cy"].into_iter().zip(values).enumerate() {
            identify(&mut shard, n, user, T0, json!({ field: v }));
        }
        shard
    }

    #[test]
    fn strings_become_numbers_once_every_value_parses() {
        let mut shard = shard_with("spend", ["12", "7.5", "abc"]);
        // Compiles over strings and over numbers alike.
        add(&mut shard, 1, "spend exists");

        let check = shard.check_field_type("spend", AttrType::Number).unwrap();
        assert_eq!(
            check,
            FieldTypeCheck {
                offending: 1,
                examples: vec!["cy".into()]
            }
        );
        let mut deltas = Vec::new();
        let refused = shard.change_field_type("spend", AttrType::Number, &mut deltas);
        assert_eq!(
            refused,
            Err(FieldTypeError::Offending {
                field: "spend".into(),
                offending: 1,
                examples: vec!["cy".into()]
            })
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "cannot change the type of `spend`: customers whose value does not convert: 1 (for example cy)"
        );
        assert_eq!(shard.schema().get("spend").unwrap().1.ty, AttrType::String);
        assert_eq!(
            value(&shard, "ada", "spend"),
            Some(AttrValue::String("12".into()))
        );

        identify(&mut shard, 10, "cy", T0 + 1_000, json!({"spend": "3"}));
        assert_eq!(
            shard.check_field_type("spend", AttrType::Number).unwrap(),
            FieldTypeCheck::default()
        );
        shard
            .change_field_type("spend", AttrType::Number, &mut deltas)
            .unwrap();
        assert!(deltas.is_empty(), "`exists` answers the same: {deltas:?}");
        let (_, def) = shard.schema().get("spend").unwrap();
        assert_eq!(
            (def.ty, def.origin),
            (AttrType::Number, FieldOrigin::Declared)
        );
        for (user, spend) in [("ada", 12.0), ("bob", 7.5), ("cy", 3.0)] {
            assert_eq!(value(&shard, user, "spend"), Some(AttrValue::Number(spend)));
        }
        assert_eq!(members(&shard, 1), ["ada", "bob", "cy"]);
        add(&mut shard, 2, "spend > 5");
        assert_eq!(members(&shard, 2), ["ada", "bob"]);

        // Write times came along: an identify older than the "3" loses.
        identify(&mut shard, 11, "cy", T0 + 500, json!({"spend": 99}));
        assert_eq!(value(&shard, "cy", "spend"), Some(AttrValue::Number(3.0)));
        identify(&mut shard, 12, "cy", T0 + 2_000, json!({"spend": 99}));
        assert_eq!(value(&shard, "cy", "spend"), Some(AttrValue::Number(99.0)));
        assert_eq!(members(&shard, 2), ["ada", "bob", "cy"]);
    }

    #[test]
    fn a_rule_comparing_with_a_string_blocks_a_change_to_number() {
        let mut shard = shard_with("spend", ["12", "7.5", "3"]);
        add(&mut shard, 1, "spend exists");
        add(&mut shard, 7, r#"spend = "12""#);
        let mut deltas = Vec::new();
        let refused = shard.change_field_type("spend", AttrType::Number, &mut deltas);
        let Err(FieldTypeError::Segment { segment, reason }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(segment, SegmentId(7));
        assert!(reason.contains("spend"), "{reason}");
        assert!(deltas.is_empty());
        assert_eq!(shard.schema().get("spend").unwrap().1.ty, AttrType::String);
        assert_eq!(
            value(&shard, "ada", "spend"),
            Some(AttrValue::String("12".into()))
        );
        assert_eq!(members(&shard, 7), ["ada"]);
        assert_eq!(members(&shard, 1), ["ada", "bob", "cy"]);

        shard.remove_segment(SegmentId(7)).unwrap();
        shard
            .change_field_type("spend", AttrType::Number, &mut deltas)
            .unwrap();
        assert_eq!(value(&shard, "ada", "spend"), Some(AttrValue::Number(12.0)));
    }

    #[test]
    fn members_follow_the_converted_values_with_rule_change_deltas() {
        // `contains` is a substring test on strings, membership on lists.
        let mut shard = shard_with("tags", ["a;b", "bb", ""]);
        add(&mut shard, 1, r#"tags contains "b""#);
        add(&mut shard, 2, r#"tags not_contains "b""#);
        assert_eq!(members(&shard, 1), ["ada", "bob"]);
        assert_eq!(members(&shard, 2), ["cy"]);
        let version = shard.segment_rule(SegmentId(1)).unwrap().1;
        let mut deltas = Vec::new();
        shard
            .change_field_type("tags", AttrType::ListOfStrings, &mut deltas)
            .unwrap();
        assert_eq!(
            value(&shard, "ada", "tags"),
            Some(AttrValue::ListOfStrings(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            value(&shard, "cy", "tags"),
            Some(AttrValue::ListOfStrings(Vec::new()))
        );
        assert_eq!(members(&shard, 1), ["ada"]);
        assert_eq!(members(&shard, 2), ["bob", "cy"]);
        let bob = shard.customer_row("bob").unwrap();
        deltas.sort_by_key(|d| d.segment);
        assert_eq!(
            deltas
                .iter()
                .map(|d| (d.segment, d.customer, d.transition, d.cause))
                .collect::<Vec<_>>(),
            [
                (SegmentId(1), bob, Transition::Exited, Cause::RuleChange),
                (SegmentId(2), bob, Transition::Entered, Cause::RuleChange),
            ]
        );
        assert_eq!(shard.segment_rule(SegmentId(1)).unwrap().1, version);

        // Later identify calls are read as the new type.
        identify(&mut shard, 10, "cy", T0 + 1, json!({"tags": ["b"]}));
        assert_eq!(members(&shard, 1), ["ada", "cy"]);
    }

    #[test]
    fn strings_become_timestamps_and_compare_as_times() {
        // As strings "2025-12-31T23:00:00-02:00" sorts before 2026; as a time
        // it is 01:00 UTC on 2026-01-01.
        let mut shard = shard_with(
            "signup",
            [
                "2026-03-01",
                "2025-12-31T23:00:00-02:00",
                "2025-06-01 08:00:00",
            ],
        );
        add(&mut shard, 1, r#"signup >= "2026-01-01T00:00:00Z""#);
        assert_eq!(members(&shard, 1), ["ada"]);
        let mut deltas = Vec::new();
        shard
            .change_field_type("signup", AttrType::Timestamp, &mut deltas)
            .unwrap();
        assert_eq!(members(&shard, 1), ["ada", "bob"]);
        assert_eq!(deltas.len(), 1);
        assert_eq!(
            value(&shard, "cy", "signup").map(|v| v.render_text()),
            Some("2025-06-01T08:00:00Z".into())
        );
        // Timestamps to numbers do not convert.
        assert_eq!(
            shard
                .check_field_type("signup", AttrType::Number)
                .unwrap()
                .offending,
            3
        );
    }

    #[test]
    fn removed_customers_do_not_block_a_change() {
        let mut shard = shard_with("spend", ["12", "oops", "3"]);
        let mut deltas = Vec::new();
        assert_eq!(
            shard
                .check_field_type("spend", AttrType::Number)
                .unwrap()
                .offending,
            1
        );
        shard.remove_customer("bob", &mut deltas);
        assert_eq!(
            shard.check_field_type("spend", AttrType::Number).unwrap(),
            FieldTypeCheck::default()
        );
        shard
            .change_field_type("spend", AttrType::Number, &mut deltas)
            .unwrap();
    }

    #[test]
    fn computed_traits_and_unknown_fields_cannot_change() {
        let mut shard = shard_with("spend", ["12", "7.5", "abc"]);
        let mut deltas = Vec::new();
        assert_eq!(
            shard.change_field_type("total_spend", AttrType::String, &mut deltas),
            Err(FieldTypeError::Computed("total_spend".into()))
        );
        assert_eq!(
            shard.check_field_type("nope", AttrType::String),
            Err(FieldTypeError::Unknown("nope".into()))
        );
        // The same type only marks the field declared.
        assert_eq!(
            shard.schema().get("spend").unwrap().1.origin,
            FieldOrigin::Inferred
        );
        shard
            .change_field_type("spend", AttrType::String, &mut deltas)
            .unwrap();
        assert_eq!(
            shard.schema().get("spend").unwrap().1.origin,
            FieldOrigin::Declared
        );
        assert!(deltas.is_empty());
    }
}

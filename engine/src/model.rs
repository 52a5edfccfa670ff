//! The domain model: typed attribute values, the per-tenant attribute schema, and
//! events as the Segment spec defines them.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::time::Timestamp;

/// The type of an attribute or computed trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrType {
    String,
    Number,
    Bool,
    Timestamp,
    ListOfStrings,
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrType::String => "string",
            AttrType::Number => "number",
            AttrType::Bool => "bool",
            AttrType::Timestamp => "timestamp",
            AttrType::ListOfStrings => "list of strings",
        })
    }
}

/// A typed value of an attribute or computed trait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    String(String),
    Number(f64),
    Bool(bool),
    Timestamp(Timestamp),
    ListOfStrings(Vec<String>),
}

impl AttrValue {
    pub fn attr_type(&self) -> AttrType {
        match self {
            AttrValue::String(_) => AttrType::String,
            AttrValue::Number(_) => AttrType::Number,
            AttrValue::Bool(_) => AttrType::Bool,
            AttrValue::Timestamp(_) => AttrType::Timestamp,
            AttrValue::ListOfStrings(_) => AttrType::ListOfStrings,
        }
    }

    /// The value as JSON, timestamps as RFC 3339 strings.
    pub fn to_json(&self) -> Json {
        match self {
            AttrValue::String(s) => Json::String(s.clone()),
            AttrValue::Number(n) => serde_json::Number::from_f64(*n)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            AttrValue::Bool(b) => Json::Bool(*b),
            AttrValue::Timestamp(t) => Json::String(t.to_rfc3339()),
            AttrValue::ListOfStrings(items) => {
                Json::Array(items.iter().cloned().map(Json::String).collect())
            }
        }
    }

    /// Converts a JSON value to the given type, or says why it cannot. No silent
    /// coercion: a number is not a string and `"12"` is not a number.
    pub fn from_json_as(value: &Json, ty: AttrType) -> Option<AttrValue> {
        match (ty, value) {
            (AttrType::String, Json::String(s)) => Some(AttrValue::String(s.clone())),
            (AttrType::Number, Json::Number(n)) => {
                n.as_f64().filter(|f| f.is_finite()).map(AttrValue::Number)
            }
            (AttrType::Bool, Json::Bool(b)) => Some(AttrValue::Bool(*b)),
            (AttrType::Timestamp, Json::String(s)) => {
                Timestamp::parse_rfc3339(s).ok().map(AttrValue::Timestamp)
            }
            (AttrType::ListOfStrings, Json::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(AttrValue::ListOfStrings),
            _ => None,
        }
    }

    /// The type a value would be inferred as on first sight: RFC 3339 strings are
    /// timestamps, arrays of strings are lists. `None` for what cannot be an
    /// attribute (null, arrays of other things, objects).
    pub fn infer_type(value: &Json) -> Option<AttrType> {
        match value {
            Json::String(s) if looks_like_rfc3339(s) => Some(AttrType::Timestamp),
            Json::String(_) => Some(AttrType::String),
            Json::Number(_) => Some(AttrType::Number),
            Json::Bool(_) => Some(AttrType::Bool),
            Json::Array(items) if items.iter().all(Json::is_string) => {
                Some(AttrType::ListOfStrings)
            }
            _ => None,
        }
    }

    /// Reads a value of type `ty` from text, as a CSV import or a change of a
    /// field's type does; `Err` says why the text is not such a value.
    ///
    /// | type | accepted text (surrounding whitespace ignored, except for strings) |
    /// |---|---|
    /// | string | anything, kept as is |
    /// | number | decimal, optional sign and exponent: `12`, `-7.5`, `.5`, `1e3`; no `NaN`, `inf`, hex or `1,000` |
    /// | bool | `true`/`false`, `yes`/`no`, `y`/`n`, `1`/`0`, in any case |
    /// | timestamp | RFC 3339, `YYYY-MM-DD` (midnight UTC), or `YYYY-MM-DD HH:MM:SS[.fff]` with `T` or a space and no zone (UTC) |
    /// | list of strings | items separated by `;`, trimmed, empty items dropped |
    ///
    /// ```
    /// use xeno_engine::model::{AttrType, AttrValue};
    /// assert_eq!(AttrValue::parse_text(" 1e3 ", AttrType::Number), Ok(AttrValue::Number(1000.0)));
    /// assert_eq!(
    ///     AttrValue::parse_text("12x", AttrType::Number),
    ///     Err("`12x` is not a number".to_string())
    /// );
    /// ```
    pub fn parse_text(text: &str, ty: AttrType) -> Result<AttrValue, String> {
        let trimmed = text.trim();
        match ty {
            AttrType::String => Ok(AttrValue::String(text.to_string())),
            AttrType::Number => parse_number(trimmed).map(AttrValue::Number),
            AttrType::Bool => match trimmed.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "1" => Ok(AttrValue::Bool(true)),
                "false" | "no" | "n" | "0" => Ok(AttrValue::Bool(false)),
                _ => Err(format!(
                    "`{trimmed}` is not a boolean (true/false, yes/no, y/n or 1/0)"
                )),
            },
            AttrType::Timestamp => parse_time_text(trimmed)
                .map(AttrValue::Timestamp)
                .ok_or_else(|| {
                    format!("`{trimmed}` is not a date or timestamp (RFC 3339 or YYYY-MM-DD)")
                }),
            AttrType::ListOfStrings => Ok(AttrValue::ListOfStrings(
                text.split(';')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_string)
                    .collect(),
            )),
        }
    }

    /// The value as text that [`Self::parse_text`] reads back to an equal value
    /// (except list items containing `;`, which cannot be written): numbers as
    /// integers when integral (`12`, not `12.0`), else in the shortest form that
    /// round-trips (exponent notation below 1e-6 and from 1e21); timestamps as
    /// RFC 3339; booleans as `true`/`false`; lists joined with `;`.
    pub fn render_text(&self) -> String {
        match self {
            AttrValue::String(s) => s.clone(),
            AttrValue::Number(n) => render_number(*n),
            AttrValue::Bool(b) => b.to_string(),
            AttrValue::Timestamp(t) => t.to_rfc3339(),
            AttrValue::ListOfStrings(items) => items.join(";"),
        }
    }

    /// The value as type `ty`, when changing a field's type can carry it over:
    /// the same type keeps it, anything becomes a string through
    /// [`Self::render_text`], a string becomes any type through
    /// [`Self::parse_text`] (`None` if it does not parse). No other pair
    /// converts: a number is not a boolean, nor a timestamp a number.
    pub fn convert(&self, ty: AttrType) -> Option<AttrValue> {
        match (self, ty) {
            _ if self.attr_type() == ty => Some(self.clone()),
            (_, AttrType::String) => Some(AttrValue::String(self.render_text())),
            (AttrValue::String(s), _) => AttrValue::parse_text(s, ty).ok(),
            _ => None,
        }
    }

    /// A total order used to break ties between writes with equal timestamps, so
    /// that the winner does not depend on arrival order.
    pub fn tie_break_cmp(&self, other: &AttrValue) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self, other) {
            (AttrValue::String(a), AttrValue::String(b)) => a.cmp(b),
            (AttrValue::Number(a), AttrValue::Number(b)) => a.total_cmp(b),
            (AttrValue::Bool(a), AttrValue::Bool(b)) => a.cmp(b),
            (AttrValue::Timestamp(a), AttrValue::Timestamp(b)) => a.cmp(b),
            (AttrValue::ListOfStrings(a), AttrValue::ListOfStrings(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }
}

/// A decimal number: optional sign, digits with an optional fraction, optional
/// exponent. Checked by hand first because `f64::from_str` also takes `inf`,
/// `NaN` and `infinity`, which are not numbers a customer attribute can hold.
fn parse_number(text: &str) -> Result<f64, String> {
    fn digits(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    }
    if text.is_empty() {
        return Err("an empty value is not a number".to_string());
    }
    let not_a_number = || format!("`{text}` is not a number");
    let b = text.as_bytes();
    let mut i = usize::from(matches!(b[0], b'+' | b'-'));
    let integer_end = digits(b, i);
    let mut mantissa_digits = integer_end - i;
    i = integer_end;
    if i < b.len() && b[i] == b'.' {
        let fraction_end = digits(b, i + 1);
        mantissa_digits += fraction_end - (i + 1);
        i = fraction_end;
    }
    if mantissa_digits == 0 {
        return Err(not_a_number());
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'+' | b'-') {
            i += 1;
        }
        let exponent_end = digits(b, i);
        if exponent_end == i {
            return Err(not_a_number());
        }
        i = exponent_end;
    }
    if i != b.len() {
        return Err(not_a_number());
    }
    let value: f64 = text.parse().map_err(|_| not_a_number())?;
    if !value.is_finite() {
        return Err(format!("`{text}` is too large for a number"));
    }
    Ok(value)
}

fn render_number(n: f64) -> String {
    if n == 0.0 {
        // Also `-0`: no rule can tell it from `0`.
        return "0".to_string();
    }
    // `Display` writes the shortest digits that round-trip, never with an
    // exponent, which would spell 1e300 with 300 zeros.
    if (1e-6..1e21).contains(&n.abs()) {
        n.to_string()
    } else {
        format!("{n:e}")
    }
}

/// RFC 3339, a bare date (midnight UTC), or a date and time with no zone (UTC).
fn parse_time_text(text: &str) -> Option<Timestamp> {
    if let Ok(t) = Timestamp::parse_rfc3339(text) {
        return Some(t);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    let time_format =
        time::macros::format_description!("[hour]:[minute]:[second][optional [.[subsecond]]]");
    // The shape check keeps `[year]` from reading signs or five-digit years.
    let b = text.as_bytes();
    let shaped = b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shaped {
        return None;
    }
    let date = time::Date::parse(&text[..10], &date_format).ok()?;
    let time_of_day = match &text[10..] {
        "" => time::Time::MIDNIGHT,
        rest if matches!(rest.as_bytes()[0], b'T' | b't' | b' ') => {
            time::Time::parse(&rest[1..], &time_format).ok()?
        }
        _ => return None,
    };
    let nanos = time::PrimitiveDateTime::new(date, time_of_day)
        .assume_utc()
        .unix_timestamp_nanos();
    // Sub-millisecond digits are truncated toward the past, as RFC 3339 times are.
    Some(Timestamp(nanos.div_euclid(1_000_000) as i64))
}

fn looks_like_rfc3339(s: &str) -> bool {
    // Cheap shape check first: parsing every string would cost on the hot path.
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && Timestamp::parse_rfc3339(s).is_ok()
}

/// Identifies an attribute within one tenant's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttrId(pub u32);

/// How a field entered the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldOrigin {
    Declared,
    Inferred,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    pub name: String,
    pub ty: AttrType,
    pub origin: FieldOrigin,
}

/// A tenant's attribute schema: every customer attribute has one type, declared up
/// front or inferred from the first value seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Schema {
    fields: Vec<FieldDef>,
    by_name: FxHashMap<String, AttrId>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "field `{field}` is already declared as {existing}, cannot redeclare it as {requested}"
    )]
    Conflict {
        field: String,
        existing: AttrType,
        requested: AttrType,
    },
    #[error("field name `{0}` is empty or longer than 256 bytes")]
    BadName(String),
    #[error("`{0}` is the name of a computed trait")]
    Reserved(String),
    #[error("the tenant has {0} fields already")]
    TooMany(usize),
}

impl Schema {
    pub fn fields(&self) -> &[FieldDef] {
        &self.fields
    }

    pub fn get(&self, name: &str) -> Option<(AttrId, &FieldDef)> {
        self.by_name
            .get(name)
            .map(|id| (*id, &self.fields[id.0 as usize]))
    }

    pub fn field(&self, id: AttrId) -> &FieldDef {
        &self.fields[id.0 as usize]
    }

    /// Declares a field. Redeclaring with the same type is a no-op that marks it
    /// declared; with another type it is an error (changing a type with data in
    /// place is the customer-data API's job, which counts offending customers).
    pub fn declare(&mut self, name: &str, ty: AttrType) -> Result<AttrId, SchemaError> {
        self.add(name, ty, FieldOrigin::Declared)
    }

    /// Changes a field's type and marks it declared. The caller converts the
    /// field's values (see `Shard::change_field_type`).
    pub(crate) fn retype(&mut self, id: AttrId, ty: AttrType) {
        let field = &mut self.fields[id.0 as usize];
        field.ty = ty;
        field.origin = FieldOrigin::Declared;
    }

    pub(crate) fn add(
        &mut self,
        name: &str,
        ty: AttrType,
        origin: FieldOrigin,
    ) -> Result<AttrId, SchemaError> {
        if name.is_empty() || name.len() > 256 {
            return Err(SchemaError::BadName(name.to_string()));
        }
        if let Some(&id) = self.by_name.get(name) {
            let field = &mut self.fields[id.0 as usize];
            if field.ty != ty {
                return Err(SchemaError::Conflict {
                    field: name.to_string(),
                    existing: field.ty,
                    requested: ty,
                });
            }
            if origin == FieldOrigin::Declared {
                field.origin = FieldOrigin::Declared;
            }
            return Ok(id);
        }
        let id = AttrId(self.fields.len() as u32);
        self.fields.push(FieldDef {
            name: name.to_string(),
            ty,
            origin,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }
}

/// A customer event, normalised from the Segment spec (the gateway has already
/// resolved `timestamp` from `originalTimestamp`/`sentAt`/`receivedAt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    pub timestamp: Timestamp,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventKind {
    Identify {
        #[serde(default)]
        traits: Map<String, Json>,
    },
    Track {
        event: String,
        #[serde(default)]
        properties: Map<String, Json>,
    },
    Page {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        properties: Map<String, Json>,
    },
    Screen {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        properties: Map<String, Json>,
    },
    Group {
        #[serde(rename = "groupId")]
        group_id: String,
        #[serde(default)]
        traits: Map<String, Json>,
    },
    Alias {
        #[serde(rename = "previousId")]
        previous_id: String,
    },
}

impl Event {
    /// The customer this event belongs to: `userId` when present, else `anonymousId`.
    pub fn customer_key(&self) -> Option<&str> {
        self.user_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(self.anonymous_id.as_deref().filter(|s| !s.is_empty()))
    }

    /// The track event's name, if this is a track event.
    pub fn track_name(&self) -> Option<&str> {
        match &self.kind {
            EventKind::Track { event, .. } => Some(event),
            _ => None,
        }
    }

    pub fn properties(&self) -> Option<&Map<String, Json>> {
        match &self.kind {
            EventKind::Track { properties, .. }
            | EventKind::Page { properties, .. }
            | EventKind::Screen { properties, .. } => Some(properties),
            _ => None,
        }
    }

    /// A `track` event, for tests and benches.
    pub fn track(
        message_id: impl Into<String>,
        user: impl Into<String>,
        timestamp: Timestamp,
        event: impl Into<String>,
        properties: Json,
    ) -> Event {
        Event {
            message_id: message_id.into(),
            user_id: Some(user.into()),
            anonymous_id: None,
            timestamp,
            kind: EventKind::Track {
                event: event.into(),
                properties: into_object(properties),
            },
        }
    }

    /// An `identify` event, for tests and benches.
    pub fn identify(
        message_id: impl Into<String>,
        user: impl Into<String>,
        timestamp: Timestamp,
        traits: Json,
    ) -> Event {
        Event {
            message_id: message_id.into(),
            user_id: Some(user.into()),
            anonymous_id: None,
            timestamp,
            kind: EventKind::Identify {
                traits: into_object(traits),
            },
        }
    }
}

/// The map of a JSON object; anything else is an empty map.
fn into_object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => Map::new(),
    }
}

/// Looks up a dotted path (`address.city`, `products.0.price`) in a JSON object.
pub fn lookup_path<'a>(map: &'a Map<String, Json>, path: &str) -> Option<&'a Json> {
    if let Some(v) = map.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = map.get(parts.next()?)?;
    for part in parts {
        current = match current {
            Json::Object(m) => m.get(part)?,
            Json::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inference_is_strict() {
        assert_eq!(
            AttrValue::infer_type(&json!("2026-01-01T00:00:00Z")),
            Some(AttrType::Timestamp)
        );
        assert_eq!(
            AttrValue::infer_type(&json!("Pune")),
            Some(AttrType::String)
        );
        assert_eq!(
            AttrValue::infer_type(&json!(["a", "b"])),
            Some(AttrType::ListOfStrings)
        );
        assert_eq!(AttrValue::infer_type(&json!([1, 2])), None);
        assert_eq!(
            AttrValue::from_json_as(&json!("12"), AttrType::Number),
            None
        );
        assert_eq!(AttrValue::from_json_as(&json!(12), AttrType::String), None);
    }

    #[test]
    fn numbers_parse_as_decimals_only() {
        let number = |t: &str| AttrValue::parse_text(t, AttrType::Number);
        for (text, value) in [
            ("12", 12.0),
            (" -7.5 ", -7.5),
            ("+3", 3.0),
            (".5", 0.5),
            ("2.", 2.0),
            ("1e3", 1000.0),
            ("1.5E-2", 0.015),
            ("-0", 0.0),
        ] {
            assert_eq!(number(text), Ok(AttrValue::Number(value)), "{text}");
        }
        for text in [
            "",
            " ",
            "NaN",
            "nan",
            "inf",
            "-infinity",
            "0x1F",
            "1,000",
            "1_000",
            "12x",
            ".",
            "-",
            "1e",
            "1e+",
            "e5",
            "1.2.3",
            "--1",
            "1 000",
        ] {
            assert!(number(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(number("12x"), Err("`12x` is not a number".to_string()));
        assert!(number("1e400").unwrap_err().contains("too large"));
    }

    #[test]
    fn booleans_take_the_usual_spellings() {
        let bool_of = |t: &str| AttrValue::parse_text(t, AttrType::Bool);
        for t in ["true", "TRUE", "Yes", "y", "1", " True "] {
            assert_eq!(bool_of(t), Ok(AttrValue::Bool(true)), "{t}");
        }
        for t in ["false", "No", "N", "0"] {
            assert_eq!(bool_of(t), Ok(AttrValue::Bool(false)), "{t}");
        }
        for t in ["", "2", "on", "t", "yess"] {
            assert!(bool_of(t).is_err(), "{t}");
        }
    }

    #[test]
    fn timestamps_take_rfc3339_dates_and_zoneless_times_as_utc() {
        let time_of = |t: &str| match AttrValue::parse_text(t, AttrType::Timestamp) {
            Ok(AttrValue::Timestamp(t)) => Ok(t.to_rfc3339()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        for (text, expected) in [
            ("2026-03-01T10:20:30+02:00", "2026-03-01T08:20:30Z"),
            ("2026-03-01", "2026-03-01T00:00:00Z"),
            (" 2026-03-01 ", "2026-03-01T00:00:00Z"),
            ("2026-03-01 10:20:30", "2026-03-01T10:20:30Z"),
            ("2026-03-01T10:20:30", "2026-03-01T10:20:30Z"),
            ("2026-03-01t10:20:30.5", "2026-03-01T10:20:30.500Z"),
            ("2026-03-01 10:20:30.123456", "2026-03-01T10:20:30.123Z"),
            ("1969-12-31 23:59:59.9999", "1969-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(time_of(text).as_deref(), Ok(expected), "{text}");
        }
        for text in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-3-1",
            "+2026-03-01",
            "12026-03-01",
            "2026-03-01 10:20",
            "2026-03-01 25:00:00",
            "2026-03-01X10:20:30",
            "2026-03-01 10:20:30 +02:00",
            "01/03/2026",
        ] {
            assert!(time_of(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(
            time_of("soon"),
            Err("`soon` is not a date or timestamp (RFC 3339 or YYYY-MM-DD)".to_string())
        );
    }

    #[test]
    fn lists_split_on_semicolons_and_strings_stay_as_they_are() {
        assert_eq!(
            AttrValue::parse_text(" a ; b;;c ;", AttrType::ListOfStrings),
            Ok(AttrValue::ListOfStrings(vec![
                "a".into(),
                "b".into(),
                "c".into()
            ]))
        );
        assert_eq!(
            AttrValue::parse_text("", AttrType::ListOfStrings),
            Ok(AttrValue::ListOfStrings(Vec::new()))
        );
        assert_eq!(
            AttrValue::parse_text(" Pune ", AttrType::String),
            Ok(AttrValue::String(" Pune ".into()))
        );
    }

    #[test]
    fn rendered_text_parses_back_to_the_same_value() {
        let t = Timestamp::parse_rfc3339("2026-03-01T10:20:30.123Z").unwrap();
        let values = [
            (AttrValue::Number(12.0), "12"),
            (AttrValue::Number(-7.5), "-7.5"),
            (AttrValue::Number(0.1 + 0.2), "0.30000000000000004"),
            (AttrValue::Number(-0.0), "0"),
            (AttrValue::Number(1e21), "1e21"),
            (AttrValue::Number(1.5e-7), "1.5e-7"),
            (AttrValue::Number(123456789012.0), "123456789012"),
            (AttrValue::Bool(true), "true"),
            (AttrValue::Timestamp(t), "2026-03-01T10:20:30.123Z"),
            (
                AttrValue::ListOfStrings(vec!["a".into(), "b c".into()]),
                "a;b c",
            ),
            (AttrValue::String("x;y".into()), "x;y"),
        ];
        for (value, text) in values {
            assert_eq!(value.render_text(), text);
            let back = AttrValue::parse_text(text, value.attr_type()).unwrap();
            assert!(
                back == value || value == AttrValue::Number(-0.0),
                "{value:?}"
            );
        }
    }

    #[test]
    fn conversions_go_through_text_or_not_at_all() {
        let s = |t: &str| AttrValue::String(t.to_string());
        assert_eq!(
            AttrValue::Number(12.0).convert(AttrType::String),
            Some(s("12"))
        );
        assert_eq!(
            s("7.5").convert(AttrType::Number),
            Some(AttrValue::Number(7.5))
        );
        assert_eq!(s("abc").convert(AttrType::Number), None);
        assert_eq!(
            s("yes").convert(AttrType::Bool),
            Some(AttrValue::Bool(true))
        );
        assert_eq!(
            s("a;b").convert(AttrType::ListOfStrings),
            Some(AttrValue::ListOfStrings(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            AttrValue::ListOfStrings(vec!["a".into(), "b".into()]).convert(AttrType::String),
            Some(s("a;b"))
        );
        assert_eq!(
            AttrValue::Bool(false).convert(AttrType::Bool),
            Some(AttrValue::Bool(false))
        );
        assert_eq!(AttrValue::Number(1.0).convert(AttrType::Bool), None);
        assert_eq!(AttrValue::Bool(true).convert(AttrType::Number), None);
        assert_eq!(
            AttrValue::Timestamp(Timestamp(0)).convert(AttrType::Number),
            None
        );
        assert_eq!(
            AttrValue::ListOfStrings(vec!["1".into()]).convert(AttrType::Number),
            None
        );
    }

    #[test]
    fn schema_reports_conflicts() {
        let mut schema = Schema::default();
        schema.declare("age", AttrType::Number).unwrap();
        assert!(matches!(
            schema.declare("age", AttrType::String),
            Err(SchemaError::Conflict { .. })
        ));
        assert_eq!(schema.declare("age", AttrType::Number).unwrap(), AttrId(0));
    }

    #[test]
    fn segment_spec_events_deserialize() {
        let e: Event = serde_json::from_value(json!({
            "type": "track", "messageId": "m1", "userId": "u1",
            "timestamp": 1_700_000_000_000i64, "event": "Order Completed",
            "properties": {"revenue": 12.5}
        }))
        .unwrap();
        assert_eq!(e.track_name(), Some("Order Completed"));
        assert_eq!(e.customer_key(), Some("u1"));
        let nested = json!({"address": {"city": "Pune"}, "items": [{"price": 3}]});
        let map = nested.as_object().unwrap();
        assert_eq!(lookup_path(map, "address.city"), Some(&json!("Pune")));
        assert_eq!(lookup_path(map, "items.0.price"), Some(&json!(3)));
    }
}

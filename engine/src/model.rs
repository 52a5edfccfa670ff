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

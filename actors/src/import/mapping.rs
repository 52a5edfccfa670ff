//! Mapping a CSV file's columns to customer attributes: [`plan`] decides, once
//! per file, which column is the customer key (`id` or `email`), which
//! attribute every other column fills and with what type; [`coerce`] then
//! turns each row into attribute values, or into the problems that keep it
//! out.
//!
//! ```text
//! header + first rows ─plan─> Plan { columns: [ColumnPlan], key, upsert_by }
//! row ─coerce(plan)─> RowKey + {attribute: JSON value}  |  [RowProblem]
//! ```
//!
//! Headers are matched to well-known attributes by name (`E-mail Address`
//! becomes `email`, `Zip Code` `postal_code`); other columns become
//! attributes named after their header in snake case, unless the request
//! says to skip them. An explicit mapping in the request always wins.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use xeno_engine::model::{AttrType, AttrValue};

use super::csv::RowBuf;

/// The target that holds the customer id (the key, not an attribute).
pub const ID: &str = "id";
/// The target that holds the email (an attribute, and the key by email).
pub const EMAIL: &str = "email";
/// The longest attribute name, as the engine's schema allows.
const MAX_TARGET_BYTES: usize = 256;
const MAX_ID_BYTES: usize = 256;
/// RFC 5321's limit on an address's length.
const MAX_EMAIL_BYTES: usize = 254;
/// Values quoted in problem reasons are cut to this many characters.
const QUOTED_VALUE_CHARS: usize = 80;

/// What becomes of a column that neither the request nor the well-known
/// names map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmapped {
    /// An attribute named after the header in snake case.
    #[default]
    Attributes,
    Skip,
}

/// Which key finds the customer a row updates (or creates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsertBy {
    Id,
    Email,
}

impl fmt::Display for UpsertBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpsertBy::Id => ID,
            UpsertBy::Email => EMAIL,
        })
    }
}

/// What the user asked for; every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingRequest {
    /// CSV header -> target attribute (`id` and `email` are the keys); `None`
    /// skips the column. Overrides the automatic mapping.
    pub columns: HashMap<String, Option<String>>,
    /// What becomes of columns mapped neither here nor by their well-known name.
    pub unmapped: Unmapped,
    /// Target -> type, overriding the field's known type and inference.
    pub types: HashMap<String, AttrType>,
    /// The key rows are upserted by; `id` when a column maps to `id`, else
    /// `email`.
    pub upsert_by: Option<UpsertBy>,
}

/// Where one column goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnPlan {
    /// 0-based position in the header.
    pub index: usize,
    pub header: String,
    /// The attribute (or key) it fills; `None` when skipped.
    pub target: Option<String>,
    /// The type its values are read as (`string` for skipped columns).
    pub ty: AttrType,
    /// Mapped by name or by default rather than by the request.
    pub automatic: bool,
}

/// The columns holding the keys, as 0-based header positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyColumn {
    pub id: Option<usize>,
    pub email: Option<usize>,
}

/// How a file's rows become customers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// One per header column, in order.
    pub columns: Vec<ColumnPlan>,
    pub key: KeyColumn,
    pub upsert_by: UpsertBy,
}

/// Why the columns cannot be mapped; the user's to fix (the file or the
/// request), the import does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("column `{header}` appears twice (columns {first} and {second}); rename one")]
    DuplicateHeader {
        header: String,
        first: usize,
        second: usize,
    },
    #[error(
        "the mapping names `{column}`, which is not a column of the file; its columns are {available}"
    )]
    UnknownColumn { column: String, available: String },
    #[error(
        "columns `{first}` and `{second}` both map to `{target}`; map one of them elsewhere or skip it (null)"
    )]
    DuplicateTarget {
        target: String,
        first: String,
        second: String,
    },
    #[error("{}", computed_message(.header, .target, *.automatic))]
    ComputedTarget {
        header: String,
        target: String,
        automatic: bool,
    },
    #[error("column `{header}` maps to `{target}`; an attribute name must be 1 to 256 bytes")]
    InvalidTarget { header: String, target: String },
    #[error(
        "no column holds the customer id or email; map one, for example \"mapping\": {{\"Customer Number\": \"id\"}}"
    )]
    NoKey,
    #[error("upsert_by is `{0}` but no column maps to `{0}`")]
    KeyNotMapped(UpsertBy),
    #[error("`types` names `{0}`, which no column maps to")]
    UnknownTypeTarget(String),
    #[error("`{target}` is always text; it cannot be read as {requested}")]
    KeyType { target: String, requested: AttrType },
    #[error(
        "the field `{target}` is a {existing}; the import asks for {requested}; change the field's type first or drop the override"
    )]
    TypeConflict {
        target: String,
        existing: AttrType,
        requested: AttrType,
    },
}

fn computed_message(header: &str, target: &str, automatic: bool) -> String {
    let from_orders = matches!(
        target,
        "total_spend" | "order_count" | "last_order_at" | "first_order_at"
    );
    let instead = if target == "total_spend" {
        "lifetime_spend".to_string()
    } else {
        format!("imported_{target}")
    };
    let advice = if from_orders {
        format!(
            "`{target}` is computed from Order Completed events; import it as an attribute such as `{instead}`, or send orders"
        )
    } else {
        format!(
            "`{target}` is computed from the customer's events; import it as an attribute such as `{instead}`"
        )
    };
    if automatic {
        format!("column `{header}` would become `{target}`: {advice} (map the column in `mapping`)")
    } else {
        advice
    }
}

/// The key of the customer a row upserts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// The id, trimmed.
    Id(String),
    /// The email, trimmed and lowercased.
    Email(String),
}

/// Why (part of) a row cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowProblem {
    /// The header of the column at fault, when one is.
    pub column: Option<String>,
    pub reason: String,
}

/// Header names (normalised as by [`words`]) of well-known attributes.
const WELL_KNOWN: &[(&str, &str)] = &[
    ("id", ID),
    ("external id", ID),
    ("externalid", ID),
    ("customer id", ID),
    ("customerid", ID),
    ("user id", ID),
    ("userid", ID),
    ("uid", ID),
    ("contact id", ID),
    ("contactid", ID),
    ("email", EMAIL),
    ("e mail", EMAIL),
    ("email address", EMAIL),
    ("emailaddress", EMAIL),
    ("e mail address", EMAIL),
    ("mail", EMAIL),
    ("name", "name"),
    ("full name", "name"),
    ("fullname", "name"),
    ("customer name", "name"),
    ("contact name", "name"),
    ("first name", "first_name"),
    ("firstname", "first_name"),
    ("given name", "first_name"),
    ("last name", "last_name"),
    ("lastname", "last_name"),
    ("surname", "last_name"),
    ("family name", "last_name"),
    ("phone", "phone"),
    ("phone number", "phone"),
    ("phonenumber", "phone"),
    ("mobile", "phone"),
    ("mobile phone", "phone"),
    ("mobile number", "phone"),
    ("telephone", "phone"),
    ("tel", "phone"),
    ("cell", "phone"),
    ("cell phone", "phone"),
    ("city", "city"),
    ("town", "city"),
    ("country", "country"),
    ("state", "state"),
    ("region", "state"),
    ("province", "state"),
    ("zip", "postal_code"),
    ("zip code", "postal_code"),
    ("zipcode", "postal_code"),
    ("postal code", "postal_code"),
    ("postalcode", "postal_code"),
    ("postcode", "postal_code"),
    ("address", "address"),
    ("street", "address"),
    ("company", "company"),
    ("company name", "company"),
    ("organization", "company"),
    ("organisation", "company"),
    ("spend", "lifetime_spend"),
    ("total spend", "lifetime_spend"),
    ("lifetime spend", "lifetime_spend"),
    ("lifetime value", "lifetime_spend"),
    ("ltv", "lifetime_spend"),
    ("revenue", "lifetime_spend"),
    ("created at", "created_at"),
    ("signup date", "created_at"),
    ("signed up", "created_at"),
    ("joined", "created_at"),
    ("created", "created_at"),
    ("birthday", "birthday"),
    ("date of birth", "birthday"),
    ("dob", "birthday"),
    ("gender", "gender"),
    ("plan", "plan"),
    ("tier", "plan"),
];

/// The type of a well-known target, unless the request or the field says
/// otherwise: inferring would make a zip code column of `10001`s a number.
fn well_known_type(target: &str) -> Option<AttrType> {
    match target {
        "email" | "name" | "first_name" | "last_name" | "phone" | "city" | "country" | "state"
        | "postal_code" | "address" | "company" | "gender" | "plan" => Some(AttrType::String),
        "lifetime_spend" => Some(AttrType::Number),
        "created_at" | "birthday" => Some(AttrType::Timestamp),
        _ => None,
    }
}

/// A header's words, lowercased and separated by one space: anything but a
/// letter or digit separates words, and so does a lower-to-upper case change
/// when `split_case` (`customerID` is `customer id`).
fn words(header: &str, split_case: bool) -> String {
    let mut out = String::with_capacity(header.len());
    let mut gap = false;
    let mut after_lowercase = false;
    for c in header.chars() {
        if !c.is_alphanumeric() {
            gap = true;
            after_lowercase = false;
            continue;
        }
        if split_case && after_lowercase && c.is_uppercase() {
            gap = true;
        }
        if gap && !out.is_empty() {
            out.push(' ');
        }
        gap = false;
        out.extend(c.to_lowercase());
        after_lowercase = c.is_lowercase();
    }
    out
}

fn well_known_target(header: &str) -> Option<&'static str> {
    let find = |normalised: String| {
        WELL_KNOWN
            .iter()
            .find(|(name, _)| *name == normalised)
            .map(|&(_, target)| target)
    };
    // Unsplit too, for headers such as `DoB`.
    find(words(header, true)).or_else(|| find(words(header, false)))
}

/// The target of a column the request does not map.
fn automatic_target(header: &str, index: usize, unmapped: Unmapped) -> Option<String> {
    if let Some(target) = well_known_target(header) {
        return Some(target.to_string());
    }
    match unmapped {
        Unmapped::Skip => None,
        Unmapped::Attributes => {
            let snake = words(header, true).replace(' ', "_");
            Some(if snake.is_empty() {
                format!("column_{}", index + 1)
            } else {
                snake
            })
        }
    }
}

/// Plans the mapping of a file's columns.
///
/// - `header`: the file's column names (trimmed);
/// - `known`: the types of the fields the organization has;
/// - `computed`: the names of its computed traits, which an import cannot set;
/// - `sample`: the first rows (about 1000), to infer the types of new fields.
///
/// A column's type is, first that applies: the request's `types`, the known
/// field's type, the type of a well-known target (`lifetime_spend` is a
/// number, `created_at` a timestamp, `phone` a string...), else inferred from
/// the sample's non-empty values: a number when all are numbers and none has
/// a leading `+` or a leading zero before another digit (phone numbers, zip
/// codes and account numbers stay text), a bool when all are true/false/yes/no,
/// a timestamp when all are dates, else a string. `id` and `email` are always
/// strings.
pub fn plan(
    header: &[String],
    request: &MappingRequest,
    known: &HashMap<String, AttrType>,
    computed: &[String],
    sample: &[Vec<String>],
) -> Result<Plan, PlanError> {
    // Columns without a name cannot be told apart by name anyway; they are
    // `column_N` and exempt from the duplicate check (Excel pads with them).
    let mut positions: HashMap<&str, usize> = HashMap::with_capacity(header.len());
    for (index, name) in header.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        if let Some(&first) = positions.get(name.as_str()) {
            return Err(PlanError::DuplicateHeader {
                header: name.clone(),
                first: first + 1,
                second: index + 1,
            });
        }
        positions.insert(name, index);
    }

    let mut requested: Vec<(&str, &Option<String>)> = request
        .columns
        .iter()
        .map(|(name, target)| (name.trim(), target))
        .collect();
    requested.sort_by_key(|&(name, _)| name);
    for &(name, _) in &requested {
        if !positions.contains_key(name) {
            return Err(PlanError::UnknownColumn {
                column: name.to_string(),
                available: list_names(header),
            });
        }
    }
    let explicit: HashMap<&str, &Option<String>> = requested.into_iter().collect();

    let mut columns = Vec::with_capacity(header.len());
    for (index, name) in header.iter().enumerate() {
        let (target, automatic) = match explicit.get(name.as_str()) {
            Some(target) => (target.as_deref().map(|t| t.trim().to_string()), false),
            None => (automatic_target(name, index, request.unmapped), true),
        };
        if let Some(target) = &target {
            if target.is_empty() || target.len() > MAX_TARGET_BYTES {
                return Err(PlanError::InvalidTarget {
                    header: name.clone(),
                    target: target.clone(),
                });
            }
            if computed.iter().any(|c| c == target) {
                return Err(PlanError::ComputedTarget {
                    header: name.clone(),
                    target: target.clone(),
                    automatic,
                });
            }
        }
        columns.push(ColumnPlan {
            index,
            header: name.clone(),
            target,
            ty: AttrType::String,
            automatic,
        });
    }

    let mut by_target: HashMap<&str, &str> = HashMap::with_capacity(columns.len());
    for column in &columns {
        let Some(target) = column.target.as_deref() else {
            continue;
        };
        if let Some(first) = by_target.insert(target, &column.header) {
            return Err(PlanError::DuplicateTarget {
                target: target.to_string(),
                first: first.to_string(),
                second: column.header.clone(),
            });
        }
    }

    let key_column = |key: &str| {
        columns
            .iter()
            .find(|c| c.target.as_deref() == Some(key))
            .map(|c| c.index)
    };
    let key = KeyColumn {
        id: key_column(ID),
        email: key_column(EMAIL),
    };
    let upsert_by = match request.upsert_by {
        Some(UpsertBy::Id) if key.id.is_none() => {
            return Err(PlanError::KeyNotMapped(UpsertBy::Id));
        }
        Some(UpsertBy::Email) if key.email.is_none() => {
            return Err(PlanError::KeyNotMapped(UpsertBy::Email));
        }
        Some(by) => by,
        None if key.id.is_some() => UpsertBy::Id,
        None if key.email.is_some() => UpsertBy::Email,
        None => return Err(PlanError::NoKey),
    };

    let mut overrides: Vec<(&String, &AttrType)> = request.types.iter().collect();
    overrides.sort_by_key(|&(target, _)| target);
    for (target, &requested) in overrides {
        if !by_target.contains_key(target.as_str()) {
            return Err(PlanError::UnknownTypeTarget(target.clone()));
        }
        if (target == ID || target == EMAIL) && requested != AttrType::String {
            return Err(PlanError::KeyType {
                target: target.clone(),
                requested,
            });
        }
        if let Some(&existing) = known.get(target)
            && existing != requested
        {
            return Err(PlanError::TypeConflict {
                target: target.clone(),
                existing,
                requested,
            });
        }
    }
    for column in &mut columns {
        let Some(target) = column.target.as_deref() else {
            continue;
        };
        column.ty = if target == ID || target == EMAIL {
            AttrType::String
        } else if let Some(&ty) = request.types.get(target) {
            ty
        } else if let Some(&ty) = known.get(target) {
            ty
        } else if let Some(ty) = well_known_type(target) {
            ty
        } else {
            infer_type(sample, column.index)
        };
    }

    Ok(Plan {
        columns,
        key,
        upsert_by,
    })
}

/// `a`, `b`, ... for a message; the first 20.
fn list_names(header: &[String]) -> String {
    let mut names: Vec<String> = header.iter().take(20).map(|h| format!("`{h}`")).collect();
    if header.len() > 20 {
        names.push(format!("and {} more", header.len() - 20));
    }
    names.join(", ")
}

fn infer_type(sample: &[Vec<String>], index: usize) -> AttrType {
    let values = || {
        sample
            .iter()
            .filter_map(|row| row.get(index))
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    if values().next().is_none() {
        AttrType::String
    } else if values().all(looks_like_number) {
        AttrType::Number
    } else if values().all(|v| {
        ["true", "false", "yes", "no"]
            .iter()
            .any(|word| v.eq_ignore_ascii_case(word))
    }) {
        AttrType::Bool
    } else if values().all(|v| AttrValue::parse_text(v, AttrType::Timestamp).is_ok()) {
        AttrType::Timestamp
    } else {
        AttrType::String
    }
}

/// A number that is a quantity, not an identifier written in digits.
fn looks_like_number(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value).as_bytes();
    let leading_zero = digits.len() > 1 && digits[0] == b'0' && digits[1].is_ascii_digit();
    !value.starts_with('+')
        && !leading_zero
        && AttrValue::parse_text(value, AttrType::Number).is_ok()
}

/// One `@`, something before it, a domain of at least two non-empty labels
/// after it, no whitespace. Deliverability is the email provider's to judge.
fn is_email(text: &str) -> bool {
    if text.len() > MAX_EMAIL_BYTES || text.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

/// The row's id, trimmed, when the plan has an id column and the row's cell
/// is not empty: under [`UpsertBy::Email`], the id to give a customer the file
/// creates.
pub fn row_id<'a>(plan: &Plan, row: &'a RowBuf) -> Option<&'a str> {
    let id = row.get(plan.key.id?)?.trim();
    (!id.is_empty() && id.len() <= MAX_ID_BYTES).then_some(id)
}

/// Turns a row into the key of its customer and its attribute values, written
/// into `out` (the values of the plan's targets are replaced, those of empty
/// cells removed, other keys left alone; on `Err` its content is unspecified).
///
/// Cells are trimmed; an empty cell leaves the attribute as it is. A value is
/// read as its column's type ([`AttrValue::parse_text`]) and written as JSON:
/// numbers as numbers, timestamps as RFC 3339 strings. `email` must look like
/// an address and is stored lowercased; the id is at most 256 bytes. The key
/// is the id or the email per [`Plan::upsert_by`].
///
/// A row whose field count differs from the header's (`header_len`) has that
/// one problem; otherwise all of a row's problems are answered together.
pub fn coerce(
    plan: &Plan,
    row: &RowBuf,
    header_len: usize,
    out: &mut Map<String, Json>,
) -> Result<RowKey, Vec<RowProblem>> {
    if row.len() != header_len {
        return Err(vec![RowProblem {
            column: None,
            reason: format!(
                "the row has {} fields; the header has {header_len}",
                row.len()
            ),
        }]);
    }
    let mut problems = Vec::new();
    let mut id = None;
    let mut email = None;
    // The key's own problem (too long, not an address) replaces "no id".
    let mut key_reported = false;
    for column in &plan.columns {
        let Some(target) = column.target.as_deref() else {
            continue;
        };
        let text = row.get(column.index).unwrap_or_default().trim();
        let problem = |reason: String| RowProblem {
            column: Some(column.header.clone()),
            reason,
        };
        if Some(column.index) == plan.key.id {
            if text.len() > MAX_ID_BYTES {
                problems.push(problem(format!(
                    "the id is {} bytes; at most {MAX_ID_BYTES}",
                    text.len()
                )));
                key_reported |= plan.upsert_by == UpsertBy::Id;
            } else if !text.is_empty() {
                id = Some(text);
            }
            continue;
        }
        if text.is_empty() {
            out.remove(target);
            continue;
        }
        if Some(column.index) == plan.key.email {
            if is_email(text) {
                let lowercase = text.to_lowercase();
                put_str(out, target, &lowercase);
                email = Some(lowercase);
            } else {
                out.remove(target);
                problems.push(problem(format!(
                    "`{}` is not an email address",
                    shorten(text)
                )));
                key_reported |= plan.upsert_by == UpsertBy::Email;
            }
            continue;
        }
        match column.ty {
            // Text needs no parsing; writing into the previous row's string
            // saves an allocation per cell.
            AttrType::String => put_str(out, target, text),
            ty => match AttrValue::parse_text(text, ty) {
                Ok(value) => put(out, target, value.to_json()),
                Err(reason) => {
                    out.remove(target);
                    // The engine quotes the whole value; a report line need
                    // not carry a megabyte.
                    problems.push(problem(reason.replacen(text, &shorten(text), 1)));
                }
            },
        }
    }
    let key = match plan.upsert_by {
        UpsertBy::Id => id.map(|id| RowKey::Id(id.to_string())),
        UpsertBy::Email => email.map(RowKey::Email),
    };
    match key {
        Some(key) if problems.is_empty() => Ok(key),
        _ => {
            if key.is_none() && !key_reported {
                let (index, reason) = match plan.upsert_by {
                    UpsertBy::Id => (plan.key.id, "no id"),
                    UpsertBy::Email => (plan.key.email, "no email"),
                };
                problems.push(RowProblem {
                    column: index
                        .and_then(|i| plan.columns.get(i))
                        .map(|c| c.header.clone()),
                    reason: reason.to_string(),
                });
            }
            Err(problems)
        }
    }
}

fn put(out: &mut Map<String, Json>, key: &str, value: Json) {
    match out.get_mut(key) {
        Some(slot) => *slot = value,
        None => {
            out.insert(key.to_string(), value);
        }
    }
}

fn put_str(out: &mut Map<String, Json>, key: &str, text: &str) {
    match out.get_mut(key) {
        Some(Json::String(slot)) => {
            slot.clear();
            slot.push_str(text);
        }
        _ => put(out, key, Json::String(text.to_string())),
    }
}

/// `text`, cut to [`QUOTED_VALUE_CHARS`] characters with an ellipsis.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTED_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn header(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn sample(rows: &[&[&str]]) -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| r.iter().map(|v| v.to_string()).collect())
            .collect()
    }

    fn plan_of(names: &[&str], request: &MappingRequest) -> Result<Plan, PlanError> {
        plan(&header(names), request, &HashMap::new(), &computed(), &[])
    }

    fn computed() -> Vec<String> {
        [
            "total_spend",
            "order_count",
            "last_order_at",
            "first_order_at",
            "first_seen",
            "last_seen",
        ]
        .map(String::from)
        .to_vec()
    }

    fn targets(plan: &Plan) -> Vec<Option<&str>> {
        plan.columns.iter().map(|c| c.target.as_deref()).collect()
    }

    #[test]
    fn maps_typical_crm_headers() {
        let names = [
            "Customer ID",
            "E-mail Address",
            "First Name",
            "lastName",
            "Mobile",
            "Zip Code",
            "Lifetime Value",
            "Signup Date",
            "DoB",
            "Company Name",
            "Loyalty Points (2024)",
            "",
            "utm_source",
        ];
        let plan = plan_of(&names, &MappingRequest::default()).unwrap();
        assert_eq!(
            targets(&plan),
            [
                Some("id"),
                Some("email"),
                Some("first_name"),
                Some("last_name"),
                Some("phone"),
                Some("postal_code"),
                Some("lifetime_spend"),
                Some("created_at"),
                Some("birthday"),
                Some("company"),
                Some("loyalty_points_2024"),
                Some("column_12"),
                Some("utm_source"),
            ]
        );
        assert!(plan.columns.iter().all(|c| c.automatic));
        assert_eq!(
            plan.key,
            KeyColumn {
                id: Some(0),
                email: Some(1)
            }
        );
        assert_eq!(plan.upsert_by, UpsertBy::Id);
        let types: Vec<AttrType> = plan.columns.iter().map(|c| c.ty).collect();
        use AttrType::*;
        assert_eq!(
            types,
            [
                String, String, String, String, String, String, Number, Timestamp, Timestamp,
                String, String, String, String
            ]
        );
    }

    #[test]
    fn explicit_mapping_overrides_and_skips() {
        let request = MappingRequest {
            columns: HashMap::from([
                ("Ref".to_string(), Some("id".to_string())),
                ("Email".to_string(), None),
                ("Points".to_string(), Some(" loyalty ".to_string())),
            ]),
            unmapped: Unmapped::Skip,
            ..MappingRequest::default()
        };
        let plan = plan_of(&["Ref", "Email", "Points", "Notes", "City"], &request).unwrap();
        assert_eq!(
            targets(&plan),
            [Some("id"), None, Some("loyalty"), None, Some("city")]
        );
        let automatic: Vec<bool> = plan.columns.iter().map(|c| c.automatic).collect();
        assert_eq!(automatic, [false, false, false, true, true]);
        assert_eq!(
            plan.key,
            KeyColumn {
                id: Some(0),
                email: None
            }
        );
    }

    #[test]
    fn a_mapping_naming_no_column_is_refused() {
        let request = MappingRequest {
            columns: HashMap::from([("Emial".to_string(), Some("email".to_string()))]),
            ..MappingRequest::default()
        };
        assert_eq!(
            plan_of(&["id", "email"], &request).unwrap_err().to_string(),
            "the mapping names `Emial`, which is not a column of the file; its columns are `id`, `email`"
        );
    }

    #[test]
    fn duplicate_headers_and_targets_are_refused() {
        let err = plan_of(
            &["id", "email", "name", "x", "email"],
            &MappingRequest::default(),
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "column `email` appears twice (columns 2 and 5); rename one"
        );
        let err = plan_of(&["id", "Phone", "Mobile"], &MappingRequest::default());
        assert_eq!(
            err.unwrap_err().to_string(),
            "columns `Phone` and `Mobile` both map to `phone`; map one of them elsewhere or skip it (null)"
        );
        // Unnamed columns are not duplicates of each other.
        let plan = plan_of(&["id", "", ""], &MappingRequest::default()).unwrap();
        assert_eq!(
            targets(&plan),
            [Some("id"), Some("column_2"), Some("column_3")]
        );
    }

    #[test]
    fn computed_traits_cannot_be_imported() {
        let request = MappingRequest {
            columns: HashMap::from([("Spent".to_string(), Some("total_spend".to_string()))]),
            ..MappingRequest::default()
        };
        assert_eq!(
            plan_of(&["id", "Spent"], &request).unwrap_err().to_string(),
            "`total_spend` is computed from Order Completed events; import it as an attribute such as `lifetime_spend`, or send orders"
        );
        // A header that would become a computed trait by itself is refused too.
        assert_eq!(
            plan_of(&["id", "Order Count"], &MappingRequest::default())
                .unwrap_err()
                .to_string(),
            "column `Order Count` would become `order_count`: `order_count` is computed from Order Completed events; import it as an attribute such as `imported_order_count`, or send orders (map the column in `mapping`)"
        );
        // `Total Spend` is a well-known name for the importable attribute.
        let plan = plan_of(&["id", "Total Spend"], &MappingRequest::default()).unwrap();
        assert_eq!(targets(&plan), [Some("id"), Some("lifetime_spend")]);
    }

    #[test]
    fn a_key_column_is_required() {
        assert_eq!(
            plan_of(&["name", "city"], &MappingRequest::default()),
            Err(PlanError::NoKey)
        );
        let plan = plan_of(&["name", "Email"], &MappingRequest::default()).unwrap();
        assert_eq!(plan.upsert_by, UpsertBy::Email);
        let by_id = MappingRequest {
            upsert_by: Some(UpsertBy::Id),
            ..MappingRequest::default()
        };
        assert_eq!(
            plan_of(&["name", "Email"], &by_id).unwrap_err().to_string(),
            "upsert_by is `id` but no column maps to `id`"
        );
        let by_email = MappingRequest {
            upsert_by: Some(UpsertBy::Email),
            ..MappingRequest::default()
        };
        let plan = plan_of(&["id", "Email"], &by_email).unwrap();
        assert_eq!(plan.upsert_by, UpsertBy::Email);
    }

    #[test]
    fn invalid_targets_are_refused() {
        for target in ["", "   ", &"x".repeat(257)] {
            let request = MappingRequest {
                columns: HashMap::from([("b".to_string(), Some(target.to_string()))]),
                ..MappingRequest::default()
            };
            assert!(matches!(
                plan_of(&["id", "b"], &request),
                Err(PlanError::InvalidTarget { .. })
            ));
        }
    }

    #[test]
    fn infers_types_from_the_sample() {
        let names = header(&[
            "id",
            "Branch",
            "Credit",
            "Fax",
            "VIP",
            "Last Visit",
            "Mixed",
            "Empty",
            "Count",
        ]);
        let rows = sample(&[
            &[
                "1",
                "02134",
                "5000.50",
                "+15551234",
                "yes",
                "2024-03-05",
                "12",
                "",
                "3",
            ],
            &[
                "2",
                "10001",
                "12",
                "+15559876",
                "No",
                "2024-03-06 10:00:00",
                "n/a",
                " ",
                "-0",
            ],
            &["3", "", "", "", "TRUE", "", "", "", "0"],
        ]);
        let plan = plan(
            &names,
            &MappingRequest::default(),
            &HashMap::new(),
            &computed(),
            &rows,
        )
        .unwrap();
        let types: Vec<AttrType> = plan.columns.iter().map(|c| c.ty).collect();
        use AttrType::*;
        assert_eq!(
            types,
            [
                String, String, Number, String, Bool, Timestamp, String, String, Number
            ]
        );
    }

    #[test]
    fn type_overrides_known_fields_and_conflicts() {
        let names = header(&["id", "plan", "score", "tier_since"]);
        let rows = sample(&[&["1", "pro", "7", "2024-01-01"]]);
        let known = HashMap::from([("score".to_string(), AttrType::String)]);
        let request = MappingRequest {
            columns: HashMap::from([("plan".to_string(), Some("plan_name".to_string()))]),
            types: HashMap::from([("tier_since".to_string(), AttrType::String)]),
            ..MappingRequest::default()
        };
        let plan = plan(&names, &request, &known, &[], &rows).unwrap();
        let types: Vec<AttrType> = plan.columns.iter().map(|c| c.ty).collect();
        // `score` looks like a number but the field is a string already.
        assert_eq!(
            types,
            [
                AttrType::String,
                AttrType::String,
                AttrType::String,
                AttrType::String
            ]
        );

        let conflicting = MappingRequest {
            types: HashMap::from([("score".to_string(), AttrType::Number)]),
            ..MappingRequest::default()
        };
        assert_eq!(
            super::plan(&names, &conflicting, &known, &[], &rows)
                .unwrap_err()
                .to_string(),
            "the field `score` is a string; the import asks for number; change the field's type first or drop the override"
        );
        let unknown = MappingRequest {
            types: HashMap::from([("nope".to_string(), AttrType::Number)]),
            ..MappingRequest::default()
        };
        assert_eq!(
            super::plan(&names, &unknown, &known, &[], &rows),
            Err(PlanError::UnknownTypeTarget("nope".into()))
        );
        let key = MappingRequest {
            types: HashMap::from([("id".to_string(), AttrType::Number)]),
            ..MappingRequest::default()
        };
        assert!(matches!(
            super::plan(&names, &key, &known, &[], &rows),
            Err(PlanError::KeyType { .. })
        ));
    }

    #[test]
    fn requests_deserialize_with_defaults_and_refuse_unknown_keys() {
        let request: MappingRequest = serde_json::from_value(json!({
            "columns": {"Ref": "id", "Junk": null},
            "types": {"score": "number"},
            "upsert_by": "email",
            "unmapped": "skip"
        }))
        .unwrap();
        assert_eq!(request.columns["Junk"], None);
        assert_eq!(request.unmapped, Unmapped::Skip);
        assert_eq!(request.upsert_by, Some(UpsertBy::Email));
        let empty: MappingRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty.unmapped, Unmapped::Attributes);
        assert!(serde_json::from_value::<MappingRequest>(json!({"colums": {}})).is_err());
    }

    fn crm_plan(upsert_by: Option<UpsertBy>) -> (Vec<String>, Plan) {
        let names = header(&["id", "Email", "Name", "Spend", "Joined", "VIP", "Zip"]);
        let rows = sample(&[&["1", "a@x.io", "Ann", "10", "2024-01-01", "yes", "02134"]]);
        let request = MappingRequest {
            upsert_by,
            ..MappingRequest::default()
        };
        let plan = plan(&names, &request, &HashMap::new(), &computed(), &rows).unwrap();
        (names, plan)
    }

    #[test]
    fn coerces_values_to_their_types() {
        let (names, plan) = crm_plan(None);
        let row = RowBuf::from_fields(
            1,
            2,
            &[
                " c-1 ",
                " Ann@Example.COM ",
                " Ann Lee ",
                "5000.50",
                "2024-03-05",
                "Yes",
                "02134",
            ],
        );
        let mut out = Map::new();
        let key = coerce(&plan, &row, names.len(), &mut out).unwrap();
        assert_eq!(key, RowKey::Id("c-1".into()));
        assert_eq!(
            Json::Object(out),
            json!({
                "email": "ann@example.com",
                "name": "Ann Lee",
                "lifetime_spend": 5000.5,
                "created_at": "2024-03-05T00:00:00Z",
                "vip": true,
                "postal_code": "02134",
            })
        );
    }

    #[test]
    fn empty_cells_are_left_out_and_stale_values_removed() {
        let (names, plan) = crm_plan(None);
        let mut out = Map::new();
        let full = RowBuf::from_fields(1, 2, &["1", "a@x.io", "Ann", "1", "2024-01-01", "no", "1"]);
        coerce(&plan, &full, names.len(), &mut out).unwrap();
        let sparse = RowBuf::from_fields(2, 3, &["2", "", "Bob", "", "  ", "", ""]);
        coerce(&plan, &sparse, names.len(), &mut out).unwrap();
        assert_eq!(Json::Object(out), json!({"name": "Bob"}));
    }

    #[test]
    fn upserting_by_email_keys_rows_by_the_lowercased_address() {
        let (names, plan) = crm_plan(Some(UpsertBy::Email));
        let row = RowBuf::from_fields(1, 2, &["77", "Bo@X.io", "", "", "", "", ""]);
        let mut out = Map::new();
        assert_eq!(
            coerce(&plan, &row, names.len(), &mut out),
            Ok(RowKey::Email("bo@x.io".into()))
        );
        assert_eq!(row_id(&plan, &row), Some("77"));
        let no_email = RowBuf::from_fields(2, 3, &["78", "", "Al", "", "", "", ""]);
        assert_eq!(
            coerce(&plan, &no_email, names.len(), &mut out),
            Err(vec![RowProblem {
                column: Some("Email".into()),
                reason: "no email".into()
            }])
        );
    }

    #[test]
    fn every_problem_of_a_row_is_reported_together() {
        let (names, plan) = crm_plan(None);
        let row = RowBuf::from_fields(1, 2, &["", "foo", "Ann", "12x", "yesterday", "maybe", ""]);
        let problems = coerce(&plan, &row, names.len(), &mut Map::new()).unwrap_err();
        let reasons: Vec<(Option<&str>, &str)> = problems
            .iter()
            .map(|p| (p.column.as_deref(), p.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (Some("Email"), "`foo` is not an email address"),
                (Some("Spend"), "`12x` is not a number"),
                (
                    Some("Joined"),
                    "`yesterday` is not a date or timestamp (RFC 3339 or YYYY-MM-DD)"
                ),
                (
                    Some("VIP"),
                    "`maybe` is not a boolean (true/false, yes/no, y/n or 1/0)"
                ),
                (Some("id"), "no id"),
            ]
        );
    }

    #[test]
    fn long_values_are_cut_in_reasons_and_long_ids_refused() {
        let (names, plan) = crm_plan(None);
        let long = "9".repeat(300) + "x";
        let row = RowBuf::from_fields(1, 2, &[&"i".repeat(257), "", "", &long, "", "", ""]);
        let problems = coerce(&plan, &row, names.len(), &mut Map::new()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].reason, "the id is 257 bytes; at most 256");
        assert_eq!(
            problems[1].reason,
            format!("`{}…` is not a number", "9".repeat(80))
        );
    }

    #[test]
    fn a_ragged_row_has_one_problem() {
        let (names, plan) = crm_plan(None);
        let row = RowBuf::from_fields(4, 5, &["1", "a@x.io", "Ann"]);
        assert_eq!(
            coerce(&plan, &row, names.len(), &mut Map::new()),
            Err(vec![RowProblem {
                column: None,
                reason: "the row has 3 fields; the header has 7".into()
            }])
        );
    }

    #[test]
    fn validates_email_addresses() {
        for good in [
            "a@x.io",
            "first.last+tag@mail.example.co.uk",
            "ünï@exämple.de",
        ] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "foo", "@x.io", "a@x", "a@x.", "a@.x.io", "a@x..io", "a@b@x.io", "a b@x.io", "a@x.io\t",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}

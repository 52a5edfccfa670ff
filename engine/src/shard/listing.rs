//! Listing customers: filtered, searched, sorted and paged by keyset.
//!
//! A page is the first `limit` customers strictly after a cursor in one total
//! order (the sort value, then the external id), so that pages never skip or
//! repeat a customer while others are written between requests, and so that
//! the runtime can merge the pages of several shards with
//! [`ListPosition::cmp_in`]. A page costs one pass over the matching rows and a
//! heap of `limit` entries, never a sort of every customer.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::model::{AttrType, AttrValue};
use crate::ports::EventHistory;
use crate::rule::Rule;
use crate::rule::compile::{FieldRef, Resolver};
use crate::table::{CodeColumn, Column, Dictionary, MISSING_CODE, MISSING_TIME};
use crate::time::Timestamp;

use super::{SegmentError, Shard, State};

/// Attributes a search looks in besides the external id, and whether each of
/// their words counts (a name's) or only the whole value (an email).
const SEARCHED: [(&str, bool); 4] = [
    ("email", false),
    ("name", true),
    ("first_name", true),
    ("last_name", true),
];

/// Which customers [`Shard::query_customers`] lists, in which order.
#[derive(Debug, Clone, Copy, Default)]
pub struct CustomerQuery<'a> {
    /// Only customers matching the rule at the shard's `now`.
    pub filter: Option<&'a Rule>,
    /// Only customers whose external id, `email`, `name`, `first_name` or
    /// `last_name` starts with this text, ignoring case; for the three names
    /// any word of the value may match (`lov` finds "Ada Lovelace"). Blank
    /// text matches everyone.
    pub search: Option<&'a str>,
    /// An attribute or computed trait to order by; `None` orders by external id.
    pub sort: Option<&'a str>,
    /// Largest first (customers with no value still come last); with no
    /// `sort`, external ids in reverse.
    pub descending: bool,
    /// Start strictly after this position (the last one of the previous page).
    pub after: Option<&'a ListPosition>,
    /// At most this many customers.
    pub limit: usize,
}

/// A customer's place in a listing's order: the cursor of keyset paging.
///
/// `value` is the sort key: the sort field's value (`None` when the customer
/// has none), or the external id as a string when the listing is by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListPosition {
    pub value: Option<AttrValue>,
    pub id: String,
}

/// One customer of a page.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedCustomer {
    /// The customer's dense id in this shard.
    pub row: u32,
    pub position: ListPosition,
}

impl ListPosition {
    /// The order of listings: by `value`, ascending or `descending`, customers
    /// with no value last in both directions, ties by external id ascending.
    /// Strings and lists compare by bytes (`"Zed" < "ada"`), numbers and
    /// times numerically, `false < true`.
    ///
    /// ```text
    ///   ascending:   (1, b) (2, a) (2, c) (none, a) (none, d)
    ///   descending:  (2, a) (2, c) (1, b) (none, a) (none, d)
    /// ```
    ///
    /// Positions of one listing hold values of one type; values of different
    /// types (a cursor from another listing) still compare, by type.
    pub fn cmp_in(&self, other: &ListPosition, descending: bool) -> Ordering {
        Key::of(self).cmp_in(&Key::of(other), descending)
    }
}

/// A position borrowed from the shard's columns: comparing candidates costs no
/// allocation, only the customers of the page are copied out.
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    value: Option<ValueRef<'a>>,
    id: &'a str,
}

#[derive(Debug, Clone, Copy)]
enum ValueRef<'a> {
    String(&'a str),
    Number(f64),
    Bool(bool),
    Timestamp(i64),
    List(ListRef<'a>),
}

#[derive(Debug, Clone, Copy)]
enum ListRef<'a> {
    Codes(&'a [u32], &'a Dictionary),
    Owned(&'a [String]),
}

impl<'a> ListRef<'a> {
    fn len(&self) -> usize {
        match self {
            ListRef::Codes(codes, _) => codes.len(),
            ListRef::Owned(items) => items.len(),
        }
    }

    fn get(&self, i: usize) -> &'a str {
        match self {
            ListRef::Codes(codes, dict) => dict.get(codes[i]),
            ListRef::Owned(items) => &items[i],
        }
    }

    fn cmp(&self, other: &ListRef<'_>) -> Ordering {
        (0..self.len().min(other.len()))
            .map(|i| self.get(i).cmp(other.get(i)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| self.len().cmp(&other.len()))
    }
}

impl<'a> ValueRef<'a> {
    fn of(value: &'a AttrValue) -> ValueRef<'a> {
        match value {
            AttrValue::String(s) => ValueRef::String(s),
            AttrValue::Number(x) => ValueRef::Number(*x),
            AttrValue::Bool(b) => ValueRef::Bool(*b),
            AttrValue::Timestamp(t) => ValueRef::Timestamp(t.0),
            AttrValue::ListOfStrings(items) => ValueRef::List(ListRef::Owned(items)),
        }
    }

    /// Row `row`'s value in `column`, `None` when missing.
    fn at(column: &'a Column, row: u32) -> Option<ValueRef<'a>> {
        let r = row as usize;
        match column {
            Column::Number(v) => Some(v.get(r)).filter(|x| !x.is_nan()).map(ValueRef::Number),
            Column::Bool(v) => match v[r] {
                0 => Some(ValueRef::Bool(false)),
                1 => Some(ValueRef::Bool(true)),
                _ => None,
            },
            Column::String { codes, dict } => Some(codes.get(r))
                .filter(|c| *c != MISSING_CODE)
                .map(|c| ValueRef::String(dict.get(c))),
            Column::Timestamp(v) => Some(v[r])
                .filter(|t| *t != MISSING_TIME)
                .map(ValueRef::Timestamp),
            Column::ListOfStrings { lists, dict } => lists[r]
                .as_deref()
                .map(|codes| ValueRef::List(ListRef::Codes(codes, dict))),
        }
    }

    fn to_value(self) -> AttrValue {
        match self {
            ValueRef::String(s) => AttrValue::String(s.to_string()),
            ValueRef::Number(x) => AttrValue::Number(x),
            ValueRef::Bool(b) => AttrValue::Bool(b),
            ValueRef::Timestamp(t) => AttrValue::Timestamp(Timestamp(t)),
            ValueRef::List(list) => {
                AttrValue::ListOfStrings((0..list.len()).map(|i| list.get(i).to_string()).collect())
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            ValueRef::String(_) => 0,
            ValueRef::Number(_) => 1,
            ValueRef::Bool(_) => 2,
            ValueRef::Timestamp(_) => 3,
            ValueRef::List(_) => 4,
        }
    }

    fn cmp(&self, other: &ValueRef<'_>) -> Ordering {
        match (self, other) {
            (ValueRef::String(a), ValueRef::String(b)) => a.cmp(b),
            // Columns never hold NaN (it is their missing value).
            (ValueRef::Number(a), ValueRef::Number(b)) => a.total_cmp(b),
            (ValueRef::Bool(a), ValueRef::Bool(b)) => a.cmp(b),
            (ValueRef::Timestamp(a), ValueRef::Timestamp(b)) => a.cmp(b),
            (ValueRef::List(a), ValueRef::List(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl<'a> Key<'a> {
    fn of(position: &'a ListPosition) -> Key<'a> {
        Key {
            value: position.value.as_ref().map(ValueRef::of),
            id: &position.id,
        }
    }

    fn cmp_in(&self, other: &Key<'_>, descending: bool) -> Ordering {
        let by_value = match (&self.value, &other.value) {
            (Some(a), Some(b)) if descending => b.cmp(a),
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_value.then_with(|| self.id.cmp(other.id))
    }

    fn to_position(self) -> ListPosition {
        ListPosition {
            value: self.value.map(ValueRef::to_value),
            id: self.id.to_string(),
        }
    }
}

/// A heap entry, ordered as the listing is: the heap's top is the last of the
/// customers kept so far.
struct Entry<'a> {
    key: Key<'a>,
    row: u32,
    descending: bool,
}

impl Ord for Entry<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp_in(&other.key, self.descending)
    }
}

impl PartialOrd for Entry<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Entry<'_> {}

/// Whether `text` starts with `needle`, ignoring case; `needle` is already
/// lowercased char by char (as `char::to_lowercase` does, which `str::to_lowercase`
/// does not quite: it spells a final sigma differently).
fn starts_with_lowercase(text: &str, needle: &str) -> bool {
    let mut text = text.chars().flat_map(char::to_lowercase);
    needle.chars().all(|n| text.next() == Some(n))
}

/// A search, decided once per dictionary entry of each searched column rather
/// than once per row.
struct Search<'a> {
    needle: String,
    columns: Vec<(&'a CodeColumn, Vec<bool>)>,
}

impl<'a> Search<'a> {
    fn new(text: &str, state: &'a State) -> Search<'a> {
        let needle: String = text.chars().flat_map(char::to_lowercase).collect();
        let mut columns = Vec::new();
        for (field, by_word) in SEARCHED {
            let Some((id, def)) = state.schema.get(field) else {
                continue;
            };
            let Column::String { codes, dict } = &state.attrs[id.0 as usize].column else {
                continue;
            };
            debug_assert_eq!(def.ty, AttrType::String);
            let matching = dict
                .iter()
                .map(|(_, s)| {
                    starts_with_lowercase(s, &needle)
                        || (by_word
                            && s.split_whitespace()
                                .any(|word| starts_with_lowercase(word, &needle)))
                })
                .collect();
            columns.push((codes, matching));
        }
        Search { needle, columns }
    }

    fn matches(&self, external_id: &str, row: u32) -> bool {
        starts_with_lowercase(external_id, &self.needle)
            || self.columns.iter().any(|(codes, matching)| {
                let code = codes.get(row as usize);
                code != MISSING_CODE && matching[code as usize]
            })
    }
}

impl Shard {
    /// One page of customers: those matching `q.filter` and `q.search`, in the
    /// order of [`ListPosition::cmp_in`] by `q.sort`, the first `q.limit`
    /// strictly after `q.after`. Removed customers never appear.
    ///
    /// The filter compiles as [`Self::preview`]'s rule does (`performed`
    /// conditions no segment keeps are counted from `history`). An unknown
    /// sort field is [`SegmentError::UnknownSortField`].
    ///
    /// To page through every customer, pass the last position of each page
    /// as the next `after` until a page comes back short.
    pub fn query_customers(
        &self,
        q: &CustomerQuery<'_>,
        history: &dyn EventHistory,
    ) -> Result<Vec<ListedCustomer>, SegmentError> {
        let sort = match q.sort {
            None => None,
            Some(name) => Some(
                self.sort_column(name)
                    .ok_or_else(|| SegmentError::UnknownSortField(name.to_string()))?,
            ),
        };
        let filter = q
            .filter
            .map(|rule| self.compile_adhoc(rule, history))
            .transpose()?;
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let search = q
            .search
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| Search::new(text, &self.state));
        let after = q.after.map(Key::of);
        let candidates: Box<dyn Iterator<Item = u32>> = match &filter {
            Some((compiled, extra)) => {
                let ctx = self.state.ctx(Some(extra));
                let rows = self.state.rows();
                let all = crate::preview::scan(compiled, &ctx, rows, self.now, usize::MAX);
                Box::new(all.sample.into_iter())
            }
            None => Box::new(1..self.state.rows() as u32),
        };
        let removed = &self.state.removed;
        let mut page: BinaryHeap<Entry<'_>> = BinaryHeap::with_capacity(q.limit.min(1 << 12));
        for row in candidates {
            if removed.contains(row) {
                continue;
            }
            let id = &*self.state.external_ids[row as usize];
            if search.as_ref().is_some_and(|s| !s.matches(id, row)) {
                continue;
            }
            let value = match sort {
                None => Some(ValueRef::String(id)),
                Some(column) => ValueRef::at(column, row),
            };
            let entry = Entry {
                key: Key { value, id },
                row,
                descending: q.descending,
            };
            if after
                .as_ref()
                .is_some_and(|after| entry.key.cmp_in(after, q.descending).is_le())
            {
                continue;
            }
            if page.len() < q.limit {
                page.push(entry);
            } else if let Some(mut last) = page.peek_mut()
                && entry < *last
            {
                *last = entry;
            }
        }
        Ok(page
            .into_sorted_vec()
            .into_iter()
            .map(|entry| ListedCustomer {
                row: entry.row,
                position: entry.key.to_position(),
            })
            .collect())
    }

    /// Up to `limit` live customers matching `filter` and `search`, in dense
    /// id order, after row `after`: an export walks every match this way, each
    /// row evaluated once over all pages (a sorted [`Self::query_customers`]
    /// page looks at every customer).
    pub fn matching_rows(
        &self,
        filter: Option<&Rule>,
        search: Option<&str>,
        after: Option<u32>,
        limit: usize,
        history: &dyn EventHistory,
    ) -> Result<Vec<u32>, SegmentError> {
        let filter = filter
            .map(|rule| self.compile_adhoc(rule, history))
            .transpose()?;
        let search = search
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| Search::new(text, &self.state));
        let ctx = filter
            .as_ref()
            .map(|(_, extra)| self.state.ctx(Some(extra)));
        let first = after.map_or(1, |a| a.saturating_add(1)).max(1);
        let mut rows = Vec::with_capacity(limit.min(1 << 12));
        for row in first..self.state.rows() as u32 {
            if rows.len() >= limit {
                break;
            }
            if self.state.removed.contains(row) {
                continue;
            }
            if let (Some((compiled, _)), Some(ctx)) = (&filter, &ctx)
                && !compiled.evaluate(ctx, row, self.now).0
            {
                continue;
            }
            let id = &*self.state.external_ids[row as usize];
            if search.as_ref().is_some_and(|s| !s.matches(id, row)) {
                continue;
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Every live customer's value of string attribute `field`, with the
    /// customer's external id, in row order; empty when there is no such
    /// attribute or it is not a string (an importer indexes customers by
    /// email with it).
    pub fn string_values(&self, field: &str) -> Vec<(String, String)> {
        let Some((id, _)) = self.state.schema.get(field) else {
            return Vec::new();
        };
        let Column::String { codes, dict } = &self.state.attrs[id.0 as usize].column else {
            return Vec::new();
        };
        (1..self.state.rows() as u32)
            .filter(|row| !self.state.removed.contains(*row))
            .filter_map(|row| {
                let code = codes.get(row as usize);
                (code != MISSING_CODE).then(|| {
                    (
                        dict.get(code).to_string(),
                        self.state.external_ids[row as usize].to_string(),
                    )
                })
            })
            .collect()
    }

    fn sort_column(&self, name: &str) -> Option<&Column> {
        match self.state.resolve(name)?.0 {
            FieldRef::Attr(a) => Some(&self.state.attrs[a as usize].column),
            FieldRef::Trait(t) => Some(&self.state.traits[t as usize].values),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::model::Event;
    use crate::rule::dsl;

    const T0: i64 = 1_767_225_600_000;

    struct Fixture {
        shard: Shard,
        history: Vec<Event>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                shard: Shard::new(Default::default()),
                history: Vec::new(),
            }
        }

        fn send(&mut self, event: Event) {
            self.shard
                .apply(&event, Timestamp(T0), &mut Vec::new())
                .unwrap();
            self.history.push(event);
        }

        fn identify(&mut self, user: &str, traits: Json) {
            let n = self.history.len();
            self.send(Event::identify(
                format!("m{n}"),
                user,
                Timestamp(T0),
                traits,
            ));
        }

        fn order(&mut self, user: &str, revenue: f64) {
            let n = self.history.len();
            self.send(Event::track(
                format!("m{n}"),
                user,
                Timestamp(T0),
                "Order Completed",
                json!({ "revenue": revenue }),
            ));
        }

        fn list(&self, q: CustomerQuery<'_>) -> Vec<ListedCustomer> {
            self.shard.query_customers(&q, &self.history).unwrap()
        }

        fn ids(&self, q: CustomerQuery<'_>) -> Vec<String> {
            self.list(q).into_iter().map(|c| c.position.id).collect()
        }
    }

    fn all<'a>() -> CustomerQuery<'a> {
        CustomerQuery {
            limit: usize::MAX,
            ..CustomerQuery::default()
        }
    }

    /// c0..c5 with spends 9, 5, missing, 5, 1, missing (c2 has no value at
    /// all, c5 other attributes but no spend).
    fn spends() -> Fixture {
        let mut f = Fixture::new();
        for (user, spend) in [
            ("c3", Some(5.0)),
            ("c0", Some(9.0)),
            ("c5", None),
            ("c1", Some(5.0)),
            ("c4", Some(1.0)),
            ("c2", None),
        ] {
            match spend {
                Some(spend) => f.identify(user, json!({ "spend": spend })),
                None => f.identify(user, json!({ "city": "Pune" })),
            }
        }
        f
    }

    #[test]
    fn missing_values_come_last_in_both_directions() {
        let f = spends();
        let by_spend = CustomerQuery {
            sort: Some("spend"),
            ..all()
        };
        assert_eq!(f.ids(by_spend), ["c4", "c1", "c3", "c0", "c2", "c5"]);
        let descending = CustomerQuery {
            descending: true,
            ..by_spend
        };
        assert_eq!(f.ids(descending), ["c0", "c1", "c3", "c4", "c2", "c5"]);
        assert_eq!(f.ids(all()), ["c0", "c1", "c2", "c3", "c4", "c5"]);
        assert_eq!(
            f.ids(CustomerQuery {
                descending: true,
                ..all()
            }),
            ["c5", "c4", "c3", "c2", "c1", "c0"]
        );
        let page = f.list(CustomerQuery {
            limit: 2,
            ..descending
        });
        assert_eq!(
            page.iter().map(|c| &c.position).collect::<Vec<_>>(),
            [
                &ListPosition {
                    value: Some(AttrValue::Number(9.0)),
                    id: "c0".into()
                },
                &ListPosition {
                    value: Some(AttrValue::Number(5.0)),
                    id: "c1".into()
                },
            ]
        );
        assert_eq!(page[0].row, f.shard.customer_row("c0").unwrap());
    }

    #[test]
    fn sorts_by_computed_traits_and_refuses_unknown_fields() {
        let mut f = spends();
        f.order("c2", 30.0);
        f.order("c4", 10.0);
        f.order("c4", 25.0);
        let by_total = CustomerQuery {
            sort: Some("total_spend"),
            descending: true,
            ..all()
        };
        // Everyone has a total (0 without orders), ties by id.
        assert_eq!(f.ids(by_total), ["c4", "c2", "c0", "c1", "c3", "c5"]);
        let by_last_order = CustomerQuery {
            sort: Some("last_order_at"),
            ..all()
        };
        assert_eq!(f.ids(by_last_order)[..2], ["c2", "c4"]);
        let unknown = CustomerQuery {
            sort: Some("spend_typo"),
            ..all()
        };
        let error = f.shard.query_customers(&unknown, &f.history).unwrap_err();
        assert_eq!(error, SegmentError::UnknownSortField("spend_typo".into()));
        assert!(error.to_string().contains("`spend_typo`"), "{error}");
    }

    /// Customers with every type of value, some missing, some shared.
    fn mixed(n: usize) -> Fixture {
        let mut f = Fixture::new();
        for i in 0..n {
            // A scrambled insertion order, so row order is not id order.
            let k = (i * 37) % n;
            let mut traits = serde_json::Map::new();
            if !k.is_multiple_of(5) {
                traits.insert("spend".into(), json!((k * 7 % 11) as f64 / 2.0));
            }
            if !k.is_multiple_of(4) {
                traits.insert("city".into(), json!(["Pune", "Delhi", "pune"][k % 3]));
            }
            if !k.is_multiple_of(3) {
                traits.insert("vip".into(), json!(k.is_multiple_of(2)));
            }
            if !k.is_multiple_of(6) {
                let tags: Vec<&str> = ["a", "b", "c"][..k % 4].to_vec();
                traits.insert("tags".into(), json!(tags));
            }
            traits.insert(
                "signup_at".into(),
                json!(format!("2025-0{}-01T00:00:00Z", 1 + k % 9)),
            );
            f.identify(&format!("u{k:03}"), Json::Object(traits));
        }
        f
    }

    fn brute_force(f: &Fixture, sort: Option<&str>, descending: bool) -> Vec<ListPosition> {
        let mut positions: Vec<ListPosition> = (1..f.shard.state.rows() as u32)
            .filter(|row| !f.shard.state.removed.contains(*row))
            .map(|row| {
                let id = f.shard.customer_id(row).unwrap().to_string();
                let customer = f.shard.customer(&id).unwrap();
                let value = match sort {
                    None => Some(AttrValue::String(id.clone())),
                    Some(field) => customer
                        .attributes
                        .into_iter()
                        .chain(customer.computed)
                        .find(|(name, _)| name == field)
                        .map(|(_, v)| v),
                };
                ListPosition { value, id }
            })
            .collect();
        positions.sort_by(|a, b| a.cmp_in(b, descending));
        positions
    }

    #[test]
    fn pages_visit_every_customer_once_in_order() {
        let mut f = mixed(60);
        f.shard.remove_customer("u007", &mut Vec::new());
        for sort in [
            None,
            Some("spend"),
            Some("city"),
            Some("vip"),
            Some("tags"),
            Some("signup_at"),
        ] {
            for descending in [false, true] {
                let expected = brute_force(&f, sort, descending);
                assert_eq!(expected.len(), 59);
                let q = CustomerQuery {
                    sort,
                    descending,
                    ..all()
                };
                let listed: Vec<ListPosition> = f.list(q).into_iter().map(|c| c.position).collect();
                assert_eq!(listed, expected, "{sort:?} descending={descending}");
                for limit in [1, 4, 7, 59, 100] {
                    let mut paged = Vec::new();
                    let mut after: Option<ListPosition> = None;
                    loop {
                        let page = f.list(CustomerQuery {
                            after: after.as_ref(),
                            limit,
                            ..q
                        });
                        assert!(page.len() <= limit);
                        let short = page.len() < limit;
                        after = page.last().map(|c| c.position.clone());
                        paged.extend(page.into_iter().map(|c| c.position));
                        if short {
                            break;
                        }
                    }
                    assert_eq!(paged, expected, "{sort:?} desc={descending} limit={limit}");
                }
            }
        }
    }

    #[test]
    fn pages_of_two_shards_merge_into_one_order() {
        let whole = mixed(40);
        let mut halves = [Fixture::new(), Fixture::new()];
        for event in &whole.history {
            let user = event.customer_key().unwrap();
            let half = &mut halves[user.bytes().map(usize::from).sum::<usize>() % 2];
            half.send(event.clone());
        }
        assert!(halves.iter().all(|h| h.shard.customer_count() > 5));
        for descending in [false, true] {
            let q = CustomerQuery {
                sort: Some("spend"),
                descending,
                ..all()
            };
            // As the runtime pages: each shard's page after the cursor,
            // merged, cut to the limit; the last one is the next cursor.
            let mut merged = Vec::new();
            let mut after: Option<ListPosition> = None;
            loop {
                let q = CustomerQuery {
                    after: after.as_ref(),
                    limit: 6,
                    ..q
                };
                let mut page: Vec<ListPosition> = halves
                    .iter()
                    .flat_map(|h| h.list(q))
                    .map(|c| c.position)
                    .collect();
                page.sort_by(|a, b| a.cmp_in(b, descending));
                page.truncate(6);
                let short = page.len() < 6;
                after = page.last().cloned();
                merged.extend(page);
                if short {
                    break;
                }
            }
            let single: Vec<ListPosition> = whole.list(q).into_iter().map(|c| c.position).collect();
            assert_eq!(merged, single);
        }
    }

    #[test]
    fn search_matches_id_email_and_name_words_ignoring_case() {
        let mut f = Fixture::new();
        f.identify(
            "ada-1",
            json!({"email": "countess@example.com", "name": "Ada Lovelace"}),
        );
        f.identify(
            "g2",
            json!({"email": "Grace@Navy.mil", "first_name": "Grace", "last_name": "Murray Hopper"}),
        );
        f.identify("x3", json!({"email": "Ada@b.org", "city": "Lovely"}));
        f.identify("Øystein", json!({"name": "Ole Ørsted"}));
        let search = |text: &str| {
            let mut ids = f.ids(CustomerQuery {
                search: Some(text),
                ..all()
            });
            ids.sort();
            ids
        };
        assert_eq!(search("lov"), ["ada-1"], "a word of the name; not the city");
        assert_eq!(search("ADA"), ["ada-1", "x3"], "id, and email prefix");
        assert_eq!(search("grace@"), ["g2"]);
        assert_eq!(search("hop"), ["g2"], "second word of last_name");
        assert_eq!(search("murray h"), ["g2"], "a prefix spanning words");
        assert_eq!(
            search("example"),
            Vec::<String>::new(),
            "emails match by prefix only"
        );
        assert_eq!(search("øy"), ["Øystein"]);
        assert_eq!(search("ØRS"), ["Øystein"]);
        assert_eq!(search("  "), ["ada-1", "g2", "x3", "Øystein"]);
        // A `name` that is not a string is not searched.
        let mut g = Fixture::new();
        g.identify("n1", json!({"name": 42}));
        assert!(
            g.ids(CustomerQuery {
                search: Some("4"),
                ..all()
            })
            .is_empty()
        );
    }

    #[test]
    fn filters_match_the_preview() {
        let mut f = mixed(50);
        for (i, user) in ["u001", "u002", "u010", "u011", "u012"].iter().enumerate() {
            f.order(user, 10.0 * i as f64);
        }
        f.shard.remove_customer("u002", &mut Vec::new());
        for text in [
            "spend > 2",
            r#"city = "Pune" or vip = true"#,
            // A counter no segment keeps: built from the history.
            "performed \"Order Completed\" where revenue >= 10",
            "not spend exists",
        ] {
            let rule = dsl::parse(text).unwrap();
            let preview = f.shard.preview(&rule, usize::MAX, &f.history).unwrap();
            assert!(preview.count > 0, "{text}");
            let listed = f.list(CustomerQuery {
                filter: Some(&rule),
                ..all()
            });
            assert_eq!(listed.len() as u64, preview.count, "{text}");
            let mut rows: Vec<u32> = listed.iter().map(|c| c.row).collect();
            rows.sort_unstable();
            assert_eq!(rows, preview.sample, "{text}");
            // With a search and a sort too: the intersection, in order.
            let narrowed = f.ids(CustomerQuery {
                filter: Some(&rule),
                search: Some("U01"),
                sort: Some("spend"),
                ..all()
            });
            let expected: Vec<String> = brute_force(&f, Some("spend"), false)
                .into_iter()
                .map(|p| p.id)
                .filter(|id| id.starts_with("u01") && listed.iter().any(|c| &c.position.id == id))
                .collect();
            assert!(!expected.is_empty() || text == "not spend exists", "{text}");
            assert_eq!(narrowed, expected, "{text}");
        }
        assert!(f.ids(all()).iter().all(|id| id != "u002"));
    }

    #[test]
    fn matching_rows_page_through_what_the_listing_finds() {
        let mut f = mixed(50);
        f.order("u010", 20.0);
        f.shard.remove_customer("u003", &mut Vec::new());
        for (text, search) in [
            ("spend > 2", None),
            (r#"city = "Pune" or vip = true"#, Some("U0")),
            ("performed \"Order Completed\" where revenue >= 10", None),
        ] {
            let rule = dsl::parse(text).unwrap();
            let mut listed: Vec<u32> = f
                .list(CustomerQuery {
                    filter: Some(&rule),
                    search,
                    ..all()
                })
                .iter()
                .map(|c| c.row)
                .collect();
            listed.sort_unstable();
            assert!(!listed.is_empty(), "{text}");
            for page in [1, 3, 1000] {
                let mut walked: Vec<u32> = Vec::new();
                let mut after = None;
                loop {
                    let rows = f
                        .shard
                        .matching_rows(Some(&rule), search, after, page, &f.history)
                        .unwrap();
                    walked.extend(&rows);
                    if rows.len() < page {
                        break;
                    }
                    after = rows.last().copied();
                }
                assert_eq!(walked, listed, "{text}, pages of {page}");
            }
        }
        let everyone = f
            .shard
            .matching_rows(None, None, None, usize::MAX, &f.history)
            .unwrap();
        assert_eq!(
            everyone.len(),
            f.shard.customer_count(),
            "no filter: all but the removed"
        );
    }

    #[test]
    fn a_zero_limit_lists_nothing_but_still_checks_the_query() {
        let f = spends();
        let q = CustomerQuery { limit: 0, ..all() };
        assert!(f.list(q).is_empty());
        let bad = dsl::parse("nope > 1").unwrap();
        let q = CustomerQuery {
            filter: Some(&bad),
            limit: 0,
            ..all()
        };
        assert!(matches!(
            f.shard.query_customers(&q, &f.history),
            Err(SegmentError::Rule(_))
        ));
    }

    #[test]
    fn string_values_pair_each_live_value_with_its_customer() {
        let mut f = Fixture::new();
        f.identify("a", json!({"email": "a@x.com", "age": 3}));
        f.identify("b", json!({"city": "Pune"}));
        f.identify("c", json!({"email": "c@x.com"}));
        f.identify("d", json!({"email": "a@x.com"}));
        f.shard.remove_customer("c", &mut Vec::new());
        assert_eq!(
            f.shard.string_values("email"),
            [
                ("a@x.com".to_string(), "a".to_string()),
                ("a@x.com".to_string(), "d".to_string())
            ]
        );
        assert!(f.shard.string_values("age").is_empty());
        assert!(f.shard.string_values("nope").is_empty());
        assert!(f.shard.string_values("total_spend").is_empty());
    }
}

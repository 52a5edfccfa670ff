//! Customer data through the facade: writes that go through the event path
//! (so segments and webhooks react as they do to ingest), listing with a rule
//! filter, search, sort and a cursor across partitions, the attribute schema
//! and type changes, erasure with a suppression period, and segment members
//! with their data for exports.

use super::*;
use crate::catalog::{Suppression, field_description_key, suppression_hash, suppression_key};
use crate::shard::{
    ChangeFieldType, CheckFieldType, CustomerData, EraseCustomers, GetSchema, MatchingData,
    MembersData, QueryCustomers, StringValues,
};
use std::collections::BTreeMap;
use xeno_engine::model::{AttrValue, FieldOrigin};
use xeno_engine::shard::ListPosition;
use xeno_engine::traits::ComputedTraitDef;

/// How to list customers.
#[derive(Debug, Clone, Default)]
pub struct CustomerListQuery {
    /// Only customers matching this rule now.
    pub filter: Option<Rule>,
    /// Case-insensitive prefix of the id, the email, or (a word of) the name.
    pub search: Option<String>,
    /// An attribute or computed trait; by id when `None`.
    pub sort: Option<String>,
    pub descending: bool,
    pub cursor: Option<String>,
    pub limit: usize,
}

/// A field of the attribute schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldInfo {
    pub name: String,
    /// string, number, bool, timestamp or list_of_strings.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub ty: AttrType,
    /// `declared` (typed ahead of data), `inferred` (from the first value
    /// seen) or `computed` (a computed trait; read only).
    pub origin: String,
    pub description: Option<String>,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Erasure {
    pub id: String,
    /// The id and the ids merged into it: all erased and suppressed.
    pub erased_ids: Vec<String>,
    /// Events for these ids are refused until then.
    pub suppressed_until: String,
}

/// The computed traits every tenant has, with their types.
fn computed_traits() -> Vec<(String, AttrType)> {
    ComputedTraitDef::builtins()
        .into_iter()
        .filter_map(|d| d.output_type().ok().map(|t| (d.name, t)))
        .collect()
}

fn customer_info(data: CustomerData, org: &crate::catalog::OrgState) -> CustomerInfo {
    let segments = data
        .segments
        .iter()
        .filter_map(|e| org.by_engine_id.get(e))
        .filter_map(|s| org.segments.get(s))
        .map(|s| SegmentRef {
            id: s.id,
            name: s.name.clone(),
        })
        .collect();
    CustomerInfo {
        id: data.id,
        attributes: data.attributes,
        computed: data.computed,
        segments,
    }
}

/// A refused listing or export query, pointing at the query parameter.
fn filter_error(e: SegmentError) -> RuntimeError {
    match e {
        SegmentError::Rule(e) => {
            let mut e = rule_invalid(e);
            if let RuntimeError::Invalid { pointer, .. } = &mut e {
                *pointer = pointer.replacen("/rule", "/filter", 1);
            }
            e
        }
        SegmentError::UnknownSortField(_) => invalid("/sort", e.to_string()),
        other => segment_error(other),
    }
}

/// A customer id as the API takes it.
pub fn check_customer_id(id: &str, pointer: &str) -> Result<(), RuntimeError> {
    if id.trim().is_empty() {
        return Err(invalid(pointer, "the customer id must not be empty"));
    }
    if id.len() > 256 {
        return Err(invalid(pointer, "the customer id is longer than 256 bytes"));
    }
    Ok(())
}

impl Runtime {
    pub(crate) fn customer_infos(&self, org: Uuid, data: Vec<CustomerData>) -> Vec<CustomerInfo> {
        self.inner
            .catalog
            .with_org(org, |o| {
                data.into_iter()
                    .map(|d| customer_info(d, o))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    }

    /// The types the tenant knows for `names`: recorded in the catalog, or
    /// inferred by any partition.
    pub(crate) async fn known_types(
        &self,
        org: Uuid,
        names: &[String],
    ) -> Result<HashMap<String, AttrType>, RuntimeError> {
        let mut types = self.recorded_types(org, names);
        for shard in &self.inner.shards {
            let known = shard
                .send(FieldTypes {
                    org,
                    names: names.to_vec(),
                })
                .await?;
            for (name, ty) in known {
                types.entry(name).or_insert(ty);
            }
        }
        Ok(types)
    }

    /// Checks traits a customer write sets: names, value shapes, computed
    /// trait names, and the types the tenant already holds.
    pub async fn check_traits(
        &self,
        org: Uuid,
        traits: &Map<String, Json>,
        pointer: &str,
    ) -> Result<(), RuntimeError> {
        let computed = computed_traits();
        for (name, value) in traits {
            let at = format!("{pointer}/{name}");
            if name.is_empty() || name.len() > 256 {
                return Err(invalid(at, "a trait name is 1 to 256 bytes"));
            }
            if computed.iter().any(|(c, _)| c == name) {
                return Err(invalid(
                    at,
                    format!("`{name}` is a computed trait (from events); it cannot be set"),
                ));
            }
            if !value.is_null() && AttrValue::infer_type(value).is_none() {
                return Err(invalid(
                    at,
                    "a trait is a string, number, bool, RFC 3339 timestamp, list of strings or null",
                ));
            }
        }
        let names: Vec<String> = traits.keys().cloned().collect();
        let known = self.known_types(org, &names).await?;
        for (name, value) in traits {
            let Some(ty) = known.get(name) else { continue };
            if !value.is_null() && AttrValue::from_json_as(value, *ty).is_none() {
                return Err(invalid(
                    format!("{pointer}/{name}"),
                    format!("`{name}` holds {ty} values; this value is not one"),
                ));
            }
        }
        Ok(())
    }

    /// Refuses a write for an erased customer id during its suppression.
    fn check_not_suppressed(&self, org: Uuid, id: &str) -> Result<(), RuntimeError> {
        match self.inner.catalog.suppression(org, id) {
            Some(s) if s.until > now().0 => Err(RuntimeError::Conflict(format!(
                "customer `{id}` was erased; writes for it are refused until {}",
                Timestamp(s.until).to_rfc3339()
            ))),
            _ => Ok(()),
        }
    }

    /// Logs one event of a customer through the ingest path and answers the
    /// customer as it is once the event is applied.
    pub async fn write_customer_event(
        &self,
        org: Uuid,
        event: Event,
    ) -> Result<CustomerInfo, RuntimeError> {
        self.require_org(org)?;
        let id = event
            .customer_key()
            .ok_or_else(|| invalid("/id", "the customer id must not be empty"))?
            .to_string();
        self.check_not_suppressed(org, &id)?;
        // The profile the id lives in (an anonymous id merged into a known one).
        let root = self.inner.catalog.alias_of(org, &id).unwrap_or(id);
        let outcome = self.log_events(org, vec![event], now(), true).await?;
        if !outcome.suppressed.is_empty() {
            return Err(RuntimeError::Conflict(format!(
                "customer `{root}` was erased; writes for it are refused"
            )));
        }
        self.customer(org, &root).await
    }

    /// Customers of `org`, a page at a time, in the query's order. Each
    /// partition answers its first `limit` after the cursor; the pages are
    /// merged in the same order.
    pub async fn list_customers(
        &self,
        org: Uuid,
        query: CustomerListQuery,
    ) -> Result<Page<CustomerInfo>, RuntimeError> {
        self.require_org(org)?;
        if let Some(rule) = &query.filter {
            self.ensure_fields(org, rule, false).await?;
        }
        let after: Option<ListPosition> = match &query.cursor {
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| invalid("/cursor", "not a cursor of this list"))?,
            ),
            None => None,
        };
        let mut rows: Vec<(ListPosition, CustomerData)> = Vec::new();
        for shard in &self.inner.shards {
            let page = shard
                .send(QueryCustomers {
                    org,
                    filter: query.filter.clone(),
                    search: query.search.clone(),
                    sort: query.sort.clone(),
                    descending: query.descending,
                    after: after.clone(),
                    // One more than a page: whether a next page exists.
                    limit: query.limit + 1,
                })
                .await?
                .map_err(filter_error)?;
            rows.extend(page);
        }
        rows.sort_by(|a, b| a.0.cmp_in(&b.0, query.descending));
        let full = rows.len() > query.limit;
        rows.truncate(query.limit);
        let next_cursor = match (full, rows.last()) {
            (true, Some((position, _))) => Some(
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).expect("positions serialise")),
            ),
            _ => None,
        };
        let items = self.customer_infos(org, rows.into_iter().map(|(_, d)| d).collect());
        Ok(Page { items, next_cursor })
    }

    /// Members of a segment with their data, `limit` at a time (for exports;
    /// the cursor is the one of [`Self::members`]).
    pub async fn member_data(
        &self,
        org: Uuid,
        id: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<CustomerInfo>, RuntimeError> {
        self.require_org(org)?;
        let record = self.segment_record(org, id)?;
        let engine_id = record.engine_id;
        let page = self
            .page_by_partition(cursor, limit, |shard, after, want| async move {
                Ok(shard
                    .send(MembersData {
                        org,
                        engine_id,
                        after,
                        limit: want,
                    })
                    .await?)
            })
            .await?;
        Ok(Page {
            items: self.customer_infos(org, page.items),
            next_cursor: page.next_cursor,
        })
    }

    /// Customers matching `filter` and `search`, `limit` at a time, one
    /// partition after the other in dense-id order: what an export of a
    /// filtered list reads (each customer is looked at once over all pages;
    /// [`Self::list_customers`] sorts, and looks at all of them per page).
    pub async fn matching_data(
        &self,
        org: Uuid,
        filter: Option<Rule>,
        search: Option<String>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<CustomerInfo>, RuntimeError> {
        self.require_org(org)?;
        if let Some(rule) = &filter {
            self.ensure_fields(org, rule, false).await?;
        }
        let page = self
            .page_by_partition(cursor, limit, |shard, after, want| {
                let (filter, search) = (filter.clone(), search.clone());
                async move {
                    shard
                        .send(MatchingData {
                            org,
                            filter,
                            search,
                            after,
                            limit: want,
                        })
                        .await?
                        .map_err(filter_error)
                }
            })
            .await?;
        Ok(Page {
            items: self.customer_infos(org, page.items),
            next_cursor: page.next_cursor,
        })
    }

    /// The attribute schema: every field any partition knows or the catalog
    /// records, and the computed traits.
    pub async fn fields(&self, org: Uuid) -> Result<Vec<FieldInfo>, RuntimeError> {
        self.require_org(org)?;
        let mut fields: BTreeMap<String, FieldInfo> = BTreeMap::new();
        let (recorded, descriptions) = self
            .inner
            .catalog
            .with_org(org, |o| (o.fields.clone(), o.descriptions.clone()))
            .unwrap_or_default();
        for shard in &self.inner.shards {
            for def in shard.send(GetSchema { org }).await? {
                let entry = fields.entry(def.name.clone()).or_insert(FieldInfo {
                    name: def.name.clone(),
                    ty: def.ty,
                    origin: "inferred".into(),
                    description: None,
                });
                if def.origin == FieldOrigin::Declared {
                    entry.origin = "declared".into();
                }
            }
        }
        for (name, ty) in recorded {
            let entry = fields.entry(name.clone()).or_insert(FieldInfo {
                name,
                ty,
                origin: "declared".into(),
                description: None,
            });
            entry.ty = ty;
        }
        for (name, ty) in computed_traits() {
            fields.insert(
                name.clone(),
                FieldInfo {
                    name,
                    ty,
                    origin: "computed".into(),
                    description: None,
                },
            );
        }
        for (name, text) in descriptions {
            if let Some(f) = fields.get_mut(&name) {
                f.description = Some(text);
            }
        }
        Ok(fields.into_values().collect())
    }

    /// Declares a field or changes its type and description. A type change
    /// that existing values cannot satisfy is refused with the number of
    /// offending customers and a few of their ids; nothing changes then.
    pub async fn put_field(
        &self,
        org: Uuid,
        name: &str,
        ty: Option<AttrType>,
        description: Option<Option<String>>,
    ) -> Result<FieldInfo, RuntimeError> {
        self.require_org(org)?;
        if name.is_empty() || name.len() > 256 {
            return Err(invalid("/name", "a field name is 1 to 256 bytes"));
        }
        if computed_traits().iter().any(|(c, _)| c == name) {
            return Err(invalid(
                "/name",
                format!("`{name}` is a computed trait; its type is fixed"),
            ));
        }
        if let Some(Some(text)) = &description
            && text.chars().count() > 1000
        {
            return Err(invalid(
                "/description",
                "the description is longer than 1000 characters",
            ));
        }
        // One schema change at a time, and none while a segment changes.
        let _guard = self.inner.segment_lock.lock().await;
        if let Some(ty) = ty {
            let mut offending = 0u64;
            let mut examples = Vec::new();
            for shard in &self.inner.shards {
                let check = shard
                    .send(CheckFieldType {
                        org,
                        name: name.to_string(),
                        ty,
                    })
                    .await?
                    .map_err(|e| invalid("/type", e.to_string()))?;
                offending += check.offending;
                examples.extend(check.examples);
            }
            if offending > 0 {
                examples.truncate(5);
                return Err(RuntimeError::Conflict(format!(
                    "{offending} customers hold a value of `{name}` that is not a {ty} (for example {}); change or clear those values first",
                    examples.join(", ")
                )));
            }
            let previous = self
                .known_types(org, &[name.to_string()])
                .await?
                .remove(name);
            for (i, shard) in self.inner.shards.iter().enumerate() {
                let changed = shard
                    .send(ChangeFieldType {
                        org,
                        name: name.to_string(),
                        ty,
                    })
                    .await?;
                if let Err(reason) = changed {
                    // A value that cannot convert arrived after the check:
                    // the partitions changed already go back, so the tenant
                    // keeps one type.
                    if let Some(previous) = previous {
                        for done in &self.inner.shards[..i] {
                            let back = ChangeFieldType {
                                org,
                                name: name.to_string(),
                                ty: previous,
                            };
                            if let Ok(Err(e)) = done.send(back).await {
                                tracing::error!(org = %org, field = name, error = %e, "a partition keeps the new type after a refused change");
                            }
                        }
                    }
                    return Err(RuntimeError::Conflict(reason));
                }
            }
            let new = vec![(name.to_string(), ty)];
            let (store, catalog, key) = (
                self.inner.ports.store.clone(),
                self.inner.catalog.clone(),
                field_key(org, name),
            );
            tokio::task::spawn_blocking(move || {
                catalog.commit(&*store, vec![StateWrite::Put(key, encode(&ty))], |c| {
                    c.put_fields(org, &new)
                })
            })
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        }
        if let Some(text) = description {
            let text = text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
            let write = match &text {
                Some(t) => StateWrite::Put(field_description_key(org, name), encode(t)),
                None => StateWrite::Delete(field_description_key(org, name)),
            };
            let (store, catalog, field) = (
                self.inner.ports.store.clone(),
                self.inner.catalog.clone(),
                name.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                catalog.commit(&*store, vec![write], |c| {
                    c.put_description(org, &field, text)
                })
            })
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        }
        drop(_guard);
        self.fields(org)
            .await?
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| RuntimeError::NotFound("field".into()))
    }

    /// Erases a customer (right to be forgotten): the profile, the profiles
    /// merged into it, every value kept of them and their logged events; for
    /// `suppression`, events naming any of the ids are refused.
    pub async fn delete_customer(
        &self,
        org: Uuid,
        id: &str,
        suppression: xeno_engine::time::Duration,
    ) -> Result<Erasure, RuntimeError> {
        self.require_org(org)?;
        let root = self
            .inner
            .catalog
            .alias_of(org, id)
            .unwrap_or_else(|| id.to_string());
        let merged: Vec<String> = self
            .inner
            .catalog
            .aliases(org)
            .into_iter()
            .filter(|(_, into)| *into == root)
            .map(|(from, _)| from)
            .collect();
        // An erasure that was asked for already is run again (it may have
        // stopped half way): the answer is the same, not a 404.
        let repeat = self
            .inner
            .catalog
            .suppression(org, &root)
            .filter(|s| s.until > now().0);
        if self.customer(org, &root).await.is_err() && merged.is_empty() && repeat.is_none() {
            return Err(RuntimeError::NotFound("customer".into()));
        }
        let mut ids = vec![root.clone()];
        ids.extend(merged.iter().cloned());
        let erased_at = now().0;
        let partitions = self.inner.shards.len() as u32;
        let (erased_at, until) = match repeat {
            Some(r) => (r.erased_at, r.until),
            None => (erased_at, erased_at.saturating_add(suppression.millis())),
        };
        let suppressions: Vec<(String, Suppression)> = ids
            .iter()
            .map(|i| {
                let record = Suppression {
                    erased_at,
                    until,
                    partition: partition_of(org, i, partitions),
                };
                (suppression_hash(org, i), record)
            })
            .collect();
        // Durable first: from here on no shard applies these ids' events,
        // and a restart finishes the erasure.
        let mut writes: Vec<StateWrite> = suppressions
            .iter()
            .map(|(hash, record)| StateWrite::Put(suppression_key(org, hash), encode(record)))
            .collect();
        writes.extend(merged.iter().map(|m| StateWrite::Delete(alias_key(org, m))));
        let (store, catalog) = (self.inner.ports.store.clone(), self.inner.catalog.clone());
        let merged_ids = merged.clone();
        tokio::task::spawn_blocking(move || {
            store.commit(writes, true)?;
            catalog.put_suppressions(org, &suppressions);
            catalog.remove_aliases(org, &merged_ids);
            Ok::<_, PortError>(())
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        let mut by_partition: HashMap<u32, Vec<String>> = HashMap::new();
        for i in &ids {
            by_partition
                .entry(partition_of(org, i, partitions))
                .or_default()
                .push(i.clone());
        }
        // The rest runs in a task of its own: a client that hangs up now
        // cannot leave the erasure half done.
        let (shards, store, forget) = (
            self.inner.shards.clone(),
            self.inner.ports.store.clone(),
            ids.clone(),
        );
        let forgotten = tokio::spawn(async move {
            for (p, ids) in by_partition {
                shards[p as usize]
                    .send(EraseCustomers { org, ids, until })
                    .await?;
            }
            // What the webhook history kept of them: finished deliveries
            // (their payloads carry the traits) and the last-transition
            // markers (keyed by id). Pending ones, such as the exits just
            // queued (which name the id only), are delivered and then expire
            // with the history.
            tokio::task::spawn_blocking(move || forget_deliveries(&*store, org, &forget))
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))?
                .map_err(RuntimeError::from)
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        metrics::counter!("xeno_customers_erased_total").increment(1);
        tracing::info!(org = %org, ids = ids.len(), deliveries = forgotten, "customer erased");
        Ok(Erasure {
            id: root,
            erased_ids: ids,
            suppressed_until: Timestamp(until).to_rfc3339(),
        })
    }

    /// Every customer's value of a string field, lowercased, to the customer
    /// id (the importer's email lookup). The first customer wins a tie.
    pub(crate) async fn string_index(
        &self,
        org: Uuid,
        field: &str,
    ) -> Result<HashMap<String, String>, RuntimeError> {
        let mut index = HashMap::new();
        for shard in &self.inner.shards {
            let values = shard
                .send(StringValues {
                    org,
                    field: field.to_string(),
                })
                .await?;
            for (value, id) in values {
                index.entry(value.trim().to_lowercase()).or_insert(id);
            }
        }
        Ok(index)
    }
}

/// Deletes the finished deliveries and the last-transition markers of `org`
/// that name one of `ids`; answers how many records went.
fn forget_deliveries(store: &dyn StatePort, org: Uuid, ids: &[String]) -> Result<usize, PortError> {
    let named = |id: &str| ids.iter().any(|i| i == id);
    let mut deletes = Vec::new();
    crate::catalog::scan_all(
        store,
        format!("t/{org}/dl/").as_bytes(),
        &mut |key, value| {
            if let Ok(delivery) = serde_json::from_slice::<DeliveryRecord>(value)
                && delivery.status != DeliveryStatus::Pending
                && delivery.payload["data"]["customer"]["id"]
                    .as_str()
                    .is_some_and(named)
            {
                deletes.push(StateWrite::Delete(key.to_vec()));
            }
            Ok(())
        },
    )?;
    // t/{org}/last/{epoch}/{segment}/{customer}: the id is all after the 5th `/`.
    crate::catalog::scan_all(store, format!("t/{org}/last/").as_bytes(), &mut |key, _| {
        if String::from_utf8_lossy(key)
            .splitn(6, '/')
            .nth(5)
            .is_some_and(named)
        {
            deletes.push(StateWrite::Delete(key.to_vec()));
        }
        Ok(())
    })?;
    let count = deletes.len();
    for chunk in deletes.chunks(1024) {
        store.commit(chunk.to_vec(), true)?;
    }
    Ok(count)
}

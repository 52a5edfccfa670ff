//! Customer routes: create, update, get, list (rule filter, search, sort,
//! cursor), erase; orders; the attribute schema; CSV export. Writes are
//! identify and `Order Completed` events on the ingest path, so segments and
//! webhooks react to them as to any SDK call.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use xeno_actors::{
    CustomerInfo, CustomerListQuery, Erasure, FieldInfo, Page, Runtime, check_customer_id,
    parse_rule,
};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::time::Timestamp;

use super::access::{AuditNote, Caller};
use super::problem::Problem;
use super::{ApiBody, ApiQuery, AppState, json_body, page_limit, path_id};
use axum::extract::Extension;

#[utoipa::path(operation_id = "get_customer", get, path = "/api/v1/orgs/{org}/customers/{id}", tag = "customers",
    params(("org" = String, Path), ("id" = String, Path, description = "userId or anonymousId")),
    responses((status = 200, body = CustomerInfo), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<CustomerInfo>, Problem> {
    let org = caller.org_id(&org)?;
    Ok(Json(state.runtime.customer(org, &id).await?))
}

/// A new customer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// The customer's id (the `userId` SDKs send).
    pub id: String,
    /// Attributes: strings, numbers, bools, RFC 3339 timestamps, lists of strings.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub traits: Map<String, Value>,
}

/// A change of a customer's attributes; `null` clears one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerChange {
    #[schema(value_type = Object)]
    pub traits: Map<String, Value>,
}

fn identify(id: &str, traits: Map<String, Value>) -> Event {
    Event::identify(
        format!("api-{}", uuid::Uuid::now_v7()),
        id,
        xeno_actors::clock::write_time(),
        Value::Object(traits),
    )
}

#[utoipa::path(operation_id = "create_customer", post, path = "/api/v1/orgs/{org}/customers", tag = "customers",
    params(("org" = String, Path)),
    request_body = NewCustomer,
    responses((status = 201, body = CustomerInfo),
        (status = 409, description = "the customer exists, or was erased and is suppressed", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<CustomerInfo>), Problem> {
    let org = caller.org_id(&org)?;
    let body: NewCustomer = json_body(&body)?;
    check_customer_id(&body.id, "/id")?;
    state
        .runtime
        .check_traits(org, &body.traits, "/traits")
        .await?;
    if state.runtime.customer(org, &body.id).await.is_ok() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "customer `{}` exists; change it with PATCH /customers/{{id}}",
                body.id
            ),
        ));
    }
    let customer = state
        .runtime
        .write_customer_event(org, identify(&body.id, body.traits))
        .await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

#[utoipa::path(operation_id = "update_customer", patch, path = "/api/v1/orgs/{org}/customers/{id}", tag = "customers",
    params(("org" = String, Path), ("id" = String, Path)),
    request_body = CustomerChange,
    responses((status = 200, body = CustomerInfo), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Json<CustomerInfo>, Problem> {
    let org = caller.org_id(&org)?;
    let body: CustomerChange = json_body(&body)?;
    state
        .runtime
        .check_traits(org, &body.traits, "/traits")
        .await?;
    // Exists (a merged id answers its profile).
    let current = state.runtime.customer(org, &id).await?;
    let customer = state
        .runtime
        .write_customer_event(org, identify(&current.id, body.traits))
        .await?;
    Ok(Json(customer))
}

#[utoipa::path(operation_id = "delete_customer", delete, path = "/api/v1/orgs/{org}/customers/{id}", tag = "customers",
    params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "erased: the profile, the profiles merged into it, their values and logged events; their ids are refused for the suppression period", body = Erasure),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let erasure = state
        .runtime
        .delete_customer(org, &id, state.customers.suppression)
        .await?;
    // The feed names how many ids went, not which: it outlives the erasure.
    let note = AuditNote {
        target: Some("customer".into()),
        summary: json!({"ids": erasure.erased_ids.len(), "suppressed_until": erasure.suppressed_until}),
    };
    Ok((Extension(note), Json(erasure)).into_response())
}

/// How to list customers.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only customers matching this rule (DSL), e.g. `total_spend > 100`.
    pub filter: Option<String>,
    /// Case-insensitive prefix of the id, the email, or a word of the name.
    pub q: Option<String>,
    /// An attribute or computed trait to sort by; `-name` sorts descending.
    /// Customers without a value come last. By id when absent.
    pub sort: Option<String>,
    /// 1 to 1000, 100 by default.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerList {
    pub items: Vec<CustomerInfo>,
    pub next_cursor: Option<String>,
}

fn list_query(query: &ListQuery, limit: usize) -> Result<CustomerListQuery, Problem> {
    let filter = match query.filter.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => {
            Some(parse_rule(&Value::String(text.to_string())).map_err(|e| {
                match Problem::from(e) {
                    mut p if p.errors.len() == 1 => {
                        p.errors[0].pointer = "/filter".into();
                        p.detail = format!("/filter: {}", p.errors[0].reason);
                        p
                    }
                    p => p,
                }
            })?)
        }
        _ => None,
    };
    let (sort, descending) = match query.sort.as_deref().map(str::trim) {
        Some(s) if s.starts_with('-') => (Some(s[1..].to_string()), true),
        Some(s) if !s.is_empty() && s != "id" => (Some(s.to_string()), false),
        _ => (None, false),
    };
    if sort.as_deref() == Some("") {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/sort",
            "name a field to sort by",
        ));
    }
    Ok(CustomerListQuery {
        filter,
        search: query
            .q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_string),
        sort,
        descending,
        cursor: query.cursor.clone(),
        limit,
    })
}

#[utoipa::path(operation_id = "list_customers", get, path = "/api/v1/orgs/{org}/customers", tag = "customers",
    params(("org" = String, Path), ListQuery),
    responses((status = 200, body = CustomerList), (status = 422, description = "invalid filter or sort field", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<CustomerList>, Problem> {
    let org = caller.org_id(&org)?;
    let limit = page_limit(query.limit)?;
    let page = state
        .runtime
        .list_customers(org, list_query(&query, limit)?)
        .await?;
    Ok(Json(CustomerList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// One line of an order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    pub product_id: Option<String>,
    pub sku: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    /// Unit price, at least 0.
    pub price: f64,
    /// A whole number, at least 1 (1 when absent).
    pub quantity: Option<u32>,
}

/// A completed order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The customer who ordered.
    pub customer_id: String,
    /// Unique per organization: sending the same order again counts it once
    /// (within the deduplication window).
    pub order_id: String,
    /// The order total; the sum of the line items when absent.
    pub total: Option<f64>,
    pub currency: Option<String>,
    #[serde(default)]
    pub items: Vec<LineItem>,
    /// When the order completed (RFC 3339); now when absent.
    pub timestamp: Option<String>,
}

fn field(pointer: &str, reason: &str) -> Problem {
    Problem::field(StatusCode::UNPROCESSABLE_ENTITY, pointer, reason)
}

fn order_event(order: NewOrder) -> Result<Event, Problem> {
    check_customer_id(&order.customer_id, "/customer_id")?;
    if order.order_id.trim().is_empty() || order.order_id.len() > 256 {
        return Err(field("/order_id", "the order id is 1 to 256 bytes"));
    }
    let mut products = Vec::with_capacity(order.items.len());
    let mut sum = 0.0;
    for (i, item) in order.items.iter().enumerate() {
        if !item.price.is_finite() || item.price < 0.0 {
            return Err(field(
                &format!("/items/{i}/price"),
                "the price is a number of at least 0",
            ));
        }
        let quantity = item.quantity.unwrap_or(1);
        if quantity == 0 {
            return Err(field(
                &format!("/items/{i}/quantity"),
                "the quantity is at least 1",
            ));
        }
        sum += item.price * f64::from(quantity);
        let mut product = Map::new();
        for (key, value) in [
            ("product_id", &item.product_id),
            ("sku", &item.sku),
            ("name", &item.name),
            ("category", &item.category),
        ] {
            if let Some(v) = value {
                product.insert(key.into(), Value::String(v.clone()));
            }
        }
        product.insert("price".into(), json!(item.price));
        product.insert("quantity".into(), json!(quantity));
        products.push(Value::Object(product));
    }
    let total = match order.total {
        Some(t) if !t.is_finite() || t < 0.0 => {
            return Err(field("/total", "the total is a number of at least 0"));
        }
        Some(t) => t,
        None if order.items.is_empty() => {
            return Err(field("/total", "give a total, or line items to sum"));
        }
        None => (sum * 100.0).round() / 100.0,
    };
    let timestamp = match &order.timestamp {
        Some(t) => Timestamp::parse_rfc3339(t)
            .map_err(|_| field("/timestamp", "not an RFC 3339 timestamp"))?,
        None => xeno_actors::clock::now(),
    };
    let mut properties = json!({
        "order_id": order.order_id,
        "total": total,
        "revenue": total,
        "products": products,
    });
    if let Some(c) = order.currency {
        properties["currency"] = Value::String(c);
    }
    // The id comes from the order: a retried request is the same event.
    Ok(Event::track(
        format!("order-{}", order.order_id),
        order.customer_id,
        timestamp,
        "Order Completed",
        properties,
    ))
}

#[utoipa::path(operation_id = "create_order", post, path = "/api/v1/orgs/{org}/orders", tag = "customers",
    params(("org" = String, Path)),
    request_body = NewOrder,
    responses((status = 201, description = "recorded as an `Order Completed` event; the customer with updated computed traits (total_spend, order_count, last_order_at, ...)", body = CustomerInfo),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_order(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<(StatusCode, Json<CustomerInfo>), Problem> {
    let org = caller.org_id(&org)?;
    let order: NewOrder = json_body(&body)?;
    let event = order_event(order)?;
    let customer = state.runtime.write_customer_event(org, event).await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldList {
    pub items: Vec<FieldInfo>,
}

#[utoipa::path(operation_id = "list_fields", get, path = "/api/v1/orgs/{org}/fields", tag = "customers",
    params(("org" = String, Path)),
    responses((status = 200, description = "declared, inferred and computed fields with their types", body = FieldList)),
    security(("bearer" = [])))]
pub async fn fields(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FieldList>, Problem> {
    let org = caller.org_id(&org)?;
    Ok(Json(FieldList {
        items: state.runtime.fields(org).await?,
    }))
}

/// A field's declaration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldChange {
    /// string, number, bool, timestamp or list_of_strings. Existing values are
    /// converted; a change some value cannot satisfy is refused (409) with the
    /// number of offending customers.
    #[schema(value_type = Option<String>)]
    #[serde(rename = "type")]
    pub ty: Option<AttrType>,
    /// Free text; `null` clears it.
    #[serde(default, deserialize_with = "some")]
    pub description: Option<Option<String>>,
}

/// `Some(None)` for an explicit `null`, `None` when the key is absent.
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[utoipa::path(operation_id = "put_field", put, path = "/api/v1/orgs/{org}/fields/{name}", tag = "customers",
    params(("org" = String, Path), ("name" = String, Path)),
    request_body = FieldChange,
    responses((status = 200, body = FieldInfo),
        (status = 409, description = "existing values cannot take the type", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn put_field(
    State(state): State<AppState>,
    Path((org, name)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    ApiBody(body): ApiBody,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let change: FieldChange = json_body(&body)?;
    if change.ty.is_none() && change.description.is_none() {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            "give a `type`, a `description`, or both",
        ));
    }
    let field = state
        .runtime
        .put_field(org, &name, change.ty, change.description)
        .await?;
    let note = AuditNote {
        target: Some(format!("field:{name}")),
        summary: json!({"type": field.ty, "changed_type": change.ty.is_some()}),
    };
    Ok((Extension(note), Json(field)).into_response())
}

/// Export of a filtered customer list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// Only customers matching this rule (DSL).
    pub filter: Option<String>,
    /// Case-insensitive prefix of the id, the email, or a word of the name.
    pub q: Option<String>,
}

/// A CSV cell: RFC 4180 quoting; lists joined with `;`.
fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => return String::new(),
        // A text that a spreadsheet would run as a formula is quoted with `'`
        // (values come from SDK traffic; exports are opened in Excel).
        Some(Value::String(s)) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
            format!("'{s}")
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(";"),
        Some(other) => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Where an export reads its pages.
#[derive(Clone)]
pub enum ExportSource {
    Customers(CustomerListQuery),
    Segment(uuid::Uuid),
}

async fn export_page(
    runtime: &Runtime,
    org: uuid::Uuid,
    source: &ExportSource,
    cursor: Option<String>,
) -> Result<Page<CustomerInfo>, Problem> {
    const PAGE: usize = 1000;
    Ok(match source {
        ExportSource::Customers(query) => {
            runtime
                .matching_data(
                    org,
                    query.filter.clone(),
                    query.search.clone(),
                    cursor.as_deref(),
                    PAGE,
                )
                .await?
        }
        ExportSource::Segment(id) => {
            runtime
                .member_data(org, *id, cursor.as_deref(), PAGE)
                .await?
        }
    })
}

/// Streams customers as CSV: `id`, every attribute, every computed trait and
/// `segments` (names joined by `;`), a page at a time. The first page is read
/// before the answer starts, so a bad filter is a problem+json, not a
/// truncated file.
pub async fn export_csv(
    state: &AppState,
    caller: &Caller,
    source: ExportSource,
    file_name: &str,
) -> Result<Response, Problem> {
    let org = caller.org;
    let fields = state.runtime.fields(org).await?;
    let first = export_page(&state.runtime, org, &source, None).await?;
    // Who took customer data out, and which: an entry of the activity feed.
    let summary = match &source {
        ExportSource::Segment(id) => json!({"segment": id}),
        ExportSource::Customers(q) => json!({
            "filter": q.filter.as_ref().map(xeno_engine::rule::dsl::print),
            "search": q.search,
        }),
    };
    super::access::record(state, caller, "customers.exported", "customers", summary).await;
    let mut header = vec!["id".to_string()];
    header.extend(fields.iter().map(|f| f.name.clone()));
    header.push("segments".into());
    let line = move |c: &CustomerInfo| {
        let mut cells = vec![cell(Some(&Value::String(c.id.clone())))];
        for f in &fields {
            let value = match f.origin.as_str() {
                "computed" => c.computed.get(&f.name),
                _ => c.attributes.get(&f.name),
            };
            cells.push(cell(value));
        }
        let names: Vec<String> = c.segments.iter().map(|s| s.name.clone()).collect();
        cells.push(cell(Some(&Value::String(names.join(";")))));
        cells.join(",") + "\n"
    };
    let render = std::sync::Arc::new(move |page: &Page<CustomerInfo>| -> Bytes {
        Bytes::from(page.items.iter().map(&line).collect::<String>())
    });
    let mut head = header
        .iter()
        .map(|h| cell(Some(&Value::String(h.clone()))))
        .collect::<Vec<_>>()
        .join(",");
    head.push('\n');
    let first_chunk = [Bytes::from(head), render(&first)].concat();
    let runtime = state.runtime.clone();
    let stream = futures_util::stream::unfold(
        (Some(Bytes::from(first_chunk)), first.next_cursor, false),
        move |(pending, cursor, done)| {
            let (runtime, source, render) = (runtime.clone(), source.clone(), render.clone());
            async move {
                if let Some(bytes) = pending {
                    return Some((Ok::<Bytes, std::io::Error>(bytes), (None, cursor, done)));
                }
                let cursor = cursor.filter(|_| !done)?;
                match export_page(&runtime, org, &source, Some(cursor)).await {
                    Ok(page) => {
                        let next = page.next_cursor.clone();
                        let finished = next.is_none();
                        Some((Ok(render(&page)), (None, next, finished)))
                    }
                    Err(p) => {
                        tracing::error!(detail = %p.detail, "export stopped");
                        Some((Err(std::io::Error::other(p.detail)), (None, None, true)))
                    }
                }
            }
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(operation_id = "export_customers", get, path = "/api/v1/orgs/{org}/exports/customers", tag = "customers",
    params(("org" = String, Path), ExportQuery),
    responses((status = 200, description = "CSV: id, attributes, computed traits, segments", content_type = "text/csv"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Path(org): Path<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    caller.org_id(&org)?;
    let list = ListQuery {
        filter: query.filter,
        q: query.q,
        sort: None,
        limit: None,
        cursor: None,
    };
    let source = ExportSource::Customers(list_query(&list, 1000)?);
    export_csv(&state, &caller, source, "customers.csv").await
}

#[utoipa::path(operation_id = "export_segment", get, path = "/api/v1/orgs/{org}/segments/{id}/export", tag = "segments",
    params(("org" = String, Path), ("id" = Uuid, Path)),
    responses((status = 200, description = "CSV of the members: id, attributes, computed traits, segments", content_type = "text/csv"),
        (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn export_segment(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Problem> {
    let org = caller.org_id(&org)?;
    let id = path_id(&id, "segment")?;
    state.runtime.get_segment(org, id).await?;
    export_csv(
        &state,
        &caller,
        ExportSource::Segment(id),
        &format!("segment-{id}.csv"),
    )
    .await
}

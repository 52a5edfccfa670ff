//! Decoding of Segment HTTP Tracking API requests (`/v1/batch`, `/v1/identify`,
//! `/v1/track`, `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias`) into engine
//! events, before anything is written.
//!
//! What the official SDKs send, and what this accepts:
//! - the write key as the HTTP Basic user name with an empty password, or as
//!   `writeKey` in the body (Segment's Python SDK sends both);
//! - gzip bodies, whether or not `Content-Encoding` says so (RudderStack's Node
//!   SDK labels gzipped JSON `application/x-www-form-urlencoded`), and JSON
//!   whatever the `Content-Type`;
//! - identify traits in `traits` or, as RudderStack's Python SDK does, in
//!   `context.traits`.
//!
//! Limits: 32 KiB per event and 500 KiB per request (after decompression, so a
//! small gzip bomb is refused too). A request is accepted whole or refused whole:
//! one bad event refuses the request with an error that points at it
//! (`/batch/3/userId`), so nothing is dropped silently.
//!
//! Timestamps follow the Segment spec: the client's `timestamp` (or
//! `originalTimestamp`) is corrected for the client's clock skew with
//! `timestamp = receivedAt - (sentAt - originalTimestamp)` when the client also
//! sent `sentAt`; with no client time the event happened when it was received.

use base64::Engine as _;
use serde_json::{Map, Value as Json};
use std::io::Read;
use xeno_engine::model::{Event, EventKind};
use xeno_engine::time::Timestamp;

/// Largest accepted event, serialised, in bytes.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest accepted request body after decompression, in bytes.
pub const MAX_REQUEST_BYTES: usize = 500 * 1024;

/// The route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Batch,
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl Endpoint {
    /// The endpoint for the last path segment of `/v1/{name}`.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Some(match name {
            "batch" | "import" => Endpoint::Batch,
            "identify" => Endpoint::Identify,
            "track" => Endpoint::Track,
            "page" => Endpoint::Page,
            "screen" => Endpoint::Screen,
            "group" => Endpoint::Group,
            "alias" => Endpoint::Alias,
            _ => return None,
        })
    }

    fn event_type(self) -> Option<&'static str> {
        Some(match self {
            Endpoint::Batch => return None,
            Endpoint::Identify => "identify",
            Endpoint::Track => "track",
            Endpoint::Page => "page",
            Endpoint::Screen => "screen",
            Endpoint::Group => "group",
            Endpoint::Alias => "alias",
        })
    }
}

/// An HTTP request as the decoder needs it.
#[derive(Debug, Clone, Copy)]
pub struct IngestRequest<'a> {
    pub endpoint: Endpoint,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<&'a str>,
    pub body: &'a [u8],
    /// When the server received the request.
    pub received_at: Timestamp,
}

/// A decoded request: the write key that authenticates it and its events, in
/// the order sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub write_key: String,
    pub events: Vec<Event>,
}

/// Why a request is refused. `pointer` is a JSON pointer into the request body
/// (empty for the request as a whole), for an RFC 9457 problem's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if pointer.is_empty() { String::new() } else { format!("{pointer}: ") })]
pub struct IngestError {
    /// The HTTP status to answer with: 400, 401 or 413.
    pub status: u16,
    pub pointer: String,
    pub reason: String,
}

fn refuse(status: u16, pointer: impl Into<String>, reason: impl Into<String>) -> IngestError {
    IngestError {
        status,
        pointer: pointer.into(),
        reason: reason.into(),
    }
}

/// Decodes one request. Nothing here has side effects: the caller writes the
/// events only when this returns `Ok`.
pub fn decode(request: &IngestRequest<'_>) -> Result<Decoded, IngestError> {
    let body = decompress(request.body, request.content_encoding)?;
    let limit = match request.endpoint {
        Endpoint::Batch => MAX_REQUEST_BYTES,
        _ => MAX_EVENT_BYTES,
    };
    if body.len() > limit {
        return Err(refuse(
            413,
            "",
            format!("the body is {} bytes, the limit is {limit}", body.len()),
        ));
    }
    let json: Json = serde_json::from_slice(&body)
        .map_err(|e| refuse(400, "", format!("the body is not valid JSON: {e}")))?;
    let Json::Object(mut root) = json else {
        return Err(refuse(400, "", "the body must be a JSON object"));
    };
    let write_key = write_key(request.authorization, &root)?;
    let batch_sent_at = client_time(&root, "sentAt", &String::new)?;
    let events = match request.endpoint {
        Endpoint::Batch => {
            let items = match root.remove("batch") {
                Some(Json::Array(items)) => items,
                Some(_) => return Err(refuse(400, "/batch", "`batch` must be a list of events")),
                None => return Err(refuse(400, "/batch", "`batch` is missing")),
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let pointer = || format!("/batch/{i}");
                    let Json::Object(item) = item else {
                        return Err(refuse(400, pointer(), "an event must be a JSON object"));
                    };
                    let size = serialized_len(&item);
                    if size > MAX_EVENT_BYTES {
                        return Err(refuse(
                            413,
                            pointer(),
                            format!("the event is {size} bytes, the limit is {MAX_EVENT_BYTES}"),
                        ));
                    }
                    normalise(item, None, batch_sent_at, request.received_at, &pointer)
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        single => vec![normalise(
            root,
            single.event_type(),
            batch_sent_at,
            request.received_at,
            &String::new,
        )?],
    };
    Ok(Decoded { write_key, events })
}

/// The length of `item` serialised, counted without building the bytes.
fn serialized_len(item: &Map<String, Json>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, item) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

fn decompress(body: &[u8], encoding: Option<&str>) -> Result<Vec<u8>, IngestError> {
    let declared = encoding.is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    let sniffed = body.starts_with(&[0x1f, 0x8b]);
    if !declared && !sniffed {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    // Read one byte past the limit to tell "at the limit" from "over it".
    let read = flate2::read::GzDecoder::new(body)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Ok(_) if out.len() > MAX_REQUEST_BYTES => Err(refuse(
            413,
            "",
            format!("the body inflates to more than {MAX_REQUEST_BYTES} bytes"),
        )),
        Ok(_) => Ok(out),
        Err(e) => Err(refuse(400, "", format!("the gzip body is corrupt: {e}"))),
    }
}

fn write_key(authorization: Option<&str>, root: &Map<String, Json>) -> Result<String, IngestError> {
    if let Some(header) = authorization {
        let Some(encoded) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        else {
            return Err(refuse(
                401,
                "",
                "the Authorization header must be Basic with the write key as the user name",
            ));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| refuse(401, "", "the Authorization header is not valid base64"))?;
        let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
        if !user.is_empty() {
            return Ok(user.to_string());
        }
    }
    match root.get("writeKey") {
        Some(Json::String(key)) if !key.is_empty() => Ok(key.clone()),
        Some(Json::String(_)) | None => Err(refuse(
            401,
            "",
            "no write key: send it as the Basic user name or as `writeKey`",
        )),
        Some(_) => Err(refuse(401, "/writeKey", "`writeKey` must be a string")),
    }
}

/// An optional RFC 3339 time of the client's.
fn client_time(
    object: &Map<String, Json>,
    key: &str,
    base: &dyn Fn() -> String,
) -> Result<Option<Timestamp>, IngestError> {
    let pointer = || format!("{}/{key}", base());
    match object.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Timestamp::parse_rfc3339(text)
            .map(Some)
            .map_err(|e| refuse(400, pointer(), e.to_string())),
        Some(_) => Err(refuse(400, pointer(), "a time must be an RFC 3339 string")),
    }
}

/// An id: a non-empty string, or a number (sent as text).
fn id(
    object: &mut Map<String, Json>,
    key: &str,
    base: &dyn Fn() -> String,
) -> Result<Option<String>, IngestError> {
    let pointer = || format!("{}/{key}", base());
    match object.remove(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => Ok(None),
        Some(Json::String(s)) if s.len() <= 1024 => Ok(Some(s)),
        Some(Json::String(_)) => Err(refuse(400, pointer(), "ids are limited to 1024 bytes")),
        Some(Json::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(refuse(400, pointer(), "an id must be a string")),
    }
}

/// Takes an object field out of `object` (no copy).
fn object_field(
    object: &mut Map<String, Json>,
    key: &str,
    base: &dyn Fn() -> String,
) -> Result<Option<Map<String, Json>>, IngestError> {
    match object.remove(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(map)) => Ok(Some(map)),
        Some(_) => Err(refuse(
            400,
            format!("{}/{key}", base()),
            format!("`{key}` must be an object"),
        )),
    }
}

fn required_string(
    object: &mut Map<String, Json>,
    key: &str,
    base: &dyn Fn() -> String,
) -> Result<String, IngestError> {
    match object.remove(key) {
        Some(Json::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(refuse(
            400,
            format!("{}/{key}", base()),
            format!("`{key}` is required and must be a non-empty string"),
        )),
    }
}

fn normalise(
    mut item: Map<String, Json>,
    endpoint_type: Option<&str>,
    batch_sent_at: Option<Timestamp>,
    received_at: Timestamp,
    base: &dyn Fn() -> String,
) -> Result<Event, IngestError> {
    // Most events are valid: JSON pointers are built only for an error, and
    // fields are moved out of the parsed object rather than copied.
    let at = |key: &str| format!("{}/{key}", base());
    let item = &mut item;
    let event_type = match (endpoint_type, item.get("type")) {
        (Some(t), _) => t.to_string(),
        (None, Some(Json::String(t))) => t.clone(),
        (None, _) => {
            return Err(refuse(
                400,
                at("type"),
                "`type` is required in a batch event",
            ));
        }
    };
    let message_id = match id(item, "messageId", base)? {
        Some(id) => id,
        None => uuid::Uuid::now_v7().to_string(),
    };
    let user_id = id(item, "userId", base)?;
    let anonymous_id = id(item, "anonymousId", base)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(refuse(
            400,
            at("userId"),
            "an event needs a userId or an anonymousId",
        ));
    }
    let original = match client_time(item, "originalTimestamp", base)? {
        Some(t) => Some(t),
        None => client_time(item, "timestamp", base)?,
    };
    let sent_at = client_time(item, "sentAt", base)?.or(batch_sent_at);
    let timestamp = match (original, sent_at) {
        // Correct the client's clock by how far its sentAt is from receivedAt.
        (Some(original), Some(sent)) => Timestamp(received_at.0 - (sent.0 - original.0)),
        (Some(original), None) => original,
        (None, _) => received_at,
    };
    if !timestamp.is_rfc3339_range() {
        return Err(refuse(
            400,
            at("timestamp"),
            "the corrected timestamp is outside years 0000 to 9999",
        ));
    }
    let name = |item: &mut Map<String, Json>| -> Result<Option<String>, IngestError> {
        match item.remove("name") {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(_) => Err(refuse(400, at("name"), "`name` must be a string")),
        }
    };
    let kind = match event_type.as_str() {
        "identify" => {
            let traits = match object_field(item, "traits", base)? {
                Some(traits) => traits,
                // RudderStack's Python SDK puts identify traits in the context.
                None => object_field(item, "context", base)?
                    .and_then(|mut context| match context.remove("traits") {
                        Some(Json::Object(traits)) => Some(traits),
                        _ => None,
                    })
                    .unwrap_or_default(),
            };
            EventKind::Identify { traits }
        }
        "track" => EventKind::Track {
            event: required_string(item, "event", base)?,
            properties: object_field(item, "properties", base)?.unwrap_or_default(),
        },
        "page" => EventKind::Page {
            name: name(item)?,
            properties: object_field(item, "properties", base)?.unwrap_or_default(),
        },
        "screen" => EventKind::Screen {
            name: name(item)?,
            properties: object_field(item, "properties", base)?.unwrap_or_default(),
        },
        "group" => EventKind::Group {
            group_id: required_string(item, "groupId", base)?,
            traits: object_field(item, "traits", base)?.unwrap_or_default(),
        },
        "alias" => EventKind::Alias {
            previous_id: required_string(item, "previousId", base)?,
        },
        other => {
            return Err(refuse(
                400,
                at("type"),
                format!(
                    "unknown type `{other}`: use identify, track, page, screen, group or alias"
                ),
            ));
        }
    };
    Ok(Event {
        message_id,
        user_id,
        anonymous_id,
        timestamp,
        kind,
    })
}

#[cfg(test)]
mod tests;

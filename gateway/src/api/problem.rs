//! RFC 9457 problem details: every error of the API is
//! `application/problem+json` naming the field at fault and the reason.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use xeno_actors::RuntimeError;

/// One thing wrong with the request.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer into the request body (empty for the request as a whole).
    pub pointer: String,
    pub reason: String,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[schema(value_type = u16)]
    #[serde(serialize_with = "status_code")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

fn status_code<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A problem about one field.
    pub fn field(status: StatusCode, pointer: &str, reason: &str) -> Problem {
        let detail = if pointer.is_empty() {
            reason.to_string()
        } else {
            format!("{pointer}: {reason}")
        };
        let mut p = Problem::new(status, detail);
        p.errors.push(FieldError {
            pointer: pointer.to_string(),
            reason: reason.to_string(),
        });
        p
    }

    pub fn unauthorized(detail: &str) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn not_found(what: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    /// A body that is not the JSON this route takes.
    pub fn bad_body(e: serde_json::Error) -> Problem {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "",
            &format!("the body is not valid for this route: {e}"),
        )
    }
}

impl From<RuntimeError> for Problem {
    fn from(e: RuntimeError) -> Problem {
        match e {
            RuntimeError::NotFound(what) => Problem::not_found(&what),
            RuntimeError::Invalid { pointer, reason } => {
                Problem::field(StatusCode::UNPROCESSABLE_ENTITY, &pointer, &reason)
            }
            RuntimeError::Conflict(reason) => Problem::new(StatusCode::CONFLICT, reason),
            RuntimeError::Forbidden(reason) => Problem::new(StatusCode::FORBIDDEN, reason),
            RuntimeError::Busy { retry_after_secs } => {
                let mut p = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is saturated; retry later",
                );
                p.retry_after = Some(retry_after_secs);
                p
            }
            RuntimeError::Storage(reason) => {
                tracing::error!(error = %reason, "storage failure answered 503");
                let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
                p.retry_after = Some(1);
                p
            }
            RuntimeError::Internal(reason) => {
                tracing::error!(error = %reason, "internal error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).expect("problems serialise");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

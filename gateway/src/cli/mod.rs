//! The client side of the `xeno` binary: subcommands that talk to a running
//! server over its management API (`xeno import`, `xeno export`).
//!
//! This module holds what they share: the API key from `XENO_API_KEY`, the
//! HTTP client, URLs under `/api/v1/orgs/{org}` and the rendering of the
//! server's `application/problem+json` refusals. Errors here are `anyhow`
//! because this is the binary's edge: they end as one line on stderr.

pub mod export;
pub mod import;

use std::fmt;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use reqwest::{Response, Url};
use serde::Deserialize;

/// The server the commands talk to when `--server` is not given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The environment variable holding the API key. An environment variable
/// rather than a flag keeps the key out of the shell history and `ps`.
pub const API_KEY_VARIABLE: &str = "XENO_API_KEY";

/// Exit code of a command that failed at run time (HTTP, API or I/O error).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error, the same clap uses for bad arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code after an interruption (Ctrl-C), as a shell reports SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// A usage error found after clap parsed the arguments (conflicting flags,
/// a missing API key): the command exits with [`EXIT_USAGE`].
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Prints `error` on stderr and turns it into the exit code it deserves.
pub fn report_error(error: &anyhow::Error) -> ExitCode {
    eprintln!("xeno: {error:#}");
    if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// Runs `command` on a single-threaded runtime: the commands do one thing at
/// a time (upload, then poll), so a worker pool would only cost threads.
pub fn block_on<F: Future<Output = ExitCode>>(command: F) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("xeno: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// One RFC 9457 problem as the server sends it. Every field is optional so a
/// proxy's or an older server's error still prints something useful.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Problem {
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub errors: Vec<ProblemField>,
}

/// One field at fault in a [`Problem`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProblemField {
    pub pointer: String,
    pub reason: String,
}

/// A refusal of the server: the HTTP status and what the body says about it.
#[derive(Debug)]
pub struct ApiError {
    pub status: reqwest::StatusCode,
    pub problem: Problem,
}

impl ApiError {
    /// Builds the error from a response body, problem+json or not.
    pub fn from_body(status: reqwest::StatusCode, body: &[u8]) -> ApiError {
        let problem = match serde_json::from_slice::<Problem>(body) {
            Ok(problem) => problem,
            // Not a problem document (a proxy's HTML page, plain text): the
            // start of the body is still the best explanation there is.
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let detail: String = text.chars().take(500).collect();
                Problem {
                    detail,
                    ..Problem::default()
                }
            }
        };
        ApiError { status, problem }
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.status.as_u16(), 429 | 502 | 503 | 504)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problem = &self.problem;
        let headline = if !problem.detail.is_empty() {
            problem.detail.as_str()
        } else if !problem.title.is_empty() {
            problem.title.as_str()
        } else {
            self.status.canonical_reason().unwrap_or("error")
        };
        write!(f, "{headline} (http {})", self.status.as_u16())?;
        for field in &problem.errors {
            let line = if field.pointer.is_empty() {
                field.reason.clone()
            } else {
                format!("{}: {}", field.pointer, field.reason)
            };
            // The server's detail of a one-field problem is already
            // "pointer: reason"; repeating it adds nothing.
            if line != problem.detail && field.reason != problem.detail {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The most a refusal's body is read: problems are small, and a misbehaving
/// server must not make the client buffer gigabytes to print an error.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// Returns `response` when its status is a success, else the [`ApiError`] its
/// body describes.
pub async fn check(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut response = response;
    let mut body = Vec::new();
    // A body cut short still explains the refusal better than none.
    while body.len() < MAX_PROBLEM_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_PROBLEM_BYTES);
    Err(ApiError::from_body(status, &body).into())
}

/// Reads a whole (small) JSON answer into `T`.
pub async fn json<T: serde::de::DeserializeOwned>(response: Response) -> anyhow::Result<T> {
    let url = response.url().clone();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    serde_json::from_slice(&body)
        .with_context(|| format!("the answer of {url} is not the json expected"))
}

/// The API key of the commands, from [`API_KEY_VARIABLE`].
pub fn api_key_from_env() -> anyhow::Result<String> {
    match std::env::var(API_KEY_VARIABLE) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        Ok(_) => Err(UsageError(format!("{API_KEY_VARIABLE} is set but empty")).into()),
        Err(std::env::VarError::NotPresent) => Err(UsageError(format!(
            "{API_KEY_VARIABLE} is not set; export it with an API key of the organization"
        ))
        .into()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(UsageError(format!("{API_KEY_VARIABLE} is not valid unicode")).into())
        }
    }
}

/// Parses `--server`: an `http://` or `https://` base URL, possibly with a
/// path prefix when the server sits behind a reverse proxy.
pub fn parse_server(server: &str) -> Result<Url, UsageError> {
    let url = Url::parse(server)
        .map_err(|e| UsageError(format!("--server `{server}` is not a url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UsageError(format!(
            "--server `{server}` must start with http:// or https://"
        )));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(UsageError(format!("--server `{server}` has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UsageError(format!(
            "--server `{server}` must not have a query or fragment"
        )));
    }
    Ok(url)
}

/// A client of one organization's API on one server.
pub struct ApiClient {
    http: reqwest::Client,
    server: Url,
    org: String,
    api_key: String,
}

impl ApiClient {
    /// A client for `org` on `server`, with the key from `XENO_API_KEY`.
    pub fn from_env(server: &str, org: &str) -> anyhow::Result<ApiClient> {
        let server = parse_server(server)?;
        if org.is_empty() {
            return Err(UsageError("--org must not be empty".into()).into());
        }
        let api_key = api_key_from_env()?;
        ApiClient::new(server, org, api_key)
    }

    pub fn new(server: Url, org: &str, api_key: String) -> anyhow::Result<ApiClient> {
        // Several crates may race to install the process-wide provider; the
        // first one wins and any is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("xeno-cli/", env!("CARGO_PKG_VERSION")))
            // Only the connection has a deadline: an upload of several GB or an
            // export of millions of rows legitimately takes hours.
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the http client")?;
        Ok(ApiClient {
            http,
            server,
            org: org.to_string(),
            api_key,
        })
    }

    /// The server's base URL, as given to `--server`.
    pub fn server(&self) -> &Url {
        &self.server
    }

    /// `{server}/api/v1/orgs/{org}/{segments...}`. Each segment is
    /// percent-encoded, so a user-given identifier cannot escape its place
    /// in the path.
    pub fn org_url(&self, segments: &[&str]) -> Url {
        let mut url = self.server.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("parse_server accepts only base urls");
            path.pop_if_empty()
                .extend(["api", "v1", "orgs", self.org.as_str()])
                .extend(segments);
        }
        url
    }

    /// A URL the server gave in an answer (`errors_url`): usually an absolute
    /// path (`/api/v1/...`), resolved against `--server` and its path prefix
    /// if any. A full URL is accepted only on the same origin, since the API
    /// key goes with the request.
    pub fn server_url(&self, given: &str) -> anyhow::Result<Url> {
        if given.starts_with("http://") || given.starts_with("https://") {
            let url =
                Url::parse(given).with_context(|| format!("the server gave a bad url: {given}"))?;
            if url.origin() != self.server.origin() {
                bail!("the server pointed at another origin: {given}");
            }
            return Ok(url);
        }
        let mut url = self.server.clone();
        let prefix = url.path().trim_end_matches('/').to_string();
        let (path, query) = match given.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (given, None),
        };
        url.set_path(&format!("{prefix}/{}", path.trim_start_matches('/')));
        url.set_query(query);
        Ok(url)
    }

    pub fn get(&self, url: Url) -> reqwest::RequestBuilder {
        self.http.get(url).bearer_auth(&self.api_key)
    }

    pub fn post(&self, url: Url) -> reqwest::RequestBuilder {
        self.http.post(url).bearer_auth(&self.api_key)
    }
}

/// Sends `request`, naming the URL and the cause when the server cannot be
/// reached, and turns an error status into an [`ApiError`].
pub async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Response> {
    let response = request.send().await.map_err(describe_transport_error)?;
    check(response).await
}

/// reqwest's own message ("error sending request for url ...") hides the
/// cause (connection refused, dns) in its source chain; this brings it out.
pub fn describe_transport_error(error: reqwest::Error) -> anyhow::Error {
    let url = error
        .url()
        .map(|url| url.to_string())
        .unwrap_or_else(|| "the server".to_string());
    let mut cause = String::new();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if error.is_connect() {
        anyhow!("cannot connect to {url}: {cause}")
    } else if error.is_timeout() {
        anyhow!("{url} timed out")
    } else if cause.is_empty() {
        anyhow!("request to {url} failed: {error}")
    } else {
        anyhow!("request to {url} failed: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> ApiClient {
        ApiClient::new(parse_server(server).unwrap(), "acme corp", "key".into()).unwrap()
    }

    #[test]
    fn org_urls_encode_each_segment_and_keep_a_path_prefix() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.org_url(&["segments", "a/b", "export"]).as_str(),
            "http://127.0.0.1:8080/api/v1/orgs/acme%20corp/segments/a%2Fb/export"
        );
        let c = client("https://example.com/xeno/");
        assert_eq!(
            c.org_url(&["imports"]).as_str(),
            "https://example.com/xeno/api/v1/orgs/acme%20corp/imports"
        );
        assert_eq!(
            c.server_url("/api/v1/orgs/acme/imports/1/errors")
                .unwrap()
                .as_str(),
            "https://example.com/xeno/api/v1/orgs/acme/imports/1/errors"
        );
    }

    #[test]
    fn server_urls_must_be_http() {
        assert!(parse_server("ftp://example.com").is_err());
        assert!(parse_server("127.0.0.1:8080").is_err());
        assert!(parse_server("http://localhost:8080").is_ok());
    }

    #[test]
    fn problems_print_the_detail_and_each_field() {
        let body = br#"{"type":"about:blank","title":"Unprocessable Entity","status":422,
            "detail":"the options are invalid",
            "errors":[{"pointer":"/mapping/Spend","reason":"unknown attribute"},
                      {"pointer":"/delimiter","reason":"must be one byte"}]}"#;
        let error = ApiError::from_body(reqwest::StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(
            error.to_string(),
            "the options are invalid (http 422)\n  /mapping/Spend: unknown attribute\n  /delimiter: must be one byte"
        );
        // The server's one-field problems repeat the field in the detail.
        let body =
            br#"{"status":400,"detail":"/a: bad","errors":[{"pointer":"/a","reason":"bad"}]}"#;
        let error = ApiError::from_body(reqwest::StatusCode::BAD_REQUEST, body);
        assert_eq!(error.to_string(), "/a: bad (http 400)");
        let error = ApiError::from_body(
            reqwest::StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert_eq!(error.to_string(), "<html>bad gateway</html> (http 502)");
    }
}

//! A small harness for the tests that run the real `xeno serve` process and
//! must kill and restart it on the same data folder (`crash_safety`) or check
//! its answers to bad requests (`bad_input`).
//!
//! It is kept apart from `tests/common/` because it needs what that one may not
//! offer: a process that survives being SIGKILLed and restarted on the same data
//! folder, one log file across the restarts, and raw requests (any bytes, any
//! headers, no status turned into an error).

#![allow(dead_code)] // each test crate uses a different part of it

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value as Json;

pub const WRITE_KEY: &str = "wk_e2e_test";
pub const ADMIN_KEY: &str = "xk_e2e_test";
pub const ORG: &str = "demo";

/// One `xeno serve` process over a data folder that outlives it.
pub struct Xeno {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the running process.
    pub base: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    _folder: tempfile::TempDir,
}

impl Xeno {
    /// Starts a server on a fresh data folder and waits until it is ready.
    pub fn start() -> Xeno {
        let folder = tempfile::tempdir().expect("temporary folder");
        let data_dir = folder.path().join("data");
        let log_path = folder.path().join("xeno.log");
        let mut xeno = Xeno {
            child: None,
            base: String::new(),
            data_dir,
            log_path,
            _folder: folder,
        };
        xeno.spawn();
        xeno
    }

    /// Starts the process again on the same data folder, on a new free port (so
    /// that no connection to the killed process can reach the new one), and
    /// waits until it is ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let port = free_port();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("server log file");
        let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let child = Command::new(env!("CARGO_BIN_EXE_xeno"))
            .arg("serve")
            .arg("--config")
            .arg(repo_root.join("config.toml"))
            .env("XENO__STORAGE__DATA_DIR", &self.data_dir)
            .env("XENO__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("XENO__BOOTSTRAP__WRITE_KEY", WRITE_KEY)
            .env("XENO__BOOTSTRAP__ADMIN_API_KEY", ADMIN_KEY)
            .env("XENO__BOOTSTRAP__ORG", ORG)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log file"))
            .stderr(log)
            .spawn()
            .expect("start `xeno serve`");
        self.child = Some(child);
        self.base = format!("http://127.0.0.1:{port}");
        self.wait_ready(Duration::from_secs(30));
    }

    /// Polls `/readyz` until it answers 200; panics with the server's log when
    /// the process exits or the time runs out.
    fn wait_ready(&mut self, limit: Duration) {
        let agent = agent(Duration::from_secs(2));
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "`xeno serve` exited with {status} before it was ready\n{}",
                    self.log_tail(60)
                );
            }
            if let Ok(reply) = get(&agent, &format!("{}/readyz", self.base), None)
                && reply.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`xeno serve` not ready within {limit:?}\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL (no shutdown hook runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of the server's output, over all its restarts.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of the server log ---\n{}",
            all.len() - start,
            all[start..].join("\n")
        )
    }

    pub fn org_url(&self, rest: &str) -> String {
        format!("{}/api/v1/orgs/{ORG}{rest}", self.base)
    }
}

impl Drop for Xeno {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        }
        self.kill();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A blocking client that returns every status as a reply, not an error.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }
}

fn read(mut response: ureq::http::Response<ureq::Body>) -> Result<Reply, ureq::Error> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.body_mut().read_to_string()?;
    Ok(Reply {
        status,
        content_type,
        body,
    })
}

/// `Authorization` for a write key, as every Segment SDK sends it.
pub fn basic(write_key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"))
    )
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Sends `body` as is, with the given extra headers; `Err` only when no HTTP
/// answer came back (refused, reset, timed out).
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    authorization: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, ureq::Error> {
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_empty() && !matches!(method, "POST" | "PUT" | "PATCH") {
        // ureq refuses a body, even an empty one, on GET and DELETE.
        return read(agent.run(request.body(()).expect("valid request"))?);
    }
    read(agent.run(request.body(body.to_vec()).expect("valid request"))?)
}

pub fn get(
    agent: &ureq::Agent,
    url: &str,
    authorization: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let mut request = ureq::http::Request::builder().method("GET").uri(url);
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    read(agent.run(request.body(()).expect("valid request"))?)
}

/// The admin's management API call; panics when no answer came back.
pub fn admin(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Json>) -> Reply {
    let auth = bearer(ADMIN_KEY);
    let result = match body {
        Some(json) => send(
            agent,
            method,
            url,
            Some(&auth),
            &[],
            json.to_string().as_bytes(),
        ),
        None if method == "GET" => get(agent, url, Some(&auth)),
        None => send(agent, method, url, Some(&auth), &[], b""),
    };
    result.unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"))
}

/// Milliseconds since the Unix epoch, as an RFC 3339 time.
pub fn now_rfc3339() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    xeno_engine::time::Timestamp(millis).to_rfc3339()
}

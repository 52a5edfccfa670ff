//! Shared harness of the end-to-end tests: a real `xeno serve` on a loopback port
//! with a fresh data folder, a small blocking HTTP client for its APIs, the Python
//! clients of `tests/e2e/` (the Segment and RudderStack SDKs, a webhook endpoint
//! verified with the Standard Webhooks reference library), and bounded polling.
//!
//! Python comes from `XENO_TEST_PYTHON`, which `scripts/test` exports after
//! installing `scripts/test-requirements.txt` into a venv. Tests that need it fail,
//! rather than pass silently, when it is not set.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod services;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const WRITE_KEY: &str = "wk_e2e_test_write_key";
pub const ADMIN_API_KEY: &str = "xk_e2e_test_admin_key";
pub const ORG: &str = "demo";

/// How long the server may take to answer `GET /readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository root, where `config.toml` lives.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent folder")
        .to_path_buf()
}

/// A script of `gateway/tests/e2e/`.
pub fn e2e_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(name)
}

/// The venv Python that has the SDKs and `standardwebhooks` installed.
pub fn python() -> PathBuf {
    match std::env::var_os("XENO_TEST_PYTHON") {
        Some(python) if !python.is_empty() => PathBuf::from(python),
        _ => panic!(
            "XENO_TEST_PYTHON is not set: this end-to-end test drives the real Python SDKs \
             and the standardwebhooks library. Run scripts/test, which installs \
             scripts/test-requirements.txt into a venv and exports XENO_TEST_PYTHON, or set \
             XENO_TEST_PYTHON to a python with those requirements installed"
        ),
    }
}

/// A port that was free a moment ago (bound on port 0, then released).
pub fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The current wall-clock time, truncated to milliseconds, as an RFC 3339 string
/// and as milliseconds since the Unix epoch (the same instant).
pub fn now_millis() -> (String, i64) {
    let now = OffsetDateTime::now_utc();
    let millis = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let truncated = OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
        .expect("a current time is in range");
    (
        truncated.format(&Rfc3339).expect("RFC 3339 formatting"),
        millis,
    )
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with
/// `what` and the last `Err` (which should describe what was seen instead).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP answer: status and body text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.body))
    }

    /// The JSON body, after checking the status; the panic shows the whole answer.
    pub fn expect(&self, status: u16, request: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{request} answered {} instead of {status}: {}",
            self.status, self.body
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .proxy(None)
        .build()
        .into()
}

fn finish(
    what: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, String> {
    let mut response = result.map_err(|e| format!("{what}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{what}: reading the body: {e}"))?;
    Ok(Reply { status, body })
}

/// A `xeno serve` child process with its own data folder; killed on drop. If the
/// test panics, the end of the server's log is printed.
pub struct Server {
    child: Child,
    pub base_url: String,
    agent: ureq::Agent,
    log_path: PathBuf,
    _data_dir: TempDir,
}

impl Server {
    /// Starts the server and waits for `GET /readyz` to answer 200.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// [`Server::start`] with more `XENO__...` settings.
    pub fn start_with(env: &[(&str, String)]) -> Server {
        // The port is free when chosen but another process could take it before the
        // server binds it; a server that exits before it is ready gets another try.
        let mut last_failure = String::new();
        for _ in 0..3 {
            match Server::try_start(env) {
                Ok(server) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("xeno serve did not become ready: {last_failure}");
    }

    fn try_start(env: &[(&str, String)]) -> Result<Server, String> {
        let data_dir = tempfile::Builder::new()
            .prefix("xeno-e2e-")
            .tempdir()
            .expect("create a temporary data folder");
        let listen = env
            .iter()
            .find(|(k, _)| *k == "XENO__SERVER__LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_loopback_port()));
        let log_path = data_dir.path().join("server.log");
        let log = fs::File::create(&log_path).expect("create the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_xeno"))
            .arg("serve")
            .arg("--config")
            .arg(repo_root().join("config.toml"))
            .env("XENO__STORAGE__DATA_DIR", data_dir.path().join("data"))
            .env("XENO__SERVER__LISTEN", &listen)
            .env("XENO__BOOTSTRAP__ORG", ORG)
            .env("XENO__BOOTSTRAP__WRITE_KEY", WRITE_KEY)
            .env("XENO__BOOTSTRAP__ADMIN_API_KEY", ADMIN_API_KEY)
            .env("XENO__ENGINE__TICK", "100ms")
            .env("XENO__WEBHOOKS__FIRST_RETRY", "1s")
            // Cheap password hashes: the tests log in often (the cost is a
            // setting; production keeps the default).
            .env("XENO__AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("XENO__AUTH__ARGON2_ITERATIONS", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            // A plain log file, readable when a failing test prints its end.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start the xeno binary");
        let mut server = Server {
            child,
            base_url: format!("http://{listen}"),
            agent: agent(),
            log_path,
            _data_dir: data_dir,
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().expect("poll the server process") {
                return Err(format!(
                    "xeno serve exited with {status} before it was ready; its log:\n{}",
                    server.log_tail(80)
                ));
            }
            match server.get("/readyz") {
                Ok(reply) if reply.status == 200 => return Ok(server),
                _ if Instant::now() >= deadline => {
                    let seen = server
                        .get("/readyz")
                        .map_or_else(|e| e, |r| format!("{} {}", r.status, r.body));
                    panic!(
                        "GET /readyz did not answer 200 within {READY_TIMEOUT:?} (last: {seen}); \
                         server log:\n{}",
                        server.log_tail(80)
                    );
                }
                _ => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The last `lines` lines of the server's stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `/api/v1/orgs/{ORG}` + `path`.
    pub fn org_url(&self, path: &str) -> String {
        self.url(&format!("/api/v1/orgs/{ORG}{path}"))
    }

    /// An unauthenticated GET, `Err` when no answer came.
    pub fn get(&self, path: &str) -> Result<Reply, String> {
        finish(
            &format!("GET {path}"),
            self.agent.get(self.url(path)).call(),
        )
    }

    fn bearer() -> String {
        format!("Bearer {ADMIN_API_KEY}")
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Any method on any path, with an optional bearer credential, JSON body
    /// and extra headers.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        self.call_with(method, path, bearer, body, &[])
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.call_on(&self.agent, method, path, bearer, body, headers)
    }

    /// [`Server::call_with`] on a connection of its own: a server may close a
    /// connection whose request body it did not read (a refused call), and a
    /// pooled connection would then fail the next call.
    pub fn call_fresh(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        self.call_on(&agent(), method, path, bearer, body, &[])
    }

    fn call_on(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = self.url(path);
        let what = format!(
            "{method} {url} {}",
            body.map(Value::to_string).unwrap_or_default()
        );
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.map(Value::to_string).unwrap_or_default())
            .expect("a valid request");
        finish(&what, agent.run(request)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The answer's headers too (CORS, Retry-After, Location).
    pub fn call_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, ureq::http::HeaderMap, String) {
        let url = self.url(path);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map(Value::to_string).unwrap_or_default())
            .expect("a valid request");
        let no_redirects: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build()
            .into();
        let mut response = no_redirects
            .run(request)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (status, headers, body)
    }

    /// GET on the management API of the organization (`path` after the org slug).
    pub fn admin_get(&self, path: &str) -> Reply {
        let what = format!("GET {}", self.org_url(path));
        finish(
            &what,
            self.agent
                .get(self.org_url(path))
                .header("authorization", Self::bearer())
                .call(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// POST with a JSON body on the management API of the organization.
    pub fn admin_post(&self, path: &str, body: &Value) -> Reply {
        let what = format!("POST {} {body}", self.org_url(path));
        finish(
            &what,
            self.agent
                .post(self.org_url(path))
                .header("authorization", Self::bearer())
                .send_json(body),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Any method with an optional JSON body on the management API.
    pub fn admin_call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let url = self.org_url(path);
        let what = format!(
            "{method} {url} {}",
            body.map(Value::to_string).unwrap_or_default()
        );
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", Self::bearer())
            .header("content-type", "application/json")
            .body(body.map(Value::to_string).unwrap_or_default())
            .expect("a valid request");
        finish(&what, self.agent.run(request)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// POST of raw bytes with a content type on the management API.
    pub fn admin_post_bytes(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let what = format!(
            "POST {} ({} bytes of {content_type})",
            self.org_url(path),
            body.len()
        );
        finish(
            &what,
            self.agent
                .post(self.org_url(path))
                .header("authorization", Self::bearer())
                .header("content-type", content_type)
                .send(body),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// POST to the ingest API without checking the answer.
    pub fn ingest_reply(&self, path: &str, body: &Value) -> Reply {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
        finish(
            &format!("POST {path} {body}"),
            self.agent
                .post(self.url(path))
                .header("authorization", format!("Basic {basic}"))
                .send_json(body),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// POST to the ingest API (`/v1/...`) with the write key as Basic user name,
    /// as the Segment SDKs do; expects `200 {"success": true}`.
    pub fn ingest(&self, path: &str, body: &Value) {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
        let what = format!("POST {path} {body}");
        let reply = finish(
            &what,
            self.agent
                .post(self.url(path))
                .header("authorization", format!("Basic {basic}"))
                .send_json(body),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let answer = reply.expect(200, &what);
        assert_eq!(
            answer["success"],
            json!(true),
            "{what} answered 200 without success: {}",
            reply.body
        );
    }

    /// Creates a segment from DSL text; returns its id.
    pub fn create_segment(&self, name: &str, rule: &str) -> String {
        let body = json!({"name": name, "rule": rule});
        let segment = self
            .admin_post("/segments", &body)
            .expect(201, &format!("POST /segments {body}"));
        assert_eq!(segment["name"], json!(name), "created segment: {segment}");
        segment["id"]
            .as_str()
            .unwrap_or_else(|| panic!("created segment has no string id: {segment}"))
            .to_string()
    }

    /// Subscribes `url` to entries and exits of `segments`; returns (id, secret).
    pub fn create_webhook(&self, url: &str, segments: &[&str]) -> (String, String) {
        let body = json!({
            "url": url,
            "events": ["segment.entered", "segment.exited"],
            "segments": segments,
        });
        let webhook = self
            .admin_post("/webhooks", &body)
            .expect(201, &format!("POST /webhooks {body}"));
        let id = webhook["id"].as_str().map(str::to_string);
        let secret = webhook["secret"].as_str().map(str::to_string);
        match (id, secret) {
            (Some(id), Some(secret)) if secret.starts_with("whsec_") => (id, secret),
            _ => panic!("created webhook lacks an id or a whsec_ secret: {webhook}"),
        }
    }

    /// `GET .../customers/{id}` as JSON, or `Err` with what was answered instead.
    pub fn customer(&self, customer_id: &str) -> Result<Value, String> {
        let reply = self.admin_get(&format!("/customers/{customer_id}"));
        if reply.status == 200 {
            Ok(reply.json())
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    }

    /// Waits until the customer exists with `attribute` set (the schema then knows
    /// the attribute, so rules can name it).
    pub fn wait_for_attribute(&self, customer_id: &str, attribute: &str) -> Value {
        poll_until(
            &format!("customer {customer_id} with attribute {attribute}"),
            Duration::from_secs(10),
            || {
                let customer = self.customer(customer_id)?;
                if customer["attributes"].get(attribute).is_some() {
                    Ok(customer)
                } else {
                    Err(customer.to_string())
                }
            },
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- last lines of the xeno serve log ({}) ---\n{}\n--- end of log ---",
                self.base_url,
                self.log_tail(60)
            );
        }
    }
}

/// The Node.js that runs `tests/e2e/*.mjs` (with the SDK `scripts/test` installs
/// there by `npm ci`).
pub fn node() -> PathBuf {
    match std::env::var_os("XENO_TEST_NODE") {
        Some(node) if !node.is_empty() => PathBuf::from(node),
        _ => panic!(
            "XENO_TEST_NODE is not set: this end-to-end test drives the real Segment \
             Node.js SDK. Run scripts/test, which runs npm ci in gateway/tests/e2e and \
             exports XENO_TEST_NODE"
        ),
    }
}

/// Runs `tests/e2e/<script>` with the test Python; panics with its output when it
/// exits non-zero.
pub fn run_python(script: &str, args: &[&str]) -> String {
    run_script(python(), script, args)
}

/// Runs `tests/e2e/<script>` with the test Node.js.
pub fn run_node(script: &str, args: &[&str]) -> String {
    run_script(node(), script, args)
}

fn run_script(interpreter: PathBuf, script: &str, args: &[&str]) -> String {
    let python = interpreter;
    let output = Command::new(&python)
        .arg(e2e_script(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} {script}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// One request the webhook receiver answered (`attempts.jsonl`).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub webhook_id: Option<String>,
    /// Wall-clock milliseconds since the Unix epoch.
    pub received_at: f64,
    pub status: u16,
    pub verified: bool,
    pub error: Option<String>,
    pub content_type: Option<String>,
    /// The verified body, when the signature verified.
    pub body: Value,
}

/// One delivery the receiver accepted with 2xx (`deliveries.jsonl`).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub received_at: f64,
    pub body: Value,
}

impl Delivery {
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    pub fn customer_id(&self) -> &str {
        self.body["data"]["customer"]["id"].as_str().unwrap_or("")
    }
}

/// `tests/e2e/webhook_receiver.py` as a child process; killed on drop.
pub struct Receiver {
    child: Child,
    pub url: String,
    dir: TempDir,
    down_until: Option<PathBuf>,
}

impl Receiver {
    /// A receiver that accepts every correctly signed delivery.
    pub fn start() -> Receiver {
        Receiver::launch(false)
    }

    /// A receiver that answers 503 to every delivery until [`Receiver::come_up`].
    pub fn start_down() -> Receiver {
        Receiver::launch(true)
    }

    fn launch(down: bool) -> Receiver {
        let python = python();
        let dir = tempfile::Builder::new()
            .prefix("xeno-webhook-receiver-")
            .tempdir()
            .expect("create the receiver's folder");
        let down_until = down.then(|| dir.path().join("up"));
        let mut command = Command::new(&python);
        command
            .arg(e2e_script("webhook_receiver.py"))
            .arg("--secret-file")
            .arg(dir.path().join("secret"))
            .arg("--deliveries")
            .arg(dir.path().join("deliveries.jsonl"))
            .arg("--attempts")
            .arg(dir.path().join("attempts.jsonl"));
        if let Some(up) = &down_until {
            command.arg("--down-until").arg(up);
        }
        let stderr = fs::File::create(dir.path().join("receiver.log")).expect("receiver log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} webhook_receiver.py: {e}", python.display()));
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut first_line)
            .expect("read the receiver's port");
        let port = serde_json::from_str::<Value>(&first_line)
            .ok()
            .and_then(|line| line["port"].as_u64())
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "webhook_receiver.py did not print its port (got {first_line:?}); its log:\n{}",
                    fs::read_to_string(dir.path().join("receiver.log")).unwrap_or_default()
                )
            });
        Receiver {
            child,
            url: format!("http://127.0.0.1:{port}/hook"),
            dir,
            down_until,
        }
    }

    /// Gives the receiver the signing secret (written atomically: it reads the file
    /// on every request).
    pub fn set_secret(&self, secret: &str) {
        let staging = self.dir.path().join("secret.tmp");
        fs::write(&staging, secret).expect("write the secret");
        fs::rename(&staging, self.dir.path().join("secret")).expect("install the secret");
    }

    /// Ends the outage of a receiver started with [`Receiver::start_down`].
    pub fn come_up(&self) {
        let up = self
            .down_until
            .as_ref()
            .expect("come_up is for a receiver started with start_down");
        fs::write(up, b"").expect("create the up file");
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        let text = fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
        // Only complete lines: the receiver may be writing the last one.
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("bad line in {file} ({e}): {line}"))
            })
            .collect()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.lines("attempts.jsonl")
            .into_iter()
            .map(|line| Attempt {
                webhook_id: line["webhook_id"].as_str().map(str::to_string),
                received_at: line["received_at"].as_f64().expect("received_at"),
                status: line["status"].as_u64().expect("status") as u16,
                verified: line["verified"].as_bool().expect("verified"),
                error: line["error"].as_str().map(str::to_string),
                content_type: line["content_type"].as_str().map(str::to_string),
                body: line["body"].clone(),
            })
            .collect()
    }

    /// The accepted deliveries so far; panics first if any request failed
    /// verification, so that a bad signature is reported as such rather than as a
    /// delivery that never came.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.assert_every_request_verified();
        self.lines("deliveries.jsonl")
            .into_iter()
            .map(|line| Delivery {
                webhook_id: line["webhook_id"]
                    .as_str()
                    .expect("an accepted delivery has a webhook-id")
                    .to_string(),
                received_at: line["received_at"].as_f64().expect("received_at"),
                body: line["body"].clone(),
            })
            .collect()
    }

    /// Panics if any request failed Standard Webhooks verification (a bad or
    /// missing signature, id or timestamp), naming the failures.
    pub fn assert_every_request_verified(&self) {
        let failures: Vec<String> = self
            .attempts()
            .into_iter()
            .filter(|attempt| attempt.status == 400 || (!attempt.verified && attempt.status != 503))
            .map(|attempt| {
                format!(
                    "webhook-id {:?}: {}",
                    attempt.webhook_id,
                    attempt.error.unwrap_or_default()
                )
            })
            .collect();
        assert!(
            failures.is_empty(),
            "webhook requests failed standardwebhooks verification: {failures:#?}"
        );
    }

    /// The receiver's own log (its HTTP request lines and any Python error).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("receiver.log")).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- webhook receiver attempts ---\n{}\n--- receiver log ---\n{}",
                fs::read_to_string(self.dir.path().join("attempts.jsonl")).unwrap_or_default(),
                self.log()
            );
        }
    }
}

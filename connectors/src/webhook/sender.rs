//! The HTTP side of webhooks: one POST per delivery, signed with every active
//! secret, over a shared connection pool (HTTP/1.1 keep-alive, rustls for
//! `https://` endpoints with the platform's roots).

use std::future::Future;
use std::pin::Pin;

use xeno_engine::ports::{WebhookOutcome, WebhookPort, WebhookRequest};

use super::signing::{Secret, headers};

/// Sends signed webhook requests.
#[derive(Clone)]
pub struct HttpWebhookSender {
    client: reqwest::Client,
}

impl HttpWebhookSender {
    pub fn new() -> Result<HttpWebhookSender, String> {
        // Several crates may race to install the process-wide provider; the
        // first one wins and any is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("xeno-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| format!("webhook http client: {e}"))?;
        Ok(HttpWebhookSender { client })
    }
}

impl WebhookPort for HttpWebhookSender {
    fn new_secret(&self) -> Result<String, xeno_engine::ports::PortError> {
        Secret::generate()
            .map(|s| s.expose())
            .map_err(|e| xeno_engine::ports::PortError::retryable(e.to_string()))
    }

    fn send(
        &self,
        request: WebhookRequest,
    ) -> Pin<Box<dyn Future<Output = WebhookOutcome> + Send + 'static>> {
        let client = self.client.clone();
        Box::pin(async move {
            let secrets: Result<Vec<Secret>, _> =
                request.secrets.iter().map(|s| Secret::parse(s)).collect();
            let secrets = match secrets {
                Ok(s) if !s.is_empty() => s,
                _ => return WebhookOutcome::Failed("the endpoint has no valid secret".into()),
            };
            let mut builder = client
                .post(&request.url)
                .timeout(request.timeout)
                .header("content-type", "application/json");
            for (name, value) in headers(&secrets, &request.id, request.timestamp, &request.body) {
                builder = builder.header(name, value);
            }
            match builder.body(request.body).send().await {
                Ok(response) => WebhookOutcome::Status(response.status().as_u16()),
                Err(e) => WebhookOutcome::Failed(e.to_string()),
            }
        })
    }
}

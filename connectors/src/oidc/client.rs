//! The relying-party side of OpenID Connect: discovery of the provider's
//! metadata and signing keys, the authorization code flow with PKCE (S256),
//! and verification of the ID token (signature against the discovered keys,
//! issuer, audience, expiry, nonce, access-token hash).
//!
//! ```text
//! gateway                          OidcClient                      provider
//!   | authorize(login_hint) ------>  url + PendingLogin
//!   |  store PendingLogin by state, redirect the browser ---------> /auth ... login, consent
//!   | <--------------------------------- browser returns to redirect_url?code&state
//!   |  look PendingLogin up by state (one use)
//!   | finish(code, pending) ------>  POST /token (code + PKCE verifier) ---> id_token, access_token
//!   |                                verify id_token; userinfo if claims are missing
//!   | <----------------------------- OidcIdentity {issuer, subject, email, ...}
//! ```
//!
//! HTTP goes through our reqwest client (rustls with ring, no redirects
//! followed), so the crate brings no second HTTP or TLS stack.

use std::fmt;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreErrorResponseType,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::url::Url;
use openidconnect::{
    AccessTokenHash, AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl, LoginHint,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

/// How to reach the identity provider (`[auth.oidc]` in `config.toml`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer exactly as the provider writes it in its discovery document,
    /// e.g. `https://accounts.google.com` (no trailing slash unless the
    /// provider has one). Discovery reads `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret registered at the provider. Never printed.
    pub client_secret: String,
    /// Where the provider sends the browser back, e.g.
    /// `https://xeno.example.com/api/auth/oidc/callback`; must be registered
    /// at the provider exactly.
    pub redirect_url: String,
    /// Scopes to ask for; `openid` is always sent.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// What the gateway keeps server-side between [`OidcClient::authorize`] and
/// [`OidcClient::finish`], keyed by `state`, and uses once. The browser only
/// ever sees `state` (and a hash of the verifier).
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The `state` parameter; the callback must bring the same value back.
    pub state: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier whose S256 hash went into the authorization URL.
    pub pkce_verifier: String,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The verified result of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The issuer; together with `subject` it names the account.
    pub issuer: String,
    /// The provider's stable id for the user (`sub`). Emails can change;
    /// link accounts by `(issuer, subject)`.
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider vouches for `email`; false when it does not say.
    pub email_verified: bool,
    pub name: Option<String>,
}

/// Why discovery or a login failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The operator's `[auth.oidc]` settings do not work with this provider
    /// (malformed URL, missing endpoint, client id or secret refused).
    #[error("oidc configuration: {0}")]
    Config(String),
    /// The identity provider could not be reached or answered something
    /// unusable. `retryable` is true for network failures and 5xx answers.
    #[error("identity provider: {message}")]
    Provider { message: String, retryable: bool },
    /// This login attempt is not valid: the code is unknown, expired or
    /// already used, or the ID token fails verification (signature, issuer,
    /// audience, expiry, nonce). The user starts over; retrying the same
    /// code cannot help.
    #[error("login rejected: {0}")]
    Rejected(String),
}

impl OidcError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OidcError::Provider {
                retryable: true,
                ..
            }
        )
    }
}

/// The client as discovery leaves it: authorization endpoint known, token and
/// userinfo endpoints as the provider announced them.
type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// An OpenID Connect relying party for one provider and one client
/// registration. Discovery happens once, in [`discover`](Self::discover);
/// build a new client to pick up rotated signing keys.
pub struct OidcClient {
    client: DiscoveredClient,
    issuer: String,
    scopes: Vec<Scope>,
    allowed_algs: Vec<CoreJwsSigningAlgorithm>,
    http: reqwest::Client,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client.client_id().as_str())
            .finish_non_exhaustive()
    }
}

/// Timeout of each request to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery documents, key sets and token answers are a few kB.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

impl OidcClient {
    /// Reads the provider's discovery document and signing keys. The
    /// document's `issuer` must equal `config.issuer` exactly.
    pub async fn discover(config: &OidcConfig) -> Result<OidcClient, OidcError> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer {:?}: {e}", config.issuer)))?;
        let redirect_url = RedirectUrl::new(config.redirect_url.clone()).map_err(|e| {
            OidcError::Config(format!("redirect_url {:?}: {e}", config.redirect_url))
        })?;
        let http = http_client()?;

        let metadata =
            CoreProviderMetadata::discover_async(issuer, &|request| send(http.clone(), request))
                .await
                .map_err(|e| {
                    if let openidconnect::DiscoveryError::Validation(message) = &e {
                        // Usually an issuer written differently from the provider's
                        // own spelling (a trailing slash, http instead of https).
                        return OidcError::Config(format!(
                            "discovery at {}: {message}",
                            config.issuer
                        ));
                    }
                    let retryable = match &e {
                        openidconnect::DiscoveryError::Request(e) => e.retryable,
                        openidconnect::DiscoveryError::Response(status, _, _) => {
                            status.is_server_error()
                        }
                        _ => false,
                    };
                    OidcError::Provider {
                        message: format!("discovery at {}: {}", config.issuer, error_chain(&e)),
                        retryable,
                    }
                })?;

        if metadata.token_endpoint().is_none() {
            return Err(OidcError::Config(format!(
                "{} announces no token endpoint",
                config.issuer
            )));
        }
        let auth_type = match metadata.token_endpoint_auth_methods_supported() {
            None => AuthType::BasicAuth,
            Some(methods) if methods.contains(&CoreClientAuthMethod::ClientSecretBasic) => {
                AuthType::BasicAuth
            }
            Some(methods) if methods.contains(&CoreClientAuthMethod::ClientSecretPost) => {
                AuthType::RequestBody
            }
            Some(_) => {
                return Err(OidcError::Config(format!(
                    "{} accepts neither client_secret_basic nor client_secret_post at its token endpoint",
                    config.issuer
                )));
            }
        };
        // Asymmetric algorithms only: the keys come from the provider's JWKS;
        // an HMAC-signed ID token would be keyed by our own client secret.
        let allowed_algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| {
                !matches!(
                    alg,
                    CoreJwsSigningAlgorithm::None
                        | CoreJwsSigningAlgorithm::HmacSha256
                        | CoreJwsSigningAlgorithm::HmacSha384
                        | CoreJwsSigningAlgorithm::HmacSha512
                )
            })
            .cloned()
            .collect();
        if allowed_algs.is_empty() {
            return Err(OidcError::Config(format!(
                "{} signs ID tokens with no supported public-key algorithm",
                config.issuer
            )));
        }

        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(config.client_secret.clone())),
        )
        .set_redirect_uri(redirect_url)
        .set_auth_type(auth_type);
        let scopes = config
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid")
            .map(|s| Scope::new(s.clone()))
            .collect();
        tracing::info!(issuer = %config.issuer, client_id = %config.client_id, "oidc provider discovered");
        Ok(OidcClient {
            client,
            issuer: config.issuer.clone(),
            scopes,
            allowed_algs,
            http,
        })
    }

    /// The issuer this client logs in with.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Starts a login: the URL to send the browser to, and what to keep until
    /// the callback. `login_hint` pre-fills the account at the provider.
    pub fn authorize(&self, login_hint: Option<&str>) -> (Url, PendingLogin) {
        let (pkce_challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(pkce_challenge);
        if let Some(hint) = login_hint {
            request = request.set_login_hint(LoginHint::new(hint.to_owned()));
        }
        let (url, state, nonce) = request.url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: pkce_verifier.secret().clone(),
        };
        (url, pending)
    }

    /// Completes a login: trades `code` for tokens with the PKCE verifier,
    /// verifies the ID token against `pending.nonce`, and reads email and
    /// name from its claims, or from the userinfo endpoint when the ID token
    /// lacks them. The caller has already matched the callback's `state` to
    /// `pending.state` and removed `pending` from its store.
    pub async fn finish(
        &self,
        code: &str,
        pending: &PendingLogin,
    ) -> Result<OidcIdentity, OidcError> {
        let result = self.try_finish(code, pending).await;
        match &result {
            Ok(identity) => {
                metrics::counter!("xeno_oidc_logins_total", "outcome" => "ok").increment(1);
                tracing::info!(issuer = %self.issuer, subject = %identity.subject, email_verified = identity.email_verified, "oidc login verified");
            }
            Err(e) => {
                let outcome = match e {
                    OidcError::Config(_) => "config",
                    OidcError::Provider { .. } => "provider",
                    OidcError::Rejected(_) => "rejected",
                };
                metrics::counter!("xeno_oidc_logins_total", "outcome" => outcome).increment(1);
                tracing::warn!(issuer = %self.issuer, error = %e, "oidc login failed");
            }
        }
        result
    }

    async fn try_finish(
        &self,
        code: &str,
        pending: &PendingLogin,
    ) -> Result<OidcIdentity, OidcError> {
        let http = |request| send(self.http.clone(), request);
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&http)
            .await
            .map_err(token_error)?;

        let id_token = response.id_token().ok_or_else(|| OidcError::Provider {
            message: "the token response has no id_token".into(),
            retryable: false,
        })?;
        let verifier = self
            .client
            .id_token_verifier()
            .set_allowed_algs(self.allowed_algs.clone());
        let claims = id_token
            .claims(&verifier, &Nonce::new(pending.nonce.clone()))
            .map_err(|e| OidcError::Rejected(format!("id token: {}", error_chain(&e))))?;
        // The access token goes to the userinfo endpoint; make sure it is the
        // one issued with this ID token.
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| OidcError::Rejected(format!("id token: {e}")))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| OidcError::Rejected(format!("id token: {e}")))?;
            let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|e| OidcError::Rejected(format!("access token hash: {e}")))?;
            if actual != *expected {
                return Err(OidcError::Rejected(
                    "the access token does not match the id token's at_hash".into(),
                ));
            }
        }

        let subject = claims.subject().clone();
        let mut identity = OidcIdentity {
            issuer: self.issuer.clone(),
            subject: subject.as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned()),
        };
        debug_assert!(
            !identity.subject.is_empty(),
            "openidconnect refuses an ID token without sub"
        );

        if identity.email.is_none() || identity.name.is_none() {
            // `user_info` fails only when the provider has no userinfo endpoint;
            // then the ID token is all there is.
            if let Ok(request) = self
                .client
                .user_info(response.access_token().clone(), Some(subject))
            {
                let info: CoreUserInfoClaims = request.request_async(&http).await.map_err(|e| {
                    let retryable = matches!(&e, openidconnect::UserInfoError::Request(e) if e.retryable)
                        || matches!(&e, openidconnect::UserInfoError::Response(status, _, _) if status.is_server_error());
                    OidcError::Provider { message: format!("userinfo: {}", error_chain(&e)), retryable }
                })?;
                if identity.email.is_none() {
                    // Email and its verification come from the same source.
                    identity.email = info.email().map(|e| e.as_str().to_owned());
                    identity.email_verified =
                        identity.email.is_some() && info.email_verified().unwrap_or(false);
                }
                if identity.name.is_none() {
                    identity.name = info
                        .name()
                        .and_then(|n| n.get(None))
                        .map(|n| n.as_str().to_owned());
                }
            }
        }
        Ok(identity)
    }
}

fn token_error(
    error: RequestTokenError<
        HttpError,
        openidconnect::StandardErrorResponse<CoreErrorResponseType>,
    >,
) -> OidcError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let detail = response.to_string();
            match response.error() {
                CoreErrorResponseType::InvalidGrant => OidcError::Rejected(format!(
                    "the provider refused the code (unknown, expired or used): {detail}"
                )),
                CoreErrorResponseType::InvalidClient
                | CoreErrorResponseType::UnauthorizedClient => OidcError::Config(format!(
                    "the provider refused the client credentials: {detail}"
                )),
                _ => OidcError::Provider {
                    message: format!("token endpoint: {detail}"),
                    retryable: false,
                },
            }
        }
        RequestTokenError::Request(e) => OidcError::Provider {
            message: format!("token endpoint: {e}"),
            retryable: e.retryable,
        },
        other => OidcError::Provider {
            message: format!("token endpoint: {}", error_chain(&other)),
            retryable: false,
        },
    }
}

fn http_client() -> Result<reqwest::Client, OidcError> {
    // Several crates may race to install the process-wide provider; the first
    // one wins and any is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("xeno-oidc/", env!("CARGO_PKG_VERSION")))
        // Following redirects from the token or userinfo endpoint would open
        // us to SSRF; providers do not redirect these calls.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROVIDER_TIMEOUT)
        .build()
        .map_err(|e| OidcError::Config(format!("http client: {e}")))
}

/// A failed request to the provider, for openidconnect's HTTP client seam.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct HttpError {
    message: String,
    retryable: bool,
}

impl From<reqwest::Error> for HttpError {
    fn from(e: reqwest::Error) -> HttpError {
        HttpError {
            retryable: e.is_timeout() || e.is_connect() || e.is_request(),
            message: error_chain(&e),
        }
    }
}

/// openidconnect's HTTP client: one request over our reqwest client, with the
/// body size capped.
async fn send(client: reqwest::Client, request: HttpRequest) -> Result<HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut out = HttpResponse::new(Vec::new());
    *out.status_mut() = response.status();
    *out.headers_mut() = std::mem::take(response.headers_mut());
    while let Some(chunk) = response.chunk().await? {
        if out.body().len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError {
                message: format!(
                    "the answer from {} exceeds {MAX_RESPONSE_BYTES} bytes",
                    parts.uri
                ),
                retryable: false,
            });
        }
        out.body_mut().extend_from_slice(&chunk);
    }
    Ok(out)
}

/// openidconnect's and reqwest's top-level messages are terse ("Request
/// failed"); the cause is in the source chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

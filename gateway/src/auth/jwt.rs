//! Access tokens: short-lived JWTs signed with Ed25519 (`EdDSA`), each naming
//! the key that signed it in `kid`. The first configured key signs; the others
//! only verify, so a key rotated out keeps its tokens valid until they expire.
//! Verification accepts `EdDSA` only (never `none`, never an HMAC algorithm a
//! forger could pick), checks issuer, audience and expiry, and the caller then
//! checks that the session the token names is still live.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{AuthConfig, SigningKeyConfig};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session (refresh-token family) the token was issued from.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

struct TokenKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: [u8; 32],
    /// A retired key verifies tokens until this instant (seconds), then none.
    verify_until: Option<i64>,
}

/// The keys that sign and verify access tokens.
pub struct TokenKeys {
    keys: Vec<TokenKey>,
    issuer: String,
    audience: String,
    access_ttl_secs: i64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. The API answers every one of them with the same
/// 401; the kind goes to the debug log only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("token refused: {0}")]
    Refused(String),
}

/// The DER prefix of an Ed25519 PKCS#8 v1 private key; the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new Ed25519 private key as PKCS#8 PEM (what `openssl genpkey -algorithm
/// ed25519` writes).
pub fn generate_pem() -> anyhow::Result<String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    let mut der = PKCS8_V1_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    Ok(format!(
        "-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"
    ))
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    if !pem.contains("BEGIN PRIVATE KEY") {
        anyhow::bail!("not a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`)");
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| anyhow::anyhow!("the PEM body is not base64: {e}"))
}

fn token_key(kid: &str, pem: &str, verify_until: Option<i64>) -> anyhow::Result<TokenKey> {
    let der = pem_to_der(pem)?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
    let mut public = [0u8; 32];
    public.copy_from_slice(pair.public_key().as_ref());
    Ok(TokenKey {
        kid: kid.to_string(),
        encoding: EncodingKey::from_ed_der(&der),
        decoding: DecodingKey::from_ed_der(&public),
        public,
        verify_until,
    })
}

fn parse_time(text: &str) -> anyhow::Result<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("`{text}` is not an RFC 3339 time: {e}"))?;
    Ok(t.unix_timestamp())
}

impl TokenKeys {
    /// The configured keys, or, when none is configured, the key generated at
    /// the first start under `data_dir/auth/` (created now if missing).
    pub fn load(
        config: &AuthConfig,
        data_dir: &Path,
        access_ttl_secs: i64,
    ) -> anyhow::Result<TokenKeys> {
        let mut keys = Vec::new();
        for (i, k) in config.signing_keys.iter().enumerate() {
            let SigningKeyConfig {
                kid,
                pem,
                file,
                retired_at,
            } = k;
            let text = match (pem, file) {
                (Some(p), None) => p.clone(),
                (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| {
                    anyhow::anyhow!("auth.signing_keys[{i}]: reading {}: {e}", f.display())
                })?,
                _ => anyhow::bail!("auth.signing_keys[{i}]: give exactly one of `pem` and `file`"),
            };
            let verify_until = match retired_at {
                Some(t) => Some(parse_time(t)? + access_ttl_secs),
                None => None,
            };
            if i == 0 && verify_until.is_some() {
                anyhow::bail!("auth.signing_keys[0] signs new tokens, so it cannot be retired");
            }
            keys.push(
                token_key(kid, &text, verify_until)
                    .map_err(|e| anyhow::anyhow!("auth.signing_keys[{i}] ({kid}): {e}"))?,
            );
        }
        if keys.is_empty() {
            let dir = data_dir.join("auth");
            let path = dir.join("signing-key.pem");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&dir)?;
                    let pem = generate_pem()?;
                    write_private(&path, &pem)?;
                    tracing::info!(path = %path.display(), "generated the access-token signing key");
                    pem
                }
                Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
            };
            keys.push(token_key("generated-1", &text, None)?);
        }
        Ok(TokenKeys {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl_secs,
        })
    }

    /// Lifetime of an access token, in seconds.
    pub fn access_ttl_secs(&self) -> i64 {
        self.access_ttl_secs
    }

    /// A new access token for `user` in `session`, and its expiry (seconds).
    pub fn issue(&self, user: Uuid, session: Uuid, now_secs: i64) -> anyhow::Result<(String, i64)> {
        let key = &self.keys[0];
        let exp = now_secs + self.access_ttl_secs;
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now_secs,
            exp,
            jti: Uuid::now_v7().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| anyhow::anyhow!("signing an access token: {e}"))?;
        Ok((token, exp))
    }

    /// Verifies a token at `now_secs`: signature by a known, unexpired key,
    /// `EdDSA` only, issuer, audience, expiry.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Refused(format!("algorithm {:?}", header.alg)));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .filter(|k| k.verify_until.is_none_or(|until| now_secs <= until))
            .ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        // Expiry is checked below against `now_secs`, the caller's clock.
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map_err(|e| TokenError::Refused(e.to_string()))?;
        // jsonwebtoken compares expiry with its own clock; ours is the one that
        // counts (tests and replays pass it in).
        if data.claims.exp <= now_secs {
            return Err(TokenError::Refused("expired".into()));
        }
        Ok(data.claims)
    }

    /// The public keys as a JSON Web Key Set (for other services that verify
    /// Xeno's tokens).
    pub fn jwks(&self, now_secs: i64) -> serde_json::Value {
        use base64::Engine as _;
        let keys: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.verify_until.is_none_or(|until| now_secs <= until))
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": k.kid,
                    "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.public),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(signing: &[(&str, Option<&str>)]) -> (TokenKeys, Vec<String>) {
        let pems: Vec<String> = signing.iter().map(|_| generate_pem().unwrap()).collect();
        let config = AuthConfig {
            signing_keys: signing
                .iter()
                .zip(&pems)
                .map(|((kid, retired), pem)| SigningKeyConfig {
                    kid: kid.to_string(),
                    pem: Some(pem.clone()),
                    file: None,
                    retired_at: retired.map(str::to_string),
                })
                .collect(),
            ..AuthConfig::default()
        };
        (
            TokenKeys::load(&config, Path::new("/nonexistent"), 900).unwrap(),
            pems,
        )
    }

    #[test]
    fn a_token_verifies_and_carries_user_and_session() {
        let (k, _) = keys(&[("a", None)]);
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let (token, exp) = k.issue(user, session, 1_000).unwrap();
        assert_eq!(exp, 1_900);
        let claims = k.verify(&token, 1_100).unwrap();
        assert_eq!(claims.sub, user.to_string());
        assert_eq!(claims.sid, session.to_string());
        assert!(k.verify(&token, 1_900).is_err(), "expired at exp");
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (k, _) = keys(&[("a", None)]);
        let (other, _) = keys(&[("a", None)]);
        let (token, _) = k.issue(Uuid::now_v7(), Uuid::now_v7(), 1_000).unwrap();
        // Same kid, another key.
        let (forged, _) = other.issue(Uuid::now_v7(), Uuid::now_v7(), 1_000).unwrap();
        assert!(k.verify(&forged, 1_100).is_err());
        // alg none.
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine as _;
        let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT","kid":"a"}"#);
        assert!(k.verify(&format!("{none}.{}.", parts[1]), 1_100).is_err());
        // A changed payload.
        let mut payload = parts[1].to_string();
        payload.replace_range(2..3, if &payload[2..3] == "A" { "B" } else { "A" });
        assert!(
            k.verify(&format!("{}.{payload}.{}", parts[0], parts[2]), 1_100)
                .is_err()
        );
        assert_eq!(k.verify("abc", 1_100), Err(TokenError::Malformed));
    }

    #[test]
    fn a_retired_key_verifies_until_its_tokens_expire() {
        let (old, pems) = keys(&[("old", None)]);
        let (token, _) = old.issue(Uuid::now_v7(), Uuid::now_v7(), 1_000).unwrap();
        let retired_at = "1970-01-01T00:16:40Z"; // 1000 s
        let config = AuthConfig {
            signing_keys: vec![
                SigningKeyConfig {
                    kid: "new".into(),
                    pem: Some(generate_pem().unwrap()),
                    file: None,
                    retired_at: None,
                },
                SigningKeyConfig {
                    kid: "old".into(),
                    pem: Some(pems[0].clone()),
                    file: None,
                    retired_at: Some(retired_at.into()),
                },
            ],
            ..AuthConfig::default()
        };
        let rotated = TokenKeys::load(&config, Path::new("/nonexistent"), 900).unwrap();
        assert!(
            rotated.verify(&token, 1_500).is_ok(),
            "an old token stays valid"
        );
        let (fresh, _) = rotated
            .issue(Uuid::now_v7(), Uuid::now_v7(), 1_500)
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
            Some("new")
        );
        assert_eq!(rotated.jwks(1_500)["keys"].as_array().unwrap().len(), 2);
        assert_eq!(rotated.jwks(2_000)["keys"].as_array().unwrap().len(), 1);
        let _ = rotated.verify(&token, 1_899).unwrap();
    }
}

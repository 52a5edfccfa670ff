//! Webhook signatures per the Standard Webhooks specification.
//!
//! A delivery carries three headers:
//! - `webhook-id`: the message id, stable across retries (receivers dedupe on it);
//! - `webhook-timestamp`: seconds since the Unix epoch when it was signed;
//! - `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` values, one
//!   per active secret, so that a receiver that still has the previous secret
//!   keeps verifying during a rotation.
//!
//! The signed content is `{id}.{timestamp}.{body}`. Secrets are written
//! `whsec_<base64 of 24 random bytes>`; the HMAC key is the decoded bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("a webhook secret must start with `whsec_` followed by base64")]
    BadSecret,
    #[error("the system random source failed: {0}")]
    Random(String),
}

/// A signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("Secret(whsec_…)")
    }
}

impl Secret {
    /// A new random secret (24 bytes, as the specification suggests).
    pub fn generate() -> Result<Secret, SigningError> {
        let mut key = vec![0u8; 24];
        getrandom::fill(&mut key).map_err(|e| SigningError::Random(e.to_string()))?;
        Ok(Secret { key })
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, SigningError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(SigningError::BadSecret)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SigningError::BadSecret)?;
        if key.is_empty() {
            return Err(SigningError::BadSecret);
        }
        Ok(Secret { key })
    }

    /// The `whsec_…` form shown to the user once, when the secret is created.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The three headers of one delivery, signed with every secret in `secrets`
/// (the current one first, then any still accepted during a rotation).
pub fn headers(
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect();
    [
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks reference implementations.
    #[test]
    fn matches_the_reference_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let secret = Secret::generate().unwrap();
        assert_eq!(Secret::parse(&secret.expose()).unwrap(), secret);
        assert_ne!(Secret::generate().unwrap(), secret);
        for bad in ["", "whsec_", "sk_abc", "whsec_!!!"] {
            assert_eq!(Secret::parse(bad), Err(SigningError::BadSecret), "{bad}");
        }
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let old = Secret::generate().unwrap();
        let new = Secret::generate().unwrap();
        let [_, _, (_, signature)] = headers(&[new.clone(), old.clone()], "m1", 7, b"{}");
        let parts: Vec<&str> = signature.split(' ').collect();
        assert_eq!(parts, [new.sign("m1", 7, b"{}"), old.sign("m1", 7, b"{}")]);
    }
}

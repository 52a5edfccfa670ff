//! Passwords: argon2id hashes in PHC form (the parameters travel with each
//! hash, so raising them later leaves old hashes verifiable).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (hashing cost grows with it).
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of nothing anyone knows, verified against when the email is
    /// unknown so that a login costs the same either way.
    decoy: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

impl Passwords {
    pub fn new(memory_kib: u32, iterations: u32) -> anyhow::Result<Passwords> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        let mut p = Passwords {
            params,
            decoy: String::new(),
        };
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        p.decoy = p.hash(&String::from_utf8_lossy(&random))?;
        Ok(p)
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Whether `password` is acceptable; the reason when it is not.
    pub fn check_policy(password: &str) -> Result<(), &'static str> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err("a password has at least 10 characters");
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err("a password has at most 1024 bytes");
        }
        Ok(())
    }

    /// The PHC string of a new salted hash (CPU-heavy: call off the async
    /// workers).
    pub fn hash(&self, password: &str) -> anyhow::Result<String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        Ok(self
            .argon()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
            .to_string())
    }

    /// Whether `password` matches `hash`; `None` verifies against the decoy
    /// (always false, same cost).
    pub fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let stored = hash.unwrap_or(&self.decoy);
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let ok = self
            .argon()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && hash.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let p = Passwords::new(1024, 1).unwrap();
        let a = p.hash("correct horse battery").unwrap();
        let b = p.hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(p.verify("correct horse battery", Some(&a)));
        assert!(!p.verify("correct horse batterY", Some(&a)));
        assert!(!p.verify("anything", None));
        assert!(Passwords::check_policy("short").is_err());
        assert!(Passwords::check_policy("long enough!").is_ok());
    }
}

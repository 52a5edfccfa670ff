//! Login throttling: after `max_failures` failed logins for one email (or
//! four times as many from one address), further attempts are refused for a
//! backoff that doubles with each failure, up to a cap. The answer is the same
//! whether the email has an account or not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

#[derive(Debug)]
pub struct LoginThrottle {
    max_failures: u32,
    base: Duration,
    cap: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Entries quiet for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

impl LoginThrottle {
    pub fn new(max_failures: u32, base: Duration, cap: Duration) -> LoginThrottle {
        LoginThrottle {
            max_failures: max_failures.max(1),
            base,
            cap,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn keys(email: &str, ip: Option<&str>) -> [(String, u32); 2] {
        [
            (format!("email:{}", email.trim().to_lowercase()), 1),
            (format!("ip:{}", ip.unwrap_or("-")), 4),
        ]
    }

    /// Starts a login attempt: `Err(wait)` while the email or the address is
    /// locked out; otherwise the attempt is counted as a failure at once (and
    /// may start a lockout), so concurrent attempts cannot all slip past the
    /// limit while their passwords are being checked. A correct password then
    /// calls [`LoginThrottle::succeeded`], which takes the attempt back.
    pub fn attempt(&self, email: &str, ip: Option<&str>, now: Instant) -> Result<(), Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        let keys = Self::keys(email, ip);
        let mut wait = Duration::ZERO;
        for (key, _) in &keys {
            if let Some(until) = entries.get(key).and_then(|e| e.locked_until)
                && until > now
            {
                wait = wait.max(until - now);
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (key, factor) in keys {
            let entry = entries.entry(key).or_insert(Entry {
                failures: 0,
                locked_until: None,
                last: now,
            });
            if now.duration_since(entry.last) >= FORGET_AFTER {
                entry.failures = 0;
            }
            entry.failures += 1;
            entry.last = now;
            let allowed = self.max_failures * factor;
            if entry.failures >= allowed {
                let doublings = (entry.failures - allowed).min(20);
                entry.locked_until = Some(now + (self.base * 2u32.pow(doublings)).min(self.cap));
            }
        }
        Ok(())
    }

    /// The lockout in force now, if any (the answer of a failed attempt that
    /// reached the limit).
    pub fn locked_for(&self, email: &str, ip: Option<&str>, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(email, ip)
            .iter()
            .filter_map(|(key, _)| entries.get(key).and_then(|e| e.locked_until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// A correct password: the email's count is cleared, and the attempt is
    /// taken back from the address's count.
    pub fn succeeded(&self, email: &str, ip: Option<&str>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&format!("email:{}", email.trim().to_lowercase()));
        let [_, (ip_key, factor)] = Self::keys(email, ip);
        if let Some(entry) = entries.get_mut(&ip_key) {
            entry.failures = entry.failures.saturating_sub(1);
            if entry.failures < self.max_failures * factor {
                entry.locked_until = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_starts_at_the_limit_and_doubles() {
        let t = LoginThrottle::new(3, Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        let ip = Some("1.1.1.1");
        assert!(t.attempt("A@x.io", ip, now).is_ok());
        assert!(t.attempt("a@x.io", ip, now).is_ok());
        assert_eq!(t.locked_for("a@x.io", ip, now), None);
        assert!(
            t.attempt("a@x.io", ip, now).is_ok(),
            "the third attempt is checked"
        );
        assert_eq!(
            t.locked_for("a@x.io", ip, now),
            Some(Duration::from_secs(1))
        );
        assert!(
            t.attempt("a@x.io", Some("2.2.2.2"), now).is_err(),
            "the email is locked"
        );
        assert!(
            t.attempt("b@x.io", ip, now).is_ok(),
            "the address is not yet"
        );
        let later = now + Duration::from_secs(2);
        assert!(t.attempt("a@x.io", None, later).is_ok());
        assert_eq!(
            t.locked_for("a@x.io", None, later),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn concurrent_attempts_cannot_pass_the_limit() {
        let t = LoginThrottle::new(5, Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        // 50 attempts in flight at once, none finished: only 5 get through.
        let through = (0..50)
            .filter(|_| t.attempt("a@x.io", Some("9.9.9.9"), now).is_ok())
            .count();
        assert_eq!(through, 5);
    }

    #[test]
    fn a_correct_password_takes_its_attempt_back() {
        let t = LoginThrottle::new(2, Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..20 {
            assert!(t.attempt("a@x.io", Some("1.1.1.1"), now).is_ok());
            t.succeeded("a@x.io", Some("1.1.1.1"));
        }
    }
}

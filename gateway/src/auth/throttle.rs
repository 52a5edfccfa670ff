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

    /// `Err(wait)` while either the email or the address is locked out.
    pub fn check(&self, email: &str, ip: Option<&str>, now: Instant) -> Result<(), Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = Duration::ZERO;
        for (key, _) in Self::keys(email, ip) {
            if let Some(until) = entries.get(&key).and_then(|e| e.locked_until)
                && until > now
            {
                wait = wait.max(until - now);
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Records a failed attempt; returns the lockout it starts, if any.
    pub fn failed(&self, email: &str, ip: Option<&str>, now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        let mut longest = None;
        for (key, factor) in Self::keys(email, ip) {
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
                let lock = (self.base * 2u32.pow(doublings)).min(self.cap);
                entry.locked_until = Some(now + lock);
                longest = Some(longest.map_or(lock, |l: Duration| l.max(lock)));
            }
        }
        longest
    }

    /// A successful login clears the email's count (the address keeps its).
    pub fn succeeded(&self, email: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&format!("email:{}", email.trim().to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_starts_after_the_limit_and_doubles() {
        let t = LoginThrottle::new(3, Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(t.failed("A@x.io", Some("1.1.1.1"), now), None);
        assert_eq!(t.failed("a@x.io", Some("1.1.1.1"), now), None);
        assert!(t.check("a@x.io", Some("1.1.1.1"), now).is_ok());
        assert_eq!(
            t.failed("a@x.io", Some("1.1.1.1"), now),
            Some(Duration::from_secs(1))
        );
        assert!(
            t.check("a@x.io", Some("2.2.2.2"), now).is_err(),
            "the email is locked"
        );
        assert!(
            t.check("b@x.io", Some("1.1.1.1"), now).is_ok(),
            "the address is not yet"
        );
        let later = now + Duration::from_secs(2);
        assert!(t.check("a@x.io", None, later).is_ok());
        assert_eq!(
            t.failed("a@x.io", None, later),
            Some(Duration::from_secs(2))
        );
        t.succeeded("a@x.io");
        assert!(t.check("a@x.io", None, later).is_ok());
    }
}

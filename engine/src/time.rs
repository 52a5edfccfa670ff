//! Instants and durations, in milliseconds since the Unix epoch (UTC).
//!
//! The engine never reads a clock: every operation that depends on time takes a
//! [`Timestamp`] argument named `now`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

/// A span of time in milliseconds; always positive in rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub i64);

/// Why a time or duration literal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("`{0}` is not an RFC 3339 time (for example 2026-01-31T12:00:00Z)")]
    NotRfc3339(String),
    #[error(
        "`{0}` is not a duration: use a whole number followed by s, m, h, d or w (for example 30d)"
    )]
    NotDuration(String),
    #[error("duration `{0}` must be greater than zero")]
    NotPositive(String),
    #[error("duration `{0}` is too long (the limit is 100 years)")]
    TooLong(String),
}

pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;
pub const WEEK: i64 = 7 * DAY;
/// The longest duration a rule may name.
pub const MAX_DURATION: i64 = 100 * 366 * DAY;

impl Timestamp {
    /// Never: the `valid_until` of an answer that no passage of time can change.
    pub const NEVER: Timestamp = Timestamp(i64::MAX);
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    /// The earliest instant RFC 3339 can write: 0000-01-01T00:00:00Z.
    pub const FIRST_RFC3339: Timestamp = Timestamp(-62_167_219_200_000);
    /// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
    pub const LAST_RFC3339: Timestamp = Timestamp(253_402_300_799_999);

    pub fn millis(self) -> i64 {
        self.0
    }

    /// Whether the instant lies in years 0000 to 9999, the range events may carry
    /// (far from the `i64` limits that window arithmetic must not reach).
    pub fn is_rfc3339_range(self) -> bool {
        (Self::FIRST_RFC3339..=Self::LAST_RFC3339).contains(&self)
    }

    /// `self + d`, saturating at [`Timestamp::NEVER`] so that far-future values
    /// never wrap into the past.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.0))
    }

    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.0))
    }

    /// Parses an RFC 3339 time (any offset; stored as UTC milliseconds, sub-millisecond
    /// digits truncated toward the past).
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimeError> {
        let parsed = time::OffsetDateTime::parse(
            text.trim(),
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| TimeError::NotRfc3339(text.to_string()))?;
        // Whole seconds and the non-negative nanoseconds past them: the same
        // as `unix_timestamp_nanos().div_euclid(1_000_000)`, without 128-bit
        // division. (Years 0000 to 9999 keep the milliseconds within i64.)
        let millis = parsed.unix_timestamp() * 1_000 + i64::from(parsed.nanosecond() / 1_000_000);
        Ok(Timestamp(millis))
    }

    /// Formats as RFC 3339 UTC with millisecond precision when needed.
    pub fn to_rfc3339(self) -> String {
        let Ok(dt) = time::OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000)
        else {
            return self.0.to_string();
        };
        let format = if self.0.rem_euclid(1000) == 0 {
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z")
        } else {
            time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            )
        };
        dt.format(&format).unwrap_or_else(|_| self.0.to_string())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Duration {
    pub fn from_secs(s: i64) -> Duration {
        Duration(s * SECOND)
    }
    pub fn from_days(d: i64) -> Duration {
        Duration(d * DAY)
    }
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses `30d`, `12h`, `15m`, `45s`, `2w`: a whole positive number and one unit.
    pub fn parse(text: &str) -> Result<Duration, TimeError> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| TimeError::NotDuration(text.to_string()))?;
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(TimeError::NotDuration(text.to_string()));
        }
        let unit_ms = match unit {
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            "w" => WEEK,
            _ => return Err(TimeError::NotDuration(text.to_string())),
        };
        let n: i64 = digits
            .parse()
            .map_err(|_| TimeError::TooLong(text.to_string()))?;
        if n == 0 {
            return Err(TimeError::NotPositive(text.to_string()));
        }
        let ms = n
            .checked_mul(unit_ms)
            .filter(|ms| *ms <= MAX_DURATION)
            .ok_or_else(|| TimeError::TooLong(text.to_string()))?;
        Ok(Duration(ms))
    }
}

/// Prints the largest unit that divides the duration exactly, so that
/// `Duration::parse(&d.to_string()) == Ok(d)` for every whole-second duration.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, suffix) in [
            (WEEK, "w"),
            (DAY, "d"),
            (HOUR, "h"),
            (MINUTE, "m"),
            (SECOND, "s"),
        ] {
            if ms != 0 && ms % unit == 0 {
                return write!(f, "{}{}", ms / unit, suffix);
            }
        }
        // Sub-second durations cannot be written in the DSL; print seconds rounded up
        // so that a window is never silently shortened.
        write!(f, "{}s", (ms + SECOND - 1).div_euclid(SECOND).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_text() {
        for text in ["30d", "12h", "15m", "45s", "2w", "90d", "36h"] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(Duration::parse(&d.to_string()).unwrap(), d, "{text}");
        }
        assert_eq!(Duration::parse("14d").unwrap().to_string(), "2w");
        assert_eq!(Duration::parse("90d").unwrap().millis(), 90 * DAY);
    }

    #[test]
    fn bad_durations_are_refused() {
        for text in [
            "",
            "d",
            "30",
            "30x",
            "-3d",
            "0d",
            "3.5d",
            "99999999999999999999d",
        ] {
            assert!(Duration::parse(text).is_err(), "{text}");
        }
        assert!(matches!(
            Duration::parse("1000000w"),
            Err(TimeError::TooLong(_))
        ));
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-03-01T10:20:30.123+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T08:20:30.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn sub_millisecond_digits_truncate_toward_the_past() {
        for (text, millis) in [
            ("1970-01-01T00:00:00.0009Z", 0),
            ("1969-12-31T23:59:59.9995Z", -1),
            ("1969-12-31T23:59:59.001Z", -999),
            ("1960-06-01T12:00:00.123456789+05:30", -302_462_999_877),
            ("0000-01-01T00:00:00Z", -62_167_219_200_000),
            ("9999-12-31T23:59:59.999999999Z", 253_402_300_799_999),
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(text),
                Ok(Timestamp(millis)),
                "{text}"
            );
        }
    }
}

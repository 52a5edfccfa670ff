//! The `/v1/batch` bodies the harness sends, built once per connection and patched
//! in place before each request, so that the client spends its CPU on the
//! network rather than on JSON serialisation (it shares two cores with the server).
//!
//! Every field that changes between requests has a fixed width, so a patch is a
//! few `copy_from_slice` calls on a buffer that is reused request after request:
//!
//! ```text
//! {"batch":[{"type":"identify","messageId":"xb-1a2b3c4d-i0000000000000042",
//!   "userId":"xb-1a2b3c4d-c0000000017","timestamp":"2026-11-25T16:00:00.000Z",
//!   "traits":{"plan":"pro","bench_sent_ns": 1000000123456789}}, ...]}
//!                          sign byte: ' ' or '-' ^
//! ```
//!
//! `bench_sent_ns` is the instant the request was due, as nanoseconds since the
//! harness started plus [`STAMP_OFFSET`] (so every stamp has 16 digits and stays
//! exact in an `f64`). The k-th identify of a customer carries `+stamp` when `k`
//! is even and `-stamp` when it is odd: with the bench segment `bench_sent_ns > 0`
//! every identify is then a transition (entered, exited, entered, ...), and the
//! webhook it causes carries the stamp back in `data.customer.traits`.

use serde_json::{Value as Json, json};
use xeno_benches::data::{SplitMix64, mix};

/// Added to every stamp so that it always has [`STAMP_DIGITS`] digits.
pub const STAMP_OFFSET: u64 = 1_000_000_000_000_000;
const STAMP_DIGITS: usize = 16;
const SEQUENCE_DIGITS: usize = 16;
const CUSTOMER_DIGITS: usize = 10;
/// `2026-11-25T16:00:00.000Z`.
pub const TIMESTAMP_LEN: usize = 24;

/// Why a slot is there: identifies carry the stamp, tracks are the rest of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identify,
    Track,
}

/// Where one event's variable fields sit in the body.
#[derive(Debug, Clone)]
struct Slot {
    kind: Kind,
    sequence_at: usize,
    customer_at: usize,
    timestamp_at: usize,
    /// The sign byte of `bench_sent_ns` (identifies only); the digits follow it.
    stamp_at: Option<usize>,
}

/// What a request's events are: where their sequences start, and when they were due.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    /// Global index of the first identify of this request.
    pub first_identify: u64,
    /// Global index of the first track of this request.
    pub first_track: u64,
    /// How many distinct customers the load spreads over.
    pub customers: u64,
    /// RFC 3339 UTC with milliseconds, exactly [`TIMESTAMP_LEN`] bytes.
    pub timestamp: &'a [u8],
    /// Nanoseconds since the harness started.
    pub sent_ns: u64,
}

/// A batch body with its patch points.
#[derive(Debug)]
pub struct BatchTemplate {
    body: Vec<u8>,
    slots: Vec<Slot>,
    identifies: u64,
}

/// The customer id prefix of a run: ids are unique per run, so every customer
/// starts outside the bench segment and the entered/exited alternation is known.
pub fn customer_prefix(run_id: &str) -> String {
    format!("xb-{run_id}-c")
}

impl BatchTemplate {
    /// `batch` events, each an identify with probability `identify_percent`% (drawn
    /// from a generator seeded by `seed`, so connections differ but runs repeat).
    pub fn build(run_id: &str, batch: usize, identify_percent: u8, seed: u64) -> BatchTemplate {
        debug_assert!(batch > 0);
        let mut rng = SplitMix64::new(seed);
        let mut body = Vec::with_capacity(batch * 320);
        let mut slots = Vec::with_capacity(batch);
        let placeholder_timestamp = "2026-01-01T00:00:00.000Z";
        debug_assert_eq!(placeholder_timestamp.len(), TIMESTAMP_LEN);
        body.extend_from_slice(br#"{"batch":["#);
        for index in 0..batch {
            if index > 0 {
                body.push(b',');
            }
            let kind = if rng.below(100) < u64::from(identify_percent) {
                Kind::Identify
            } else {
                Kind::Track
            };
            let letter = if kind == Kind::Identify { 'i' } else { 't' };
            body.extend_from_slice(format!(r#"{{"messageId":"xb-{run_id}-{letter}"#).as_bytes());
            let sequence_at = push_zeros(&mut body, SEQUENCE_DIGITS);
            body.extend_from_slice(
                format!(r#"","userId":"{}"#, customer_prefix(run_id)).as_bytes(),
            );
            let customer_at = push_zeros(&mut body, CUSTOMER_DIGITS);
            body.extend_from_slice(br#"","timestamp":""#);
            let timestamp_at = body.len();
            body.extend_from_slice(placeholder_timestamp.as_bytes());
            body.push(b'"');
            let stamp_at = match kind {
                Kind::Identify => {
                    let plan = ["free", "pro", "enterprise"][rng.below(3) as usize];
                    body.extend_from_slice(
                        format!(
                            r#","type":"identify","traits":{{"plan":"{plan}","score":{},"bench_sent_ns":"#,
                            rng.below(1000)
                        )
                        .as_bytes(),
                    );
                    let at = body.len();
                    body.push(b' ');
                    body.extend_from_slice(STAMP_OFFSET.to_string().as_bytes());
                    body.push(b'}');
                    Some(at)
                }
                Kind::Track => {
                    let properties = if rng.below(10) == 0 {
                        json!({"revenue": rng.below(20_000) as f64 / 100.0, "currency": "EUR"})
                    } else {
                        json!({"product_id": format!("p{}", rng.below(500)), "price": rng.below(10_000) as f64 / 100.0})
                    };
                    let event = if properties.get("revenue").is_some() {
                        "Order Completed"
                    } else {
                        "Product Viewed"
                    };
                    body.extend_from_slice(
                        format!(r#","type":"track","event":"{event}","properties":{properties}"#)
                            .as_bytes(),
                    );
                    None
                }
            };
            body.extend_from_slice(
                br#","context":{"library":{"name":"xeno-bench","version":"0.1.0"}}}"#,
            );
            slots.push(Slot {
                kind,
                sequence_at,
                customer_at,
                timestamp_at,
                stamp_at,
            });
        }
        body.extend_from_slice(b"]}");
        let identifies = slots.iter().filter(|s| s.kind == Kind::Identify).count() as u64;
        BatchTemplate {
            body,
            slots,
            identifies,
        }
    }

    pub fn events(&self) -> u64 {
        self.slots.len() as u64
    }

    pub fn identifies(&self) -> u64 {
        self.identifies
    }

    pub fn tracks(&self) -> u64 {
        self.events() - self.identifies
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Writes one request's variable fields into the body.
    pub fn fill(&mut self, fill: &Fill<'_>) {
        debug_assert_eq!(fill.timestamp.len(), TIMESTAMP_LEN);
        debug_assert!(fill.customers > 0);
        let stamp = STAMP_OFFSET + fill.sent_ns;
        let (mut identify, mut track) = (fill.first_identify, fill.first_track);
        for slot in &self.slots {
            let (sequence, customer, sign) = match slot.kind {
                Kind::Identify => {
                    let n = identify;
                    identify += 1;
                    // Round robin, so that the k-th identify of a customer is global
                    // identify `customer + k * customers` and its sign is known.
                    let sign = if (n / fill.customers) & 1 == 0 {
                        b' '
                    } else {
                        b'-'
                    };
                    (n, n % fill.customers, sign)
                }
                Kind::Track => {
                    let n = track;
                    track += 1;
                    (n, mix(n) % fill.customers, b' ')
                }
            };
            write_digits(
                &mut self.body[slot.sequence_at..slot.sequence_at + SEQUENCE_DIGITS],
                sequence,
            );
            write_digits(
                &mut self.body[slot.customer_at..slot.customer_at + CUSTOMER_DIGITS],
                customer,
            );
            self.body[slot.timestamp_at..slot.timestamp_at + TIMESTAMP_LEN]
                .copy_from_slice(fill.timestamp);
            if let Some(at) = slot.stamp_at {
                self.body[at] = sign;
                write_digits(&mut self.body[at + 1..at + 1 + STAMP_DIGITS], stamp);
            }
        }
    }

    /// Lends the body out for one request; give it back with [`Self::restore`].
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    pub fn restore(&mut self, body: Vec<u8>) {
        debug_assert!(self.body.is_empty());
        self.body = body;
    }

    /// The body as it stands (for tests and the setup request).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// One identify with `bench_sent_ns = 0`, so that the server has seen the field
/// before `--setup` creates a segment on it (a rule on an unknown field is refused).
pub fn field_seed_body(run_id: &str) -> Vec<u8> {
    let body: Json = json!({"batch": [{
        "type": "identify",
        "messageId": format!("xb-{run_id}-setup"),
        "userId": format!("{}setup", customer_prefix(run_id)),
        "traits": {"bench_sent_ns": 0},
    }]});
    body.to_string().into_bytes()
}

fn push_zeros(body: &mut Vec<u8>, width: usize) -> usize {
    let at = body.len();
    body.resize(at + width, b'0');
    at
}

/// Writes `value` right-aligned and zero-padded into `out`; debug-asserts it fits.
fn write_digits(out: &mut [u8], mut value: u64) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
    debug_assert_eq!(value, 0, "value wider than its field");
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` into `out`.
pub fn format_timestamp(unix_ms: i64, out: &mut [u8; TIMESTAMP_LEN]) {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .expect("the clock is within years 0000 to 9999");
    let mut text = Vec::with_capacity(TIMESTAMP_LEN);
    at.format_into(&mut text, &format)
        .expect("a UTC time formats");
    out.copy_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(template: &mut BatchTemplate, first_identify: u64, customers: u64) -> Json {
        let mut timestamp = [0u8; TIMESTAMP_LEN];
        format_timestamp(1_795_622_400_123, &mut timestamp);
        template.fill(&Fill {
            first_identify,
            first_track: 7,
            customers,
            timestamp: &timestamp,
            sent_ns: 42,
        });
        serde_json::from_slice(template.body()).expect("the body is JSON")
    }

    #[test]
    fn patched_body_is_valid_json_with_the_request_fields() {
        let mut template = BatchTemplate::build("0badcafe", 20, 50, 1);
        let body = filled(&mut template, 3, 1000);
        let batch = body["batch"].as_array().unwrap();
        assert_eq!(batch.len(), 20);
        let identifies: Vec<&Json> = batch.iter().filter(|e| e["type"] == "identify").collect();
        assert_eq!(identifies.len() as u64, template.identifies());
        assert!(!identifies.is_empty() && template.tracks() > 0);
        assert_eq!(identifies[0]["messageId"], "xb-0badcafe-i0000000000000003");
        assert_eq!(identifies[0]["userId"], "xb-0badcafe-c0000000003");
        assert_eq!(identifies[1]["userId"], "xb-0badcafe-c0000000004");
        assert_eq!(identifies[0]["timestamp"], "2026-11-25T16:00:00.123Z");
        assert_eq!(
            identifies[0]["traits"]["bench_sent_ns"],
            STAMP_OFFSET + 42,
            "the first identify of a customer enters"
        );
        let mut ids: Vec<&str> = batch
            .iter()
            .map(|e| e["messageId"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20, "message ids are unique");
    }

    #[test]
    fn every_other_identify_of_a_customer_is_negative() {
        let mut template = BatchTemplate::build("0badcafe", 4, 100, 1);
        // Identifies 8..12 over 4 customers are the third round: signs positive.
        let body = filled(&mut template, 8, 4);
        assert!(
            body["batch"][0]["traits"]["bench_sent_ns"]
                .as_i64()
                .unwrap()
                > 0
        );
        // Identifies 4..8 are the second round: every one is an exit.
        let body = filled(&mut template, 4, 4);
        for event in body["batch"].as_array().unwrap() {
            let stamp = event["traits"]["bench_sent_ns"].as_i64().unwrap();
            assert_eq!(stamp, -((STAMP_OFFSET + 42) as i64));
        }
    }
}

//! Feeds arbitrary text to the rule DSL parser. It must never panic (nor overflow the
//! stack or run out of memory, which libFuzzer reports as crashes), and every rule it
//! accepts must print to text that parses back to the same rule.
//!
//! Run from this folder: `cargo +nightly fuzz run parse_rule -- -dict=parse_rule.dict`
//! (on stable: `RUSTC_BOOTSTRAP=1 cargo fuzz run parse_rule -- -dict=parse_rule.dict`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xeno_engine::rule::dsl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = dsl::parse(text) {
        let printed = dsl::print(&rule);
        assert_eq!(
            dsl::parse(&printed),
            Ok(rule),
            "input: {text:?}\nprinted: {printed:?}"
        );
    }
});

//! Outgoing mail: the SMTP channel ([`smtp`]) that sends one plain-text
//! message per call over a pooled connection (lettre, rustls with ring and the
//! platform's roots). What to send and when, retries and suppression, live in
//! the engine and the actor runtime.

pub mod smtp;

#[cfg(test)]
mod tests;

pub use smtp::{Mail, MailError, SmtpConfig, SmtpMailer, SmtpSecurity};

//! A usage location: the two-letter country code (ISO 3166-1 alpha-2) a user must have
//! before Microsoft 365 assigns it a license (SPEC §3, §5) — given by a row's
//! `usage_location` column or by `run.default_usage_location`.

/// A usage location: an ISO 3166-1 alpha-2 country code, upper case (`NL`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageLocation(String);

impl UsageLocation {
    /// Two ASCII letters, any case, spaces around ignored.
    pub fn parse(text: &str) -> Result<UsageLocation, String> {
        let text = text.trim();
        if text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(UsageLocation(text.to_ascii_uppercase()))
        } else {
            Err(format!(
                "{text:?} is not a two-letter country code (ISO 3166-1 alpha-2, e.g. NL, DE, JP)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UsageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

use chrono::{DateTime, SecondsFormat, Utc};

/// The contract's timestamp format: RFC 3339, UTC, milliseconds, `Z` suffix.
/// Being fixed-width, these strings sort in time order, which the owner index relies on.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_z_and_parses_back() {
        let at = parse_timestamp("2026-11-22T10:00:00.5+02:00").unwrap();
        let text = format_timestamp(at);
        assert_eq!(text, "2026-11-22T08:00:00.500Z");
        assert_eq!(parse_timestamp(&text), Some(at));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}

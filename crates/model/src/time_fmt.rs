//! RFC 3339 timestamps with millisecond precision.
//!
//! Events carry `occurred_at` as unix milliseconds plus the device's UTC
//! offset in minutes (so the local day and the original wall-clock time can
//! both be recovered) and `recorded_at` as unix milliseconds in UTC.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Parses an RFC 3339 timestamp (an offset is required by RFC 3339) into
/// unix milliseconds (sub-millisecond digits are truncated toward the past)
/// and the offset in minutes.
///
/// # Errors
/// A message naming what was expected.
pub fn parse_rfc3339_ms(s: &str) -> Result<(i64, i16), String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        format!("expected an RFC 3339 timestamp with offset, like 2020-01-28T09:30:00+08:00 ({e})")
    })?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    let ms = i64::try_from(ms).map_err(|_| "timestamp out of range".to_owned())?;
    let offset_min = i16::try_from(t.offset().whole_seconds() / 60)
        .map_err(|_| "offset out of range".to_owned())?;
    Ok((ms, offset_min))
}

/// Formats unix milliseconds at an offset (minutes) as RFC 3339.
pub fn format_rfc3339_ms(unix_ms: i64, offset_min: i16) -> String {
    let offset =
        UtcOffset::from_whole_seconds(i32::from(offset_min) * 60).unwrap_or(UtcOffset::UTC);
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| format!("@{unix_ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_offset() {
        let (ms, off) = parse_rfc3339_ms("2020-01-28T09:30:00.250+08:00").unwrap();
        assert_eq!(off, 480);
        assert_eq!(ms, 1_580_175_000_250);
        assert_eq!(format_rfc3339_ms(ms, off), "2020-01-28T09:30:00.25+08:00");
        assert!(parse_rfc3339_ms("2020-01-28 09:30").is_err());
        assert!(parse_rfc3339_ms("2020-01-28T09:30:00").is_err());
    }
}

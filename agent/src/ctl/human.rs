//! Numbers and times for people: byte sizes (`1.2MiB`), durations (`5m3s`, `23h59m`),
//! and reading the RFC 3339 timestamps the admin API gives to say how long ago or how
//! soon they are.
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// `512B`, `1.2KiB`, `340MiB`: binary units, one decimal below 100, none above.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // Rounding can reach the next unit (1023.96KiB prints as 1024KiB otherwise).
    if format!("{value:.0}") == "1024" && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 99.95 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// A byte rate as [`bytes`] of its rounded value (`1.2MiB`; the column says `/s`).
pub(crate) fn byte_rate(per_second: f64) -> String {
    bytes(per_second.max(0.0).round() as u64)
}

/// The two largest units of a duration, the second left out when zero: `45s`, `5m3s`,
/// `2h`, `23h59m`, `3d4h`.
pub fn duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = UNITS.iter().position(|(size, _)| seconds >= *size) else {
        return "0s".to_string();
    };
    let (size, unit) = UNITS[first];
    let mut text = format!("{}{unit}", seconds / size);
    if let Some((next_size, next_unit)) = UNITS.get(first + 1) {
        let rest = (seconds % size) / next_size;
        if rest > 0 {
            text.push_str(&format!("{rest}{next_unit}"));
        }
    }
    text
}

/// A configured span (`--timeout`, `--interval`): `10s`, `2m`, `0.5s`.
pub fn span(span: std::time::Duration) -> String {
    if span.subsec_nanos() == 0 {
        duration(span.as_secs())
    } else {
        format!("{}s", span.as_secs_f64())
    }
}

/// How long ago `timestamp` (RFC 3339) was, as [`duration`]; `-` when empty, the text as
/// given when it does not parse, `0s` when it lies in the future (clock skew).
pub(crate) fn age(timestamp: &str, now: OffsetDateTime) -> String {
    relative(timestamp, now, |seconds| duration(seconds.max(0) as u64))
}

/// How long until `timestamp` (RFC 3339), as [`duration`]; `past` once it has passed;
/// `-` when empty, the text as given when it does not parse.
pub(crate) fn time_left(timestamp: &str, now: OffsetDateTime, past: &str) -> String {
    relative(timestamp, now, |seconds| {
        if seconds >= 0 {
            past.to_string()
        } else {
            duration(seconds.unsigned_abs())
        }
    })
}

/// `timestamp (5m3s ago)` / `timestamp (in 23h59m)` for key/value listings.
pub(crate) fn with_relative(timestamp: &str, now: OffsetDateTime) -> String {
    if timestamp.is_empty() {
        return String::new();
    }
    match parse_rfc3339(timestamp) {
        Some(when) => {
            let seconds = (now - when).whole_seconds();
            if seconds >= 0 {
                format!("{timestamp} ({} ago)", duration(seconds as u64))
            } else {
                format!("{timestamp} (in {})", duration(seconds.unsigned_abs()))
            }
        }
        None => timestamp.to_string(),
    }
}

/// Calls `show` with the seconds from `timestamp` to `now` (positive: in the past).
fn relative(timestamp: &str, now: OffsetDateTime, show: impl FnOnce(i64) -> String) -> String {
    if timestamp.is_empty() {
        return "-".to_string();
    }
    match parse_rfc3339(timestamp) {
        Some(when) => show((now - when).whole_seconds()),
        None => timestamp.to_string(),
    }
}

/// Reads an RFC 3339 timestamp (`2025-01-02T03:04:05Z`, `…05.123456789+02:00`).
pub(crate) fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    let raw = text.as_bytes();
    let number = |from: usize, to: usize| -> Option<u32> {
        let digits = text.get(from..to)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let at = |index: usize, allowed: &[u8]| raw.get(index).is_some_and(|b| allowed.contains(b));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let year = number(0, 4)?;
    let month = Month::try_from(u8::try_from(number(5, 7)?).ok()?).ok()?;
    let day = u8::try_from(number(8, 10)?).ok()?;
    let hour = u8::try_from(number(11, 13)?).ok()?;
    let minute = u8::try_from(number(14, 16)?).ok()?;
    // A leap second (60) reads as the last second of the minute.
    let second = u8::try_from(number(17, 19)?).ok()?.min(59);
    let mut index = 19;
    let mut nanos = 0u32;
    if at(index, b".") {
        let start = index + 1;
        let end = start
            + raw[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        if end == start {
            return None;
        }
        let digits = &text[start..end.min(start + 9)];
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
        index = end;
    }
    let offset = match text.get(index..)? {
        "Z" | "z" => UtcOffset::UTC,
        zone if zone.len() == 6 && at(index + 3, b":") => {
            let sign: i8 = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours = i8::try_from(number(index + 1, index + 3)?).ok()?;
            let minutes = i8::try_from(number(index + 4, index + 6)?).ok()?;
            UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?
        }
        _ => return None,
    };
    let date = Date::from_calendar_date(i32::try_from(year).ok()?, month, day).ok()?;
    let time = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        parse_rfc3339(text).expect("test timestamp parses")
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1.0KiB");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(1_258_291), "1.2MiB");
        assert_eq!(bytes(150 * 1024 * 1024), "150MiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0MiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0GiB");
        assert_eq!(bytes(u64::MAX), "16.0EiB");
        assert_eq!(byte_rate(1536.4), "1.5KiB");
        assert_eq!(byte_rate(-3.0), "0B");
    }

    #[test]
    fn durations_show_two_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(303), "5m3s");
        assert_eq!(duration(7200), "2h");
        assert_eq!(duration(7260), "2h1m");
        assert_eq!(duration(86_399), "23h59m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 59), "3d4h");
        assert_eq!(duration(400 * 86_400), "400d");
        assert_eq!(span(std::time::Duration::from_secs(10)), "10s");
        assert_eq!(span(std::time::Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn timestamps_parse() {
        let base = at("2025-03-04T05:06:07Z");
        assert_eq!(base.unix_timestamp(), 1_741_064_767);
        assert_eq!(at("2025-03-04T07:06:07+02:00"), base);
        assert_eq!(at("2025-03-04T04:36:07-00:30"), base);
        let fine = at("2025-03-04T05:06:07.5Z");
        assert_eq!(fine.nanosecond(), 500_000_000);
        assert_eq!(
            at("2025-03-04T05:06:07.123456789123Z").nanosecond(),
            123_456_789
        );
        for bad in [
            "",
            "yesterday",
            "2025-03-04",
            "2025-03-04T05:06:07",
            "2025-13-04T05:06:07Z",
            "2025-03-04T05:06:07.Z",
            "2025-03-04T05:06:07+0200",
            "2025-03-04T25:06:07Z",
            "2025-03-04T05:06:07Zjunk",
            "２025-03-04T05:06:07Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn relative_times() {
        let now = at("2025-03-04T05:06:07Z");
        assert_eq!(age("2025-03-04T05:01:04Z", now), "5m3s");
        assert_eq!(age("2025-03-04T05:06:09Z", now), "0s");
        assert_eq!(age("", now), "-");
        assert_eq!(age("soon", now), "soon");
        assert_eq!(time_left("2025-03-05T05:05:07Z", now, "expired"), "23h59m");
        assert_eq!(time_left("2025-03-04T05:06:00Z", now, "expired"), "expired");
        assert_eq!(time_left("", now, "expired"), "-");
        assert_eq!(
            with_relative("2025-03-04T03:06:07Z", now),
            "2025-03-04T03:06:07Z (2h ago)"
        );
        assert_eq!(
            with_relative("2025-03-04T05:07:07Z", now),
            "2025-03-04T05:07:07Z (in 1m)"
        );
        assert_eq!(with_relative("", now), "");
    }
}

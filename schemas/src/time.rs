//! Strict RFC 3339 UTC timestamps with exactly six fractional digits, and a lenient reader for people.
//!
//! One spelling per instant on the wire (`2026-11-22T08:31:41.123456Z`), so a
//! timestamp's bytes never vary between producers and comparisons need no
//! parsing of zones. People type times on the command line in other RFC 3339
//! spellings (`2026-11-22T08:31:41Z`, `...41.5+00:00`): [`Timestamp::parse_human`]
//! reads those and never enters the wire format.

use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Microseconds since the Unix epoch, UTC. Years 1970 to 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp {text:?} is not RFC 3339 UTC with six fractional digits (YYYY-MM-DDTHH:MM:SS.ffffffZ): {why}"
)]
pub struct TimestampError {
    text: String,
    why: &'static str,
}

/// What [`Timestamp::parse_human`] accepts, for its error messages and the docs.
pub const HUMAN_TIME_FORMS: &str = "an RFC 3339 time in UTC: YYYY-MM-DDTHH:MM:SS, optionally a fraction \
     of up to 6 digits (more only when the extra digits are 0), then Z or +00:00; \
     e.g. 2026-12-01T06:25:15Z or 2026-12-01T06:25:15.25+00:00";

/// Why a time typed by a person was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a time Docket reads ({why}); give {HUMAN_TIME_FORMS}")]
pub struct HumanTimeError {
    text: String,
    why: &'static str,
}

/// Fractional digits a person's time may carry: nanoseconds, what most tools print.
/// Digits past the sixth must be 0, since timestamps hold microseconds and are never rounded.
const HUMAN_FRACTION_DIGITS_MAX: usize = 9;

const SPELLING_LEN: usize = 27;
/// 9999-12-31T23:59:59.999999Z
const MAX_MICROS: i64 = 253_402_300_799_999_999;

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from microseconds since the epoch; `None` outside 1970..=9999.
    pub fn from_micros(micros: i64) -> Option<Timestamp> {
        (0..=MAX_MICROS)
            .contains(&micros)
            .then_some(Timestamp(micros))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This instant plus `seconds`, saturating at the end of year 9999.
    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(seconds.saturating_mul(1_000_000))
                .clamp(0, MAX_MICROS),
        )
    }

    pub fn parse(text: &str) -> Result<Timestamp, TimestampError> {
        let err = |why| TimestampError {
            text: text.chars().take(40).collect(),
            why,
        };
        let b = text.as_bytes();
        if b.len() != SPELLING_LEN {
            return Err(err("wrong length"));
        }
        let punct = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ];
        if punct.iter().any(|&(i, c)| b[i] != c) {
            return Err(err("wrong separators"));
        }
        let num = |from: usize, to: usize| -> Result<i64, TimestampError> {
            b[from..to].iter().try_fold(0i64, |acc, &c| {
                if c.is_ascii_digit() {
                    Ok(acc * 10 + i64::from(c - b'0'))
                } else {
                    Err(err("non-digit"))
                }
            })
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, minute, second, micro) =
            (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
        if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month)
        {
            return Err(err("no such date"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(err("no such time of day"));
        }
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
        Ok(Timestamp(secs * 1_000_000 + micro))
    }

    /// Reads a time as a person writes it (command-line flags; never events): RFC 3339 in UTC,
    /// whole seconds or a fraction of up to [`HUMAN_FRACTION_DIGITS_MAX`] digits, `Z` or `+00:00`.
    ///
    /// The instant is exact or refused: a fraction finer than a microsecond is an error, not rounded.
    pub fn parse_human(text: &str) -> Result<Timestamp, HumanTimeError> {
        let err = |why| HumanTimeError {
            text: text.chars().take(40).collect(),
            why,
        };
        let t = text.trim();
        // RFC 3339 § 5.6 allows lower-case `t` and `z`, and a space for `T` (its note on readability).
        let (body, zone_ok) = if let Some(b) = t.strip_suffix(['Z', 'z']) {
            (b, true)
        } else if let Some(b) = t
            .strip_suffix("+00:00")
            .or_else(|| t.strip_suffix("-00:00"))
        {
            (b, true)
        } else {
            (t, false)
        };
        if !zone_ok {
            let offset = t.len() >= 6
                && t.is_char_boundary(t.len() - 6)
                && matches!(t.as_bytes()[t.len() - 6], b'+' | b'-')
                && t.as_bytes()[t.len() - 3] == b':';
            return Err(err(if offset {
                "only UTC is read: the offset must be +00:00"
            } else {
                "no time zone: end it with Z or +00:00"
            }));
        }
        let (whole, fraction) = match body.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (body, None),
        };
        let wb = whole.as_bytes();
        if wb.len() != 19 || !matches!(wb[10], b'T' | b't' | b' ') {
            return Err(err("the date and time must be YYYY-MM-DDTHH:MM:SS"));
        }
        let micros = match fraction {
            None => "000000".to_string(),
            Some(f) if f.is_empty() || f.len() > HUMAN_FRACTION_DIGITS_MAX => {
                return Err(err("the fraction after `.` must have 1 to 9 digits"));
            }
            Some(f) if !f.bytes().all(|c| c.is_ascii_digit()) => {
                return Err(err("the fraction after `.` must be digits"));
            }
            Some(f) if f.len() > 6 && f[6..].bytes().any(|c| c != b'0') => {
                return Err(err(
                    "finer than a microsecond, which timestamps cannot hold",
                ));
            }
            Some(f) => format!("{:0<6}", &f[..f.len().min(6)]),
        };
        // The canonical spelling, so dates and times are checked by the one strict parser.
        let canonical = format!("{}T{}.{micros}Z", &whole[..10], &whole[11..]);
        Timestamp::parse(&canonical).map_err(|e| err(e.why))
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days, valid for our range.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micro = self.0.rem_euclid(1_000_000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micro:06}Z",
            sod / 3_600,
            sod % 3_600 / 60,
            sod % 60
        )
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "RFC 3339 UTC with exactly six fractional digits, years 1970-9999",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        let t = Timestamp::parse("2026-11-22T08:31:41.123456Z").unwrap();
        assert_eq!(t.as_micros(), 1_795_336_301_123_456);
        assert_eq!(
            Timestamp::UNIX_EPOCH.to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::parse("2024-02-29T23:59:59.999999Z")
                .unwrap()
                .to_string(),
            "2024-02-29T23:59:59.999999Z"
        );
    }

    #[test]
    fn refuses_other_spellings() {
        for bad in [
            "2026-11-22T08:31:41Z",
            "2026-11-22T08:31:41.123456+00:00",
            "2026-11-22 08:31:41.123456Z",
            "2023-02-29T00:00:00.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2026-11-22T24:00:00.000000Z",
            "2026-11-22T08:31:41.12345aZ",
            "２026-11-22T08:31:41.123456Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn people_may_write_times_in_any_rfc3339_utc_spelling() {
        let t = Timestamp::parse("2026-12-01T06:25:15.000000Z").unwrap();
        for good in [
            "2026-12-01T06:25:15Z",
            "2026-12-01T06:25:15+00:00",
            "2026-12-01T06:25:15-00:00",
            "2026-12-01t06:25:15z",
            "2026-12-01 06:25:15Z",
            "2026-12-01T06:25:15.0Z",
            "2026-12-01T06:25:15.000000000+00:00",
            " 2026-12-01T06:25:15Z\n",
        ] {
            assert_eq!(Timestamp::parse_human(good), Ok(t), "{good}");
        }
        let half = Timestamp::parse("2026-12-01T06:25:15.500000Z").unwrap();
        assert_eq!(Timestamp::parse_human("2026-12-01T06:25:15.5Z"), Ok(half));
        assert_eq!(
            Timestamp::parse_human("2026-12-01T06:25:15.123456000Z")
                .unwrap()
                .as_micros()
                % 1_000_000,
            123_456
        );
        assert_eq!(
            Timestamp::parse_human("2026-12-01T06:25:15.123456Z").ok(),
            Timestamp::parse("2026-12-01T06:25:15.123456Z").ok()
        );
    }

    #[test]
    fn a_refused_human_time_says_why_and_what_is_accepted() {
        for (bad, why) in [
            ("2026-12-01T06:25:15.1234567Z", "finer than a microsecond"),
            ("2026-12-01T06:25:15.1234560001Z", "1 to 9 digits"),
            ("2026-12-01T06:25:15.Z", "1 to 9 digits"),
            ("2026-12-01T06:25:15", "no time zone"),
            ("2026-12-01T06:25:15+01:00", "only UTC"),
            ("2026-12-01", "no time zone"),
            ("2026-12-01Z", "YYYY-MM-DDTHH:MM:SS"),
            ("2026-12-01T6:25:15Z", "YYYY-MM-DDTHH:MM:SS"),
            ("2026-02-30T06:25:15Z", "no such date"),
            ("2026-12-01T24:00:00Z", "no such time of day"),
            ("2026-12-01T06:25:1xZ", "non-digit"),
            ("yesterday", "no time zone"),
            ("ééééééé", "no time zone"),
        ] {
            let e = Timestamp::parse_human(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains(HUMAN_TIME_FORMS), "{bad}: {e}");
        }
        // The wire stays strict: what people may type, events may not carry.
        assert!(Timestamp::parse("2026-12-01T06:25:15Z").is_err());
    }

    proptest! {
        #[test]
        fn human_reading_agrees_with_the_wire_spelling(micros in 0..=MAX_MICROS) {
            let t = Timestamp::from_micros(micros).unwrap();
            prop_assert_eq!(Timestamp::parse_human(&t.to_string()).unwrap(), t);
            let plus = t.to_string().replace('Z', "+00:00");
            prop_assert_eq!(Timestamp::parse_human(&plus).unwrap(), t);
        }

        #[test]
        fn round_trips(micros in 0..=MAX_MICROS) {
            let t = Timestamp::from_micros(micros).unwrap();
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }
    }
}

//! The one duration grammar of the command line and the config file:
//! `humantime`'s (`500us`, `50ms`, `10s`, `1m`, `12h`, `7d`, `1h 30m`).
//! Every duration option and key goes through [`parse`] or
//! [`parse_positive`].

use std::time::Duration;

/// Parses a duration such as `50ms`, `10s`, `1m` or `7d`; the error says
/// what was wrong, with an example.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}): use e.g. 500us, 50ms, 10s, 1m, 7d"))
}

/// [`parse`], refusing zero.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        d if d.is_zero() => Err(format!("{text:?}: must be longer than zero")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_the_readme_and_tests_parse() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases = [
            ("500us", Duration::from_micros(500)),
            ("1ms", ms(1)),
            ("50ms", ms(50)),
            ("1500ms", ms(1500)),
            ("1s", s(1)),
            ("30s", s(30)),
            ("1m", s(60)),
            ("30m", s(1800)),
            ("1h", s(3600)),
            ("12h", s(12 * 3600)),
            ("7d", s(7 * 86_400)),
            (" 10s ", s(10)),
            ("1.5h", s(5400)),
            ("7w", s(7 * 7 * 86_400)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_and_zero_durations_are_refused() {
        for bad in ["", "d", "-1h", "7x", "5parsecs", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert!(parse_positive("0").is_err());
        assert!(parse_positive("0d").is_err());
        assert_eq!(parse_positive("2s"), Ok(Duration::from_secs(2)));
    }
}

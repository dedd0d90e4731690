//! The test guest's result line, `KITE-TEST <name> ok key=value ...` or
//! `KITE-TEST <name> FAIL <reason>`, which `kite workload` prints in the same form on the host.

use std::collections::BTreeMap;

/// A parsed result line.
#[derive(Clone, Debug, PartialEq)]
pub enum TestLine {
    Ok {
        name: String,
        /// Every `key=value` word, in order.
        values: Vec<(String, String)>,
    },
    Fail {
        name: String,
        reason: String,
    },
}

impl TestLine {
    pub fn name(&self) -> &str {
        match self {
            TestLine::Ok { name, .. } | TestLine::Fail { name, .. } => name,
        }
    }
}

/// Parse one line; `None` if it is not a result line. Leading text (a console that printed
/// something without a newline first) is skipped.
pub fn parse(line: &str) -> Option<TestLine> {
    let start = line.find("KITE-TEST ")?;
    let mut rest = line[start + "KITE-TEST ".len()..].trim_end();
    let name = next_word(&mut rest)?.to_string();
    match next_word(&mut rest)? {
        "ok" => Some(TestLine::Ok {
            name,
            values: rest
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        "FAIL" => Some(TestLine::Fail {
            name,
            reason: rest.trim().to_string(),
        }),
        _ => None,
    }
}

fn next_word<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    *rest = &s[end..];
    Some(&s[..end])
}

/// The values of an ok line that are decimal numbers (`cycles=123`, `bytes_per_cycle=8.5`);
/// hex values such as a checksum are left out.
pub fn numbers(values: &[(String, String)]) -> BTreeMap<String, f64> {
    values
        .iter()
        .filter(|(_, v)| !v.starts_with("0x"))
        .filter_map(|(k, v)| Some((k.clone(), v.parse::<f64>().ok().filter(|x| x.is_finite())?)))
        .collect()
}

/// The value of `key`, as text.
pub fn value<'a>(values: &'a [(String, String)], key: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_line_with_values() {
        let l = parse("KITE-TEST cpu ok cycles=433337008 checksum=0xac291310aae50d5b").unwrap();
        let TestLine::Ok { name, values } = &l else {
            panic!("{l:?}")
        };
        assert_eq!(name, "cpu");
        assert_eq!(value(values, "cycles"), Some("433337008"));
        let n = numbers(values);
        assert_eq!(n.get("cycles"), Some(&433337008.0));
        assert!(!n.contains_key("checksum"));
    }

    #[test]
    fn fractional_values_and_trailing_whitespace() {
        let l = parse("KITE-TEST mem ok bytes_per_cycle=8.512 bytes=335544320 cycles=39420011\r")
            .unwrap();
        let TestLine::Ok { values, .. } = l else {
            panic!()
        };
        let n = numbers(&values);
        assert_eq!(n["bytes_per_cycle"], 8.512);
        assert_eq!(n["cycles"], 39420011.0);
    }

    #[test]
    fn fail_line_keeps_the_whole_reason() {
        assert_eq!(
            parse("KITE-TEST virtio-blk FAIL unknown scenario"),
            Some(TestLine::Fail {
                name: "virtio-blk".into(),
                reason: "unknown scenario".into()
            })
        );
        let l = parse("KITE-TEST cpu FAIL exception vector=6 error=0x0 rip=0x100123").unwrap();
        assert_eq!(l.name(), "cpu");
        assert!(
            matches!(l, TestLine::Fail { reason, .. } if reason.starts_with("exception vector=6"))
        );
    }

    #[test]
    fn other_lines_are_not_results() {
        assert_eq!(parse("kite: guest reset the machine"), None);
        assert_eq!(parse("KITE-TEST"), None);
        assert_eq!(parse("KITE-TEST cpu"), None);
        assert_eq!(parse("KITE-TEST cpu maybe x=1"), None);
        // Console noise before the line is skipped.
        assert_eq!(
            parse("noiseKITE-TEST pio-rtt ok n=1").unwrap().name(),
            "pio-rtt"
        );
    }

    #[test]
    fn words_without_equals_and_bad_numbers_are_ignored() {
        let TestLine::Ok { values, .. } = parse("KITE-TEST x ok a=1 junk b=inf c=zz").unwrap()
        else {
            panic!()
        };
        let n = numbers(&values);
        assert_eq!(n.len(), 1);
        assert_eq!(n["a"], 1.0);
    }
}

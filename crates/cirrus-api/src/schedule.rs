//! Schedules: `rate(5 minutes)`, or a cron expression, optionally in a named time zone
//! (`TZ=Europe/Paris 0 9 * * MON-FRI`; UTC otherwise).

use chrono::TimeZone as _;
use std::str::FromStr as _;
use std::time::Duration;

/// The longest rate accepted: a year.
const MAX_RATE_SECS: u64 = 366 * 86_400;

#[derive(Debug, Clone)]
pub enum Schedule {
    Rate(Duration),
    Cron {
        cron: Box<croner::Cron>,
        zone: chrono_tz::Tz,
    },
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            let (n, unit) = inner.trim().split_once(' ').ok_or_else(|| {
                format!("invalid rate {text:?}: use rate(N seconds|minutes|hours|days)")
            })?;
            let n: u64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("invalid rate {text:?}: N must be a whole number above zero")
            })?;
            let unit = match unit.trim() {
                "second" | "seconds" => 1,
                "minute" | "minutes" => 60,
                "hour" | "hours" => 3600,
                "day" | "days" => 86_400,
                other => {
                    return Err(format!(
                        "invalid rate unit {other:?}: use seconds, minutes, hours or days"
                    ))
                }
            };
            let secs = n
                .checked_mul(unit)
                .filter(|s| *s <= MAX_RATE_SECS)
                .ok_or_else(|| format!("invalid rate {text:?}: at most one year between runs"))?;
            return Ok(Schedule::Rate(Duration::from_secs(secs)));
        }
        // AWS's form: six fields, `?` for "any", the year last, Sunday as day 1.
        if let Some(inner) = text.strip_prefix("cron(").and_then(|t| t.strip_suffix(')')) {
            let fields: Vec<&str> = inner.split_whitespace().collect();
            if let Some(fault) = field_fault(&fields, &AWS_FIELDS) {
                return Err(format!("invalid schedule {text:?}: {fault}"));
            }
            if !matches!(fields[5], "*" | "?") {
                return Err(format!(
                    "invalid schedule {text:?}: the year field {:?} must be * (Cirrus schedules recur every year)",
                    fields[5]
                ));
            }
            let expression = [
                fields[0].to_owned(),
                fields[1].to_owned(),
                fields[2].replace('?', "*"),
                fields[3].to_owned(),
                aws_day_of_week(&fields[4].replace('?', "*")),
            ]
            .join(" ");
            return cron(&expression, text, chrono_tz::UTC);
        }
        let (zone, expression) = match text
            .strip_prefix("TZ=")
            .or_else(|| text.strip_prefix("CRON_TZ="))
        {
            Some(rest) => {
                let (zone, expression) = rest.split_once(' ').ok_or_else(|| {
                    format!(
                        "invalid schedule {text:?}: a cron expression must follow the time zone"
                    )
                })?;
                let zone = chrono_tz::Tz::from_str(zone).map_err(|_| {
                    format!("unknown time zone {zone:?}: use an IANA name like Europe/Paris")
                })?;
                (zone, expression)
            }
            None => (chrono_tz::UTC, text),
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        // Six fields: seconds first (croner's extension).
        let fault = match fields.len() {
            6 => field_fault(&fields, &FIELDS_WITH_SECONDS),
            _ => field_fault(&fields, &FIELDS),
        };
        if let Some(fault) = fault {
            return Err(format!("invalid cron expression {text:?}: {fault}"));
        }
        cron(expression.trim(), text, zone)
    }

    /// The first occurrence strictly after `after_ms` (Unix milliseconds).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Schedule::Rate(every) => after_ms.checked_add(u64::try_from(every.as_millis()).ok()?),
            Schedule::Cron { cron, zone } => {
                let start = zone.timestamp_millis_opt(after_ms as i64).single()?;
                let next = cron.find_next_occurrence(&start, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }
}

/// A five-field cron expression (`shown` is what the user wrote, for messages).
fn cron(expression: &str, shown: &str, zone: chrono_tz::Tz) -> Result<Schedule, String> {
    // croner reads a field of bare commas (or a bare `+`, its day-of-week modifier) as
    // "never", and the search for a second that never comes walks the clock one second
    // at a time for years.
    if let Some(field) = expression.split_whitespace().find(|field| {
        let values = field.strip_prefix('+').unwrap_or(field);
        values.split(',').any(str::is_empty)
    }) {
        return Err(format!(
            "invalid cron expression {shown:?}: the field {field:?} has an empty list item"
        ));
    }
    let parsed = croner::Cron::from_str(expression)
        .map_err(|e| format!("invalid cron expression {shown:?}: {e}"))?;
    let schedule = Schedule::Cron {
        cron: Box::new(parsed),
        zone,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if schedule.next_after(now).is_none() {
        return Err(format!("cron expression {shown:?} never fires"));
    }
    Ok(schedule)
}

/// The fields of a cron expression and the numbers each takes.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

const FIELDS_WITH_SECONDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// AWS's: Sunday is 1, and a year follows.
const AWS_FIELDS: [(&str, u32, u32); 6] = [
    ("minutes", 0, 59),
    ("hours", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 1, 7),
    ("year", 1970, 2199),
];

/// What is wrong with the fields, naming the field and its range; `None` if nothing
/// obvious (croner may still refuse the expression, and says why).
fn field_fault(fields: &[&str], expected: &[(&str, u32, u32)]) -> Option<String> {
    if fields.len() != expected.len() {
        let names: Vec<&str> = expected.iter().map(|(name, _, _)| *name).collect();
        return Some(format!(
            "expected {} fields ({}), found {}",
            expected.len(),
            names.join(" "),
            fields.len()
        ));
    }
    for (field, (name, low, high)) in fields.iter().zip(expected) {
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            if let Some(step) = step {
                if step.parse::<u32>().map_or(true, |s| s == 0) {
                    return Some(format!(
                        "the {name} field {field:?} has the step {step:?}: use a whole number above zero"
                    ));
                }
            }
            let bounds = range.trim_start_matches('+');
            for value in bounds.split('-') {
                // Numbers only: names (MON, JAN), `L`, `W` and `#` are croner's to judge.
                let digits = value.trim_end_matches(['L', 'W']);
                let digits = digits.split('#').next().unwrap_or(digits);
                if let Ok(n) = digits.parse::<u32>() {
                    if n < *low || n > *high {
                        return Some(format!(
                            "the {name} field {field:?} is out of range: {name} takes {low}-{high}"
                        ));
                    }
                }
            }
        }
    }
    None
}

/// AWS's day-of-week numbers (1 = Sunday … 7 = Saturday) as cron's (0 … 6).
fn aws_day_of_week(field: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String, after_hash: bool| {
        if digits.is_empty() {
            return;
        }
        match digits.parse::<u32>() {
            // After `#` it is "the Nth week", not a day.
            Ok(n) if !after_hash && (1..=7).contains(&n) => out.push_str(&(n - 1).to_string()),
            _ => out.push_str(digits),
        }
        digits.clear();
    };
    let mut after_hash = false;
    for c in field.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out, after_hash);
        after_hash = c == '#';
        if matches!(c, ',' | '-') {
            after_hash = false;
        }
        out.push(c);
    }
    flush(&mut digits, &mut out, after_hash);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_22_2026_1200_UTC: u64 = 1_795_348_800_000;

    #[test]
    fn aws_cron_expressions() {
        // 10:15 UTC every Monday to Friday (AWS: 2-6, Sunday being 1).
        let weekdays = Schedule::parse("cron(15 10 ? * 2-6 *)").unwrap();
        let same = Schedule::parse("15 10 * * 1-5").unwrap();
        assert_eq!(
            weekdays.next_after(NOV_22_2026_1200_UTC),
            same.next_after(NOV_22_2026_1200_UTC)
        );
        let sundays = Schedule::parse("cron(0 18 ? * 1 *)").unwrap();
        assert_eq!(
            sundays.next_after(NOV_22_2026_1200_UTC),
            Schedule::parse("0 18 * * SUN")
                .unwrap()
                .next_after(NOV_22_2026_1200_UTC)
        );
        assert_eq!(aws_day_of_week("2#3"), "1#3");
        assert_eq!(aws_day_of_week("1,7"), "0,6");
        assert_eq!(aws_day_of_week("MON-FRI"), "MON-FRI");
        assert_eq!(
            Schedule::parse("cron(0 18 ? * 8 *)").unwrap_err(),
            "invalid schedule \"cron(0 18 ? * 8 *)\": the day-of-week field \"8\" is out of range: day-of-week takes 1-7"
        );
        assert!(Schedule::parse("cron(0 18 * *)").unwrap_err().contains(
            "expected 6 fields (minutes hours day-of-month month day-of-week year), found 4"
        ));
        assert!(Schedule::parse("cron(0 18 * * ? 2027)")
            .unwrap_err()
            .contains("the year field \"2027\" must be *"));
    }

    #[test]
    fn rates() {
        let s = Schedule::parse("rate(5 minutes)").unwrap();
        assert_eq!(s.next_after(1000), Some(1000 + 300_000));
        assert!(Schedule::parse("rate(0 minutes)").is_err());
        assert!(Schedule::parse("rate(5 fortnights)").is_err());
        assert!(Schedule::parse("rate(five minutes)").is_err());
        assert!(Schedule::parse("rate(18446744073709551615 seconds)").is_err());
        assert!(Schedule::parse("rate(400 days)").is_err());
    }

    #[test]
    fn cron_in_utc_and_in_a_time_zone() {
        let daily = Schedule::parse("0 9 * * *").unwrap();
        // 12:00 UTC → next 09:00 UTC is the next day.
        assert_eq!(
            daily.next_after(NOV_22_2026_1200_UTC),
            Some(NOV_22_2026_1200_UTC + 21 * 3_600_000)
        );
        // 09:00 in Paris (UTC+1 in November) is 08:00 UTC.
        let paris = Schedule::parse("TZ=Europe/Paris 0 9 * * *").unwrap();
        assert_eq!(
            paris.next_after(NOV_22_2026_1200_UTC),
            Some(NOV_22_2026_1200_UTC + 20 * 3_600_000)
        );
        assert!(Schedule::parse("TZ=Mars/Olympus 0 9 * * *")
            .unwrap_err()
            .contains("time zone"));
        assert_eq!(
            Schedule::parse("0 25 * * *").unwrap_err(),
            "invalid cron expression \"0 25 * * *\": the hour field \"25\" is out of range: hour takes 0-23"
        );
        assert_eq!(
            Schedule::parse("*/0 * * * *").unwrap_err(),
            "invalid cron expression \"*/0 * * * *\": the minute field \"*/0\" has the step \"0\": use a whole number above zero"
        );
        assert!(Schedule::parse("0 9 * *")
            .unwrap_err()
            .contains("expected 5 fields (minute hour day-of-month month day-of-week), found 4"));
        assert!(Schedule::parse("30 0 9 * * *").is_ok(), "seconds first");
        // The input is quoted as it was given, time zone and all.
        assert!(Schedule::parse("TZ=Europe/Paris 0 9 * 13 *")
            .unwrap_err()
            .contains("\"TZ=Europe/Paris 0 9 * 13 *\": the month field \"13\""));
        assert!(Schedule::parse("every day").is_err());
        for empty in [
            ", * * * *",
            "*/30 , * * * *",
            "5, * * * *",
            "0 0 1,,2 * *",
            "1 2 28 2 +",
        ] {
            assert!(Schedule::parse(empty)
                .unwrap_err()
                .contains("empty list item"));
        }
        assert!(Schedule::parse("0 0 30 2 *")
            .unwrap_err()
            .contains("never fires"));
    }
}

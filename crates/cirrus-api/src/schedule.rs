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
        // croner reads a field of bare commas (or a bare `+`, its day-of-week modifier)
        // as "never", and the search for a second that never comes walks the clock one
        // second at a time for years.
        if let Some(field) = expression.split_whitespace().find(|field| {
            let values = field.strip_prefix('+').unwrap_or(field);
            values.split(',').any(str::is_empty)
        }) {
            return Err(format!(
                "invalid cron expression {expression:?}: the field {field:?} has an empty list item"
            ));
        }
        let cron = croner::Cron::from_str(expression.trim())
            .map_err(|e| format!("invalid cron expression {expression:?}: {e}"))?;
        let schedule = Schedule::Cron {
            cron: Box::new(cron),
            zone,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if schedule.next_after(now).is_none() {
            return Err(format!("cron expression {expression:?} never fires"));
        }
        Ok(schedule)
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_22_2026_1200_UTC: u64 = 1_795_348_800_000;

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
        assert!(Schedule::parse("0 25 * * *")
            .unwrap_err()
            .contains("invalid cron"));
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

//! Prices and usage reports. Pricing is a pure function over exact decimals; the store
//! only sums integers (billed ms × MiB, CPU µs), so no float ever touches money.

use crate::store::HourlyUsage;
use cirrus_api::usage::{FreeTier, GroupBy, Prices, UsageReport, UsageRow};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

/// MiB-milliseconds in one GB-second, as Lambda counts them (1 GB = 1024 MiB).
const MIB_MS_PER_GB_SECOND: i64 = 1024 * 1000;

/// AWS Lambda's public x86 price: $0.20 per million requests, $0.0000166667 per GB-s.
pub fn default_prices() -> Prices {
    Prices {
        currency: "USD".into(),
        per_request: Decimal::new(2, 7),
        per_gb_second: Decimal::new(166_667, 10),
        per_cpu_ms: Decimal::ZERO,
        free_tier: None,
    }
}

/// A price table file (`cirrus up --prices FILE`). Values may be strings (exact) or
/// numbers; every key is optional and defaults to Lambda's price; unknown keys are errors.
///
/// ```toml
/// currency = "USD"
/// per_million_requests = "0.20"
/// per_gb_second = "0.0000166667"
/// per_cpu_ms = "0"
/// [free_tier]              # per calendar month, all functions together
/// requests = 1000000
/// gb_seconds = 400000
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    currency: Option<String>,
    per_million_requests: Option<toml::Value>,
    per_gb_second: Option<toml::Value>,
    per_cpu_ms: Option<toml::Value>,
    free_tier: Option<FreeTierFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreeTierFile {
    requests: u64,
    gb_seconds: toml::Value,
}

fn decimal(field: &str, value: &toml::Value) -> Result<Decimal, String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        // A float's shortest round-trip form is what the user wrote.
        toml::Value::Float(f) => f.to_string(),
        other => {
            return Err(format!(
                "{field}: expected a number, got {}",
                other.type_str()
            ))
        }
    };
    let d = Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|e| format!("{field}: {text:?} is not a decimal number ({e})"))?;
    if d.is_sign_negative() {
        return Err(format!("{field}: must not be negative, got {text}"));
    }
    Ok(d)
}

/// Parses a price table; errors name the field at fault.
pub fn parse_prices(text: &str) -> Result<Prices, String> {
    let file: PriceFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut prices = default_prices();
    if let Some(currency) = file.currency {
        if currency.trim().is_empty() {
            return Err("currency: must not be empty".into());
        }
        prices.currency = currency;
    }
    if let Some(v) = &file.per_million_requests {
        prices.per_request = decimal("per_million_requests", v)? / Decimal::from(1_000_000);
    }
    if let Some(v) = &file.per_gb_second {
        prices.per_gb_second = decimal("per_gb_second", v)?;
    }
    if let Some(v) = &file.per_cpu_ms {
        prices.per_cpu_ms = decimal("per_cpu_ms", v)?;
    }
    if let Some(free) = file.free_tier {
        prices.free_tier = Some(FreeTier {
            requests: free.requests,
            gb_seconds: decimal("free_tier.gb_seconds", &free.gb_seconds)?,
        });
    }
    Ok(prices)
}

pub fn load_prices(path: &Path) -> anyhow::Result<Prices> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading price table {}: {e}", path.display()))?;
    parse_prices(&text).map_err(|e| anyhow::anyhow!("invalid price table {}: {e}", path.display()))
}

/// GB-seconds of `mib_ms` MiB-milliseconds.
pub fn gb_seconds(mib_ms: u64) -> Decimal {
    Decimal::from(mib_ms) / Decimal::from(MIB_MS_PER_GB_SECOND)
}

/// The cost of some usage at some prices, before any free tier.
pub fn cost(prices: &Prices, requests: u64, gb_seconds: Decimal, cpu_us: u64) -> Decimal {
    let cpu_ms = Decimal::from(cpu_us) / Decimal::from(1000);
    prices.per_request * Decimal::from(requests)
        + prices.per_gb_second * gb_seconds
        + prices.per_cpu_ms * cpu_ms
}

/// What one month's free tier takes off that month's totals.
pub fn free_tier_discount(prices: &Prices, requests: u64, gb_seconds: Decimal) -> Decimal {
    let Some(free) = &prices.free_tier else {
        return Decimal::ZERO;
    };
    prices.per_request * Decimal::from(requests.min(free.requests))
        + prices.per_gb_second * gb_seconds.min(free.gb_seconds)
}

#[derive(Default, Clone, Copy)]
struct Sum {
    requests: u64,
    errors: u64,
    cold_starts: u64,
    billed_ms: u64,
    mib_ms: u64,
    cpu_us: u64,
}

impl Sum {
    fn add(&mut self, u: &HourlyUsage) {
        self.requests += u.requests;
        self.errors += u.errors;
        self.cold_starts += u.cold_starts;
        self.billed_ms += u.billed_ms;
        self.mib_ms += u.mib_ms;
        self.cpu_us += u.cpu_us;
    }

    fn row(&self, key: String, prices: &Prices) -> UsageRow {
        let gbs = gb_seconds(self.mib_ms);
        UsageRow {
            key,
            requests: self.requests,
            errors: self.errors,
            cold_starts: self.cold_starts,
            billed_ms: self.billed_ms,
            gb_seconds: gbs.normalize(),
            cpu_seconds: (Decimal::from(self.cpu_us) / Decimal::from(1_000_000)).normalize(),
            cost: cost(prices, self.requests, gbs, self.cpu_us).normalize(),
        }
    }
}

/// Builds a report from hourly sums (hours are `YYYY-MM-DDTHH`, UTC). `earlier` is the
/// usage of the same month before `from`: it has already used part of that month's free
/// tier, so a report starting mid-month gets only what is left.
pub fn report(
    hourly: &[HourlyUsage],
    earlier: &[HourlyUsage],
    group_by: GroupBy,
    prices: &Prices,
    from: String,
    to: String,
) -> UsageReport {
    let mut groups: BTreeMap<String, Sum> = BTreeMap::new();
    let mut months: BTreeMap<&str, Sum> = BTreeMap::new();
    let mut total = Sum::default();
    for u in hourly {
        let key = match group_by {
            GroupBy::Function => u.function.clone(),
            GroupBy::Hour => format!("{}:00Z", u.hour),
            GroupBy::Day => u.hour.get(..10).unwrap_or(&u.hour).to_owned(),
        };
        groups.entry(key).or_default().add(u);
        months
            .entry(u.hour.get(..7).unwrap_or(&u.hour))
            .or_default()
            .add(u);
        total.add(u);
    }
    let mut before: BTreeMap<&str, Sum> = BTreeMap::new();
    for u in earlier {
        before
            .entry(u.hour.get(..7).unwrap_or(&u.hour))
            .or_default()
            .add(u);
    }
    let free_tier_discount: Decimal = months
        .iter()
        .map(|(month, m)| {
            let prior = before.get(month).copied().unwrap_or_default();
            let mut through = prior;
            through.requests += m.requests;
            through.mib_ms += m.mib_ms;
            free_tier_discount(prices, through.requests, gb_seconds(through.mib_ms))
                - free_tier_discount(prices, prior.requests, gb_seconds(prior.mib_ms))
        })
        .sum();
    let total = total.row("total".into(), prices);
    UsageReport {
        from,
        to,
        group_by,
        prices: prices.clone(),
        rows: groups.into_iter().map(|(k, s)| s.row(k, prices)).collect(),
        total_cost: (total.cost - free_tier_discount)
            .max(Decimal::ZERO)
            .normalize(),
        free_tier_discount: free_tier_discount.normalize(),
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(
        function: &str,
        hour: &str,
        requests: u64,
        billed_ms: u64,
        memory_mb: u64,
    ) -> HourlyUsage {
        HourlyUsage {
            function: function.into(),
            hour: hour.into(),
            requests,
            errors: 0,
            cold_starts: 0,
            billed_ms,
            mib_ms: billed_ms * memory_mb,
            cpu_us: 0,
        }
    }

    #[test]
    fn lambda_prices_by_default() {
        let p = default_prices();
        assert_eq!(
            p.per_request * Decimal::from(1_000_000),
            Decimal::new(20, 2)
        );
        assert_eq!(p.per_gb_second.to_string(), "0.0000166667");
    }

    #[test]
    fn one_million_one_second_one_gb_invocations_cost_what_lambda_charges() {
        // 1M invocations × 1 s × 1024 MiB = 1M GB-s: $0.20 + $16.6667.
        let p = default_prices();
        let c = cost(&p, 1_000_000, gb_seconds(1_000_000 * 1000 * 1024), 0);
        assert_eq!(c, Decimal::from_str("16.8667").unwrap());
    }

    #[test]
    fn no_float_drift_over_many_tiny_invocations() {
        // 10M invocations of 1 ms at 128 MiB: exactly 1250 GB-s.
        let gbs = gb_seconds(10_000_000 * 128);
        assert_eq!(gbs, Decimal::from(1250));
        let c = cost(&default_prices(), 10_000_000, gbs, 0);
        assert_eq!(c, Decimal::from_str("2.020833375").unwrap());
    }

    #[test]
    fn cpu_price_applies_per_millisecond() {
        let mut p = default_prices();
        p.per_request = Decimal::ZERO;
        p.per_gb_second = Decimal::ZERO;
        p.per_cpu_ms = Decimal::from_str("0.001").unwrap();
        assert_eq!(
            cost(&p, 5, Decimal::ZERO, 2_500),
            Decimal::from_str("0.0025").unwrap()
        );
    }

    #[test]
    fn price_files_parse_exactly_and_name_bad_fields() {
        let p = parse_prices("per_million_requests = \"0.25\"\nper_gb_second = 0.00001\nper_cpu_ms = 0\n[free_tier]\nrequests = 100\ngb_seconds = 10\n").unwrap();
        assert_eq!(p.per_request, Decimal::from_str("0.00000025").unwrap());
        assert_eq!(p.per_gb_second, Decimal::from_str("0.00001").unwrap());
        assert_eq!(p.free_tier.as_ref().unwrap().requests, 100);
        let e = parse_prices("per_gb_second = \"cheap\"").unwrap_err();
        assert!(e.starts_with("per_gb_second:"), "{e}");
        let e = parse_prices("per_gb_second = -1").unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = parse_prices("per_gb_secnd = 1").unwrap_err();
        assert!(e.contains("per_gb_secnd"), "{e}");
        let e = parse_prices("[free_tier]\nrequests = 1\n").unwrap_err();
        assert!(e.contains("gb_seconds"), "{e}");
    }

    #[test]
    fn reports_group_and_apply_the_free_tier_per_month() {
        let mut p = default_prices();
        p.free_tier = Some(FreeTier {
            requests: 10,
            gb_seconds: Decimal::from(1),
        });
        let hourly = vec![
            hour("a", "2026-10-31T23", 6, 4000, 1024),
            hour("b", "2026-11-01T00", 8, 1000, 512),
            hour("a", "2026-11-01T01", 4, 1000, 512),
        ];
        let by_fn = report(&hourly, &[], GroupBy::Function, &p, "f".into(), "t".into());
        assert_eq!(
            by_fn
                .rows
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(by_fn.rows[0].requests, 10);
        assert_eq!(by_fn.rows[0].gb_seconds, Decimal::from_str("4.5").unwrap());
        assert_eq!(by_fn.total.requests, 18);
        // October: 6 requests (all free), 4 GB-s (1 free). November: 12 requests (10 free),
        // 1 GB-s (all free).
        let expected = p.per_request * Decimal::from(16) + p.per_gb_second * Decimal::from(2);
        assert_eq!(by_fn.free_tier_discount, expected.normalize());
        assert_eq!(by_fn.total_cost, (by_fn.total.cost - expected).normalize());
        let by_day = report(&hourly, &[], GroupBy::Day, &p, "f".into(), "t".into());
        assert_eq!(
            by_day
                .rows
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            ["2026-10-31", "2026-11-01"]
        );
        // Starting mid-month: earlier November usage already took 5 free requests.
        let earlier = vec![hour("a", "2026-11-01T00", 5, 0, 128)];
        let late = report(
            &hourly[1..],
            &earlier,
            GroupBy::Function,
            &p,
            "f".into(),
            "t".into(),
        );
        // 12 requests, 5 of the 10 free ones left; 1 GB-s, all free.
        let expected_late = p.per_request * Decimal::from(5) + p.per_gb_second * Decimal::from(1);
        assert_eq!(late.free_tier_discount, expected_late.normalize());
        let by_hour = report(&hourly, &[], GroupBy::Hour, &p, "f".into(), "t".into());
        assert_eq!(by_hour.rows[0].key, "2026-10-31T23:00Z");
    }
}

//! Usage and cost reports (`GET /v1/usage`). Money and GB-seconds are exact decimals,
//! carried as strings on the wire so no client rounds them through a float.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// How a usage report is broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Function,
    Hour,
    Day,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "function" => Ok(Self::Function),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            other => Err(format!(
                "unknown group_by {other:?}: use function, hour or day"
            )),
        }
    }
}

/// The price table in force, per unit. The default is AWS Lambda's public x86 price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub per_request: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub per_gb_second: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub per_cpu_ms: Decimal,
    pub free_tier: Option<FreeTier>,
}

/// Allowances per calendar month, across all functions, before anything is charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreeTier {
    pub requests: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub gb_seconds: Decimal,
}

/// One line of a report: a function, an hour or a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub billed_ms: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub gb_seconds: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub cpu_seconds: Decimal,
    /// Before the free tier, which applies to the month's total only.
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: GroupBy,
    pub prices: Prices,
    pub rows: Vec<UsageRow>,
    pub total: UsageRow,
    #[serde(with = "rust_decimal::serde::str")]
    pub free_tier_discount: Decimal,
    /// `total.cost` less the free tier.
    #[serde(with = "rust_decimal::serde::str")]
    pub total_cost: Decimal,
}

//! How `cirrus deploy NAME FILE` turns its flags into the new version's configuration,
//! and what it tells the user was carried over from the previous version.
//!
//! A redeploy starts from the function's current configuration (so `cirrus deploy f
//! f.wasm` ships new code without touching settings, like Lambda's update-function-code).
//! On top of it: `--reset SETTING` puts a setting back to its default, `--remove-*` drops
//! one item of a list (or one variable), the other flags set a value or add an item.
//! Whatever the flags did not name is kept, and the output lists it, so nothing (a
//! storage grant above all) survives a redeploy silently.
//!
//! Settings are handled through their JSON form, so a setting added to
//! [`FunctionConfig`] is reported and resettable without changes here.

use anyhow::{bail, Context as _};
use cirrus_api::FunctionConfig;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

/// A setting `--reset` names: a key of the function's config (`storage`, `memory_mb`,
/// …), or `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    All,
    Setting(String),
}

/// Flag spellings people will reach for, mapped to the config keys they set.
const ALIASES: &[(&str, &str)] = &[
    ("memory", "memory_mb"),
    ("concurrency", "max_concurrency"),
    ("allow_host", "allowed_hosts"),
    ("allow_hosts", "allowed_hosts"),
    ("private", "public"),
];

/// Parses a `--reset` value: a config key in snake or kebab case, or a flag's name.
pub fn parse_reset(text: &str) -> Result<Reset, String> {
    let key = text.trim().replace('-', "_");
    if key == "all" {
        return Ok(Reset::All);
    }
    let key = ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key.as_str(), |(_, real)| real)
        .to_owned();
    let defaults = defaults();
    if defaults.contains_key(&key) {
        Ok(Reset::Setting(key))
    } else {
        let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
        Err(format!(
            "unknown setting {text:?}: use all or one of {}",
            known.join(", ")
        ))
    }
}

fn defaults() -> Map<String, Value> {
    match serde_json::to_value(FunctionConfig::default()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// What the flags of one deploy named: settings they set or reset, and items they
/// added to lists (`env` counts its variable names). Nothing named is "kept".
#[derive(Debug, Default)]
pub struct Named {
    set: BTreeSet<String>,
    added: BTreeMap<String, Vec<Value>>,
}

impl Named {
    pub fn set(&mut self, setting: &str) {
        self.set.insert(setting.to_owned());
    }

    fn added(&mut self, setting: &str, item: Value) {
        self.added.entry(setting.to_owned()).or_default().push(item);
    }
}

/// Puts `setting` (or every setting) of `config` back to its default.
pub fn reset(config: &mut FunctionConfig, what: &Reset, named: &mut Named) -> anyhow::Result<()> {
    let defaults = defaults();
    match what {
        Reset::All => {
            *config = FunctionConfig::default();
            for key in defaults.keys() {
                named.set(key);
            }
        }
        Reset::Setting(key) => {
            let mut current = to_map(config)?;
            let default = defaults.get(key).cloned().unwrap_or(Value::Null);
            current.insert(key.clone(), default);
            *config = serde_json::from_value(Value::Object(current))
                .with_context(|| format!("resetting {key}"))?;
            named.set(key);
        }
    }
    Ok(())
}

/// Removes each of `remove` from `list`. Removing what is not there is an error: a typo
/// in `--remove-storage` must not leave the real grant in place unnoticed.
pub fn remove_items<T: PartialEq + Display>(
    list: &mut Vec<T>,
    remove: &[T],
    adding: &[T],
    flag: &str,
    whose: &str,
) -> anyhow::Result<()> {
    for item in remove {
        if adding.contains(item) {
            bail!("{flag} {item}: the same deploy also adds it");
        }
        let Some(at) = list.iter().position(|x| x == item) else {
            let has: Vec<String> = list.iter().map(ToString::to_string).collect();
            bail!(
                "{flag} {item}: {whose} does not have it (it has {})",
                if has.is_empty() {
                    "none".to_owned()
                } else {
                    has.join(", ")
                }
            );
        };
        list.remove(at);
    }
    Ok(())
}

/// Adds each of `items` to `list` once, noting them as named.
pub fn add_items<T: PartialEq + Clone + serde::Serialize>(
    list: &mut Vec<T>,
    items: &[T],
    setting: &str,
    named: &mut Named,
) -> anyhow::Result<()> {
    for item in items {
        named.added(setting, serde_json::to_value(item)?);
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
    Ok(())
}

/// Removes environment variables by name (an error for a name that is not set).
pub fn remove_env(
    env: &mut BTreeMap<String, String>,
    remove: &[String],
    adding: &[(String, String)],
    whose: &str,
) -> anyhow::Result<()> {
    for key in remove {
        if adding.iter().any(|(k, _)| k == key) {
            bail!("--remove-env {key}: the same deploy also sets it");
        }
        if env.remove(key).is_none() {
            let has: Vec<&str> = env.keys().map(String::as_str).collect();
            bail!(
                "--remove-env {key}: {whose} has no such variable (it has {})",
                if has.is_empty() {
                    "none".to_owned()
                } else {
                    has.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// Sets environment variables, noting their names as named.
pub fn set_env(env: &mut BTreeMap<String, String>, set: &[(String, String)], named: &mut Named) {
    for (key, value) in set {
        named.added("env", Value::String(key.clone()));
        env.insert(key.clone(), value.clone());
    }
}

/// What a new version took over from the previous one unasked, and what it no longer
/// has. Environment variables are listed by name only: their values may be secrets.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Carried {
    pub previous_version: Option<u32>,
    pub kept: Map<String, Value>,
    pub removed: Map<String, Value>,
}

/// Compares the previous version's config with the new one. With `named`, every
/// setting or item the flags did not name and that is not a default counts as kept;
/// without it (a manifest, which declares everything) nothing is kept.
pub fn carried(
    previous: Option<(u32, &FunctionConfig)>,
    new: &FunctionConfig,
    named: Option<&Named>,
) -> anyhow::Result<Carried> {
    let Some((version, previous)) = previous else {
        return Ok(Carried::default());
    };
    let (old, new, defaults) = (to_map(previous)?, to_map(new)?, defaults());
    let mut carried = Carried {
        previous_version: Some(version),
        ..Default::default()
    };
    for (key, was) in &old {
        let now = new.get(key).unwrap_or(&Value::Null);
        let set_by_flag = named.is_none_or(|n| n.set.contains(key));
        let added: &[Value] = named
            .and_then(|n| n.added.get(key))
            .map_or(&[], Vec::as_slice);
        match (was, now) {
            (Value::Array(was), Value::Array(now)) => {
                let kept: Vec<Value> = was
                    .iter()
                    .filter(|x| now.contains(x) && !added.contains(x) && !set_by_flag)
                    .cloned()
                    .collect();
                let removed: Vec<Value> =
                    was.iter().filter(|x| !now.contains(x)).cloned().collect();
                note(&mut carried.kept, key, kept);
                note(&mut carried.removed, key, removed);
            }
            (Value::Object(was), Value::Object(now)) => {
                let kept: Vec<Value> = was
                    .iter()
                    .filter(|(k, v)| {
                        now.get(*k) == Some(v)
                            && !added.contains(&Value::String((*k).clone()))
                            && !set_by_flag
                    })
                    .map(|(k, _)| Value::String(k.clone()))
                    .collect();
                let removed: Vec<Value> = was
                    .keys()
                    .filter(|k| !now.contains_key(*k))
                    .map(|k| Value::String(k.clone()))
                    .collect();
                note(&mut carried.kept, key, kept);
                note(&mut carried.removed, key, removed);
            }
            (was, now) => {
                if !set_by_flag && was == now && defaults.get(key) != Some(was) {
                    carried.kept.insert(key.clone(), was.clone());
                }
                if !was.is_null() && now.is_null() {
                    carried.removed.insert(key.clone(), was.clone());
                }
            }
        }
    }
    Ok(carried)
}

fn note(map: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    if !items.is_empty() {
        map.insert(key.to_owned(), Value::Array(items));
    }
}

fn to_map(config: &FunctionConfig) -> anyhow::Result<Map<String, Value>> {
    match serde_json::to_value(config)? {
        Value::Object(map) => Ok(map),
        other => bail!("a config serialized as {other}"),
    }
}

impl Carried {
    /// Lines for the human output, indented under "deployed NAME version N".
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let (Some(version), false) = (self.previous_version, self.kept.is_empty()) {
            lines.push(format!(
                "  kept from version {version}: {}",
                describe(&self.kept)
            ));
            lines.push(
                "  (drop with --reset SETTING, or --remove-env/--remove-storage/--remove-allow-host/--remove-on-success)"
                    .to_owned(),
            );
        }
        if !self.removed.is_empty() {
            lines.push(format!("  removed: {}", describe(&self.removed)));
        }
        lines
    }
}

/// `memory_mb 64; env A, B; storage bucket:x:read`.
fn describe(settings: &Map<String, Value>) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    settings
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
                other => text(other),
            };
            format!("{key} {value}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn previous() -> FunctionConfig {
        FunctionConfig {
            memory_mb: 64,
            env: [
                ("A".to_owned(), "1".to_owned()),
                ("SECRET".to_owned(), "s".to_owned()),
            ]
            .into(),
            storage: vec!["bucket:uploads:read".parse().unwrap()],
            allowed_hosts: vec!["example.com".into()],
            on_success: vec!["topic:done".parse().unwrap()],
            max_concurrency: Some(4),
            ..Default::default()
        }
    }

    #[test]
    fn settings_parse_in_every_spelling() {
        assert_eq!(parse_reset("storage"), Ok(Reset::Setting("storage".into())));
        assert_eq!(
            parse_reset("on-success"),
            Ok(Reset::Setting("on_success".into()))
        );
        assert_eq!(
            parse_reset("allow-host"),
            Ok(Reset::Setting("allowed_hosts".into()))
        );
        assert_eq!(
            parse_reset("memory"),
            Ok(Reset::Setting("memory_mb".into()))
        );
        assert_eq!(parse_reset("all"), Ok(Reset::All));
        let err = parse_reset("storag").unwrap_err();
        assert!(
            err.contains("unknown setting") && err.contains("storage"),
            "{err}"
        );
    }

    #[test]
    fn reset_puts_one_setting_back_to_its_default() {
        let mut config = previous();
        let mut named = Named::default();
        reset(&mut config, &Reset::Setting("storage".into()), &mut named).unwrap();
        reset(
            &mut config,
            &Reset::Setting("max_concurrency".into()),
            &mut named,
        )
        .unwrap();
        assert!(config.storage.is_empty());
        assert_eq!(config.max_concurrency, None);
        assert_eq!(config.memory_mb, 64);
        reset(&mut config, &Reset::All, &mut named).unwrap();
        assert_eq!(config, FunctionConfig::default());
    }

    #[test]
    fn removing_what_is_not_there_names_what_is() {
        let mut hosts = vec!["a.example".to_owned()];
        let err = remove_items(
            &mut hosts,
            &["b.example".to_owned()],
            &[],
            "--remove-allow-host",
            "f version 2",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("f version 2 does not have it (it has a.example)"),
            "{err}"
        );
        let err = remove_items(
            &mut hosts,
            &["a.example".to_owned()],
            &["a.example".to_owned()],
            "--remove-allow-host",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("also adds it"), "{err}");
        remove_items(
            &mut hosts,
            &["a.example".to_owned()],
            &[],
            "--remove-allow-host",
            "f",
        )
        .unwrap();
        assert!(hosts.is_empty());
        let mut env = previous().env;
        let err = remove_env(&mut env, &["B".into()], &[], "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("it has A, SECRET"), "{err}");
    }

    #[test]
    fn a_plain_redeploy_reports_every_non_default_setting_as_kept() {
        let before = previous();
        let carried = carried(Some((2, &before)), &before, Some(&Named::default())).unwrap();
        assert_eq!(carried.previous_version, Some(2));
        let kept = serde_json::Value::Object(carried.kept.clone());
        assert_eq!(kept["memory_mb"], 64);
        assert_eq!(kept["env"], serde_json::json!(["A", "SECRET"]));
        assert_eq!(kept["storage"], serde_json::json!(["bucket:uploads:read"]));
        assert_eq!(kept["allowed_hosts"], serde_json::json!(["example.com"]));
        assert_eq!(kept["on_success"], serde_json::json!(["topic:done"]));
        assert_eq!(kept["max_concurrency"], 4);
        assert!(
            kept.get("timeout").is_none(),
            "defaults are not news: {kept}"
        );
        assert!(carried.removed.is_empty());
        let text = carried.lines().join("\n");
        assert!(
            text.contains("kept from version 2: ") && text.contains("storage bucket:uploads:read"),
            "{text}"
        );
        assert!(
            !text.contains("\"s\""),
            "env values stay out of the output: {text}"
        );
    }

    #[test]
    fn named_settings_are_not_kept_and_dropped_ones_are_removed() {
        let before = previous();
        let mut after = before.clone();
        let mut named = Named::default();
        remove_items(
            &mut after.storage,
            &before.storage.clone(),
            &[],
            "--remove-storage",
            "f",
        )
        .unwrap();
        remove_env(&mut after.env, &["SECRET".into()], &[], "f").unwrap();
        set_env(&mut after.env, &[("A".into(), "2".into())], &mut named);
        add_items(
            &mut after.allowed_hosts,
            &["example.com".to_owned()],
            "allowed_hosts",
            &mut named,
        )
        .unwrap();
        reset(
            &mut after,
            &Reset::Setting("max_concurrency".into()),
            &mut named,
        )
        .unwrap();
        after.timeout = Duration::from_secs(2);
        named.set("timeout");
        let carried = carried(Some((5, &before)), &after, Some(&named)).unwrap();
        let kept = serde_json::Value::Object(carried.kept);
        let removed = serde_json::Value::Object(carried.removed);
        assert_eq!(kept["memory_mb"], 64);
        assert_eq!(kept["on_success"], serde_json::json!(["topic:done"]));
        for gone in [
            "storage",
            "env",
            "allowed_hosts",
            "max_concurrency",
            "timeout",
        ] {
            assert!(kept.get(gone).is_none(), "{gone} was named: {kept}");
        }
        assert_eq!(
            removed["storage"],
            serde_json::json!(["bucket:uploads:read"])
        );
        assert_eq!(removed["env"], serde_json::json!(["SECRET"]));
        assert_eq!(removed["max_concurrency"], 4);
    }

    #[test]
    fn a_manifest_keeps_nothing() {
        let before = previous();
        let after = FunctionConfig {
            memory_mb: 64,
            ..Default::default()
        };
        let carried = carried(Some((1, &before)), &after, None).unwrap();
        assert!(carried.kept.is_empty(), "{:?}", carried.kept);
        let removed = serde_json::Value::Object(carried.removed);
        assert_eq!(
            removed["storage"],
            serde_json::json!(["bucket:uploads:read"])
        );
        assert_eq!(removed["on_success"], serde_json::json!(["topic:done"]));
        assert_eq!(
            super::carried(None, &after, None).unwrap(),
            Carried::default()
        );
    }
}

//! How Cirrus's functions, versions and aliases look through the Lambda API: function
//! names in their three forms, and the response documents botocore parses.

use super::{Ctx, LambdaError, LambdaResult, ACCOUNT};
use base64::Engine as _;
use cirrus_api::{Qualifier, VersionInfo};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The runtime value for WebAssembly code.
pub const WASI: &str = "wasi";

/// A function as a request names it: `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME`
/// or a full ARN, optionally qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub qualifier: Option<String>,
}

impl Target {
    pub fn parse(text: &str) -> LambdaResult<Self> {
        let parts: Vec<&str> = text.split(':').collect();
        let (name, qualifier) = match parts.as_slice() {
            ["arn", "aws", "lambda", _region, account, "function", name, rest @ ..] => {
                check_account(account)?;
                (*name, qualifier_of(rest, text)?)
            }
            [account, "function", name, rest @ ..] => {
                check_account(account)?;
                (*name, qualifier_of(rest, text)?)
            }
            [name] => (*name, None),
            [name, qualifier] => (*name, Some(*qualifier)),
            _ => return Err(invalid_name(text)),
        };
        cirrus_api::spec::validate_name(name).map_err(|_| invalid_name(text))?;
        if qualifier == Some("") {
            return Err(invalid_name(text));
        }
        if let Some(q) = qualifier {
            Qualifier::parse(q).map_err(|e| {
                LambdaError::invalid(format!("invalid qualifier {q:?} in {text:?}: {e}"))
            })?;
        }
        Ok(Self {
            name: name.to_owned(),
            qualifier: qualifier.map(str::to_owned),
        })
    }

    /// The function named in the path, with the `Qualifier` query parameter (which must
    /// agree with a qualifier in the name, if both are given).
    pub fn from_request(ctx: &Ctx, text: &str) -> LambdaResult<Self> {
        let mut target = Self::parse(text)?;
        if let Some(q) = ctx.query("Qualifier") {
            Qualifier::parse(q)
                .map_err(|e| LambdaError::invalid(format!("invalid Qualifier {q:?}: {e}")))?;
            match &target.qualifier {
                Some(named) if named != q => {
                    return Err(LambdaError::invalid(
                        "The derived qualifier from the function name does not match the specified qualifier.",
                    ))
                }
                _ => target.qualifier = Some(q.to_owned()),
            }
        }
        Ok(target)
    }

    pub fn qualifier(&self) -> Qualifier {
        self.qualifier
            .as_deref()
            .and_then(|q| Qualifier::parse(q).ok())
            .unwrap_or(Qualifier::Latest)
    }

    /// Refuses a qualifier where the operation applies to the whole function.
    pub fn unqualified(self, operation: &str) -> LambdaResult<Self> {
        match self.qualifier.as_deref() {
            None | Some("$LATEST") => Ok(self),
            Some(q) => Err(LambdaError::invalid(format!(
                "{operation} applies to the whole function in Cirrus: drop the qualifier {q:?}"
            ))),
        }
    }
}

fn check_account(account: &str) -> LambdaResult<()> {
    if account == ACCOUNT {
        Ok(())
    } else {
        Err(LambdaError::not_found(format!(
            "account {account:?} has no functions here: every Cirrus ARN names account {ACCOUNT}"
        )))
    }
}

fn qualifier_of<'a>(rest: &[&'a str], text: &str) -> LambdaResult<Option<&'a str>> {
    match rest {
        [] => Ok(None),
        [q] => Ok(Some(q)),
        _ => Err(invalid_name(text)),
    }
}

fn invalid_name(text: &str) -> LambdaError {
    LambdaError::invalid(format!(
        "{text:?} is not a valid function name: use 1-64 letters, digits, '-' or '_' (optionally \
         NAME:QUALIFIER or an ARN)"
    ))
}

/// An opaque id that changes whenever what it describes changes (Lambda's RevisionId).
pub fn revision_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let h = hex::encode(&hash.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The revision of a function's version: its code, config and number.
pub fn version_revision(v: &VersionInfo) -> String {
    revision_id(&[
        &v.function,
        &v.version.to_string(),
        &v.sha256,
        &v.created_at,
    ])
}

/// `2026-11-29T04:00:00.123+0000`, Lambda's `LastModified` form.
pub fn lambda_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// The architecture the host runs: what a wasm function runs on here.
pub fn architecture() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    }
}

/// A version's `FunctionConfiguration`. `shown` is `$LATEST` or the version number.
pub fn configuration(ctx: &Ctx, v: &VersionInfo, shown: &str) -> Value {
    let package = v
        .config
        .lambda
        .as_ref()
        .filter(|p| p.artifact_sha256 == v.sha256);
    let code_sha256 = match package {
        Some(p) => p.zip_sha256.clone(),
        None => hex::decode(&v.sha256)
            .map(|raw| base64::engine::general_purpose::STANDARD.encode(raw))
            .unwrap_or_default(),
    };
    let arn = if shown == "$LATEST" {
        ctx.arn(&v.function, None)
    } else {
        ctx.arn(&v.function, Some(shown))
    };
    let mut doc = json!({
        "FunctionName": v.function,
        "FunctionArn": arn,
        "Runtime": v.config.lambda.as_ref().map_or(WASI, |p| p.runtime.as_str()),
        "Handler": v.config.lambda.as_ref().map_or("", |p| p.handler.as_str()),
        "CodeSize": package.map_or(v.size_bytes, |p| p.zip_size),
        "Description": v.config.description,
        "Timeout": v.config.timeout.as_secs_f64().ceil() as u64,
        "MemorySize": v.config.memory_mb,
        "LastModified": lambda_time(&v.created_at),
        "CodeSha256": code_sha256,
        "Version": shown,
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": version_revision(v),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [architecture()],
        "EphemeralStorage": {"Size": 512},
        "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": format!("/aws/lambda/{}", v.function)},
    });
    if let Some(role) = v.config.lambda.as_ref().and_then(|p| p.role.as_deref()) {
        doc["Role"] = role.into();
    }
    if !v.config.env.is_empty() {
        doc["Environment"] = json!({ "Variables": v.config.env });
    }
    doc
}

/// An alias's `AliasConfiguration`.
pub fn alias(ctx: &Ctx, function: &str, name: &str, version: u32) -> Value {
    json!({
        "AliasArn": ctx.arn(function, Some(name)),
        "Name": name,
        "FunctionVersion": version.to_string(),
        "Description": "",
        "RevisionId": revision_id(&[function, name, &version.to_string()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_form() {
        let t = |s: &str| Target::parse(s).map(|t| (t.name, t.qualifier));
        assert_eq!(t("f").unwrap(), ("f".into(), None));
        assert_eq!(t("f:prod").unwrap(), ("f".into(), Some("prod".into())));
        assert_eq!(
            t("f:$LATEST").unwrap(),
            ("f".into(), Some("$LATEST".into()))
        );
        assert_eq!(
            t("arn:aws:lambda:eu-west-1:000000000000:function:f:3").unwrap(),
            ("f".into(), Some("3".into()))
        );
        assert_eq!(t("000000000000:function:f").unwrap(), ("f".into(), None));
        assert_eq!(
            Target::parse("arn:aws:lambda:us-east-1:123456789012:function:f")
                .unwrap_err()
                .kind,
            "ResourceNotFoundException"
        );
        for bad in ["bad name!", "", "a:b:c:d", "f:", "-f"] {
            assert_eq!(
                Target::parse(bad).unwrap_err().kind,
                "InvalidParameterValueException",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn times_and_revisions() {
        assert_eq!(
            lambda_time("2026-11-29T04:00:00.123Z"),
            "2026-11-29T04:00:00.123+0000"
        );
        let a = revision_id(&["f", "1"]);
        assert_eq!(a.len(), 36);
        assert_ne!(a, revision_id(&["f", "2"]));
        assert_eq!(a, revision_id(&["f", "1"]));
    }
}

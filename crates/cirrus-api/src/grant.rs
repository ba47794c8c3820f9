//! Storage grants: what a function may reach of the platform's storage with the token
//! it is given (`storage = ["bucket:uploads:read", "kv:photos:write"]`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Bucket(String),
    Kv(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// GET, HEAD and listing.
    Read,
    /// PUT and DELETE.
    Write,
}

/// One capability: a bucket or KV table, and read or write access to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub resource: Resource,
    pub access: Access,
}

impl Grant {
    /// Whether this grant allows `access` to `resource`.
    pub fn allows(&self, resource: &Resource, access: Access) -> bool {
        self.resource == *resource && self.access == access
    }
}

impl std::str::FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid storage grant {s:?}: use bucket:NAME:read, bucket:NAME:write, kv:TABLE:read or kv:TABLE:write")
        };
        let mut parts = s.split(':');
        let (Some(kind), Some(name), Some(access), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let resource = match kind {
            "bucket" if crate::trigger::valid_bucket_name(name) => {
                Resource::Bucket(name.to_owned())
            }
            "kv" if crate::spec::validate_name(name).is_ok() => Resource::Kv(name.to_owned()),
            _ => return Err(bad()),
        };
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => return Err(bad()),
        };
        Ok(Self { resource, access })
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = match self.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        match &self.resource {
            Resource::Bucket(b) => write!(f, "bucket:{b}:{access}"),
            Resource::Kv(t) => write!(f, "kv:{t}:{access}"),
        }
    }
}

impl Serialize for Grant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_print_and_match() {
        let g: Grant = "bucket:uploads:read".parse().unwrap();
        assert_eq!(g.to_string(), "bucket:uploads:read");
        assert!(g.allows(&Resource::Bucket("uploads".into()), Access::Read));
        assert!(!g.allows(&Resource::Bucket("uploads".into()), Access::Write));
        assert!(!g.allows(&Resource::Kv("uploads".into()), Access::Read));
        for bad in [
            "bucket:Up:read",
            "kv:t:admin",
            "kv:t",
            "files:x:read",
            "kv:a:read:x",
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad}");
        }
    }
}

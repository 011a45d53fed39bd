//! The L7 (and L4) authorization policy model: Istio's AuthorizationPolicy
//! shape (`action`, `rules` of `from` / `to` / `when`), with the IP and
//! CIDR values it matches addresses against.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// An L7 authorization policy, shaped like Istio's AuthorizationPolicy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Policy {
    /// Name for logs.
    pub name: String,
    /// ALLOW or DENY.
    #[serde(default)]
    pub action: Action,
    /// The policy matches when any rule does (no rules: matches nothing,
    /// like Istio's ALLOW with no rules denying everything).
    #[serde(default)]
    pub rules: Vec<L7Rule>,
}

impl L7Policy {
    /// Checks what the YAML types cannot: the `when` keys are known and
    /// the address keys' values are IPs or CIDRs. The error names the rule
    /// and the condition.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            for c in &rule.when {
                let key = c
                    .parsed_key()
                    .map_err(|reason| format!("rule {i}: when {:?}: {reason}", c.key))?;
                match key {
                    ConditionKey::SourceIp | ConditionKey::RemoteIp => {
                        for v in c.values.iter().chain(&c.not_values) {
                            v.parse::<Cidr>()
                                .map_err(|e| format!("rule {i}: when {:?}: {e}", c.key))?;
                        }
                    }
                    ConditionKey::DestinationPort => {
                        for v in c.values.iter().chain(&c.not_values) {
                            v.parse::<u16>().map_err(|_| {
                                format!("rule {i}: when {:?}: {v:?} is not a port", c.key)
                            })?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Policy action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching requests.
    #[default]
    Allow,
    /// Deny matching requests (checked first).
    Deny,
}

/// A rule: every non-empty section must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rule {
    /// Sources; any may match.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations; any may match.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions; all must match.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `from:` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// Source fields: all L4 (the HBONE peer's identity and address, and the
/// original client's address).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Principals (`cluster.local/ns/NS/sa/SA`; `*` wildcards at either end).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Not these principals.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Source namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Not these namespaces.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// The peer's address as the waypoint sees it (the HBONE connection's
    /// source) is in one of these IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<Cidr>,
    /// The peer's address is in none of these.
    #[serde(default)]
    pub not_ip_blocks: Vec<Cidr>,
    /// The original client's address (the first `x-forwarded-for` entry
    /// of an HTTP request when present, else the peer's address) is in one
    /// of these.
    #[serde(default)]
    pub remote_ip_blocks: Vec<Cidr>,
    /// The original client's address is in none of these.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<Cidr>,
}

/// `to:` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// Operation fields: methods, paths and hosts are HTTP-only; ports are L4.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Not these methods.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths (`*` wildcards at either end).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Not these paths.
    #[serde(default)]
    pub not_paths: Vec<String>,
    /// Hosts (the request's authority).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Not these hosts.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Not these destination ports.
    #[serde(default)]
    pub not_ports: Vec<u16>,
}

impl Operation {
    /// Whether any HTTP-only field is set.
    pub fn has_http_fields(&self) -> bool {
        !(self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty())
    }
}

/// `when:` entry: an attribute (`key`) against values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// `request.headers[<name>]`, `source.principal`, `source.namespace`,
    /// `source.ip`, `remote.ip` or `destination.port` (others are refused
    /// at load).
    pub key: String,
    /// Any may match.
    #[serde(default)]
    pub values: Vec<String>,
    /// None may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// A `when` key, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKey<'a> {
    /// `request.headers[<name>]` (HTTP-only).
    RequestHeader(&'a str),
    /// `source.principal`.
    SourcePrincipal,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.ip`: values are IPs or CIDRs.
    SourceIp,
    /// `remote.ip`: values are IPs or CIDRs.
    RemoteIp,
    /// `destination.port`.
    DestinationPort,
}

impl ConditionKey<'_> {
    /// Whether the key needs an HTTP request to be evaluated.
    pub fn is_http_only(&self) -> bool {
        matches!(self, Self::RequestHeader(_))
    }
}

impl Condition {
    /// The key, or why it is not supported.
    pub fn parsed_key(&self) -> Result<ConditionKey<'_>, String> {
        if let Some(name) = self
            .key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(|_| ConditionKey::RequestHeader(name))
                .map_err(|_| format!("{name:?} is not a header name"));
        }
        Ok(match self.key.as_str() {
            "source.principal" => ConditionKey::SourcePrincipal,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "destination.port" => ConditionKey::DestinationPort,
            _ => {
                return Err("unsupported key (request.headers[NAME], source.principal, \
                     source.namespace, source.ip, remote.ip, destination.port)"
                    .into());
            }
        })
    }
}

/// An IP address or CIDR block (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`);
/// a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an IP or CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an IP address or CIDR ({reason})")]
pub struct CidrError {
    value: String,
    reason: &'static str,
}

impl Cidr {
    /// The block's address as written (host bits are ignored by
    /// [`Cidr::contains`]).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the block. IPv4-mapped IPv6 addresses count as
    /// their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = |reason| CidrError {
            value: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| err("bad prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Self, CidrError> {
        s.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_table() {
        for (block, ip, want) in [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "192.168.1.1", true),
            ("10.0.0.0/8", "::ffff:10.9.9.9", true),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "2001:db8::1", true),
            ("10.0.0.0/8", "fd00::1", false),
        ] {
            let c: Cidr = block.parse().expect("cidr");
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(c.contains(ip), want, "{block} {ip}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x",
            "10.0.0.1/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn condition_keys() {
        let c = |k: &str| Condition {
            key: k.into(),
            ..Condition::default()
        };
        assert_eq!(
            c("request.headers[x-a]").parsed_key(),
            Ok(ConditionKey::RequestHeader("x-a"))
        );
        assert_eq!(c("source.ip").parsed_key(), Ok(ConditionKey::SourceIp));
        assert_eq!(c("remote.ip").parsed_key(), Ok(ConditionKey::RemoteIp));
        assert_eq!(
            c("destination.port").parsed_key(),
            Ok(ConditionKey::DestinationPort)
        );
        assert!(c("request.auth.claims[iss]").parsed_key().is_err());
        assert!(c("request.headers[bad header]").parsed_key().is_err());
    }
}

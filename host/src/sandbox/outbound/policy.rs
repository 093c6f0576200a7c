//! Where an algorithm may send HTTP requests: the origins of its grant, and
//! the addresses a connection may go to once a granted name is resolved.
//!
//! The checks run on what the router connects to, never on the text the
//! guest sent alone: a request must match a granted origin, and then every
//! address the name resolves to must be public, or named exactly (as an IP
//! address with the same scheme and port) by a grant. The admin listener is
//! never reachable.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// One allowed origin: `http` or `https`, a host (a name, `*.` and a
/// domain for its subdomains, or an IP address) and a port (the scheme's
/// default when not written).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    https: bool,
    host: HostPattern,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPattern {
    Name(String),
    /// `*.example.com`, stored as `example.com`: any name ending in
    /// `.example.com`, not `example.com` itself.
    Subdomains(String),
    Ip(IpAddr),
}

/// Why a text is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not an origin ({why}): expected http(s)://host or http(s)://host:port, e.g. https://api.example.com or https://*.example.com"
)]
pub struct OriginError {
    text: String,
    why: &'static str,
}

impl FromStr for Origin {
    type Err = OriginError;

    fn from_str(text: &str) -> Result<Self, OriginError> {
        let fail = |why| OriginError {
            text: text.to_string(),
            why,
        };
        let (scheme, rest) = text.split_once("://").ok_or(fail("no scheme"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(fail("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(fail("an origin has no path, query or user"));
        }
        let (host, port) = split_port(rest).ok_or(fail("bad port"))?;
        let port = port.unwrap_or(if https { 443 } else { 80 });
        let host = if let Some(ip) = parse_ip_host(host) {
            HostPattern::Ip(ip)
        } else if let Some(domain) = host.strip_prefix("*.") {
            HostPattern::Subdomains(normal_name(domain).ok_or(fail("bad domain"))?)
        } else {
            HostPattern::Name(normal_name(host).ok_or(fail("bad host name"))?)
        };
        Ok(Origin { https, host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://")?;
        match &self.host {
            HostPattern::Name(n) => write!(f, "{n}")?,
            HostPattern::Subdomains(d) => write!(f, "*.{d}")?,
            HostPattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        if self.port != if self.https { 443 } else { 80 } {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl serde::Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `host` and the port after it, if any; `[v6]` keeps its brackets.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Some((authority, None)),
    };
    let port: u16 = authority[colon + 1..].parse().ok().filter(|p| *p != 0)?;
    Some((&authority[..colon], Some(port)))
}

/// An IP address written as a URL host: dotted IPv4 or bracketed IPv6.
fn parse_ip_host(host: &str) -> Option<IpAddr> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A host name in lower case without a trailing dot, if it is one.
fn normal_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// The destination of one request, as the router will connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Whether TLS is used.
    pub https: bool,
    /// The host as the request names it: a lower-case name without a
    /// trailing dot, or an IP address.
    pub host: TargetHost,
    /// The port.
    pub port: u16,
}

/// A request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// A name, to be resolved by the router.
    Name(String),
    /// An IP address literal.
    Ip(IpAddr),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Name(n) => f.write_str(n),
            TargetHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Target {
    /// The target of a request URI, if it has an http(s) scheme and a host.
    pub fn of(uri: &http::Uri) -> Option<Target> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let host = uri.host()?;
        let host = match parse_ip_host(host) {
            Some(ip) => TargetHost::Ip(canonical(ip)),
            None => TargetHost::Name(normal_name(host)?),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Target { https, host, port })
    }
}

impl Origin {
    /// Whether a request to `target` is within this origin.
    pub fn admits(&self, target: &Target) -> bool {
        if self.https != target.https || self.port != target.port {
            return false;
        }
        match (&self.host, &target.host) {
            (HostPattern::Name(n), TargetHost::Name(t)) => n == t,
            (HostPattern::Subdomains(d), TargetHost::Name(t)) => t
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (HostPattern::Ip(ip), TargetHost::Ip(t)) => canonical(*ip) == *t,
            _ => false,
        }
    }

    /// Whether this origin names `addr` exactly: same scheme, the IP
    /// address itself and the port. Only such a grant opens a private,
    /// loopback or link-local address.
    fn names_exactly(&self, https: bool, addr: SocketAddr) -> bool {
        matches!(self.host, HostPattern::Ip(ip) if canonical(ip) == canonical(addr.ip()))
            && self.https == https
            && self.port == addr.port()
    }
}

/// An IPv4 address written in IPv6 form (IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) as the IPv4
/// address it reaches; anything else as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6] == [0; 6] && u32::from(embedded) > 1;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 {
        IpAddr::V4(embedded)
    } else {
        ip
    }
}

/// Whether `ip` is a public unicast address, reachable without a grant
/// naming it. Loopback, private, shared (CGNAT), link-local (cloud metadata),
/// unique-local, unspecified, multicast, broadcast, documentation,
/// benchmarking and reserved ranges are not.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0
                || a == 10
                || a == 127
                || (a == 100 && (64..128).contains(&b))
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 0 && c == 2)
                || (a == 198 && (b == 18 || b == 19))
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113)
                || a >= 224)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2002)
                || (s[0] == 0x2001 && s[1] == 0)
                || s[..6] == [0; 6]
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || s[..5] == [0; 5] && s[5] == 0xffff)
        }
    }
}

/// What the router may connect to on behalf of one algorithm.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The algorithm's granted origins.
    pub origins: Vec<Origin>,
    /// The admin listener's address, never reachable. An unspecified
    /// address (`0.0.0.0`) closes its port on every address.
    pub admin: Option<SocketAddr>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No granted origin admits the request's origin.
    #[error("the origin is not granted to the algorithm")]
    NotGranted,
    /// The address is private, loopback, link-local or reserved, and no
    /// grant names it.
    #[error("{0} is not a public address and no grant names it")]
    NotPublic(IpAddr),
    /// The address is the admin listener's.
    #[error("{0} is the router's admin listener")]
    Admin(SocketAddr),
}

impl Policy {
    /// Checks the request's origin against the grant.
    pub fn check_origin(&self, target: &Target) -> Result<(), Denial> {
        if self.origins.iter().any(|o| o.admits(target)) {
            Ok(())
        } else {
            Err(Denial::NotGranted)
        }
    }

    /// Checks one resolved address of a granted target.
    pub fn check_address(&self, https: bool, addr: SocketAddr) -> Result<(), Denial> {
        let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
        if let Some(admin) = self.admin {
            let same_ip = admin.ip().is_unspecified() || canonical(admin.ip()) == addr.ip();
            if admin.port() == addr.port() && (same_ip || !is_public(addr.ip())) {
                return Err(Denial::Admin(addr));
            }
        }
        if is_public(addr.ip()) || self.origins.iter().any(|o| o.names_exactly(https, addr)) {
            Ok(())
        } else {
            Err(Denial::NotPublic(addr.ip()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::of(&url.parse().unwrap()).unwrap()
    }

    fn policy(origins: &[&str]) -> Policy {
        Policy {
            origins: origins.iter().map(|o| o.parse().unwrap()).collect(),
            admin: Some("127.0.0.1:7070".parse().unwrap()),
        }
    }

    #[test]
    fn origins_parse_and_print_canonically() {
        for (text, shown) in [
            ("https://API.Example.com", "https://api.example.com"),
            ("https://api.example.com:443/", "https://api.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("https://*.example.com", "https://*.example.com"),
        ] {
            assert_eq!(text.parse::<Origin>().unwrap().to_string(), shown);
        }
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://u@x.com",
            "https://x.com:0",
            "https://x.com:99999",
            "https://",
            "https://*.",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_origin_admits_its_scheme_host_and_port_only() {
        let p = policy(&["https://api.example.com", "https://*.svc.example.com"]);
        assert!(
            p.check_origin(&target("https://api.example.com/x?y"))
                .is_ok()
        );
        assert!(
            p.check_origin(&target("https://API.example.com.:443/"))
                .is_ok()
        );
        assert!(
            p.check_origin(&target("https://a.svc.example.com/"))
                .is_ok()
        );
        assert!(
            p.check_origin(&target("https://a.b.svc.example.com/"))
                .is_ok()
        );
        for denied in [
            "http://api.example.com/",
            "https://api.example.com:8443/",
            "https://svc.example.com/",
            "https://evilsvc.example.com/",
            "https://api.example.com.evil.com/",
            "https://other.com/",
        ] {
            assert_eq!(
                p.check_origin(&target(denied)),
                Err(Denial::NotGranted),
                "{denied}"
            );
        }
    }

    #[test]
    fn private_addresses_need_a_grant_naming_them() {
        let p = policy(&["http://localhost:8080"]);
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let addr = SocketAddr::new(ip.parse().unwrap(), 8080);
            assert!(p.check_address(false, addr).is_err(), "{ip}");
        }
        assert!(
            p.check_address(false, "93.184.216.34:8080".parse().unwrap())
                .is_ok()
        );
        assert!(
            p.check_address(true, "[2606:2800::1]:443".parse().unwrap())
                .is_ok()
        );

        let named = policy(&["http://127.0.0.1:8080"]);
        assert!(
            named
                .check_address(false, "127.0.0.1:8080".parse().unwrap())
                .is_ok()
        );
        assert!(
            named
                .check_address(false, "[::ffff:127.0.0.1]:8080".parse().unwrap())
                .is_ok()
        );
        assert!(
            named
                .check_address(false, "127.0.0.1:8081".parse().unwrap())
                .is_err()
        );
        assert!(
            named
                .check_address(true, "127.0.0.1:8080".parse().unwrap())
                .is_err()
        );
        assert!(
            named
                .check_address(false, "127.0.0.2:8080".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn the_admin_listener_is_never_reachable() {
        let p = policy(&["http://127.0.0.1:7070"]);
        let admin = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(p.check_address(false, admin), Err(Denial::Admin(admin)));
        let everywhere = Policy {
            admin: Some("0.0.0.0:7070".parse().unwrap()),
            ..policy(&["http://10.1.2.3:7070"])
        };
        assert!(
            everywhere
                .check_address(false, "10.1.2.3:7070".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_canonical() {
        assert_eq!(
            target("http://[::ffff:7f00:1]:80/").host,
            TargetHost::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            canonical("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }
}

//! Which addresses managed endpoints may reach: the guard against server-side
//! request forgery.
//!
//! A managed endpoint is a URL anyone with API access can set, so its deliveries must
//! not reach the server's own network: loopback, private (RFC 1918, IPv6 unique local),
//! link-local (the cloud metadata address 169.254.169.254 included), shared (100.64/10),
//! unspecified, broadcast and multicast addresses are refused — when the endpoint is
//! created or changed, and again when a delivery connects: every address its host name
//! resolves to is checked then ([`GuardedResolver`], reqwest's resolver hook), so a name
//! that resolves elsewhere later (DNS rebinding) gets no further. `PM_ENDPOINT_ALLOW_NETS`
//! (comma-separated CIDRs) opens chosen ranges, e.g. `127.0.0.0/8` for a receiver on the
//! same machine. The route variables of the environment are trusted and not checked.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A kind of address managed endpoints may not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7.
    Private,
    /// 169.254/16 (the cloud metadata address included), fe80::/10.
    LinkLocal,
    /// 100.64/10 (carrier-grade NAT).
    Shared,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 224/4, ff00::/8.
    Multicast,
}

impl AddressClass {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Shared => "shared (100.64.0.0/10)",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Multicast => "multicast",
        }
    }
}

fn class_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddressClass::Shared
    } else if o[0] == 0 {
        AddressClass::Unspecified
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else {
        return None;
    })
}

/// The IPv4 address an IPv6 address carries, in the forms that reach it:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:aabb:ccdd::`)
/// and Teredo (`2001:0:…`, the client's address inverted in the last 32 bits).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // ::a.b.c.d, but not :: or ::1 (their own classes).
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(last(hi, lo)),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(last(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(last(hi, lo)),
        [0x2002, hi, lo, ..] => Some(last(hi, lo)),
        [0x2001, 0, _, _, _, _, hi, lo] => Some(last(!hi, !lo)),
        _ => None,
    }
}

fn class_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = embedded_v4(ip) {
        return class_v4(v4);
    }
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if (first & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if (first & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else {
        return None;
    })
}

/// The class of `ip` that managed endpoints may not reach, if it is one.
pub fn class_of(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

/// An address refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ip} is a {} address: managed endpoints may not reach loopback, private, link-local, shared, unspecified, broadcast or multicast addresses unless PM_ENDPOINT_ALLOW_NETS allows them (e.g. PM_ENDPOINT_ALLOW_NETS={})",
    class.name(),
    suggestion(*ip)
)]
pub struct Refused {
    /// The address.
    pub ip: IpAddr,
    /// Why.
    pub class: AddressClass,
}

fn suggestion(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// The rule: refuse the classes above, except in the allowed networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetGuard {
    allow: Vec<IpNet>,
}

pub use crate::config::BadNet;

impl NetGuard {
    /// A guard allowing `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        NetGuard { allow }
    }

    /// Parses `PM_ENDPOINT_ALLOW_NETS`: comma-separated CIDRs (a bare address is its /32 or /128).
    pub fn parse_allow(text: &str) -> Result<Vec<IpNet>, BadNet> {
        crate::config::parse_nets(text)
    }

    /// The allowed networks.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether `ip` may be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        // An IPv6 form that carries an IPv4 address is judged by that address.
        let ip = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match class_of(ip) {
            Some(class) if !self.allow.iter().any(|n| n.contains(&ip)) => {
                Err(Refused { ip, class })
            }
            _ => Ok(()),
        }
    }

    /// Checks the host of `url`: an address as it is; a host name by every address
    /// it resolves to now (one that does not resolve passes here: it is checked
    /// again when a delivery connects).
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        if let Some(ip) = host_ip(url) {
            return self.check(ip);
        }
        let port = url.port_or_known_default().unwrap_or(80);
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                for a in addrs {
                    self.check(a.ip())?;
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
}

/// The address `url`'s host is written as, if it is one (`[::1]` or `127.0.0.1`), not a name.
pub fn host_ip(url: &reqwest::Url) -> Option<IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// reqwest's resolver for managed endpoints: resolves with the system resolver and
/// refuses the name if any of its addresses is refused by the guard.
pub struct GuardedResolver(pub Arc<NetGuard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                guard.check(a.ip()).map_err(|e| {
                    Box::new(HostRefused {
                        host: host.clone(),
                        refused: e,
                    }) as Box<dyn std::error::Error + Send + Sync>
                })?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A host name that resolved to a refused address when a delivery connected.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {refused}")]
pub struct HostRefused {
    /// The host name.
    pub host: String,
    /// The address refused and why.
    pub refused: Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_refused_and_public_addresses_pass() {
        let g = NetGuard::default();
        let refused = |s: &str| g.check(s.parse().expect("an address")).map_err(|e| e.class);
        assert_eq!(refused("127.0.0.1"), Err(AddressClass::Loopback));
        assert_eq!(refused("::1"), Err(AddressClass::Loopback));
        assert_eq!(refused("::ffff:127.0.0.1"), Err(AddressClass::Loopback));
        // IPv6 forms that carry an IPv4 address are judged by that address.
        for embedded in [
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert_eq!(refused(embedded), Err(AddressClass::Loopback), "{embedded}");
        }
        assert_eq!(refused("64:ff9b::10.0.0.1"), Err(AddressClass::Private));
        assert_eq!(refused("2002:a9fe:a9fe::"), Err(AddressClass::LinkLocal));
        assert_eq!(refused("10.1.2.3"), Err(AddressClass::Private));
        assert_eq!(refused("172.16.0.1"), Err(AddressClass::Private));
        assert_eq!(refused("192.168.1.1"), Err(AddressClass::Private));
        assert_eq!(refused("fd00::1"), Err(AddressClass::Private));
        assert_eq!(refused("169.254.169.254"), Err(AddressClass::LinkLocal));
        assert_eq!(refused("fe80::1"), Err(AddressClass::LinkLocal));
        assert_eq!(refused("100.64.0.1"), Err(AddressClass::Shared));
        assert_eq!(refused("100.127.255.255"), Err(AddressClass::Shared));
        assert_eq!(refused("0.0.0.0"), Err(AddressClass::Unspecified));
        assert_eq!(refused("::"), Err(AddressClass::Unspecified));
        assert_eq!(refused("255.255.255.255"), Err(AddressClass::Broadcast));
        assert_eq!(refused("224.0.0.1"), Err(AddressClass::Multicast));
        assert_eq!(refused("ff02::1"), Err(AddressClass::Multicast));
        for ok in [
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(refused(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_allow_list_opens_its_networks_only() {
        let nets = NetGuard::parse_allow("127.0.0.0/8, ::1, 10.0.0.0/24").expect("valid");
        let g = NetGuard::new(nets);
        assert!(g.check("127.0.0.1".parse().expect("ip")).is_ok());
        assert!(g.check("::1".parse().expect("ip")).is_ok());
        assert!(g.check("10.0.0.9".parse().expect("ip")).is_ok());
        assert!(g.check("10.0.1.9".parse().expect("ip")).is_err());
        assert!(NetGuard::parse_allow("127.0.0.0/33").is_err());
        assert!(NetGuard::parse_allow("localhost").is_err());
        let msg = NetGuard::default()
            .check("169.254.169.254".parse().expect("ip"))
            .expect_err("refused")
            .to_string();
        assert!(
            msg.contains("link-local") && msg.contains("PM_ENDPOINT_ALLOW_NETS"),
            "{msg}"
        );
    }
}

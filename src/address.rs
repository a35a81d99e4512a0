//! Address strings: `host:port`, `[v6]:port`, Unix paths and `@abstract` names.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;

use socket2::SockAddr;

/// Resolves `host:port` to socket addresses, literal IPs first without a lookup.
/// Names go through the system resolver (blocking; documented).
pub fn resolve_inet(text: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = split_host_port(text)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let host = if host == "*" { "0.0.0.0" } else { host };
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{host}': {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("'{host}' has no address"));
    }
    Ok(found)
}

fn split_host_port(text: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{text}': missing ']' after an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("'{text}': expected ':port' after ']'"))?;
        (host, port)
    } else {
        text.rsplit_once(':')
            .ok_or_else(|| format!("'{text}': expected host:port"))?
    };
    if host.contains(':') && !text.starts_with('[') {
        return Err(format!("'{text}': write IPv6 addresses in brackets, as [::1]:8010"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{text}': the port must be a number from 0 to 65535"))?;
    Ok((host, port))
}

/// A Unix socket address: a path, or `@name` for the Linux abstract namespace.
pub fn unix(text: &str) -> Result<SockAddr, String> {
    if text.is_empty() {
        return Err("empty Unix socket path".into());
    }
    let raw: Vec<u8> = match text.strip_prefix('@') {
        Some(name) => std::iter::once(0u8).chain(name.bytes()).collect(),
        None => text.as_bytes().to_vec(),
    };
    SockAddr::unix(std::ffi::OsStr::from_bytes(&raw)).map_err(|e| format!("'{text}': {e}"))
}

/// The text form Lua sees: `ip:port`, `[v6]:port`, a path, `@name`, or "" when unnamed.
pub fn format(addr: &Option<SockAddr>) -> String {
    let Some(addr) = addr else { return String::new() };
    if let Some(inet) = addr.as_socket() {
        return inet.to_string();
    }
    if let Some(name) = addr.as_abstract_namespace() {
        return format!("@{}", String::from_utf8_lossy(name));
    }
    if let Some(path) = addr.as_pathname() {
        return path.to_string_lossy().into_owned();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inet_forms() {
        assert_eq!(resolve_inet("127.0.0.1:8010").unwrap(), vec!["127.0.0.1:8010".parse().unwrap()]);
        assert_eq!(resolve_inet("[::1]:0").unwrap(), vec!["[::1]:0".parse().unwrap()]);
        assert!(resolve_inet("127.0.0.1").is_err());
        assert!(resolve_inet("127.0.0.1:99999").is_err());
        assert!(resolve_inet("::1:80").is_err());
        assert!(resolve_inet("[::1]80").is_err());
    }

    #[test]
    fn unix_paths_and_abstract_names_round_trip() {
        assert_eq!(format(&Some(unix("/tmp/x.sock").unwrap())), "/tmp/x.sock");
        assert_eq!(format(&Some(unix("@luanet-test").unwrap())), "@luanet-test");
        assert!(unix("").is_err());
        assert!(unix(&"x".repeat(200)).is_err());
    }
}

/// `core.resolve("host:port") -> { "ip:port", ... } | nil, "bad address", detail`:
/// every address a name has, so `connect` can try the next when one refuses.
pub unsafe extern "C-unwind" fn resolve(l: *mut crate::lua::lua_State) -> std::ffi::c_int {
    use crate::lua::{self, ffi, Ret};
    lua::entry(l, || {
        let text = lua::check_str(l, 1, "luanet.resolve", "addr")?;
        match resolve_inet(text) {
            Err(detail) => Ok(lua::push_fail(l, crate::errors::BAD_ADDRESS, &detail)),
            Ok(addrs) => {
                let texts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                ffi::lua_createtable(l, texts.len() as std::ffi::c_int, 0);
                for (i, t) in texts.iter().enumerate() {
                    lua::push_bytes(l, t.as_bytes());
                    ffi::lua_rawseti(l, -2, i as ffi::lua_Integer + 1);
                }
                Ok(Ret::Values(1))
            }
        }
    })
}

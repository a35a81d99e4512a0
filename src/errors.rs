//! The stable error words Lua callers compare against (docs/core.md, "Error words").

use std::io;

pub const TIMEOUT: &str = "timeout";
pub const CLOSED: &str = "closed";
pub const BUSY: &str = "busy";
pub const LINE_TOO_LONG: &str = "line too long";
pub const MESSAGE_TOO_LARGE: &str = "message too large";
pub const BAD_ADDRESS: &str = "bad address";
pub const TLS: &str = "tls error";

/// Maps an OS error to its stable word; the detail (OS text) goes alongside.
pub fn word_for(err: &io::Error) -> &'static str {
    if err.get_ref().is_some_and(|e| e.is::<crate::tls::TlsFailure>()) {
        return TLS;
    }
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused",
        Some(libc::ECONNRESET) | Some(libc::ECONNABORTED) => "connection reset",
        Some(libc::EPIPE) => "broken pipe",
        Some(libc::ETIMEDOUT) => TIMEOUT,
        Some(libc::EADDRINUSE) => "address in use",
        Some(libc::EADDRNOTAVAIL) => "address not available",
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied",
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) | Some(libc::ENETDOWN) => "unreachable",
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => "no such file",
        Some(libc::EMSGSIZE) => MESSAGE_TOO_LARGE,
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files",
        Some(libc::ENOTCONN) | Some(libc::EDESTADDRREQ) => "not connected",
        _ => match err.kind() {
            io::ErrorKind::InvalidInput => BAD_ADDRESS,
            _ => "io error",
        },
    }
}

/// What an operation that failed on the OS reports: (word, detail).
pub fn describe(err: &io::Error) -> (&'static str, String) {
    (word_for(err), err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_to_documented_words() {
        let cases = [
            (libc::ECONNREFUSED, "connection refused"),
            (libc::ECONNRESET, "connection reset"),
            (libc::EPIPE, "broken pipe"),
            (libc::EADDRINUSE, "address in use"),
            (libc::ENOENT, "no such file"),
            (libc::EMSGSIZE, "message too large"),
            (libc::EMFILE, "too many open files"),
            (libc::EIO, "io error"),
        ];
        for (errno, word) in cases {
            assert_eq!(word_for(&io::Error::from_raw_os_error(errno)), word, "errno {errno}");
        }
    }
}

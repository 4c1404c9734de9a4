//! What can go wrong, each with the exit code it ends kappctl with and one line for a person.

use std::path::PathBuf;

/// Exit codes: 0 healthy / done, 1 degraded or the apiserver refused a request, 2 the
/// apiserver could not be reached or refused kappctl's credentials, 64 bad usage.
pub mod exit {
    pub const OK: i32 = 0;
    pub const DEGRADED: i32 = 1;
    pub const FAILED: i32 = 1;
    pub const UNREACHABLE: i32 = 2;
    pub const USAGE: i32 = 64;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection, TLS failure (a wrong CA or certificate), timeout.
    #[error("cannot reach the apiserver at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    /// The apiserver answered but does not accept the identity (401/403 on first contact).
    #[error("the apiserver at {server} refused kappctl's identity: {detail}")]
    Refused { server: String, detail: String },
    /// The apiserver refused one request (not found, forbidden, …).
    #[error("Error from server ({reason}): {message}")]
    Api { code: u16, reason: String, message: String },
    /// An answer kappctl could not read.
    #[error("unexpected answer from {server} for {path}: {detail}")]
    Decode { server: String, path: String, detail: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Usage(String),
    /// The read-only choke point refused a request that is not a GET (a bug if ever seen).
    #[error("kappctl only reads: refused to send {method} {path}")]
    WriteRefused { method: String, path: String },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Unreachable { .. } | Error::Refused { .. } | Error::Credentials(_) | Error::File { .. } => exit::UNREACHABLE,
            Error::Usage(_) => exit::USAGE,
            _ => exit::FAILED,
        }
    }

    /// A request-level refusal with this HTTP code?
    pub fn is_api(&self, code: u16) -> bool {
        matches!(self, Error::Api { code: c, .. } if *c == code)
    }
}

/// An error and its causes as one line: each cause once, without the wrappers' type names.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let mut text = err.to_string();
        for prefix in ["HyperError: ", "ServiceError: ", "client error (", "error trying to connect: "] {
            if let Some(rest) = text.strip_prefix(prefix) {
                text = rest.trim_end_matches(')').to_string();
            }
        }
        let text = text.trim().to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            // A cause that repeats its effect's text replaces it with more detail.
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        cur = err.source();
    }
    // Connection errors say "Connect" then the reason; keep the reason.
    parts.retain(|p| p != "Connect" && p != "SendRequest");
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn chains_name_each_cause_once() {
        let e = E("HyperError: client error (Connect)", Some(Box::new(E("client error (Connect)", Some(Box::new(E("tcp connect error", Some(Box::new(E("Connection refused (os error 111)", None))))))))));
        assert_eq!(chain(&e), "tcp connect error: Connection refused (os error 111)");
        let e = E("invalid peer certificate: UnknownIssuer", None);
        assert_eq!(chain(&e), "invalid peer certificate: UnknownIssuer");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Unreachable { server: "s".into(), detail: "d".into() }.exit_code(), 2);
        assert_eq!(Error::Api { code: 404, reason: "NotFound".into(), message: "m".into() }.exit_code(), 1);
        assert_eq!(Error::Usage("u".into()).exit_code(), 64);
    }
}

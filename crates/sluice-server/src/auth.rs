//! Who may call what: a bearer token, compared in constant time, guards every mutation, and
//! every read unless the server was started with `--public-read`. `/health`, `/ready` and the
//! dashboard's static assets are open (probes carry no token; the pages send one to the API).
//! A token in the URL's query is refused outright, whatever it is: URLs end up in proxy logs,
//! shell histories and browser bars.
//!
//! A server started without a token listens on loopback only (see `crate::Server::bind`), so
//! only this machine's users reach it; it then lets every request through.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The API token, kept as its SHA-256 so every comparison is of 32 bytes, in constant time,
/// whatever the length of what a client sends.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Tokens shorter than this are refused: a guessable token is no guard.
pub const MIN_TOKEN_LEN: usize = 16;

impl Token {
    /// A token from its text (surrounding whitespace, such as a token file's newline, is not
    /// part of it).
    pub fn new(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the API token is {} characters long; use at least {MIN_TOKEN_LEN} (for example `openssl rand -hex 32`)",
                text.len()
            ));
        }
        if text.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(
                "the API token has spaces or non-ASCII characters; use printable ASCII only".into(),
            );
        }
        Ok(Token(digest(text.as_bytes())))
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &str) -> bool {
        bool::from(digest(given.as_bytes()).ct_eq(&self.0))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What the guard lets through.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None`: no token configured (loopback only): everything passes.
    pub token: Option<Token>,
    /// Reads (GET, HEAD) pass without a token.
    pub public_read: bool,
}

/// Paths anyone may call: probes, and the dashboard's assets (which hold no data: its pages
/// call the API with the token a person types in).
fn open_path(path: &str) -> bool {
    matches!(path, "/health" | "/ready") || crate::dashboard::ASSETS.contains(&path)
}

/// Refuses a request that carries a token in its query, then one without the token it needs.
pub async fn guard(
    State(access): State<Access>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(query) = request.uri().query()
        && query
            .split('&')
            .filter_map(|pair| pair.split('=').next())
            .any(|name| {
                let name = name.to_ascii_lowercase();
                name.contains("token") || name == "key" || name.contains("auth")
            })
    {
        return Err(ApiError::bad_request(
            "a token in the URL is refused (URLs end up in logs): send it as the header `Authorization: Bearer TOKEN`",
        ));
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let open = open_path(request.uri().path()) || (read && access.public_read);
    if let (Some(token), false) = (&access.token, open) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        match given {
            None => {
                let what = if read { "reading" } else { "this change" };
                return Err(ApiError::unauthorized(format!(
                    "{what} needs the API token: send the header `Authorization: Bearer TOKEN` (the token sluice serve was started with)"
                )));
            }
            Some(given) if !token.matches(given) => {
                return Err(ApiError::unauthorized(
                    "the bearer token is not this server's API token: check SLUICE_API_TOKEN or the --token-file the server was started with",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let t = Token::new("  0123456789abcdef-secret\n").expect("a token");
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        assert!(!t.matches("0123456789abcdef-secret "));
        assert!(!t.matches(""));
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789abcdef 0123").is_err());
        assert_eq!(format!("{t:?}"), "Token(***)");
    }
}

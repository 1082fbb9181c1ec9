//! Error policy.
//!
//! - Each stage has its own small error enum (`ConfigError`, `PersistError`,
//!   `UpstreamError`, ...), one doc line per variant, built with `thiserror`.
//! - Only [`MatrixError`] reaches a client. The API layer maps every failure into one,
//!   with the HTTP status and `errcode` the Matrix spec gives it, and a message that says
//!   which field or parameter is wrong. Internal details (SQL, upstream bodies) are logged,
//!   never sent.
//! - Nothing a client sends can produce a panic or a 500: bad input is a 4xx here, a
//!   homeserver failure is a 502.
//! - Configuration and startup errors end the process with exit code 1 and one line that
//!   names the setting (see `config`).

use http::StatusCode;

/// An error as a Matrix client sees it: `{"errcode": ..., "error": ...}` with a status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
}

impl MatrixError {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
        }
    }

    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token: send it as 'Authorization: Bearer <token>' or ?access_token=",
        )
    }

    pub fn unknown_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown or expired access token",
        )
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    pub fn unknown_pos() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN_POS",
            "Unknown pos: the connection expired or was replaced; start a new one without pos",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!("Request body is larger than {limit} bytes"),
        )
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed on this endpoint",
        )
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", message)
    }

    /// The JSON body of the error.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.message.len());
        out.extend_from_slice(b"{\"errcode\":\"");
        out.extend_from_slice(self.errcode.as_bytes());
        out.extend_from_slice(b"\",\"error\":");
        out.extend_from_slice(
            sonic_rs::to_string(&self.message)
                .unwrap_or_else(|_| "\"\"".into())
                .as_bytes(),
        );
        out.push(b'}');
        out
    }
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.errcode,
            self.message
        )
    }
}

impl std::error::Error for MatrixError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_escapes_the_message() {
        let err = MatrixError::bad_json("field \"lists\" is not an object");
        let body: sonic_rs::Value = sonic_rs::from_slice(&err.body()).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(body["errcode"].as_str(), Some("M_BAD_JSON"));
        assert_eq!(
            body["error"].as_str(),
            Some("field \"lists\" is not an object")
        );
    }
}

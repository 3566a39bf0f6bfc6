//! HTTP basic authentication from a user and password the operator injects as environment
//! variables (ClickHouse, the Schema Registry).

use base64::Engine;

/// The `Authorization` header value for `user` and `password`.
pub fn header(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// The header for the user in variable `user_var` and the password in `password_var` (empty
/// when unset), or `None` when no user is set.
pub fn from_env(user_var: &str, password_var: &str) -> Option<String> {
    let user = std::env::var(user_var).ok()?;
    let password = std::env::var(password_var).unwrap_or_default();
    Some(header(&user, &password))
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_become_a_basic_authorization_header() {
        // RFC 7617's example.
        assert_eq!(
            super::header("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}

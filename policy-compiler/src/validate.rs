//! Kubernetes name and label validation, as the API server does it.
//!
//! Each function returns `Err(message)` with an API-server-style explanation.

/// DNS-1123 label: at most 63 lowercase alphanumerics or `-`, starting and ending with an
/// alphanumeric (Namespace names).
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let b = s.as_bytes();
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.iter().all(|&c| ok_char(c)) || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// DNS-1035 label: a DNS-1123 label that starts with a letter (Service names).
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns1123_label(s).map_err(|_| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character".to_string()
    })?;
    if !s.bytes().next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character".into());
    }
    Ok(())
}

/// DNS-1123 subdomain: at most 253 characters, dot-separated lowercase labels (Pod,
/// NetworkPolicy and workload names, label key prefixes).
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    let b = s.as_bytes();
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.';
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let parts_ok = s.split('.').all(|p| {
        let pb = p.as_bytes();
        !pb.is_empty() && alnum(pb[0]) && alnum(pb[pb.len() - 1])
    });
    if !b.iter().all(|&c| ok_char(c)) || !parts_ok {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// The name part of a qualified name or a label value: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// A label key: optional DNS subdomain prefix and `/`, then a name of at most 63 characters.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !qualified_name_part(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of the qualified-name alphabet.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    if !qualified_name_part(s) {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

/// An IANA service name (named ports): 1-15 lowercase alphanumerics or `-`, at least one
/// letter, no leading, trailing or doubled `-`.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be no more than 15 characters".into());
    }
    let b = s.as_bytes();
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if !b.iter().any(u8::is_ascii_lowercase) {
        return Err("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(label_key("app").is_ok());
        assert!(label_key("kubernetes.io/metadata.name").is_ok());
        assert!(label_key("a_b.c-d").is_ok());
        assert!(label_key("/x").is_err());
        assert!(label_key("Foo.com/x").is_err());
        assert!(label_key("-x").is_err());
        assert!(label_key(&"x".repeat(64)).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("a b").is_err());
        assert!(label_value("x-").is_err());
    }

    #[test]
    fn names() {
        assert!(dns1123_label("x").is_ok());
        assert!(dns1123_label("my-ns").is_ok());
        assert!(dns1123_label("My").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1123_subdomain("a.b-c").is_ok());
        assert!(dns1123_subdomain("a_b").is_err());
        assert!(dns1123_subdomain("a..b").is_err());
    }

    #[test]
    fn svc_names() {
        assert!(iana_svc_name("serve-80-tcp").is_ok());
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("80").is_err());
        assert!(iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("-a").is_err());
        assert!(iana_svc_name("Http").is_err());
        assert!(iana_svc_name("abcdefghijklmnop").is_err());
    }
}

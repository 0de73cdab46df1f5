//! The names Kubernetes allows, checked the same way everywhere: DNS-1123
//! labels (namespaces, Services, containers) and subdomains (most objects,
//! node names), and qualified names (label keys and values). Each check
//! says what is wrong in words a user can act on.

/// Checks a label key: an optional DNS subdomain prefix and '/', then a name
/// of at most 63 characters of alphanumerics, '-', '_' and '.', starting and
/// ending alphanumeric.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    validate_qualified_name(key, "label key")
}

/// Checks a qualified name (the shape of a label key) that the message calls
/// `what`: "annotation key", "finalizer", "topology key"…
pub fn validate_qualified_name(key: &str, what: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        validate_dns1123_subdomain(prefix).map_err(|e| format!("{what} prefix {prefix:?}: {e}"))?;
    }
    validate_qualified_name_part(name).map_err(|e| format!("{what} {key:?}: {e}"))
}

/// Checks a label value: empty, or at most 63 alphanumerics, '-', '_' and '.',
/// starting and ending alphanumeric.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_qualified_name_part(value).map_err(|e| format!("label value {value:?}: {e}"))
}

fn validate_qualified_name_part(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must start and end with an alphanumeric character".into());
    }
    if !bytes
        .iter()
        .all(|&b| alnum(b) || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("may contain only alphanumerics, '-', '_' and '.'".into());
    }
    Ok(())
}

/// Checks a DNS-1123 label (names of namespaces, services, containers):
/// at most 63 lower-case alphanumerics or '-', starting and ending alphanumeric.
pub fn validate_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    if !ok(bytes[0]) || !ok(bytes[bytes.len() - 1]) || !bytes.iter().all(|&b| ok(b) || b == b'-') {
        return Err(
            "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (names of most objects): at most 253
/// characters, dot-separated DNS labels.
pub fn validate_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    if !ok(bytes[0])
        || !ok(bytes[bytes.len() - 1])
        || !bytes.iter().all(|&b| ok(b) || b == b'-' || b == b'.')
        || s.contains("..")
    {
        return Err(
            "must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// The plural as written in method names: the kind's own spelling where
/// the plural starts with it ("Widget" + "widgets" → "Widgets",
/// "Policy" + "policies" → "Policies").
pub fn plural_camel(kind: &str, plural: &str) -> String {
    let common = kind
        .chars()
        .zip(plural.chars())
        .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
        .count();
    let mut out: String = kind.chars().take(common).collect();
    let rest: String = plural.chars().skip(common).collect();
    if out.is_empty() {
        let mut c = rest.chars();
        return c
            .next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default();
    }
    out.push_str(&rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_validated() {
        assert!(validate_dns1123_label("web-1").is_ok());
        assert!(validate_dns1123_label("Web").is_err());
        assert!(validate_dns1123_label("-web").is_err());
        assert!(validate_dns1123_subdomain("a.b-c.d").is_ok());
        assert!(validate_dns1123_subdomain("a..b").is_err());
        assert!(validate_dns1123_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn label_keys_and_values_are_validated() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("skiff.io/role").is_ok());
        assert!(validate_label_key("Skiff.io/role").is_err());
        assert!(validate_label_key("").is_err());
        assert!(validate_label_key("a/-b").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("v1.2_3").is_ok());
        assert!(validate_label_value("bad value").is_err());
        assert!(validate_label_value(&"a".repeat(64)).is_err());
    }
}

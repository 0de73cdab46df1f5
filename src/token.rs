//! Service-account tokens: JWTs signed with Ed25519 (`alg: EdDSA`) naming
//! the service account, its uid and the Secret holding the token, as
//! Kubernetes' legacy service-account tokens do. The controller manager
//! signs them; the API server verifies them and checks that the account
//! and secret still exist (so deleting either revokes the token).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Issuer of service-account tokens.
pub const ISSUER: &str = "skiff/serviceaccount";

/// What a service-account token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Namespace of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    /// Name of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub name: String,
    /// Uid of the account.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub uid: String,
    /// Secret holding the token.
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret: String,
    /// Expiry, seconds since the epoch (legacy account tokens have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at, seconds since the epoch (requested tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Who the token is for; legacy tokens have none (the API server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    /// The pod the token is bound to: it stops working when that pod is gone.
    #[serde(
        rename = "kubernetes.io/pod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pod: Option<BoundPod>,
}

/// The pod a requested token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundPod {
    /// Its name (in the account's namespace).
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// The audience of tokens meant for the API server itself.
pub const API_AUDIENCE: &str = "skiff";

impl Claims {
    /// Claims for the account `namespace/name` with `uid`, stored in `secret`.
    pub fn new(namespace: &str, name: &str, uid: &str, secret: &str) -> Self {
        Self {
            iss: ISSUER.to_owned(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            secret: secret.to_owned(),
            exp: None,
            iat: None,
            aud: Vec::new(),
            pod: None,
        }
    }

    /// Whether the API server may accept it: no audience (a legacy token)
    /// or one that includes [`API_AUDIENCE`].
    pub fn for_api_server(&self) -> bool {
        self.aud.is_empty() || self.aud.iter().any(|a| a == API_AUDIENCE)
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// Another algorithm than EdDSA.
    #[error("unsupported token algorithm")]
    Algorithm,
    /// The signature does not verify.
    #[error("invalid token signature")]
    Signature,
    /// Not issued for service accounts.
    #[error("token not issued by {ISSUER}")]
    Issuer,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("service-account key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("service-account key {0}: not a base64 Ed25519 seed")]
    Format(String),
}

/// Signs `claims` into a compact JWT.
pub fn sign(claims: &Claims, key: &SigningKey) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// Verifies a token's signature and issuer; returns its claims.
pub fn verify(token: &str, key: &VerifyingKey) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed)?,
    )
    .map_err(|_| TokenError::Malformed)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
        return Err(TokenError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed)?;
    let sig = Signature::from_slice(&sig).map_err(|_| TokenError::Malformed)?;
    key.verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed)?,
    )
    .map_err(|_| TokenError::Malformed)?;
    if claims.iss != ISSUER {
        return Err(TokenError::Issuer);
    }
    if let Some(exp) = claims.exp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now >= exp {
            return Err(TokenError::Expired);
        }
    }
    Ok(claims)
}

/// A new random bearer token: 32 random bytes as hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random signing key.
pub fn generate_key() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// Reads a key file (a base64 Ed25519 seed), creating one if it does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        let key = generate_key();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(
            path,
            base64::engine::general_purpose::STANDARD.encode(key.to_bytes()),
        )
        .map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        return Ok(key);
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Format(path.display().to_string()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::Format(path.display().to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_unchanged() {
        let key = generate_key();
        let claims = Claims::new("ns", "default", "uid-1", "default-token-abcde");
        let token = sign(&claims, &key);
        assert_eq!(verify(&token, &key.verifying_key()).unwrap(), claims);
        assert_eq!(
            verify(&token, &generate_key().verifying_key()),
            Err(TokenError::Signature)
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Claims::new("ns", "admin", "u", "s")).unwrap());
        parts[1] = &forged;
        assert_eq!(
            verify(&parts.join("."), &key.verifying_key()),
            Err(TokenError::Signature)
        );
        assert_eq!(
            verify("not-a-token", &key.verifying_key()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn requested_tokens_carry_audience_expiry_and_pod() {
        let key = generate_key();
        let mut claims = Claims::new("ns", "web", "uid-1", "");
        claims.aud = vec!["vault".into()];
        claims.exp = Some(u64::MAX / 2);
        claims.pod = Some(BoundPod {
            name: "web-0".into(),
            uid: "p-1".into(),
        });
        let back = verify(&sign(&claims, &key), &key.verifying_key()).unwrap();
        assert_eq!(back, claims);
        assert!(!back.for_api_server());
        claims.aud.push(API_AUDIENCE.into());
        assert!(claims.for_api_server());
        claims.exp = Some(1);
        assert_eq!(
            verify(&sign(&claims, &key), &key.verifying_key()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn key_files_are_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
    }
}

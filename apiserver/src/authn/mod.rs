//! Who is calling: users from a static token file, service accounts from
//! the JWTs the controller manager signs (refused once the account or its
//! token Secret is gone), and users from client certificates (CN is the
//! name, O the groups). Requests with no credentials are anonymous only
//! when that is allowed.
//!
//! Owns the mapping from credentials to a user; must not decide what the user
//! may do (that is [`crate::authz`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use skiff::api::core::v1::{Pod, Secret, ServiceAccount};

use crate::error::ApiError;
use crate::object_store::{ObjectStore, ReadVersion};

/// Group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Group of anonymous requests.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Name of anonymous requests.
pub const ANONYMOUS: &str = "system:anonymous";
/// Group whose members may do anything.
pub const MASTERS: &str = "system:masters";
/// Group of nodes' kubelets.
pub const NODES: &str = "system:nodes";
/// Prefix of a node's user name.
pub const NODE_PREFIX: &str = "system:node:";
/// Prefix of a service account's user name.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Uid, if known.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with `groups` (plus system:authenticated).
    pub fn new(name: &str, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        Self {
            name: name.to_owned(),
            uid: String::new(),
            groups,
        }
    }

    /// The caller when authentication is off: an administrator.
    pub fn unrestricted() -> Self {
        Self::new("system:admin", &[MASTERS])
    }

    /// The kubelet of node `name`.
    pub fn node(name: &str) -> Self {
        Self::new(&format!("{NODE_PREFIX}{name}"), &[NODES])
    }

    /// The anonymous caller.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.into()],
        }
    }

    /// The node this caller is the kubelet of, if it is one.
    pub fn node_name(&self) -> Option<&str> {
        let name = self.name.strip_prefix(NODE_PREFIX)?;
        self.groups.iter().any(|g| g == NODES).then_some(name)
    }

    /// Whether the caller belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// A bearer token that is neither one of the server's static tokens nor a
/// service-account token it can verify.
const UNKNOWN_TOKEN: &str =
    "unknown token: not one of this server's static tokens nor a service-account token it signed";

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, and anonymous requests are off.
    #[error(
        "no credentials: send `authorization: Bearer TOKEN` or a client certificate (skiff reads them from ~/.skiff/config)"
    )]
    Missing,
    /// A bearer token nobody issued, or that is no longer valid.
    #[error("invalid bearer token: {0}")]
    InvalidToken(String),
    /// The client certificate has no usable subject.
    #[error("invalid client certificate: {0}")]
    InvalidCertificate(String),
    /// Token lookups failed.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(_) => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: Some(std::time::Duration::from_secs(1)),
            },
            e => ApiError::Unauthenticated(e.to_string()),
        }
    }
}

/// Users of a static token file.
#[derive(Debug, Default, Clone)]
pub struct StaticTokens {
    users: HashMap<String, UserInfo>,
}

impl StaticTokens {
    /// Reads a token file: one `token,user,uid,"group1,group2"` line per user
    /// (Kubernetes' format; `#` starts a comment).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a token file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            let (Some(token), Some(name), Some(uid)) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(format!(
                    "line {}: expected token,user,uid[,\"groups\"]",
                    i + 1
                ));
            };
            if token.is_empty() || name.is_empty() {
                return Err(format!(
                    "line {}: expected token,user,uid[,\"groups\"]",
                    i + 1
                ));
            }
            let groups: Vec<&str> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let mut user = UserInfo::new(name, &groups);
            user.uid = uid.clone();
            users.insert(token.clone(), user);
        }
        Ok(Self { users })
    }

    /// Adds a user (for generated credentials).
    pub fn insert(&mut self, token: &str, user: UserInfo) {
        self.users.insert(token.to_owned(), user);
    }

    fn get(&self, token: &str) -> Option<&UserInfo> {
        self.users.get(token)
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out.into_iter().map(|f| f.trim().to_owned()).collect()
}

/// What the server accepts as credentials.
#[derive(Default, Clone)]
pub struct AuthConfig {
    /// Users of the static token file.
    pub tokens: StaticTokens,
    /// Key service-account tokens are verified with.
    pub service_account_key: Option<VerifyingKey>,
    /// Requests with no credentials are `system:anonymous` (else UNAUTHENTICATED).
    pub anonymous: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.tokens.users.len())
            .field("service_account_key", &self.service_account_key.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// Resolves credentials to users.
pub struct Authenticator {
    config: AuthConfig,
    accounts: Arc<dyn ObjectStore<ServiceAccount>>,
    secrets: Arc<dyn ObjectStore<Secret>>,
    pods: Option<Arc<dyn ObjectStore<Pod>>>,
}

impl Authenticator {
    /// An authenticator checking service-account tokens against `accounts` and `secrets`.
    pub fn new(
        config: AuthConfig,
        accounts: Arc<dyn ObjectStore<ServiceAccount>>,
        secrets: Arc<dyn ObjectStore<Secret>>,
    ) -> Self {
        Self {
            config,
            accounts,
            secrets,
            pods: None,
        }
    }

    /// Checks tokens bound to a pod against `pods`: they stop working when
    /// the pod is gone.
    pub fn with_pods(mut self, pods: Arc<dyn ObjectStore<Pod>>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The user of a request with `bearer` token and `cert` (DER of the
    /// client certificate the TLS layer verified).
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        cert: Option<&[u8]>,
    ) -> Result<UserInfo, AuthError> {
        if let Some(token) = bearer {
            if let Some(user) = self.config.tokens.get(token) {
                return Ok(user.clone());
            }
            return self.service_account(token).await;
        }
        if let Some(der) = cert {
            return user_of_certificate(der);
        }
        if self.config.anonymous {
            return Ok(UserInfo::anonymous());
        }
        Err(AuthError::Missing)
    }

    async fn service_account(&self, token: &str) -> Result<UserInfo, AuthError> {
        // Not shaped as a service-account token (three dot-separated parts):
        // a static token this server does not know, not a "malformed" one.
        if token.split('.').count() != 3 {
            return Err(AuthError::InvalidToken(UNKNOWN_TOKEN.into()));
        }
        let Some(key) = &self.config.service_account_key else {
            return Err(AuthError::InvalidToken(UNKNOWN_TOKEN.into()));
        };
        let claims =
            skiff::token::verify(token, key).map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        if !claims.for_api_server() {
            return Err(AuthError::InvalidToken(format!(
                "the token is for {:?}, not the API server ({:?})",
                claims.aud,
                skiff::token::API_AUDIENCE
            )));
        }
        let unavailable = |e: ApiError| AuthError::Unavailable(e.to_string());
        if let (Some(bound), Some(pods)) = (&claims.pod, &self.pods) {
            let pod = pods
                .get(&claims.namespace, &bound.name, ReadVersion::Any)
                .await
                .map_err(unavailable)?;
            if pod
                .as_ref()
                .is_none_or(|p| p.metadata.as_ref().is_none_or(|m| m.uid != bound.uid))
            {
                return Err(AuthError::InvalidToken(format!(
                    "the pod {}/{} the token is bound to no longer exists",
                    claims.namespace, bound.name
                )));
            }
        }
        let account = self
            .accounts
            .get(&claims.namespace, &claims.name, ReadVersion::Any)
            .await
            .map_err(unavailable)?;
        if account
            .as_ref()
            .is_none_or(|a| a.metadata.as_ref().is_none_or(|m| m.uid != claims.uid))
        {
            return Err(AuthError::InvalidToken(format!(
                "service account {}/{} no longer exists",
                claims.namespace, claims.name
            )));
        }
        if !claims.secret.is_empty() {
            let secret = self
                .secrets
                .get(&claims.namespace, &claims.secret, ReadVersion::Any)
                .await
                .map_err(unavailable)?;
            if secret.is_none() {
                return Err(AuthError::InvalidToken(format!(
                    "the token's secret {}/{} no longer exists",
                    claims.namespace, claims.secret
                )));
            }
        }
        let mut user = UserInfo::new(
            &claims.sub,
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{}", claims.namespace),
            ],
        );
        user.uid = claims.uid;
        Ok(user)
    }
}

/// CN and O of a verified client certificate.
pub fn user_of_certificate(der: &[u8]) -> Result<UserInfo, AuthError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthError::InvalidCertificate(e.to_string()))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| {
            AuthError::InvalidCertificate("no common name (CN) to use as the user".into())
        })?;
    let groups: Vec<&str> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    Ok(UserInfo::new(name, &groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_as_kubernetes_writes_them() {
        let t = StaticTokens::parse("# comment\nabc,alice,u1,\"dev,ops\"\n\ndef,bob,u2\n").unwrap();
        let alice = t.get("abc").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", "ops", AUTHENTICATED]);
        assert_eq!(t.get("def").unwrap().groups, [AUTHENTICATED]);
        assert!(t.get("nope").is_none());
        assert!(StaticTokens::parse("only-token\n").is_err());
    }

    #[test]
    fn nodes_are_recognised_by_name_and_group() {
        assert_eq!(
            UserInfo::new("system:node:n1", &[NODES]).node_name(),
            Some("n1")
        );
        assert_eq!(UserInfo::new("system:node:n1", &[]).node_name(), None);
        assert_eq!(UserInfo::new("alice", &[NODES]).node_name(), None);
    }
}

//! A small certificate authority: the cluster CA, the API server's serving
//! certificate and client certificates (CN = user, O = groups), as
//! `kubeadm init` makes them, so that `skiff up` serves TLS from the start.
//!
//! Owns certificate issuance; must not decide who is trusted at request time
//! (that is [`crate::authn`]).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Certificates made here carry one group.
    #[error("a certificate made by skiff carries one group (organization), not {0}")]
    TooManyGroups(usize),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertifiedKey(<redacted>)")
    }
}

/// The cluster's certificate authority.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (what clients and the server trust).
    pub cert_pem: String,
    key_pem: String,
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl CertificateAuthority {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let params = ca_params(common_name);
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// Reads `ca.crt`/`ca.key` from `dir`, creating them on first use.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<Self, PkiError> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            let key = KeyPair::from_pem(&key_pem)?;
            return Ok(Self {
                issuer: Issuer::new(ca_params(common_name), key),
                cert_pem,
                key_pem,
            });
        }
        let ca = Self::generate(common_name)?;
        write(&cert_path, &ca.cert_pem, false)?;
        write(&key_path, &ca.key_pem, true)?;
        Ok(ca)
    }

    /// A serving certificate for these DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    /// A client certificate for `user` in `groups` (at most one group: the
    /// certificates made here carry one organization; the server reads every
    /// organization of certificates made elsewhere).
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertifiedKey, PkiError> {
        Self::one_group(groups)?;
        self.issue_client_params(client_params(user, groups))
    }

    /// A client certificate that expired in 2021 (for tests of refusal).
    pub fn issue_expired_client(
        &self,
        user: &str,
        groups: &[&str],
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = client_params(user, groups);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue_client_params(params)
    }

    fn issue_client_params(&self, params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        self.sign(params)
    }

    /// Checks that `groups` fit in one certificate.
    fn one_group(groups: &[&str]) -> Result<(), PkiError> {
        if groups.len() > 1 {
            return Err(PkiError::TooManyGroups(groups.len()));
        }
        Ok(())
    }

    fn sign(&self, params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

fn client_params(user: &str, groups: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    if let Some(g) = groups.first() {
        dn.push(DnType::OrganizationName, *g);
    }
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// Writes a certificate and key pair as `<dir>/<name>.crt` and `<dir>/<name>.key`.
pub fn write_pair(
    dir: &Path,
    name: &str,
    pair: &CertifiedKey,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write(&c, &pair.cert_pem, false)?;
    write(&k, &pair.key_pem, true)?;
    Ok((c, k))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to `path` (owner-only when `secret`).
pub fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_user_and_groups_and_the_ca_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), "skiff-ca").unwrap();
        let again = CertificateAuthority::load_or_create(dir.path(), "skiff-ca").unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        assert!(again.issue_client("alice", &["dev", "ops"]).is_err());
        let pair = again.issue_client("alice", &["dev"]).unwrap();
        let der = pem_der(&pair.cert_pem);
        let user = crate::authn::user_of_certificate(&der).unwrap();
        assert_eq!(user.name, "alice");
        assert!(user.in_group("dev") && user.in_group("system:authenticated"));
        // Issued by the CA that was written first (TLS tests check signatures).
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem_der(&ca.cert_pem);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}

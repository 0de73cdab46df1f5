//! What `skiff up` creates on first start, as `kubeadm init` does: a CA,
//! the API server's serving certificate, a token per control-plane
//! identity and the administrator's client configuration, all under
//! `<data-dir>/pki`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use skiff::client::Config;
use skiff_apiserver::authn::{StaticTokens, UserInfo};
use skiff_apiserver::pki::{self, CertificateAuthority};
use skiff_apiserver::server::TlsPem;

/// The administrator: in system:masters, bound to cluster-admin.
pub const ADMIN: (&str, &[&str]) = ("skiff-admin", &["system:masters"]);

/// Identities of the components that authenticate with tokens.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("admin", ADMIN.0),
    ("scheduler", "system:kube-scheduler"),
    ("controller-manager", "system:kube-controller-manager"),
    ("proxy", "system:kube-proxy"),
    ("dns", "system:kube-dns"),
];

/// A cluster's credentials.
pub struct Credentials {
    dir: PathBuf,
    ca: CertificateAuthority,
    /// The server's TLS identity (with the CA for client certificates).
    pub tls: TlsPem,
    /// Every static token the server accepts.
    pub tokens: StaticTokens,
    by_component: BTreeMap<String, String>,
}

impl Credentials {
    /// Reads `<data_dir>/pki`, creating what is missing; the serving
    /// certificate is issued anew for `listen` on every start.
    pub fn ensure(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<Self> {
        let dir = data_dir.join("pki");
        let ca = CertificateAuthority::load_or_create(&dir, "skiff-ca")
            .with_context(|| format!("creating the cluster CA in {}", dir.display()))?;
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let ip = listen.ip();
        if !ip.is_unspecified() && ip.to_string() != "127.0.0.1" {
            names.push(ip.to_string());
        }
        let serving = ca.issue_server(&names)?;
        pki::write_pair(&dir, "apiserver", &serving)?;
        let tokens_file = dir.join("tokens.csv");
        let mut text = std::fs::read_to_string(&tokens_file).unwrap_or_default();
        let mut by_component = BTreeMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.splitn(3, ',').collect();
            if let [token, user, _] = fields[..]
                && let Some((c, _)) = COMPONENTS.iter().find(|(_, u)| *u == user)
            {
                by_component.insert((*c).to_owned(), token.to_owned());
            }
        }
        let mut added = false;
        for (component, user) in COMPONENTS {
            if by_component.contains_key(*component) {
                continue;
            }
            let token = skiff::token::random_token();
            let groups = if *user == ADMIN.0 {
                ADMIN.1.join(",")
            } else {
                String::new()
            };
            text.push_str(&format!("{token},{user},{user},\"{groups}\"\n"));
            by_component.insert((*component).to_owned(), token);
            added = true;
        }
        if added {
            pki::write(&tokens_file, &text, true)?;
        }
        let tokens = StaticTokens::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tokens_file.display()))?;
        let tls = TlsPem {
            cert: serving.cert_pem.into_bytes(),
            key: serving.key_pem.into_bytes(),
            client_ca: Some(ca.cert_pem.clone().into_bytes()),
        };
        Ok(Self {
            dir,
            ca,
            tls,
            tokens,
            by_component,
        })
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The client configuration of a token-authenticated component.
    pub fn component_config(&self, component: &str, server: &str) -> Config {
        Config {
            server: Some(server.to_owned()),
            token: self.by_component.get(component).cloned(),
            ca_file: Some(self.ca_file()),
            ..Default::default()
        }
    }

    /// The client configuration of node `name`: a client certificate for
    /// `system:node:<name>` in `system:nodes`, as kubelets have.
    pub fn node_config(&self, name: &str, server: &str) -> anyhow::Result<Config> {
        let user = UserInfo::node(name);
        let pair = self
            .ca
            .issue_client(&user.name, &[skiff_apiserver::authn::NODES])?;
        let (cert, key) = pki::write_pair(&self.dir, &format!("node-{name}"), &pair)?;
        Ok(Config {
            server: Some(server.to_owned()),
            ca_file: Some(self.ca_file()),
            client_cert_file: Some(cert),
            client_key_file: Some(key),
            ..Default::default()
        })
    }

    /// Where the administrator's configuration is kept beside the keys.
    pub fn admin_config_path(&self) -> PathBuf {
        self.dir.join("admin.config")
    }
}

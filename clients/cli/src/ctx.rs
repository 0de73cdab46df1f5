//! What every client command needs: a connection chosen by `--server`,
//! `SKIFF_CONFIG` or `~/.skiff/config`, and kinds looked up by name.

use anyhow::{Context, bail};
use skiff::KindInfo;
use skiff::client::dynamic::{DynamicClient, DynamicKind};
use skiff::client::{Client, Config};

/// Connects as the flags and config say.
pub async fn client(server: Option<&str>) -> anyhow::Result<Client> {
    let mut config = Config::load_default()?;
    if let Some(s) = server {
        config.server = Some(s.to_owned());
        config.servers.clear();
    }
    if config.servers().is_empty() {
        config.server = Some("127.0.0.1:6443".to_owned());
    }
    Ok(Client::connect(&config).await?)
}

/// A dynamic client as the flags and config say.
pub async fn dynamic(server: Option<&str>) -> anyhow::Result<DynamicClient> {
    Ok(DynamicClient::new(client(server).await?.transport()))
}

/// The kind a command-line name means ("pods", "po", "Pod", "deployment",
/// or a kind defined at run time: "widgets", "widgets.acme.example.com").
pub fn kind(name: &str) -> anyhow::Result<DynamicKind> {
    match DynamicKind::find(name) {
        Some(kind) => Ok(kind),
        None => bail!("the server has no resource type {name:?}; `skiff api-resources` lists them"),
    }
}

/// Learns the kinds the server's resource definitions serve, so that
/// commands name them like the API's own. Quiet when the server cannot say
/// (not reachable, not allowed): the API's own kinds still work.
pub async fn learn_kinds(server: Option<&str>) {
    if let Ok(client) = dynamic(server).await {
        let learnt = client.learn_defined_kinds().await;
        if let Err(e) = learnt {
            tracing::debug!(error = %e, "cannot list resource definitions");
        }
    }
}

/// Splits "deployment/web" into kind and name, or takes them as two words.
pub fn kind_and_name(first: &str, second: Option<&str>) -> anyhow::Result<(DynamicKind, String)> {
    if let Some((k, n)) = first.split_once('/') {
        return Ok((kind(k)?, n.to_owned()));
    }
    let name = second.context("a name is required: KIND NAME or KIND/NAME")?;
    Ok((kind(first)?, name.to_owned()))
}

/// The namespace a command works in: the flag, or "default".
pub fn namespace(flag: &Option<String>) -> String {
    flag.clone().unwrap_or_else(|| "default".to_owned())
}

/// How an object is named in messages: "deployment.apps/web".
pub fn display_name(info: &KindInfo, name: &str) -> String {
    format!("{}/{name}", kind_with_group(info))
}

/// A kind as kubectl names it in messages: `pod`, `statefulset.apps`,
/// `storageclass.storage.k8s.io`.
pub fn kind_with_group(info: &KindInfo) -> String {
    let kind = info.kind.to_ascii_lowercase();
    if info.group.is_empty() {
        kind
    } else {
        format!("{kind}.{}", info.group)
    }
}

//! Small commands: `scale`, `version`, `api-resources`.

use clap::Args as ClapArgs;
use skiff::KINDS;
use skiff::params::ListParams;

use crate::{ctx, printers};

/// Flags of `skiff scale`.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  skiff scale deployment web --replicas 5\n  skiff scale rs/web-7d9f --replicas 0\n  skiff scale sts/web --replicas 3"
)]
pub struct ScaleArgs {
    /// Kind (or KIND/NAME): deployments, replicasets or statefulsets.
    pub kind: String,
    /// Name.
    pub name: Option<String>,
    /// Desired number of pods.
    #[arg(long)]
    pub replicas: i32,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Runs `skiff scale`.
pub async fn scale(args: ScaleArgs, server: Option<&str>) -> anyhow::Result<()> {
    let (kind, name) = ctx::kind_and_name(&args.kind, args.name.as_deref())?;
    let client = ctx::dynamic(server).await?;
    client
        .scale(
            &kind,
            &ctx::namespace(&args.namespace),
            &name,
            args.replicas,
        )
        .await?;
    println!("{} scaled", ctx::display_name(kind.info, &name));
    Ok(())
}

/// Runs `skiff version`.
pub async fn version(server: Option<&str>) -> anyhow::Result<()> {
    println!("Client Version: {}", env!("CARGO_PKG_VERSION"));
    match ctx::client(server).await {
        Ok(client) => {
            let reachable = client
                .namespaces()
                .list(&ListParams {
                    page_size: 1,
                    resource_version: "0".into(),
                    ..Default::default()
                })
                .await
                .map(|l| l.metadata.resource_version)
                .map_err(|e| e.to_string());
            match reachable {
                Ok(rv) => println!("Server: {} (reachable, revision {rv})", client.server()),
                Err(e) => println!("Server: {} (error: {e})", client.server()),
            }
        }
        Err(e) => println!("Server: not reachable: {e:#}"),
    }
    Ok(())
}

/// Runs `skiff api-resources`.
pub fn api_resources() {
    let defined = skiff::client::dynamic::defined_kinds();
    let rows: Vec<Vec<String>> = KINDS
        .iter()
        .chain(defined.iter().map(|k| k.info))
        .map(|k| {
            vec![
                k.plural.to_owned(),
                k.short_names.join(","),
                k.api_version.to_owned(),
                k.namespaced.to_string(),
                k.kind.to_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        printers::render(
            &["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
            &rows
        )
    );
}

//! `skiff describe`: one object for people — its metadata, its state, and
//! the events recorded about it.

use clap::Args as ClapArgs;
use serde_json::Value;
use skiff::manifest;
use skiff::params::ListParams;

use crate::{ctx, printers};

/// Flags of `skiff describe`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  skiff describe pod web-7d9f\n  skiff describe deployment/web")]
pub struct Args {
    /// Kind (or KIND/NAME).
    pub kind: String,
    /// Name.
    pub name: Option<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

fn map_lines(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n              "),
        _ => "<none>".into(),
    }
}

/// Runs `skiff describe`.
pub async fn run(args: Args, server: Option<&str>) -> anyhow::Result<()> {
    let (kind, name) = ctx::kind_and_name(&args.kind, args.name.as_deref())?;
    let client = ctx::dynamic(server).await?;
    let namespace = if kind.info.namespaced {
        ctx::namespace(&args.namespace)
    } else {
        String::new()
    };
    let obj = client.get(&kind, &namespace, &name).await?;
    let v = manifest::to_value(kind.info, &obj);
    let meta = v.get("metadata").cloned().unwrap_or_default();
    println!("Name:         {name}");
    if kind.info.namespaced {
        println!("Namespace:    {namespace}");
    }
    println!(
        "Kind:         {} ({})",
        kind.info.kind, kind.info.api_version
    );
    println!("Labels:       {}", map_lines(meta.get("labels")));
    let annotations = meta.get("annotations").and_then(Value::as_object).map(|m| {
        m.iter()
            .filter(|(k, _)| k.as_str() != manifest::LAST_APPLIED)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<serde_json::Map<_, _>>()
    });
    println!(
        "Annotations:  {}",
        map_lines(annotations.map(Value::Object).as_ref())
    );
    if let Some(ts) = meta.get("creationTimestamp").and_then(Value::as_str) {
        println!("Created:      {ts} ({} ago)", printers::since(ts));
    }
    if let Some(ts) = meta.get("deletionTimestamp").and_then(Value::as_str) {
        println!("Deleting:     since {ts}");
    }
    if kind.info.kind == "Pod" {
        println!("Status:       {}", printers::pod_status(&v));
    }
    let mut rest = v.as_object().cloned().unwrap_or_default();
    for k in ["apiVersion", "kind", "metadata"] {
        rest.remove(k);
    }
    for (k, section) in rest {
        println!("{}{}:", k[..1].to_uppercase(), &k[1..]);
        for line in manifest::to_yaml(&section).lines() {
            println!("  {line}");
        }
    }
    // Events about this object.
    let events = ctx::kind("events")?;
    let params = ListParams {
        namespace: if kind.info.namespaced {
            namespace.clone()
        } else {
            "default".into()
        },
        field_selector: format!(
            "involvedObject.name={name},involvedObject.kind={}",
            kind.info.kind
        ),
        ..Default::default()
    };
    match client.list_all(&events, &params).await {
        Ok((items, _)) if !items.is_empty() => {
            println!("Events:");
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|e| {
                    let e = manifest::to_value(events.info, e);
                    let s = |p: &str| {
                        e.pointer(p)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned()
                    };
                    vec![
                        s("/type"),
                        s("/reason"),
                        printers::since(&s("/lastTimestamp")),
                        e.pointer("/count")
                            .and_then(Value::as_i64)
                            .unwrap_or(1)
                            .to_string(),
                        s("/source/component"),
                        s("/message"),
                    ]
                })
                .collect();
            for line in printers::render(
                &["TYPE", "REASON", "AGE", "COUNT", "FROM", "MESSAGE"],
                &rows,
            )
            .lines()
            {
                println!("  {line}");
            }
        }
        _ => println!("Events:       <none>"),
    }
    Ok(())
}

//! `skiff get`: list or read objects as tables, YAML or JSON, and watch them.

use anyhow::bail;
use clap::Args as ClapArgs;
use futures::StreamExt;
use serde_json::Value;
use skiff::api::meta::v1::EventType;
use skiff::client::dynamic::DynamicKind;
use skiff::manifest;
use skiff::params::{ListParams, WatchParams};

use crate::ctx;
use crate::printers;

/// Output formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// More columns.
    Wide,
    /// YAML in the Kubernetes shape.
    Yaml,
    /// JSON in the Kubernetes shape.
    Json,
    /// kind/name only.
    Name,
    /// A kubectl JSONPath template (`jsonpath={.items[*].metadata.name}`).
    JsonPath(String),
    /// A resource definition's .proto files with each kind's synthesized
    /// service, for generating clients in any language.
    Proto,
}

/// Parses `-o`: wide, yaml, json, name or jsonpath=TEMPLATE.
pub fn parse_output(s: &str) -> Result<Output, String> {
    match s {
        "wide" => Ok(Output::Wide),
        "yaml" => Ok(Output::Yaml),
        "json" => Ok(Output::Json),
        "name" => Ok(Output::Name),
        "proto" => Ok(Output::Proto),
        _ => match s.split_once('=') {
            Some(("jsonpath", template)) => {
                let t = template.trim();
                let t = t
                    .strip_prefix('\'')
                    .and_then(|t| t.strip_suffix('\''))
                    .unwrap_or(t);
                // Check it now: a bad template is a usage error.
                crate::jsonpath::render(t, &Value::Null)?;
                Ok(Output::JsonPath(t.to_owned()))
            }
            _ => Err(format!(
                "unknown output format {s:?}: use wide, yaml, json, name, proto or jsonpath=TEMPLATE"
            )),
        },
    }
}

/// Flags of `skiff get`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff get pods                      # pods in the default namespace\n  \
    skiff get pods -A -o wide           # in every namespace, with IPs and nodes\n  \
    skiff get deploy web -o yaml        # one object as YAML\n  \
    skiff get pods -l app=web -w        # and keep printing changes\n  \
    skiff get pods --field-selector spec.nodeName=n1\n  \
    skiff get pods -o jsonpath='{.items[*].metadata.name}'\n  \
    skiff get pods -o jsonpath='{range .items[*]}{.metadata.name}{\"\\t\"}{.status.phase}{\"\\n\"}{end}'")]
pub struct Args {
    /// Kind: a plural, singular or short name (pods, pod, po); several
    /// separated by commas (deploy,svc), or "all".
    pub kind: String,
    /// Names of objects (all when omitted).
    pub names: Vec<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. spec.nodeName=n1.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format: wide, yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short, long, value_parser = parse_output)]
    pub output: Option<Output>,
    /// After listing, keep printing changes.
    #[arg(short, long)]
    pub watch: bool,
}

fn print_table(kind: &DynamicKind, items: &[Value], wide: bool, with_ns: bool, headers: bool) {
    // A kind defined at run time: its declared columns between NAME and AGE.
    let defined = !skiff::KINDS.iter().any(|k| k == kind.info);
    let cols = if defined {
        vec![printers::Column {
            name: "NAME",
            wide: false,
            cell: printers::name,
        }]
    } else {
        printers::columns(kind.info.kind)
    };
    let cols: Vec<_> = cols.iter().filter(|c| wide || !c.wide).collect();
    let headings: Vec<String> = kind
        .printer_columns
        .iter()
        .map(|(h, _)| h.to_ascii_uppercase())
        .collect();
    let mut names: Vec<&str> = Vec::new();
    if with_ns {
        names.push("NAMESPACE");
    }
    names.extend(cols.iter().map(|c| c.name));
    if defined {
        names.extend(headings.iter().map(String::as_str));
        names.push("AGE");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            let mut row = Vec::new();
            if with_ns {
                row.push(
                    v.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                );
            }
            row.extend(cols.iter().map(|c| (c.cell)(v)));
            if defined {
                row.extend(
                    kind.printer_columns
                        .iter()
                        .map(|(_, path)| printers::at_path(v, path)),
                );
                row.push(printers::age(v));
            }
            row
        })
        .collect();
    let table = printers::render(&names, &rows);
    let text = if headers {
        table.as_str()
    } else {
        table.split_once('\n').map(|x| x.1).unwrap_or("")
    };
    print!("{text}");
}

/// A definition's .proto files, each kind's synthesized service appended
/// to its kind's file (same package), so that the output of a one-file
/// definition goes to `protoc` as it is.
fn definition_proto(v: &Value) -> String {
    let files = v.pointer("/spec/protoFiles").and_then(Value::as_object);
    let services = v.pointer("/status/serviceFiles").and_then(Value::as_object);
    let Some(files) = files else {
        return String::new();
    };
    let several = files.len() > 1;
    let mut out = String::new();
    for (path, source) in files {
        let mut text = source.as_str().unwrap_or_default().to_owned();
        let import_line = format!("import \"{path}\";");
        for service in services
            .into_iter()
            .flatten()
            .filter_map(|(_, s)| s.as_str())
        {
            if !service.lines().any(|l| l.trim() == import_line) {
                continue;
            }
            if !text.contains("\"skiff/meta/v1/meta.proto\"") {
                text = add_import(&text, "skiff/meta/v1/meta.proto");
            }
            text.push_str("\n// The service the API server synthesizes for this kind.\n");
            for line in service.lines() {
                let l = line.trim_start();
                if l.starts_with("syntax ") || l.starts_with("package ") || l.starts_with("import ")
                {
                    continue;
                }
                text.push_str(line);
                text.push('\n');
            }
        }
        if several {
            out.push_str(&format!("// ---- file: {path} ----\n"));
        }
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `source` with `import "path";` after its package line.
fn add_import(source: &str, path: &str) -> String {
    let mut out = String::new();
    let mut added = false;
    for line in source.lines() {
        out.push_str(line);
        out.push('\n');
        if !added && line.trim_start().starts_with("package ") {
            out.push_str(&format!("import \"{path}\";\n"));
            added = true;
        }
    }
    out
}

fn print_items(
    kind: &DynamicKind,
    items: &[Value],
    output: Option<&Output>,
    with_ns: bool,
    single: bool,
) {
    match output {
        Some(Output::JsonPath(t)) => {
            let v = if single && items.len() == 1 {
                items[0].clone()
            } else {
                list_value(items)
            };
            match crate::jsonpath::render(t, &v) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        Some(Output::Yaml) => {
            if single && items.len() == 1 {
                print!("{}", manifest::to_yaml(&items[0]));
            } else {
                print!("{}", manifest::to_yaml(&list_value(items)));
            }
        }
        Some(Output::Json) => {
            let v = if single && items.len() == 1 {
                items[0].clone()
            } else {
                list_value(items)
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Some(Output::Name) => {
            for v in items {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                println!("{}", ctx::display_name(kind.info, name));
            }
        }
        Some(Output::Proto) => {
            if kind.info.plural != "resourcedefinitions" {
                eprintln!(
                    "error: -o proto prints resource definitions; use -o yaml for {}",
                    kind.info.plural
                );
                return;
            }
            for v in items {
                print!("{}", definition_proto(v));
            }
        }
        Some(Output::Wide) => print_table(kind, items, true, with_ns, true),
        None => print_table(kind, items, false, with_ns, true),
    }
}

fn list_value(items: &[Value]) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Kinds `skiff get all` shows (as kubectl's "all").
const ALL: &[&str] = &["pods", "services", "deployments", "replicasets"];

/// Runs `skiff get` for several kinds ("deploy,svc" or "all"): a table per
/// kind, or one List of every object.
async fn run_many(args: Args, kinds: Vec<String>, server: Option<&str>) -> anyhow::Result<()> {
    if !args.names.is_empty() || args.watch {
        bail!("names and -w need a single kind");
    }
    let kinds: Vec<DynamicKind> = kinds
        .iter()
        .map(|k| ctx::kind(k))
        .collect::<anyhow::Result<_>>()?;
    let client = ctx::dynamic(server).await?;
    let mut all = Vec::new();
    let mut first = true;
    for kind in &kinds {
        let namespace = if args.all_namespaces || !kind.info.namespaced {
            String::new()
        } else {
            ctx::namespace(&args.namespace)
        };
        let params = ListParams {
            namespace,
            label_selector: args.selector.clone().unwrap_or_default(),
            field_selector: args.field_selector.clone().unwrap_or_default(),
            page_size: 500,
            ..Default::default()
        };
        let (objects, _) = client.list_all(kind, &params).await?;
        let items: Vec<Value> = objects
            .iter()
            .map(|o| manifest::to_value(kind.info, o))
            .collect();
        match &args.output {
            Some(Output::Yaml | Output::Json | Output::JsonPath(_)) => all.extend(items),
            _ if items.is_empty() => {}
            output => {
                if !first && output != &Some(Output::Name) {
                    println!();
                }
                first = false;
                print_items(
                    kind,
                    &items,
                    output.as_ref(),
                    args.all_namespaces && kind.info.namespaced,
                    false,
                );
            }
        }
    }
    match &args.output {
        Some(Output::Yaml) => print!("{}", manifest::to_yaml(&list_value(&all))),
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&list_value(&all))?),
        Some(Output::JsonPath(t)) => print!(
            "{}",
            crate::jsonpath::render(t, &list_value(&all)).map_err(anyhow::Error::msg)?
        ),
        _ if first => eprintln!("No resources found"),
        _ => {}
    }
    Ok(())
}

/// Runs `skiff get`.
pub async fn run(args: Args, server: Option<&str>) -> anyhow::Result<()> {
    if args.kind == "all" || args.kind.contains(',') {
        let kinds: Vec<String> = if args.kind == "all" {
            ALL.iter().map(|k| k.to_string()).collect()
        } else {
            args.kind
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        };
        return run_many(args, kinds, server).await;
    }
    let kind = ctx::kind(&args.kind)?;
    let client = ctx::dynamic(server).await?;
    let namespace = if args.all_namespaces || !kind.info.namespaced {
        String::new()
    } else {
        ctx::namespace(&args.namespace)
    };
    let with_ns = args.all_namespaces && kind.info.namespaced;
    let (items, revision) = if args.names.is_empty() {
        let params = ListParams {
            namespace: namespace.clone(),
            label_selector: args.selector.clone().unwrap_or_default(),
            field_selector: args.field_selector.clone().unwrap_or_default(),
            page_size: 500,
            ..Default::default()
        };
        let (objects, meta) = client.list_all(&kind, &params).await?;
        let items: Vec<Value> = objects
            .iter()
            .map(|o| manifest::to_value(kind.info, o))
            .collect();
        (items, meta.resource_version)
    } else {
        let mut items = Vec::new();
        for name in &args.names {
            let o = client.get(&kind, &namespace, name).await?;
            items.push(manifest::to_value(kind.info, &o));
        }
        (items, String::new())
    };
    let machine = matches!(
        args.output,
        Some(Output::Yaml | Output::Json | Output::JsonPath(_))
    );
    if items.is_empty() && !args.watch && machine {
        // Scripts parse the output: an empty List, as kubectl prints.
        print_items(&kind, &items, args.output.as_ref(), with_ns, false);
        return Ok(());
    }
    if items.is_empty() && !args.watch {
        if namespace.is_empty() {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {namespace} namespace.");
        }
        return Ok(());
    }
    print_items(
        &kind,
        &items,
        args.output.as_ref(),
        with_ns,
        !args.names.is_empty(),
    );
    if !args.watch {
        return Ok(());
    }
    if !args.names.is_empty() && args.names.len() > 1 {
        bail!("-w watches one name or a whole list");
    }
    let mut field_selector = args.field_selector.clone().unwrap_or_default();
    if let Some(name) = args.names.first() {
        let by_name = format!("metadata.name={name}");
        field_selector = if field_selector.is_empty() {
            by_name
        } else {
            format!("{field_selector},{by_name}")
        };
    }
    let params = WatchParams {
        namespace,
        label_selector: args.selector.clone().unwrap_or_default(),
        field_selector,
        resource_version: revision,
        ..Default::default()
    };
    let mut stream = client.watch(&kind, &params).await?;
    let mut printed_header = !items.is_empty();
    while let Some(event) = stream.next().await {
        let (t, obj) = event?;
        if t == EventType::Bookmark {
            continue;
        }
        let v = manifest::to_value(kind.info, &obj);
        match &args.output {
            Some(Output::JsonPath(t)) => match crate::jsonpath::render(t, &v) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: {e}"),
            },
            Some(Output::Yaml) => print!("---\n{}", manifest::to_yaml(&v)),
            Some(Output::Json) => println!(
                "{}",
                serde_json::to_string(
                    &serde_json::json!({"type": format!("{t:?}").to_uppercase(), "object": v})
                )?
            ),
            Some(Output::Name) => println!(
                "{}",
                ctx::display_name(
                    kind.info,
                    v.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )
            ),
            other => {
                print_table(
                    &kind,
                    &[v],
                    other == &Some(Output::Wide),
                    with_ns,
                    !printed_header,
                );
                printed_header = true;
            }
        }
    }
    Ok(())
}

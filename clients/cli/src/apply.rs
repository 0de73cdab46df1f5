//! `skiff apply`, `skiff create` and `skiff delete`: manifests in the
//! Kubernetes shape, from files, directories or standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args as ClapArgs;
use serde_json::Value;
use skiff::client::dynamic::DynamicClient;
use skiff::manifest::{self, LAST_APPLIED, Manifest};
use skiff::params::DeleteParams;

use crate::ctx;

/// Flags of `skiff apply`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff apply -f examples/web.yaml     # create or update everything in the file\n  \
    skiff apply -f examples/             # every .yaml, .yml and .json file of a directory\n  \
    cat web.yaml | skiff apply -f -")]
pub struct ApplyArgs {
    /// Files or directories of manifests; `-` reads standard input.
    #[arg(short, long = "filename", required = true)]
    pub files: Vec<String>,
    /// Namespace for objects that name none (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Flags of `skiff create`.
#[derive(Debug, ClapArgs)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  \
    skiff create -f pod.yaml\n  \
    skiff create namespace team-a\n  \
    skiff create configmap game --from-literal lives=3 --from-file game.properties\n  \
    skiff create secret generic db --from-literal password=s3cret"
)]
pub struct CreateArgs {
    /// Files or directories of manifests; `-` reads standard input.
    #[arg(short, long = "filename", required = true)]
    pub files: Vec<String>,
    /// Namespace for objects that name none (default: default).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// An object made from flags instead of a manifest.
    #[command(subcommand)]
    pub what: Option<CreateWhat>,
}

/// Objects `skiff create` makes from flags, as kubectl's generators.
#[derive(Debug, clap::Subcommand)]
pub enum CreateWhat {
    /// A namespace.
    #[command(alias = "ns")]
    Namespace {
        /// Its name.
        name: String,
    },
    /// A ConfigMap from literals and files.
    #[command(alias = "cm")]
    Configmap {
        /// Its name.
        name: String,
        #[command(flatten)]
        data: DataFlags,
    },
    /// A Secret.
    #[command(subcommand)]
    Secret(SecretWhat),
    /// A Job: from a CronJob's template (--from=cronjob/NAME), or running an image.
    #[command(after_help = "Examples:\n  \
        skiff create job backup-now --from=cronjob/backup\n  \
        skiff create job hello --image=busybox -- echo hello")]
    Job {
        /// Its name.
        name: String,
        /// The CronJob whose template to run now (cronjob/NAME).
        #[arg(long, conflicts_with = "image")]
        from: Option<String>,
        /// The image of its one container.
        #[arg(long, required_unless_present = "from")]
        image: Option<String>,
        /// The container's command, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

/// Kinds of Secret `skiff create secret` makes.
#[derive(Debug, clap::Subcommand)]
pub enum SecretWhat {
    /// An Opaque secret from literals and files.
    Generic {
        /// Its name.
        name: String,
        /// The secret's type.
        #[arg(long = "type", default_value = "Opaque")]
        kind: String,
        #[command(flatten)]
        data: DataFlags,
    },
}

/// Where the data of a ConfigMap or Secret comes from.
#[derive(Debug, ClapArgs)]
pub struct DataFlags {
    /// KEY=VALUE (repeatable).
    #[arg(long = "from-literal")]
    pub literals: Vec<String>,
    /// PATH or KEY=PATH: a file (its name is the key) or a directory (each
    /// regular file in it) (repeatable).
    #[arg(long = "from-file")]
    pub files: Vec<String>,
}

impl DataFlags {
    /// Every (key, bytes) the flags name, in order; a repeated key is an error.
    fn entries(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for l in &self.literals {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--from-literal {l:?}: expected KEY=VALUE"))?;
            out.push((k.to_owned(), v.as_bytes().to_vec()));
        }
        for f in &self.files {
            let (key, path) = match f.split_once('=') {
                Some((k, p)) => (Some(k.to_owned()), PathBuf::from(p)),
                None => (None, PathBuf::from(f)),
            };
            let read = |p: &Path| {
                std::fs::read(p)
                    .with_context(|| format!("--from-file: cannot read {}", p.display()))
            };
            if path.is_dir() {
                if key.is_some() {
                    bail!("--from-file {f:?}: a directory takes no KEY=");
                }
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                    .with_context(|| format!("--from-file: cannot read {}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                entries.sort();
                for p in entries {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    out.push((name.to_owned(), read(&p)?));
                }
            } else {
                let name = match key {
                    Some(k) => k,
                    None => path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .with_context(|| format!("--from-file {f:?}: no file name"))?
                        .to_owned(),
                };
                out.push((name, read(&path)?));
            }
        }
        for (i, (k, _)) in out.iter().enumerate() {
            if out[..i].iter().any(|(other, _)| other == k) {
                bail!("key {k:?} is given twice");
            }
        }
        Ok(out)
    }
}

/// A Job from a CronJob's template, as `kubectl create job --from`: the
/// template's labels and annotations, `cronjob.kubernetes.io/instantiate:
/// manual`, and the CronJob as its owner.
async fn job_from_cron_job(
    server: Option<&str>,
    namespace: &str,
    name: &str,
    from: &str,
) -> anyhow::Result<Value> {
    use skiff::Resource;
    use skiff::api::batch::v1::CronJob;
    let Some(("cronjob" | "cronjobs" | "cj", cron_name)) = from.split_once('/') else {
        bail!("--from takes cronjob/NAME, not {from:?}");
    };
    let client = ctx::client(server).await?;
    let cj = client
        .api::<CronJob>(namespace)
        .get(cron_name)
        .await
        .with_context(|| format!("reading cronjob/{cron_name}"))?;
    let template = cj
        .spec
        .as_ref()
        .and_then(|s| s.job_template.clone())
        .with_context(|| format!("cronjob/{cron_name} has no jobTemplate"))?;
    let tm = template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations;
    annotations.insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
    let job = skiff::api::batch::v1::Job {
        metadata: Some(skiff::api::meta::v1::ObjectMeta {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            labels: tm.labels,
            annotations,
            owner_references: vec![skiff::api::meta::v1::OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.name().to_owned(),
                uid: cj.meta().uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            }],
            ..Default::default()
        }),
        spec: template.spec,
        status: None,
    };
    let kind = skiff::client::dynamic::DynamicKind::of(&skiff::api::batch::v1::Job::INFO);
    let message = prost_reflect::DynamicMessage::decode(
        kind.message.clone(),
        prost::Message::encode_to_vec(&job).as_slice(),
    )?;
    let mut value = manifest::message_value(&message);
    value["apiVersion"] = "batch/v1".into();
    value["kind"] = "Job".into();
    Ok(value)
}

/// The manifest a `skiff create <what>` means.
fn generated(what: &CreateWhat, namespace: &str) -> anyhow::Result<Value> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok(match what {
        CreateWhat::Namespace { name } => serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        }),
        CreateWhat::Configmap { name, data } => {
            let mut text = serde_json::Map::new();
            let mut binary = serde_json::Map::new();
            for (k, v) in data.entries()? {
                match String::from_utf8(v) {
                    Ok(s) => text.insert(k, Value::String(s)),
                    Err(e) => binary.insert(k, Value::String(b64(e.as_bytes()))),
                };
            }
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": text, "binaryData": binary,
            })
        }
        CreateWhat::Job {
            name,
            image,
            command,
            ..
        } => {
            let mut container = serde_json::json!({"name": name, "image": image});
            if !command.is_empty() {
                container["command"] = serde_json::json!(command);
            }
            serde_json::json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"template": {"spec": {
                    "containers": [container], "restartPolicy": "Never",
                }}},
            })
        }
        CreateWhat::Secret(SecretWhat::Generic { name, kind, data }) => {
            let entries: serde_json::Map<String, Value> = data
                .entries()?
                .into_iter()
                .map(|(k, v)| (k, Value::String(b64(&v))))
                .collect();
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "type": kind, "data": entries,
            })
        }
    })
}

/// Flags of `skiff delete`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    skiff delete pod web\n  \
    skiff delete deployment/web\n  \
    skiff delete -f examples/web.yaml")]
pub struct DeleteArgs {
    /// Kind (or KIND/NAME).
    pub kind: Option<String>,
    /// Names.
    pub names: Vec<String>,
    /// Files or directories whose objects to delete.
    #[arg(short, long = "filename")]
    pub files: Vec<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Seconds a pod gets to stop (0: at once).
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// Background (default), Foreground or Orphan.
    #[arg(long, default_value = "")]
    pub cascade: String,
    /// Succeed when an object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

fn read_sources(files: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            out.push(("<stdin>".to_owned(), text));
            continue;
        }
        let path = Path::new(f);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {f}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            for p in entries {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                out.push((p.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {f}"))?;
            out.push((f.clone(), text));
        }
    }
    Ok(out)
}

/// Reads manifests, settles their namespaces, and orders namespaces first.
fn load(files: &[String], namespace_flag: &Option<String>) -> anyhow::Result<Vec<Manifest>> {
    let mut all = Vec::new();
    for (source, text) in read_sources(files)? {
        all.extend(manifest::parse(&text, &source)?);
    }
    if all.is_empty() {
        bail!("no objects in {}", files.join(", "));
    }
    for m in &mut all {
        let meta = m.value.as_object_mut().and_then(|o| {
            o.entry("metadata")
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
        });
        let Some(meta) = meta else { continue };
        let written = meta
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !m.kind.info.namespaced {
            meta.remove("namespace");
        } else {
            let ns = match (&written, namespace_flag) {
                (Some(w), Some(f)) if w != f => bail!(
                    "{}: the object's namespace {w:?} does not match --namespace {f:?}; pass --namespace={w} or remove one",
                    m.origin
                ),
                (Some(w), _) => w.clone(),
                (None, Some(f)) => f.clone(),
                (None, None) => "default".to_owned(),
            };
            meta.insert("namespace".into(), Value::String(ns));
        }
        m.object = manifest::to_message(&m.kind.message, m.value.clone(), &m.origin)?;
    }
    all.sort_by_key(|m| m.kind.info.kind != "Namespace");
    Ok(all)
}

fn name_and_namespace(m: &Manifest) -> (String, String) {
    let s = |k: &str| {
        m.value
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (s("name"), s("namespace"))
}

/// Creates or updates one object; returns what happened.
async fn apply_one(client: &DynamicClient, m: &Manifest) -> anyhow::Result<&'static str> {
    let (name, namespace) = name_and_namespace(m);
    if name.is_empty() {
        bail!("{}: metadata.name is required for apply", m.origin);
    }
    let mut desired = m.value.clone();
    if let Some(o) = desired.as_object_mut() {
        o.remove("status");
    }
    let record = serde_json::to_string(&desired)?;
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(LAST_APPLIED.into(), Value::String(record));
        }
    }
    match client.get(&m.kind, &namespace, &name).await {
        Err(e) if e.is_not_found() => {
            let obj = manifest::to_message(&m.kind.message, desired, &m.origin)?;
            client
                .create(&m.kind, obj)
                .await
                .with_context(|| m.origin.clone())?;
            Ok("created")
        }
        Err(e) => Err(e).with_context(|| m.origin.clone()),
        Ok(live) => {
            let live_v = manifest::message_value(&live);
            let last: Option<Value> = live_v
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    LAST_APPLIED.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str(s).ok());
            let mut merged = manifest::three_way_merge(&live_v, last.as_ref(), &desired);
            if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(
                    "resourceVersion".into(),
                    live_v
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
            }
            if merged == live_v {
                return Ok("unchanged");
            }
            let obj = manifest::to_message(&m.kind.message, merged, &m.origin)?;
            let updated = client
                .update(&m.kind, obj)
                .await
                .with_context(|| m.origin.clone())?;
            let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
            if rv(&manifest::message_value(&updated)) == rv(&live_v) {
                Ok("unchanged")
            } else {
                Ok("configured")
            }
        }
    }
}

/// Runs `skiff apply`.
pub async fn apply(args: ApplyArgs, server: Option<&str>) -> anyhow::Result<()> {
    let client = ctx::dynamic(server).await?;
    let mut applied_first = Vec::new();
    let manifests = match load(&args.files, &args.namespace) {
        Ok(m) => m,
        Err(e) => {
            // Objects of kinds that resource definitions in these files
            // define: the definitions first, then everything else.
            applied_first = apply_definitions_first(&client, &args.files).await?;
            if applied_first.is_empty() {
                return Err(e);
            }
            load(&args.files, &args.namespace)?
        }
    };
    let mut failed = 0;
    for m in &manifests {
        let (name, _) = name_and_namespace(m);
        if m.kind.info.kind == "ResourceDefinition" && applied_first.contains(&name) {
            continue;
        }
        match apply_one(&client, m).await {
            Ok(what) => println!("{} {what}", ctx::display_name(m.kind.info, &name)),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} objects failed", manifests.len());
    }
    Ok(())
}

/// Applies the resource definitions among `files`, waits until they are
/// established and learns their kinds; returns their names (none: none there).
async fn apply_definitions_first(
    client: &DynamicClient,
    files: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut definitions = Vec::new();
    for (source, text) in read_sources(files)? {
        definitions.extend(manifest::parse_kind(&text, &source, "ResourceDefinition"));
    }
    if definitions.is_empty() {
        return Ok(Vec::new());
    }
    let kind = ctx::kind("resourcedefinitions")?;
    let mut names = Vec::new();
    for m in &mut definitions {
        if let Some(meta) = m.value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("namespace");
        }
        m.object = manifest::to_message(&m.kind.message, m.value.clone(), &m.origin)?;
        let (name, _) = name_and_namespace(m);
        let what = apply_one(client, m).await?;
        println!("{} {what}", ctx::display_name(m.kind.info, &name));
        names.push(name);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for name in &names {
        loop {
            let def = client.get(&kind, "", name).await?;
            let v = manifest::message_value(&def);
            let established = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Established")
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                });
            if established {
                break;
            }
            if std::time::Instant::now() > deadline {
                let why = v
                    .pointer("/status/conditions/0/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no condition yet");
                bail!("resourcedefinition {name:?} is not established after 30 s: {why}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    client.learn_defined_kinds().await?;
    Ok(names)
}

/// Runs `skiff create`.
pub async fn create(args: CreateArgs, server: Option<&str>) -> anyhow::Result<()> {
    let manifests = match &args.what {
        Some(CreateWhat::Job {
            name,
            from: Some(from),
            ..
        }) => {
            let ns = ctx::namespace(&args.namespace);
            vec![manifest::from_value(
                job_from_cron_job(server, &ns, name, from).await?,
                "the command line",
            )?]
        }
        Some(what) => {
            let ns = ctx::namespace(&args.namespace);
            vec![manifest::from_value(
                generated(what, &ns)?,
                "the command line",
            )?]
        }
        None => load(&args.files, &args.namespace)?,
    };
    let client = ctx::dynamic(server).await?;
    let mut failed = 0;
    for m in &manifests {
        match client.create(&m.kind, m.object.clone()).await {
            Ok(created) => {
                let v = manifest::message_value(&created);
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                println!("{} created", ctx::display_name(m.kind.info, name));
            }
            Err(e) => {
                eprintln!("error: {}: {e}", m.origin);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} objects failed", manifests.len());
    }
    Ok(())
}

/// Runs `skiff delete`.
pub async fn delete(args: DeleteArgs, server: Option<&str>) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    if !args.files.is_empty() {
        for m in load(&args.files, &args.namespace)? {
            let (name, ns) = name_and_namespace(&m);
            targets.push((m.kind, ns, name));
        }
    } else {
        let Some(first) = args.kind.as_deref() else {
            bail!("say what to delete: KIND NAME, KIND/NAME or -f FILE");
        };
        if let Some((k, n)) = first.split_once('/') {
            let kind = ctx::kind(k)?;
            let ns = if kind.info.namespaced {
                ctx::namespace(&args.namespace)
            } else {
                String::new()
            };
            targets.push((kind, ns, n.to_owned()));
        } else {
            let kind = ctx::kind(first)?;
            if args.names.is_empty() {
                bail!("say which {} to delete", kind.info.plural);
            }
            let ns = if kind.info.namespaced {
                ctx::namespace(&args.namespace)
            } else {
                String::new()
            };
            for n in &args.names {
                targets.push((kind.clone(), ns.clone(), n.clone()));
            }
        }
    }
    let client = ctx::dynamic(server).await?;
    let mut failed = 0;
    for (kind, namespace, name) in targets {
        let params = DeleteParams {
            namespace,
            name: name.clone(),
            preconditions: None,
            propagation_policy: args.cascade.clone(),
            grace_period_seconds: args.grace_period,
        };
        match client.delete(&kind, &params).await {
            Ok(_) => println!("{} \"{name}\" deleted", ctx::kind_with_group(kind.info)),
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} deletions failed");
    }
    Ok(())
}

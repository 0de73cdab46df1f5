//! One SDK client over several API servers of one storage, on both
//! backends: every call is answered while one server is down (writes that
//! never reached it go to another), an open watch moves to the other server
//! and resumes from its last resource version without a gap or a repeat,
//! and the stopped server is used again once it is back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use skiff::Resource;
use skiff::client::{Client, Config, Multiplexer};
use skiff::runtime::watcher::{Event, WatcherConfig, watcher};
use skiff::testing::{pod, until};
use skiff_apiserver::ServerConfig;
use skiff_apiserver::storage::Storage;
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::testing::{EtcdServer, TestServer};

/// Names of pods seen added by the watcher, in order, and errors it reported.
#[derive(Default)]
struct Seen {
    added: Vec<String>,
    versions: Vec<i64>,
    errors: usize,
    synced: bool,
}

fn spawn_watcher(
    client: &Client,
    multiplexed: bool,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    let mut config = WatcherConfig::default();
    if multiplexed {
        config = config.multiplexed(Multiplexer::new(client.transport()));
    }
    let stream = watcher(client.pods("default"), config);
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let mut s = out.lock().unwrap();
            match item {
                Ok(Event::Apply(p)) => {
                    s.versions
                        .push(p.meta().resource_version.parse().unwrap_or_default());
                    s.added.push(p.meta().name.clone());
                }
                Ok(Event::InitDone) => s.synced = true,
                Ok(_) => {}
                Err(_) => s.errors += 1,
            }
        }
    });
    (seen, task)
}

async fn create_all(client: &Client, names: impl Iterator<Item = String>) {
    for name in names {
        client
            .pods("default")
            .create(&pod("default", &name))
            .await
            .unwrap_or_else(|e| panic!("create {name} while one server is down: {e}"));
    }
}

async fn wait_seen(seen: &Arc<Mutex<Seen>>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().added.len() < n {
        if tokio::time::Instant::now() > deadline {
            let s = seen.lock().unwrap();
            panic!(
                "the watcher saw {} of {n} pods in 30 s ({} errors): {:?}",
                s.added.len(),
                s.errors,
                s.added
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two servers `a` and `b` over storages made by `storage` (called twice);
/// the watcher on a multiplexed stream or a watch call of its own.
async fn one_server_down_at_a_time<F, Fut>(storage: F, multiplexed: bool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Storage>>,
{
    let a = TestServer::start_with(storage().await, ServerConfig::default()).await;
    let b = TestServer::start_with(storage().await, ServerConfig::default()).await;
    let a_addr = a.addr;
    let client = Client::connect(&Config::for_server(&format!("{},{}", a.addr, b.addr)))
        .await
        .unwrap();
    let (seen, task) = spawn_watcher(&client, multiplexed);
    until("the watcher has listed", Duration::from_secs(30), || {
        seen.lock().unwrap().synced
    })
    .await;
    create_all(&client, (0..20).map(|i| format!("p{i}"))).await;
    wait_seen(&seen, 20).await;

    a.stop().await;
    create_all(&client, (20..50).map(|i| format!("p{i}"))).await;
    wait_seen(&seen, 50).await;
    let listed = client
        .pods("default")
        .list(&Default::default())
        .await
        .expect("a list while a server is down");
    assert_eq!(listed.items.len(), 50);

    // Back on its address: the client finds it by itself and uses it again,
    // so that the other one may go.
    let a = TestServer::start_on(a_addr, storage().await, ServerConfig::default()).await;
    until(
        "the client uses the restarted server again",
        Duration::from_secs(30),
        || client.server_health().iter().all(|(_, up)| *up),
    )
    .await;
    b.stop().await;
    create_all(&client, (50..70).map(|i| format!("p{i}"))).await;
    wait_seen(&seen, 70).await;

    let s = std::mem::take(&mut *seen.lock().unwrap());
    let unique: HashSet<&String> = s.added.iter().collect();
    assert_eq!(unique.len(), 70, "every pod seen: {:?}", s.added);
    assert_eq!(
        s.added.len(),
        70,
        "no event repeated across resumes: {:?}",
        s.added
    );
    assert!(
        s.versions.windows(2).all(|w| w[0] < w[1]),
        "events in resource-version order across servers: {:?}",
        s.versions
    );
    task.abort();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_two_servers_on_embedded_storage_writes_and_watches_through_either_one_going_away()
 {
    embedded_pair(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_two_servers_on_etcd_writes_and_watches_through_either_one_going_away() {
    let etcd = EtcdServer::start().await;
    one_server_down_at_a_time(etcd_storage(&etcd.endpoint), false).await;
}

/// Two servers over one embedded storage, one going away at a time.
async fn embedded_pair(multiplexed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(skiff_apiserver::storage::embedded::EmbeddedStorage::open(dir.path()).unwrap());
    one_server_down_at_a_time(
        || {
            let s = storage.clone();
            async move { s }
        },
        multiplexed,
    )
    .await;
}

/// Storages on the etcd at `endpoint`, one per call.
fn etcd_storage(
    endpoint: &str,
) -> impl Fn() -> futures::future::BoxFuture<'static, Arc<dyn Storage>> {
    let endpoint = endpoint.to_owned();
    move || {
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let s: Arc<dyn Storage> = Arc::new(
                EtcdStorage::connect(&[endpoint], "/skiff")
                    .await
                    .expect("connect to etcd"),
            );
            s
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_watch_over_two_servers_on_embedded_storage_moves_when_either_goes_away() {
    embedded_pair(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_watch_over_two_servers_on_etcd_moves_when_either_goes_away() {
    let etcd = EtcdServer::start().await;
    one_server_down_at_a_time(etcd_storage(&etcd.endpoint), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_starts_when_its_first_server_is_down_and_every_call_goes_to_the_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let live = TestServer::embedded(dir.path()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let client = Client::connect(&Config::for_server(&format!("{dead_addr},{}", live.addr)))
        .await
        .expect("connects while one of two servers is down");
    assert_eq!(
        client.server_health(),
        vec![
            (format!("http://{dead_addr}"), false),
            (format!("http://{}", live.addr), true)
        ]
    );
    create_all(&client, (0..30).map(|i| format!("p{i}"))).await;
    for i in 0..30 {
        client.pods("default").get(&format!("p{i}")).await.unwrap();
    }

    let none = Client::connect(&Config::for_server(&dead_addr.to_string())).await;
    assert!(
        none.unwrap_err().to_string().contains("cannot connect"),
        "a client whose only server is down is refused at once"
    );
    live.stop().await;
}

//! The Redis history store against a real `redis-server` (skipped, with a message, when it is not
//! installed; `scripts/test.sh` installs it): two stores on one Redis stand for two replicas.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use live_gateway::history::{History, Limits, Position, TailEvent};
use live_gateway::metrics::Metrics;

/// A redis-server on a free port, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Option<Redis> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        eprintln!("redis-server not found: skipping (scripts/test.sh installs it)");
        return None;
    };
    let redis = Redis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not start");
}

async fn store(url: &str, prefix: &str) -> (History, fred::clients::Pool) {
    let settings = live_gateway::args::RedisSettings {
        url: url.to_owned(),
        password: None,
        tls_ca_file: None,
        prefix: prefix.to_owned(),
        pod: "test".to_owned(),
    };
    let pool = live_gateway::cluster::clients(&settings)
        .expect("client")
        .pool;
    pool.init().await.expect("connects");
    (
        History::in_redis(pool.clone(), prefix, Metrics::new()),
        pool,
    )
}

const LIMITS: Limits = Limits {
    max_items: 200,
    max_age_ms: 600_000,
    max_channels: 10,
};

fn now() -> u64 {
    live_gateway::state::unix_millis()
}

#[tokio::test]
async fn two_replicas_agree_on_offsets_and_a_tail_sees_both_in_order() {
    let Some(redis) = redis() else { return };
    let (a, _pa) = store(&redis.url, "t1").await;
    let (b, _pb) = store(&redis.url, "t1").await;
    // Once `tail` returns, every item recorded after it is seen: no wait before writing.
    let mut tail = a.tail("ch").await;
    let mut tasks = Vec::new();
    for (i, h) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..25 {
                let payload = format!(r#"{{"from":{i},"n":{n}}}"#);
                let s = h
                    .record("ch", "chat:new", &payload, &LIMITS, now())
                    .await
                    .expect("recorded");
                offsets.push(s.position.offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        all.extend(mine);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=50).collect::<Vec<u64>>());

    let mut seen = Vec::new();
    while seen.len() < 50 {
        match tokio::time::timeout(Duration::from_secs(5), tail.next()).await {
            Ok(Some(TailEvent::Item(item))) => seen.push(item.offset),
            other => panic!("tail: {other:?} after {seen:?}"),
        }
    }
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());

    // Either replica reads the same history.
    let w = b.latest("ch", 50, &LIMITS).await.unwrap();
    assert_eq!(
        w.items.iter().map(|i| i.offset).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<u64>>()
    );
    let epoch = w.head.unwrap().epoch;
    let since = a
        .since("ch", &Position::new(epoch, 47), &LIMITS)
        .await
        .unwrap();
    assert_eq!(
        since.items.iter().map(|i| i.offset).collect::<Vec<_>>(),
        [48, 49, 50]
    );
}

#[tokio::test]
async fn a_flushed_redis_starts_a_new_epoch_and_the_tail_follows_it() {
    let Some(redis) = redis() else { return };
    let (a, pool) = store(&redis.url, "t2").await;
    let first = a
        .record("ch", "chat:new", "{}", &LIMITS, now())
        .await
        .unwrap();
    let mut tail = a.tail("ch").await;
    let flush = CustomCommand::new_static("FLUSHALL", ClusterHash::Random, false);
    let _: Value = pool
        .next()
        .custom(flush, Vec::<Value>::new())
        .await
        .unwrap();
    assert_eq!(a.head("ch", &LIMITS, 0).await, Ok(None));
    let after = a
        .record("ch", "chat:new", r#"{"m":"new"}"#, &LIMITS, now())
        .await
        .unwrap();
    assert_ne!(after.position.epoch, first.position.epoch);
    assert_eq!(after.position.offset, 1);
    match tokio::time::timeout(Duration::from_secs(5), tail.next()).await {
        Ok(Some(TailEvent::Item(item))) => {
            assert_eq!(item.offset, 1);
            assert!(item.payload.get().contains(&*after.position.epoch));
        }
        other => panic!("tail: {other:?}"),
    }
}

#[tokio::test]
async fn items_are_trimmed_to_max_items_and_the_payload_is_stamped_like_the_live_copy() {
    let Some(redis) = redis() else { return };
    let (a, _pool) = store(&redis.url, "t3").await;
    let small = Limits {
        max_items: 3,
        ..LIMITS
    };
    let mut live = Vec::new();
    for n in 0..400 {
        let s = a
            .record("ch", "gift:new", &format!(r#"{{"n":{n}}}"#), &small, now())
            .await
            .unwrap();
        live.push(s.payload.get().to_owned());
    }
    let w = a.latest("ch", 3, &small).await.unwrap();
    let kept: Vec<&str> = w.items.iter().map(|i| i.payload.get()).collect();
    assert_eq!(
        kept,
        live[397..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(w.items[0].event, "gift:new");
    // MAXLEN ~ trims whole nodes: bounded, though not exactly 3.
    let w = a
        .since("ch", &Position::new(w.head.unwrap().epoch, 0), &LIMITS)
        .await
        .unwrap();
    assert!(w.items.len() < 250, "{}", w.items.len());
}

/// How many scripts this Redis has run (`INFO commandstats`: EVALSHA and EVAL).
async fn scripts_run(pool: &fred::clients::Pool) -> u64 {
    let info = CustomCommand::new_static("INFO", ClusterHash::Random, false);
    let text: String = pool
        .next()
        .custom(info, vec![Value::from("commandstats")])
        .await
        .expect("INFO");
    text.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split(['=', ','])
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_viewers_recovering_at_once_share_a_few_reads_and_all_get_the_same_items() {
    let Some(redis) = redis() else { return };
    let (a, pool) = store(&redis.url, "t4").await;
    let mut epoch: std::sync::Arc<str> = "".into();
    for n in 0..120 {
        let s = a
            .record("ch", "chat:new", &format!(r#"{{"n":{n}}}"#), &LIMITS, now())
            .await
            .expect("recorded");
        epoch = s.position.epoch;
    }
    let before = scripts_run(&pool).await;
    let reads: Vec<_> = (0..1000)
        .map(|_| {
            let (a, epoch) = (a.clone(), epoch.clone());
            tokio::spawn(async move { a.since("ch", &Position::new(epoch, 20), &LIMITS).await })
        })
        .collect();
    for r in reads {
        let w = r.await.unwrap().expect("every read answered");
        assert_eq!(
            w.items.iter().map(|i| i.offset).collect::<Vec<_>>(),
            (21..=120).collect::<Vec<u64>>()
        );
    }
    // Each recovery used to be a script of its own: 1,000, and under load most timed out.
    let scripts = scripts_run(&pool).await - before;
    assert!(scripts < 100, "{scripts} scripts for 1,000 identical reads");
}

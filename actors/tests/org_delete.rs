//! Deleting an organization on the real embedded log and store: nothing of it
//! is left in the store (but the audit entry of the deletion), in the log or
//! in the import folder; the other organization is untouched; a restart does
//! not bring it back; its slug can be taken again and starts empty; and a
//! deletion interrupted after its mark is finished by the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use xeno_actors::catalog::encode;
use xeno_actors::import::{ImportOptions, ImportStatus, job_dir};
use xeno_actors::record::LogRecord;
use xeno_actors::{
    CustomerListQuery, DeletionMark, Ports, Runtime, RuntimeError, RuntimeSettings,
    deletion_mark_key, parse_rule,
};
use xeno_connectors::embedded::{EventLog, StateStore};
use xeno_engine::model::{AttrType, Event};
use xeno_engine::ports::{StatePort, StateWrite};
use xeno_engine::time::Duration as EngineDuration;

mod common;

use common::Ok200;

struct Env {
    dir: tempfile::TempDir,
    log: Arc<EventLog>,
    store: Arc<StateStore>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(EventLog::open(&dir.path().join("log"), 3).unwrap());
        let store = Arc::new(StateStore::open(&dir.path().join("state")).unwrap());
        Env { dir, log, store }
    }

    fn import_dir(&self) -> PathBuf {
        self.dir.path().join("imports")
    }

    fn settings(&self, org: &str) -> RuntimeSettings {
        common::settings(
            self.import_dir(),
            org,
            &format!("wk_{org}"),
            &format!("xk_{org}"),
        )
    }

    /// A runtime bootstrapping `org`, ready.
    async fn start(&self, org: &str) -> Runtime {
        let ports = Ports {
            log: self.log.clone(),
            store: self.store.clone(),
            webhooks: Arc::new(Ok200),
        };
        let (runtime, _) =
            Runtime::start(self.settings(org), ports, xeno_actors::clock::wall_clock()).unwrap();
        eventually(async || runtime.is_ready().then_some(())).await;
        runtime
    }

    /// Every store pair whose key or value names `id`.
    fn store_mentions(&self, id: Uuid) -> Vec<String> {
        let needle = id.to_string();
        self.store
            .scan(b"", None, 1_000_000)
            .unwrap()
            .into_iter()
            .filter(|(k, v)| contains(k, &needle) || contains(v, &needle))
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    /// Readable log records of `org`, and every readable record.
    fn log_records(&self, org: Uuid) -> (usize, usize) {
        let needle = org.to_string();
        let (mut of_org, mut all) = (0, 0);
        for p in 0..self.log.partitions() {
            for (_, bytes) in self.log.read(p, 0, 1_000_000).unwrap() {
                if let Ok(record) = LogRecord::decode(&bytes) {
                    all += 1;
                    of_org += usize::from(record.org == org);
                }
                of_org +=
                    usize::from(LogRecord::decode(&bytes).is_err() && contains(&bytes, &needle));
            }
        }
        (of_org, all)
    }
}

fn contains(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

use common::{eventually, now};

/// Customers c0..c9 with two orders each and an identify (with an email),
/// an anonymous profile merged into c1, a segment, a webhook endpoint, a
/// declared field with a description, an erased customer (c0) and a
/// completed CSV import of three more customers.
async fn populate(runtime: &Runtime, org: Uuid, import_dir: &Path) -> Uuid {
    let segment = runtime
        .create_segment(
            org,
            "buyers",
            parse_rule(&json!("order_count >= 1")).unwrap(),
        )
        .await
        .unwrap();
    runtime
        .create_webhook(
            org,
            "http://127.0.0.1:9/hook".into(),
            vec!["segment.entered".into(), "segment.exited".into()],
            None,
        )
        .unwrap();
    runtime
        .put_field(
            org,
            "plan",
            Some(AttrType::String),
            Some(Some("the plan".into())),
        )
        .await
        .unwrap();
    let at = now();
    let mut events = Vec::new();
    for c in 0..10 {
        events.push(Event::identify(
            format!("i-{c}"),
            format!("c{c}"),
            at,
            json!({"email": format!("c{c}@example.com"), "plan": "pro"}),
        ));
        for i in 0..2 {
            events.push(Event::track(
                format!("o-{c}-{i}"),
                format!("c{c}"),
                at,
                "Order Completed",
                json!({"revenue": 10 + i}),
            ));
        }
    }
    let mut anonymous = Event::track("anon-1", "anon-visitor", at, "Page Viewed", json!({}));
    anonymous.user_id = None;
    anonymous.anonymous_id = Some("anon-visitor".into());
    events.push(anonymous);
    runtime.ingest(org, events, at).await.unwrap();
    let mut login = Event::track("login-1", "c1", now(), "Login", json!({}));
    login.anonymous_id = Some("anon-visitor".into());
    runtime.ingest(org, vec![login], now()).await.unwrap();
    eventually(async || {
        let s = runtime.get_segment(org, segment.id).await.ok()?;
        (s.member_count == 10).then_some(())
    })
    .await;
    runtime
        .delete_customer(org, "c0", EngineDuration(3_600_000))
        .await
        .unwrap();
    // An import of three more customers.
    let job = Uuid::now_v7();
    let folder = job_dir(import_dir, job);
    std::fs::create_dir_all(&folder).unwrap();
    let upload = folder.join("upload.csv");
    let csv = "id,email,plan\nimp1,imp1@example.com,basic\nimp2,imp2@example.com,basic\nimp3,imp3@example.com,pro\n";
    std::fs::write(&upload, csv).unwrap();
    runtime
        .start_import(
            org,
            job,
            upload,
            "people.csv",
            csv.len() as u64,
            ImportOptions::default(),
            "system",
        )
        .unwrap();
    eventually(async || {
        let j = runtime.import_job(org, job).ok()?;
        (j.status == ImportStatus::Completed).then_some(())
    })
    .await;
    eventually(async || {
        let page = runtime
            .list_customers(
                org,
                CustomerListQuery {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        (page.items.len() == 12).then_some(())
    })
    .await;
    job
}

/// What the API shows of an organization, and its store keys (but shard
/// snapshots, rewritten in the background).
async fn state_of(runtime: &Runtime, env: &Env, org: Uuid) -> Value {
    let customers = runtime
        .list_customers(
            org,
            CustomerListQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut segments = Vec::new();
    for s in runtime.list_segments(org, None, 100).await.unwrap().items {
        segments.push(json!([s.name, s.member_count]));
    }
    let webhooks: Vec<Uuid> = runtime
        .list_webhooks(org)
        .unwrap()
        .items
        .iter()
        .map(|w| w.id)
        .collect();
    let fields: Vec<String> = runtime
        .fields(org)
        .await
        .unwrap()
        .into_iter()
        .map(|f| format!("{}:{}:{}", f.name, f.ty, f.origin))
        .collect();
    let imports: Vec<Uuid> = runtime
        .import_jobs(org, 100)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    let keys: Vec<String> = env
        .store
        .scan(format!("t/{org}/").as_bytes(), None, 1_000_000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .filter(|k| !k.contains("/shard/"))
        .collect();
    json!({
        "customers": customers.items.iter().map(|c| json!([c.id, c.attributes, c.computed])).collect::<Vec<_>>(),
        "segments": segments,
        "webhooks": webhooks,
        "fields": fields,
        "imports": imports,
        "keys": keys,
        "log": env.log_records(org).0,
    })
}

#[test]
fn deleting_an_org_removes_all_its_data_and_leaves_the_other_untouched() {
    let env = Env::new();
    let system = actix_rt::System::new();
    system.block_on(async {
        // Two organizations: each start bootstraps one.
        let runtime = env.start("alpha").await;
        runtime.shutdown().await;
        let runtime = env.start("beta").await;
        let alpha = runtime.org_by_slug("alpha").unwrap().id;
        let beta = runtime.org_by_slug("beta").unwrap().id;
        let alpha_job = populate(&runtime, alpha, &env.import_dir()).await;
        let beta_job = populate(&runtime, beta, &env.import_dir()).await;
        assert!(job_dir(&env.import_dir(), alpha_job).exists());
        // Let deliveries and the erasure's snapshot settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Identity records of both (written as the identity layer lays them
        // out): memberships, invitations.
        let user = Uuid::now_v7();
        let identity = |org: Uuid, token: &str| {
            vec![
                StateWrite::Put(
                    format!("g/umem/{user}/{org}").into_bytes(),
                    encode(&"owner"),
                ),
                StateWrite::Put(
                    format!("g/inv/{token}").into_bytes(),
                    encode(&json!({"org": org, "email": "x@example.com"})),
                ),
                StateWrite::Put(format!("t/{org}/mem/{user}").into_bytes(), encode(&"owner")),
            ]
        };
        env.store.commit(identity(alpha, "aaaa"), true).unwrap();
        env.store.commit(identity(beta, "bbbb"), true).unwrap();
        let before = state_of(&runtime, &env, beta).await;
        assert_eq!(before["customers"].as_array().unwrap().len(), 12);
        assert!(before["log"].as_u64().unwrap() > 0);
        assert!(env.store_mentions(alpha).len() > 20);
        assert!(env.log_records(alpha).0 >= 30);

        let entry = runtime
            .audit(
                alpha,
                "system",
                "org.deleted",
                &format!("org:{alpha}"),
                json!({"slug": "alpha"}),
            )
            .unwrap();
        // A large import still running: the deletion cancels it and waits.
        let big = Uuid::now_v7();
        let folder = job_dir(&env.import_dir(), big);
        std::fs::create_dir_all(&folder).unwrap();
        let mut csv = String::from("id,email,plan\n");
        for i in 0..300_000 {
            csv.push_str(&format!("big{i},big{i}@example.com,basic\n"));
        }
        std::fs::write(folder.join("upload.csv"), &csv).unwrap();
        runtime
            .start_import(
                alpha,
                big,
                folder.join("upload.csv"),
                "big.csv",
                csv.len() as u64,
                ImportOptions::default(),
                "system",
            )
            .unwrap();
        eventually(async || {
            let j = runtime.import_job(alpha, big).ok()?;
            (j.rows_imported > 0).then_some(())
        })
        .await;
        let status = runtime.import_job(alpha, big).unwrap().status;
        let deleted = runtime.delete_org(alpha, Some(entry.id)).await.unwrap();
        assert_eq!(deleted.id, alpha);
        assert_eq!(deleted.slug, "alpha");
        if status == ImportStatus::Running {
            assert!(deleted.customers >= 12, "{deleted:?}");
        } else {
            eprintln!("the large import ended before the deletion ({status:?})");
        }
        assert!(deleted.records_tombstoned >= 30, "{deleted:?}");
        assert!(deleted.keys_deleted > 10, "{deleted:?}");
        assert_eq!(deleted.import_folders_deleted, 2);
        assert!(!folder.exists());

        // Nothing reaches it any more.
        assert!(runtime.org_by_slug("alpha").is_none());
        assert!(runtime.org_for_write_key("wk_alpha").is_none());
        assert!(runtime.principal("xk_alpha").is_none());
        assert!(matches!(
            runtime.customer(alpha, "c1").await,
            Err(RuntimeError::NotFound(_))
        ));
        assert!(matches!(
            runtime
                .ingest(
                    alpha,
                    vec![Event::identify("late", "c1", now(), json!({}))],
                    now()
                )
                .await,
            Err(RuntimeError::NotFound(_))
        ));
        assert!(matches!(
            runtime.delete_org(alpha, None).await,
            Err(RuntimeError::NotFound(_))
        ));
        // Nothing of it is left but the audit entry of the deletion.
        let kept = format!("t/{alpha}/audit/{}", entry.id);
        assert_eq!(env.store_mentions(alpha), vec![kept.clone()]);
        assert_eq!(env.log_records(alpha).0, 0);
        assert!(!job_dir(&env.import_dir(), alpha_job).exists());
        // The other organization is untouched.
        assert!(job_dir(&env.import_dir(), beta_job).exists());
        assert!(env.store.get(b"g/inv/bbbb").unwrap().is_some());
        assert!(
            env.store
                .get(format!("g/umem/{user}/{beta}").as_bytes())
                .unwrap()
                .is_some()
        );
        assert_eq!(runtime.org_for_write_key("wk_beta"), Some(beta));
        assert_eq!(runtime.principal("xk_beta").map(|p| p.org), Some(beta));
        assert_eq!(state_of(&runtime, &env, beta).await, before);
        // A snapshot after the deletion does not write it back.
        runtime.shutdown().await;
        assert_eq!(env.store_mentions(alpha), vec![kept.clone()]);

        // A restart does not bring it back.
        let runtime = env.start("beta").await;
        assert!(runtime.org_by_slug("alpha").is_none());
        assert!(runtime.org_for_write_key("wk_alpha").is_none());
        assert!(runtime.customer(alpha, "c1").await.is_err());
        assert_eq!(state_of(&runtime, &env, beta).await, before);
        runtime.shutdown().await;
        assert_eq!(env.store_mentions(alpha), vec![kept.clone()]);
        assert_eq!(env.log_records(alpha).0, 0);

        // The slug is free: a new organization takes it and starts empty.
        let runtime = env.start("alpha").await;
        let reborn = runtime.org_by_slug("alpha").unwrap().id;
        assert_ne!(reborn, alpha);
        assert_eq!(runtime.org_for_write_key("wk_alpha"), Some(reborn));
        let page = runtime
            .list_customers(
                reborn,
                CustomerListQuery {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(page.items.is_empty());
        assert!(runtime.customer(reborn, "c1").await.is_err());
        assert!(
            runtime
                .list_segments(reborn, None, 100)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(runtime.list_webhooks(reborn).unwrap().items.is_empty());
        assert!(runtime.import_jobs(reborn, 100).unwrap().is_empty());
        assert!(
            runtime
                .audit_log(reborn, None, None, 100)
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            runtime
                .fields(reborn)
                .await
                .unwrap()
                .iter()
                .all(|f| f.origin == "computed")
        );
        // Events for the new organization under old customer ids start fresh.
        runtime
            .ingest(
                reborn,
                vec![Event::identify("n-1", "c1", now(), json!({"plan": "new"}))],
                now(),
            )
            .await
            .unwrap();
        let c1 = eventually(async || runtime.customer(reborn, "c1").await.ok()).await;
        assert_eq!(c1.attributes.get("email"), None);
        assert_ne!(c1.computed.get("order_count"), Some(&json!(2.0)));
        assert_eq!(state_of(&runtime, &env, beta).await, before);
        runtime.shutdown().await;
        assert_eq!(env.store_mentions(alpha), vec![kept]);
    });
}

#[test]
fn a_deletion_interrupted_after_its_mark_is_finished_at_the_next_start() {
    let env = Env::new();
    let system = actix_rt::System::new();
    system.block_on(async {
        let runtime = env.start("alpha").await;
        runtime.shutdown().await;
        let runtime = env.start("beta").await;
        let alpha = runtime.org_by_slug("alpha").unwrap().id;
        let beta = runtime.org_by_slug("beta").unwrap().id;
        let alpha_job = populate(&runtime, alpha, &env.import_dir()).await;
        populate(&runtime, beta, &env.import_dir()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = state_of(&runtime, &env, beta).await;
        // Snapshots of both tenants are written at the stop.
        runtime.shutdown().await;
        assert!(
            env.store_mentions(alpha)
                .iter()
                .any(|k| k.starts_with(&format!("t/{alpha}/shard/")))
        );

        // A deletion that crashed right after its mark: the mark and the
        // slug's removal are one commit, nothing else happened.
        let mark = DeletionMark {
            org: alpha,
            slug: "alpha".into(),
            keep: Vec::new(),
            started_at: now().to_rfc3339(),
        };
        env.store
            .commit(
                vec![
                    StateWrite::Put(deletion_mark_key(alpha), encode(&mark)),
                    StateWrite::Delete(b"g/org/alpha".to_vec()),
                ],
                true,
            )
            .unwrap();

        let runtime = env.start("beta").await;
        assert!(runtime.org_for_write_key("wk_alpha").is_none());
        assert!(runtime.principal("xk_alpha").is_none());
        assert!(runtime.customer(alpha, "c1").await.is_err());
        assert_eq!(env.store_mentions(alpha), Vec::<String>::new());
        assert_eq!(env.log_records(alpha).0, 0);
        assert!(!job_dir(&env.import_dir(), alpha_job).exists());
        assert_eq!(state_of(&runtime, &env, beta).await, before);
        runtime.shutdown().await;
        assert_eq!(env.store_mentions(alpha), Vec::<String>::new());
    });
}

/// Recovery never re-creates a tenant from the log records of an
/// organization the catalog does not know (here: its records are still in the
/// log, its slug and snapshots gone).
#[test]
fn a_replay_skips_the_records_of_an_unknown_organization() {
    let env = Env::new();
    let system = actix_rt::System::new();
    system.block_on(async {
        let runtime = env.start("alpha").await;
        let alpha = runtime.org_by_slug("alpha").unwrap().id;
        let at = now();
        let events = (0..20)
            .map(|c| {
                Event::identify(
                    format!("i-{c}"),
                    format!("c{c}"),
                    at,
                    json!({"plan": "pro"}),
                )
            })
            .collect();
        runtime.ingest(alpha, events, at).await.unwrap();
        eventually(async || runtime.customer(alpha, "c19").await.ok()).await;
        runtime.stop_without_snapshot().await;
        let gone: Vec<StateWrite> = env
            .store
            .scan(b"", None, 1_000_000)
            .unwrap()
            .into_iter()
            .filter(|(k, v)| contains(k, &alpha.to_string()) || contains(v, &alpha.to_string()))
            .map(|(k, _)| StateWrite::Delete(k))
            .collect();
        env.store.commit(gone, true).unwrap();
        assert!(env.log_records(alpha).0 >= 20);

        let runtime = env.start("beta").await;
        assert!(runtime.org_by_slug("alpha").is_none());
        runtime.shutdown().await;
        // The final snapshots hold no tenant of it.
        assert_eq!(env.store_mentions(alpha), Vec::<String>::new());
    });
}

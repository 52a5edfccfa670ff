//! The identity layer on the real embedded store: what a person signing up,
//! signing in, refreshing, inviting and issuing keys would notice, before and
//! after a restart of the process.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use xeno_actors::catalog::Role;
use xeno_actors::dispatch::DispatchSettings;
use xeno_actors::identity::{InvitationStatus, KeyKind, RefreshOutcome, TokenPurpose};
use xeno_actors::shard::ShardSettings;
use xeno_actors::{Bootstrap, Ports, Runtime, RuntimeError, RuntimeSettings};
use xeno_connectors::embedded::{EventLog, StateStore};
use xeno_engine::ports::{PortError, WebhookOutcome, WebhookPort, WebhookRequest};
use xeno_engine::shard::ShardConfig;
use xeno_engine::time::Duration as EngineDuration;

/// No webhooks are involved here.
struct NoWebhooks;

impl WebhookPort for NoWebhooks {
    fn new_secret(&self) -> Result<String, PortError> {
        Ok("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
    }

    fn send(
        &self,
        _request: WebhookRequest,
    ) -> Pin<Box<dyn Future<Output = WebhookOutcome> + Send + 'static>> {
        Box::pin(async { WebhookOutcome::Status(200) })
    }
}

fn settings(dir: &Path) -> RuntimeSettings {
    RuntimeSettings {
        shard: ShardSettings {
            engine: ShardConfig {
                tick: EngineDuration(100),
                dedup_window: EngineDuration(24 * 3_600_000),
            },
            snapshot_every: Duration::from_secs(3600),
            snapshot_after_events: 1_000_000,
            log_retention_ms: 7 * 24 * 3_600_000,
        },
        dispatch: DispatchSettings::default(),
        tick: Duration::from_millis(50),
        max_inflight_per_partition: 100_000,
        import_dir: dir.join("imports"),
        bootstrap: Some(Bootstrap {
            org: "demo".into(),
            write_key: Some("wk_test".into()),
            admin_api_key: Some("xk_test".into()),
        }),
    }
}

/// Starts a runtime on `dir`, runs `f` on it, and stops it: each call is one
/// life of the process.
fn with_runtime<T>(dir: &Path, f: impl FnOnce(&Runtime) -> T) -> T {
    let system = actix_rt::System::new();
    let out = system.block_on(async {
        let ports = Ports {
            log: Arc::new(EventLog::open(&dir.join("log"), 2).unwrap()),
            store: Arc::new(StateStore::open(&dir.join("state")).unwrap()),
            webhooks: Arc::new(NoWebhooks),
        };
        let (runtime, _) =
            Runtime::start(settings(dir), ports, xeno_actors::clock::wall_clock()).unwrap();
        for _ in 0..200 {
            if runtime.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(runtime.is_ready(), "the runtime did not get ready");
        let out = f(&runtime);
        runtime.shutdown().await;
        out
    });
    drop(system);
    out
}

fn now_ms() -> i64 {
    xeno_actors::clock::now().0
}

fn is_conflict<T: std::fmt::Debug>(result: Result<T, RuntimeError>) -> bool {
    matches!(result, Err(RuntimeError::Conflict(_)))
}

#[test]
fn an_email_signs_up_once_whatever_its_case_and_users_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ada, bob) = with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user(
                " Ada@Example.com ",
                "Ada",
                Some("$argon2id$v=19$secret".into()),
                false,
            )
            .unwrap();
        assert_eq!(ada.email, "ada@example.com");
        assert!(is_conflict(rt.create_user(
            "ADA@example.COM",
            "Impostor",
            None,
            false
        )));
        assert!(!format!("{ada:?}").contains("argon2"), "{ada:?}");
        assert_eq!(
            rt.user_by_email("ada@EXAMPLE.com").unwrap().map(|u| u.id),
            Some(ada.id)
        );

        // An OIDC identity links to one user only.
        let linked = rt
            .link_oidc(ada.id, "https://accounts.example", "sub-1")
            .unwrap();
        assert_eq!(linked.oidc.len(), 1);
        let again = rt
            .link_oidc(ada.id, "https://accounts.example", "sub-1")
            .unwrap();
        assert_eq!(again.oidc.len(), 1, "linking twice is idempotent");
        let bob = rt
            .create_user("bob@example.com", "Bob", None, true)
            .unwrap();
        assert!(is_conflict(rt.link_oidc(
            bob.id,
            "https://accounts.example",
            "sub-1"
        )));

        // A changed email moves the index; a taken one is refused.
        let mut changed = rt.user(bob.id).unwrap().unwrap();
        changed.email = "Robert@Example.com".into();
        rt.put_user(&changed).unwrap();
        assert!(rt.user_by_email("bob@example.com").unwrap().is_none());
        changed.email = "ada@example.com".into();
        assert!(is_conflict(rt.put_user(&changed)));
        (ada.id, bob.id)
    });
    with_runtime(dir.path(), |rt| {
        let ada_again = rt.user_by_email("ada@example.com").unwrap().unwrap();
        assert_eq!(ada_again.id, ada);
        assert_eq!(
            ada_again.password_hash.as_deref(),
            Some("$argon2id$v=19$secret")
        );
        assert_eq!(
            rt.user_by_oidc("https://accounts.example", "sub-1")
                .unwrap()
                .map(|u| u.id),
            Some(ada)
        );
        assert_eq!(
            rt.user_by_email("robert@example.com")
                .unwrap()
                .map(|u| u.id),
            Some(bob)
        );
        assert!(is_conflict(rt.create_user(
            "ada@example.com",
            "Ada",
            None,
            false
        )));
    });
}

#[test]
fn a_reused_refresh_token_revokes_its_session_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    let (user, session) = with_runtime(dir.path(), |rt| {
        let user = rt
            .create_user("ada@example.com", "Ada", None, true)
            .unwrap();
        let session = rt
            .create_session(user.id, "h1", later, Some("10.0.0.1".into()), None)
            .unwrap();
        let RefreshOutcome::Rotated(rotated) = rt
            .rotate_refresh("h1", "h2", None, Some("curl".into()))
            .unwrap()
        else {
            panic!("the current token rotates");
        };
        assert_eq!(rotated.id, session.id);
        assert_eq!(
            (rotated.ip.as_deref(), rotated.user_agent.as_deref()),
            (Some("10.0.0.1"), Some("curl"))
        );
        assert_eq!(
            rt.rotate_refresh("unknown", "h9", None, None).unwrap(),
            RefreshOutcome::Invalid
        );
        assert_eq!(rt.sessions_of(user.id).unwrap().len(), 1);
        (user.id, session.id)
    });
    with_runtime(dir.path(), |rt| {
        // h1 was spent before the restart: presenting it again is a reuse.
        let RefreshOutcome::Reused(revoked) = rt.rotate_refresh("h1", "h3", None, None).unwrap()
        else {
            panic!("a spent token is a reuse");
        };
        assert!(revoked.revoked);
        assert_eq!(revoked.id, session);
        // The legitimate holder's current token is dead too.
        assert_eq!(
            rt.rotate_refresh("h2", "h4", None, None).unwrap(),
            RefreshOutcome::Invalid
        );
        assert!(rt.sessions_of(user).unwrap().is_empty());
        assert!(rt.session(session).unwrap().unwrap().revoked);

        // An expired family does not refresh, and is pruned.
        let old = rt
            .create_session(user, "old", now_ms() - 1, None, None)
            .unwrap();
        assert_eq!(
            rt.rotate_refresh("old", "h5", None, None).unwrap(),
            RefreshOutcome::Invalid
        );
        assert!(rt.prune_identity().unwrap() >= 1);
        assert_eq!(rt.session(old.id).unwrap(), None);
        assert!(rt.session(session).unwrap().is_some(), "not expired yet");

        // Two requests racing with one token: only one rotates.
        rt.create_session(user, "race", later, None, None).unwrap();
        let outcomes: Vec<RefreshOutcome> = std::thread::scope(|s| {
            let a = s.spawn(|| rt.rotate_refresh("race", "race-a", None, None).unwrap());
            let b = s.spawn(|| rt.rotate_refresh("race", "race-b", None, None).unwrap());
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        let rotated = outcomes
            .iter()
            .filter(|o| matches!(o, RefreshOutcome::Rotated(_)))
            .count();
        assert_eq!(rotated, 1, "{outcomes:?}");

        // Revocation by the owner only; "sign out everywhere".
        let other = rt
            .create_user("bob@example.com", "Bob", None, true)
            .unwrap();
        let mine = rt.create_session(user, "m1", later, None, None).unwrap();
        rt.create_session(user, "m2", later, None, None).unwrap();
        assert!(!rt.revoke_session(other.id, mine.id).unwrap());
        assert!(rt.revoke_session(user, mine.id).unwrap());
        assert!(!rt.revoke_session(user, mine.id).unwrap());
        let live = rt.sessions_of(user).unwrap().len();
        assert_eq!(rt.revoke_sessions_of(user).unwrap(), live);
        assert!(rt.sessions_of(user).unwrap().is_empty());
        assert_eq!(
            rt.rotate_refresh("m2", "m3", None, None).unwrap(),
            RefreshOutcome::Invalid
        );
    });
}

#[test]
fn a_one_time_token_works_once_and_not_after_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let user = Uuid::now_v7();
    let later = now_ms() + 3_600_000;
    with_runtime(dir.path(), |rt| {
        let payload = json!({"user": user.to_string(), "email": "ada@example.com"});
        rt.put_one_time(TokenPurpose::VerifyEmail, "t1", payload.clone(), later)
            .unwrap();
        rt.put_one_time(TokenPurpose::VerifyEmail, "stale", json!({}), now_ms() - 1)
            .unwrap();
        rt.put_one_time(
            TokenPurpose::ResetPassword,
            "r1",
            json!({"user": user.to_string()}),
            later,
        )
        .unwrap();
        rt.put_one_time(
            TokenPurpose::ResetPassword,
            "r2",
            json!({"user": user.to_string()}),
            later,
        )
        .unwrap();
        rt.put_one_time(
            TokenPurpose::ResetPassword,
            "someone-else",
            json!({"user": Uuid::now_v7().to_string()}),
            later,
        )
        .unwrap();
    });
    with_runtime(dir.path(), |rt| {
        assert_eq!(
            rt.take_one_time(TokenPurpose::ResetPassword, "t1").unwrap(),
            None,
            "a token serves its purpose only"
        );
        assert_eq!(
            rt.take_one_time(TokenPurpose::VerifyEmail, "t1").unwrap(),
            Some(json!({"user": user.to_string(), "email": "ada@example.com"}))
        );
        assert_eq!(
            rt.take_one_time(TokenPurpose::VerifyEmail, "t1").unwrap(),
            None
        );
        assert_eq!(
            rt.take_one_time(TokenPurpose::VerifyEmail, "stale")
                .unwrap(),
            None
        );

        // A new reset link voids the user's older ones, not other users'.
        rt.drop_one_time_of_user(TokenPurpose::ResetPassword, user)
            .unwrap();
        assert_eq!(
            rt.take_one_time(TokenPurpose::ResetPassword, "r1").unwrap(),
            None
        );
        assert_eq!(
            rt.take_one_time(TokenPurpose::ResetPassword, "r2").unwrap(),
            None
        );
        assert!(
            rt.take_one_time(TokenPurpose::ResetPassword, "someone-else")
                .unwrap()
                .is_some()
        );
    });
}

#[test]
fn an_organization_always_keeps_an_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (org, ada, bob) = with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user("ada@example.com", "Ada", None, true)
            .unwrap();
        let bob = rt
            .create_user("bob@example.com", "Bob", None, true)
            .unwrap();
        assert!(matches!(
            rt.create_org("Not A Slug", "Acme", ada.id),
            Err(RuntimeError::Invalid { .. })
        ));
        assert!(
            is_conflict(rt.create_org("demo", "Demo", ada.id)),
            "the bootstrap org's slug is taken"
        );
        let org = rt.create_org("acme", "Acme Inc", ada.id).unwrap();
        assert!(is_conflict(rt.create_org("acme", "Other", bob.id)));
        assert_eq!(rt.org_by_slug("acme").unwrap().id, org.id);
        assert_eq!(rt.membership(org.id, ada.id).unwrap(), Some(Role::Owner));
        assert_eq!(rt.membership(org.id, bob.id).unwrap(), None);

        // The only owner can neither leave nor step down.
        assert!(is_conflict(rt.remove_member(org.id, ada.id)));
        assert!(is_conflict(rt.set_role(org.id, ada.id, Role::Admin)));

        rt.add_member(org.id, bob.id, Role::Editor).unwrap();
        assert!(is_conflict(rt.add_member(org.id, bob.id, Role::Viewer)));
        let (before, after) = rt.set_role(org.id, bob.id, Role::Owner).unwrap();
        assert_eq!((before, after.role), (Role::Editor, Role::Owner));
        // With a second owner, the first may step down.
        let (before, _) = rt.set_role(org.id, ada.id, Role::Viewer).unwrap();
        assert_eq!(before, Role::Owner);
        assert!(is_conflict(rt.remove_member(org.id, bob.id)));
        assert!(matches!(
            rt.set_role(org.id, Uuid::now_v7(), Role::Admin),
            Err(RuntimeError::NotFound(_))
        ));
        let renamed = rt.rename_org(org.id, "Acme Corporation").unwrap();
        assert_eq!(renamed.name, "Acme Corporation");
        (org.id, ada.id, bob.id)
    });
    with_runtime(dir.path(), |rt| {
        assert_eq!(rt.org_by_slug("acme").unwrap().name, "Acme Corporation");
        assert_eq!(rt.membership(org, bob).unwrap(), Some(Role::Owner));
        let members: Vec<(Uuid, Role)> = rt
            .org_members(org)
            .unwrap()
            .into_iter()
            .map(|m| (m.user, m.role))
            .collect();
        assert_eq!(members, vec![(ada, Role::Viewer), (bob, Role::Owner)]);
        let orgs = rt.orgs_of(ada).unwrap();
        assert_eq!(orgs.len(), 1);
        assert_eq!((orgs[0].0.id, orgs[0].1), (org, Role::Viewer));

        let gone = rt.remove_member(org, ada).unwrap();
        assert_eq!(gone.role, Role::Viewer);
        assert!(rt.orgs_of(ada).unwrap().is_empty());
        assert_eq!(rt.membership(org, ada).unwrap(), None);
        // The bootstrap organization's old records still read (no name).
        assert_eq!(rt.org_by_slug("demo").unwrap().name, "");
    });
}

#[test]
fn an_email_has_one_open_invitation_per_organization() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    let (org, invitation) = with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user("ada@example.com", "Ada", None, true)
            .unwrap();
        let org = rt.create_org("acme", "Acme", ada.id).unwrap().id;
        let first = rt
            .create_invitation(org, "Carol@Example.com", Role::Editor, ada.id, "i1", later)
            .unwrap();
        assert_eq!(first.status, InvitationStatus::Pending);
        assert!(is_conflict(rt.create_invitation(
            org,
            "carol@example.com",
            Role::Viewer,
            ada.id,
            "i2",
            later
        )));
        assert!(
            is_conflict(rt.create_invitation(
                org,
                "ada@example.com",
                Role::Viewer,
                ada.id,
                "i3",
                later
            )),
            "a member is not invited"
        );

        // Declined: a new invitation may follow.
        let mut declined = first.clone();
        declined.status = InvitationStatus::Declined;
        rt.put_invitation(&declined, None).unwrap();
        let second = rt
            .create_invitation(org, "carol@example.com", Role::Admin, ada.id, "i4", later)
            .unwrap();

        // An expired pending one does not block either.
        rt.create_invitation(
            org,
            "dan@example.com",
            Role::Viewer,
            ada.id,
            "i5",
            now_ms() - 1,
        )
        .unwrap();
        rt.create_invitation(org, "dan@example.com", Role::Viewer, ada.id, "i6", later)
            .unwrap();

        // A resend: the old link stops working.
        let mut resent = second.clone();
        resent.token_hash = "i7".into();
        resent.expires_at_ms = later + 1000;
        rt.put_invitation(&resent, Some("i4")).unwrap();
        assert!(rt.invitation_by_token("i4").unwrap().is_none());
        (org, resent)
    });
    with_runtime(dir.path(), |rt| {
        assert_eq!(
            rt.invitation_by_token("i7").unwrap().as_ref(),
            Some(&invitation)
        );
        assert_eq!(
            rt.invitation(org, invitation.id).unwrap().as_ref(),
            Some(&invitation)
        );
        let all = rt.invitations(org).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(
            all.iter()
                .filter(|i| i.email == "carol@example.com")
                .map(|i| i.status)
                .collect::<Vec<_>>(),
            vec![InvitationStatus::Pending, InvitationStatus::Declined],
            "newest first"
        );
        assert!(rt.invitations(Uuid::now_v7()).unwrap().is_empty());
    });
}

#[test]
fn keys_authenticate_until_rotated_or_revoked_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (org, write_secret, api, api_secret, revoked_secret, old_secret) =
        with_runtime(dir.path(), |rt| {
            let ada = rt
                .create_user("ada@example.com", "Ada", None, true)
                .unwrap();
            let org = rt.create_org("acme", "Acme", ada.id).unwrap().id;
            assert!(matches!(
                rt.create_key(org, KeyKind::Api, "ci", None),
                Err(RuntimeError::Invalid { .. })
            ));
            assert!(matches!(
                rt.create_key(org, KeyKind::Write, "site", Some(Role::Admin)),
                Err(RuntimeError::Invalid { .. })
            ));

            let (write, write_secret) = rt.create_key(org, KeyKind::Write, "site", None).unwrap();
            assert!(write_secret.starts_with("xeno_wk_"));
            assert_eq!(write_secret.len(), 48);
            assert!(write_secret[8..].chars().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(write.prefix, write_secret[..12]);
            assert_eq!(rt.org_for_write_key(&write_secret), Some(org));
            assert!(rt.principal(&write_secret).is_none());

            let (api, api_secret) = rt
                .create_key(org, KeyKind::Api, "ci", Some(Role::Editor))
                .unwrap();
            assert!(api_secret.starts_with("xeno_ak_"));
            let principal = rt.principal(&api_secret).unwrap();
            assert_eq!(
                (principal.org, principal.role, principal.key_id),
                (org, Role::Editor, api.id)
            );
            assert_eq!(rt.org_for_write_key(&api_secret), None);

            // Rotation: the old secret stops working at once.
            let (rotated, new_secret) = rt.rotate_key(org, api.id).unwrap();
            assert!(rotated.rotated_at.is_some());
            assert_eq!(rotated.prefix, new_secret[..12]);
            assert!(rt.principal(&api_secret).is_none());
            assert_eq!(rt.principal(&new_secret).unwrap().key_id, api.id);

            // Revocation of the write key.
            rt.revoke_key(org, write.id).unwrap();
            assert_eq!(rt.org_for_write_key(&write_secret), None);
            assert!(matches!(
                rt.revoke_key(org, write.id),
                Err(RuntimeError::NotFound(_))
            ));
            let (_, live_write) = rt.create_key(org, KeyKind::Write, "app", None).unwrap();
            assert_eq!(rt.keys(org).unwrap().len(), 2);
            // Keys are scoped to their organization.
            let demo = rt.org_by_slug("demo").unwrap().id;
            assert!(matches!(
                rt.rotate_key(demo, api.id),
                Err(RuntimeError::NotFound(_))
            ));
            (
                org,
                live_write,
                api.id,
                new_secret,
                write_secret,
                api_secret,
            )
        });
    with_runtime(dir.path(), |rt| {
        assert_eq!(rt.org_for_write_key(&write_secret), Some(org));
        assert_eq!(rt.org_for_write_key(&revoked_secret), None);
        assert_eq!(rt.principal(&api_secret).unwrap().key_id, api);
        assert_eq!(rt.principal(&api_secret).unwrap().role, Role::Editor);
        assert!(rt.principal(&old_secret).is_none());
        // The bootstrap keys from the configuration still work.
        assert!(rt.org_for_write_key("wk_test").is_some());
        assert_eq!(rt.principal("xk_test").unwrap().role, Role::Owner);
        let names: Vec<String> = rt.keys(org).unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(names, vec!["ci".to_string(), "app".to_string()]);
    });
}

#[test]
fn roles_written_before_the_rename_still_read() {
    let old: Role = serde_json::from_str("\"member\"").unwrap();
    assert_eq!(old, Role::Editor);
    assert_eq!(serde_json::to_string(&Role::Editor).unwrap(), "\"editor\"");
    assert!(Role::Owner.rank() > Role::Admin.rank());
    assert!(Role::Admin.rank() > Role::Editor.rank());
    assert!(Role::Editor.rank() > Role::Viewer.rank());
}

/// The audit log keeps entries for the retention only; security events too.
#[test]
fn audit_entries_past_the_retention_are_pruned() {
    use xeno_actors::audit::{AuditFilter, AuditInput};
    let dir = tempfile::tempdir().unwrap();
    with_runtime(dir.path(), |r| {
        let org = r.org_by_slug("demo").unwrap().id;
        let input = |action: &str| AuditInput {
            actor: "user:x".into(),
            action: action.into(),
            target: "t".into(),
            summary: json!({}),
            ip: Some("127.0.0.1".into()),
            user_agent: None,
        };
        let user = Uuid::now_v7();
        let first = r.audit_with(org, input("key.created")).unwrap();
        r.security_event(Some(user), input("user.logged_in"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let cut = now_ms();
        std::thread::sleep(Duration::from_millis(5));
        r.audit_with(org, input("key.revoked")).unwrap();
        r.security_event(Some(user), input("user.logged_out"))
            .unwrap();
        // Time filters split at the cut; an action prefix takes both.
        let before = AuditFilter {
            to_ms: Some(cut),
            ..AuditFilter::default()
        };
        let page = r.audit_query(org, &before, None, 100).unwrap();
        assert_eq!(
            page.items.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![first.id]
        );
        let keys = AuditFilter {
            action: Some("key.".into()),
            ..AuditFilter::default()
        };
        assert_eq!(r.audit_query(org, &keys, None, 100).unwrap().items.len(), 2);
        // Nothing is older than an hour ago; everything before the cut goes.
        assert_eq!(r.prune_audit(now_ms() - 3_600_000).unwrap(), 0);
        assert_eq!(r.prune_audit(cut).unwrap(), 2);
        let left: Vec<String> = r
            .audit_query(org, &AuditFilter::default(), None, 100)
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(left, vec!["key.revoked"]);
        let events: Vec<String> = r
            .security_events(user, None, 100)
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(events, vec!["user.logged_out"]);
    });
}

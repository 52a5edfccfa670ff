//! The identity layer on the real embedded store: what a person signing up,
//! signing in, refreshing, inviting and issuing keys would notice, before and
//! after a restart of the process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use xeno_actors::catalog::Role;
use xeno_actors::identity::{InvitationStatus, KeyKind, OidcSignIn, RefreshOutcome, TokenPurpose};
use xeno_actors::{Ports, Runtime, RuntimeError, RuntimeSettings};
use xeno_connectors::embedded::{EventLog, StateStore};

mod common;

use common::Ok200 as NoWebhooks;

fn settings(dir: &Path) -> RuntimeSettings {
    common::settings(dir.join("imports"), "demo", "wk_test", "xk_test")
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

fn is_forbidden<T: std::fmt::Debug>(result: Result<T, RuntimeError>) -> bool {
    matches!(result, Err(RuntimeError::Forbidden(_)))
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
        // (The runtime's janitor may have pruned it already: what counts is
        // that it is gone.)
        rt.prune_identity().unwrap();
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
        rt.close_invitation(org, first.id, None, InvitationStatus::Declined)
            .unwrap();
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
        let resent = rt
            .renew_invitation(org, second.id, "i7", later + 1000)
            .unwrap();
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

#[test]
fn only_an_owner_changes_or_removes_an_owner_or_makes_one() {
    let dir = tempfile::tempdir().unwrap();
    with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user("ada@example.com", "Ada", None, true)
            .unwrap();
        let bob = rt
            .create_user("bob@example.com", "Bob", None, true)
            .unwrap();
        let cat = rt
            .create_user("cat@example.com", "Cat", None, true)
            .unwrap();
        let org = rt.create_org("acme", "Acme", ada.id).unwrap().id;
        rt.add_member(org, bob.id, Role::Admin).unwrap();
        rt.add_member(org, cat.id, Role::Viewer).unwrap();

        // An admin can neither touch an owner nor make one.
        assert!(is_forbidden(rt.set_role_by(
            org,
            ada.id,
            Role::Viewer,
            Role::Admin
        )));
        assert!(is_forbidden(rt.set_role_by(
            org,
            ada.id,
            Role::Owner,
            Role::Admin
        )));
        assert!(is_forbidden(rt.set_role_by(
            org,
            cat.id,
            Role::Owner,
            Role::Admin
        )));
        assert!(is_forbidden(rt.set_role_by(
            org,
            bob.id,
            Role::Owner,
            Role::Admin
        )));
        assert!(is_forbidden(rt.remove_member_by(org, ada.id, Role::Admin)));
        assert_eq!(rt.membership(org, ada.id).unwrap(), Some(Role::Owner));
        assert_eq!(rt.membership(org, cat.id).unwrap(), Some(Role::Viewer));
        // But may change and remove the others.
        let (before, after) = rt
            .set_role_by(org, cat.id, Role::Editor, Role::Admin)
            .unwrap();
        assert_eq!((before, after.role), (Role::Viewer, Role::Editor));
        assert!(matches!(
            rt.set_role_by(org, Uuid::now_v7(), Role::Viewer, Role::Admin),
            Err(RuntimeError::NotFound(_))
        ));

        // The only owner stays, whoever asks.
        assert!(is_conflict(rt.set_role_by(
            org,
            ada.id,
            Role::Admin,
            Role::Owner
        )));
        assert!(is_conflict(rt.remove_member_by(org, ada.id, Role::Owner)));

        // An owner may make an owner, then demote and remove one.
        let (_, made) = rt
            .set_role_by(org, cat.id, Role::Owner, Role::Owner)
            .unwrap();
        assert_eq!(made.role, Role::Owner);
        assert!(is_forbidden(rt.remove_member_by(org, cat.id, Role::Admin)));
        let (before, _) = rt
            .set_role_by(org, cat.id, Role::Viewer, Role::Owner)
            .unwrap();
        assert_eq!(before, Role::Owner);
        rt.set_role_by(org, cat.id, Role::Owner, Role::Owner)
            .unwrap();
        let gone = rt.remove_member_by(org, cat.id, Role::Owner).unwrap();
        assert_eq!(gone.role, Role::Owner);
        assert_eq!(rt.membership(org, cat.id).unwrap(), None);
        let gone = rt.remove_member_by(org, bob.id, Role::Admin).unwrap();
        assert_eq!(gone.role, Role::Admin);
        assert!(rt.orgs_of(bob.id).unwrap().is_empty());
    });
}

#[test]
fn an_invitation_is_accepted_once_and_only_while_pending() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user("ada@example.com", "Ada", None, true)
            .unwrap();
        let carol = rt
            .create_user("carol@example.com", "Carol", None, true)
            .unwrap();
        let dan = rt
            .create_user("dan@example.com", "Dan", None, true)
            .unwrap();
        let org = rt.create_org("acme", "Acme", ada.id).unwrap().id;

        // Cancelled, then accepted: refused, and no member.
        let first = rt
            .create_invitation(org, "carol@example.com", Role::Editor, ada.id, "c1", later)
            .unwrap();
        let cancelled = rt
            .close_invitation(org, first.id, None, InvitationStatus::Cancelled)
            .unwrap();
        assert_eq!(cancelled.status, InvitationStatus::Cancelled);
        assert!(
            rt.accept_invitation("c1", carol.id, now_ms()).is_err(),
            "a cancelled invitation is not accepted"
        );
        assert_eq!(rt.membership(org, carol.id).unwrap(), None);
        assert!(is_conflict(rt.close_invitation(
            org,
            first.id,
            None,
            InvitationStatus::Declined
        )));
        assert!(is_conflict(
            rt.renew_invitation(org, first.id, "c1b", later)
        ));

        // Declined by its link: only the current token declines.
        let second = rt
            .create_invitation(org, "carol@example.com", Role::Editor, ada.id, "c2", later)
            .unwrap();
        assert!(matches!(
            rt.close_invitation(org, second.id, Some("c1"), InvitationStatus::Declined),
            Err(RuntimeError::NotFound(_))
        ));
        assert!(matches!(
            rt.close_invitation(org, second.id, Some("c2"), InvitationStatus::Accepted),
            Err(RuntimeError::Invalid { .. })
        ));
        rt.close_invitation(org, second.id, Some("c2"), InvitationStatus::Declined)
            .unwrap();
        assert!(rt.accept_invitation("c2", carol.id, now_ms()).is_err());
        assert_eq!(rt.membership(org, carol.id).unwrap(), None);
        assert_eq!(
            rt.invitation(org, second.id).unwrap().unwrap().status,
            InvitationStatus::Declined
        );

        // Renewed: the old link is dead, the new one works once.
        let third = rt
            .create_invitation(org, "carol@example.com", Role::Admin, ada.id, "c3", later)
            .unwrap();
        let renewed = rt
            .renew_invitation(org, third.id, "c4", later + 1000)
            .unwrap();
        assert_eq!(
            (renewed.token_hash.as_str(), renewed.expires_at_ms),
            ("c4", later + 1000)
        );
        assert!(matches!(
            rt.accept_invitation("c3", carol.id, now_ms()),
            Err(RuntimeError::NotFound(_) | RuntimeError::Conflict(_))
        ));
        assert_eq!(rt.membership(org, carol.id).unwrap(), None);
        assert!(is_forbidden(rt.accept_invitation("c4", dan.id, now_ms())));
        assert!(
            is_conflict(rt.accept_invitation("c4", carol.id, later + 1000)),
            "expired at its expiry"
        );
        let (accepted, membership) = rt.accept_invitation("c4", carol.id, now_ms()).unwrap();
        assert_eq!(accepted.status, InvitationStatus::Accepted);
        assert_eq!((membership.user, membership.role), (carol.id, Role::Admin));
        assert_eq!(rt.membership(org, carol.id).unwrap(), Some(Role::Admin));
        assert_eq!(rt.orgs_of(carol.id).unwrap().len(), 1);
        assert!(
            rt.invitation_by_token("c4").unwrap().is_none(),
            "the link is spent"
        );
        assert!(rt.accept_invitation("c4", carol.id, now_ms()).is_err());
        assert_eq!(
            rt.invitation(org, third.id).unwrap().unwrap().status,
            InvitationStatus::Accepted
        );
        assert!(is_conflict(rt.close_invitation(
            org,
            third.id,
            None,
            InvitationStatus::Cancelled
        )));
    });
}

#[test]
fn two_concurrent_accepts_of_one_invitation_make_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user("ada@example.com", "Ada", None, true)
            .unwrap();
        let org = rt.create_org("acme", "Acme", ada.id).unwrap().id;
        for round in 0..5 {
            let email = format!("eve{round}@example.com");
            let eve = rt.create_user(&email, "Eve", None, true).unwrap();
            let token = format!("e{round}");
            rt.create_invitation(org, &email, Role::Viewer, ada.id, &token, later)
                .unwrap();
            let barrier = std::sync::Barrier::new(4);
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            rt.accept_invitation(&token, eve.id, now_ms())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
            assert_eq!(rt.membership(org, eve.id).unwrap(), Some(Role::Viewer));
        }
    });
}

#[test]
fn a_password_reset_revokes_every_session_and_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user(
                "ada@example.com",
                "Ada",
                Some("$argon2id$old".into()),
                false,
            )
            .unwrap();
        let bob = rt
            .create_user("bob@example.com", "Bob", None, true)
            .unwrap();
        let s1 = rt.create_session(ada.id, "a1", later, None, None).unwrap();
        let s2 = rt.create_session(ada.id, "a2", later, None, None).unwrap();
        let other = rt.create_session(bob.id, "b1", later, None, None).unwrap();
        let payload = json!({"user": ada.id.to_string()});
        rt.put_one_time(TokenPurpose::ResetPassword, "r1", payload.clone(), later)
            .unwrap();
        rt.put_one_time(TokenPurpose::ResetPassword, "r2", payload.clone(), later)
            .unwrap();
        rt.put_one_time(TokenPurpose::VerifyEmail, "v1", payload.clone(), later)
            .unwrap();
        rt.put_one_time(
            TokenPurpose::ResetPassword,
            "stale",
            payload.clone(),
            now_ms() - 1,
        )
        .unwrap();

        // Peeking leaves the token in place.
        assert_eq!(
            rt.peek_one_time(TokenPurpose::ResetPassword, "r1").unwrap(),
            Some(payload.clone())
        );
        assert_eq!(
            rt.peek_one_time(TokenPurpose::ResetPassword, "r1").unwrap(),
            Some(payload.clone())
        );
        assert_eq!(
            rt.peek_one_time(TokenPurpose::VerifyEmail, "r1").unwrap(),
            None
        );
        assert_eq!(
            rt.peek_one_time(TokenPurpose::ResetPassword, "stale")
                .unwrap(),
            None
        );
        assert_eq!(
            rt.peek_one_time(TokenPurpose::ResetPassword, "nope")
                .unwrap(),
            None
        );

        assert_eq!(
            rt.reset_password("stale", "$argon2id$x".into()).unwrap(),
            None
        );
        assert_eq!(
            rt.reset_password("nope", "$argon2id$x".into()).unwrap(),
            None
        );
        assert_eq!(
            rt.reset_password("r1", "$argon2id$new".into()).unwrap(),
            Some(ada.id)
        );
        let after = rt.user(ada.id).unwrap().unwrap();
        assert_eq!(after.password_hash.as_deref(), Some("$argon2id$new"));
        assert!(after.email_verified);
        assert!(rt.sessions_of(ada.id).unwrap().is_empty());
        for id in [s1.id, s2.id] {
            assert!(rt.session(id).unwrap().unwrap().revoked);
        }
        for hash in ["a1", "a2"] {
            assert_eq!(
                rt.rotate_refresh(hash, &format!("{hash}-next"), None, None)
                    .unwrap(),
                RefreshOutcome::Invalid
            );
        }
        assert_eq!(rt.sessions_of(bob.id).unwrap(), vec![other]);

        // Used once; the user's other tokens are void too.
        assert_eq!(
            rt.reset_password("r1", "$argon2id$again".into()).unwrap(),
            None
        );
        assert_eq!(
            rt.reset_password("r2", "$argon2id$again".into()).unwrap(),
            None
        );
        assert_eq!(
            rt.peek_one_time(TokenPurpose::VerifyEmail, "v1").unwrap(),
            None
        );
        assert_eq!(
            rt.user(ada.id).unwrap().unwrap().password_hash.as_deref(),
            Some("$argon2id$new")
        );
    });
}

#[test]
fn an_email_verification_link_works_once_for_the_address_it_was_sent_to() {
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    with_runtime(dir.path(), |rt| {
        let ada = rt
            .create_user("ada@example.com", "Ada", Some("$argon2id$pw".into()), false)
            .unwrap();
        let user = json!({"user": ada.id.to_string()});
        rt.put_one_time(TokenPurpose::VerifyEmail, "v1", user.clone(), later)
            .unwrap();
        rt.put_one_time(
            TokenPurpose::VerifyEmail,
            "v-old-address",
            json!({"user": ada.id.to_string(), "email": "old@example.com"}),
            later,
        )
        .unwrap();
        rt.put_one_time(TokenPurpose::ResetPassword, "r1", user.clone(), later)
            .unwrap();
        assert_eq!(rt.verify_email("r1").unwrap(), None, "another purpose");
        assert_eq!(rt.verify_email("v-old-address").unwrap(), None);
        assert!(!rt.user(ada.id).unwrap().unwrap().email_verified);
        let verified = rt.verify_email("v1").unwrap().unwrap();
        assert!(verified.email_verified);
        assert_eq!(verified.password_hash.as_deref(), Some("$argon2id$pw"));
        assert_eq!(rt.user(ada.id).unwrap().unwrap(), verified);
        assert_eq!(rt.verify_email("v1").unwrap(), None);
        assert!(
            rt.peek_one_time(TokenPurpose::ResetPassword, "r1")
                .unwrap()
                .is_some()
        );

        // A read-modify-write of a user loses no concurrent change.
        let renamed = rt
            .update_user(ada.id, |u| u.name = "Ada L.".into())
            .unwrap();
        assert!(renamed.email_verified);
        assert_eq!(rt.user(ada.id).unwrap().unwrap().name, "Ada L.");
    });
}

#[test]
fn an_oidc_sign_in_links_creates_refuses_or_takes_over_an_unproven_account() {
    const ISSUER: &str = "https://accounts.example";
    let dir = tempfile::tempdir().unwrap();
    let later = now_ms() + 3_600_000;
    with_runtime(dir.path(), |rt| {
        // Refused: nothing written.
        assert_eq!(
            rt.oidc_sign_in(ISSUER, "s0", None, true, "Nobody").unwrap(),
            OidcSignIn::Refused("the identity provider gave no email address".into())
        );
        assert_eq!(
            rt.oidc_sign_in(ISSUER, "s0", Some("new@example.com"), false, "New")
                .unwrap(),
            OidcSignIn::Refused(
                "the identity provider does not assert that this email is verified".into()
            )
        );
        assert!(rt.user_by_email("new@example.com").unwrap().is_none());
        assert!(rt.user_by_oidc(ISSUER, "s0").unwrap().is_none());

        // Created, then Existing.
        let OidcSignIn::Created(new) = rt
            .oidc_sign_in(ISSUER, "s1", Some(" New@Example.com "), true, " New ")
            .unwrap()
        else {
            panic!("a new user");
        };
        assert_eq!(
            (new.email.as_str(), new.name.as_str()),
            ("new@example.com", "New")
        );
        assert!(new.email_verified && new.password_hash.is_none());
        assert_eq!(rt.user_by_oidc(ISSUER, "s1").unwrap(), Some(new.clone()));
        assert_eq!(
            rt.user_by_email("new@example.com").unwrap(),
            Some(new.clone())
        );
        assert_eq!(
            rt.oidc_sign_in(ISSUER, "s1", None, false, "").unwrap(),
            OidcSignIn::Existing(new.clone())
        );

        // A verified account is linked, its password kept.
        let bob = rt
            .create_user("bob@example.com", "Bob", Some("$argon2id$bob".into()), true)
            .unwrap();
        let bob_session = rt.create_session(bob.id, "b1", later, None, None).unwrap();
        let OidcSignIn::Linked(linked) = rt
            .oidc_sign_in(ISSUER, "s2", Some("bob@example.com"), true, "Robert")
            .unwrap()
        else {
            panic!("linked");
        };
        assert_eq!(linked.id, bob.id);
        assert_eq!(linked.password_hash.as_deref(), Some("$argon2id$bob"));
        assert_eq!(linked.oidc.len(), 1);
        assert_eq!(rt.sessions_of(bob.id).unwrap(), vec![bob_session]);
        assert_eq!(
            rt.user_by_oidc(ISSUER, "s2").unwrap().map(|u| u.id),
            Some(bob.id)
        );

        // An unverified account is refused to an unverified identity...
        let squat = rt
            .create_user(
                "carol@example.com",
                "Squatter",
                Some("$argon2id$squat".into()),
                false,
            )
            .unwrap();
        rt.link_oidc(squat.id, "https://other.example", "x")
            .unwrap();
        rt.create_session(squat.id, "q1", later, None, None)
            .unwrap();
        rt.put_one_time(
            TokenPurpose::VerifyEmail,
            "qv",
            json!({"user": squat.id.to_string()}),
            later,
        )
        .unwrap();
        assert!(matches!(
            rt.oidc_sign_in(ISSUER, "s3", Some("carol@example.com"), false, "Carol")
                .unwrap(),
            OidcSignIn::Refused(_)
        ));
        assert_eq!(
            rt.user(squat.id).unwrap().unwrap().password_hash.as_deref(),
            Some("$argon2id$squat")
        );
        assert_eq!(rt.sessions_of(squat.id).unwrap().len(), 1);

        // ... and taken over by a verified one.
        let OidcSignIn::Linked(carol) = rt
            .oidc_sign_in(ISSUER, "s3", Some("carol@example.com"), true, "Carol")
            .unwrap()
        else {
            panic!("taken over");
        };
        assert_eq!(carol.id, squat.id);
        assert_eq!(carol.password_hash, None);
        assert!(carol.email_verified);
        assert_eq!(carol.name, "Carol");
        assert_eq!(carol.oidc.len(), 1);
        assert_eq!(rt.user(squat.id).unwrap().unwrap(), carol);
        assert!(rt.sessions_of(squat.id).unwrap().is_empty());
        assert_eq!(
            rt.rotate_refresh("q1", "q2", None, None).unwrap(),
            RefreshOutcome::Invalid
        );
        assert_eq!(
            rt.peek_one_time(TokenPurpose::VerifyEmail, "qv").unwrap(),
            None
        );
        assert!(
            rt.user_by_oidc("https://other.example", "x")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            rt.oidc_sign_in(ISSUER, "s3", Some("carol@example.com"), true, "Carol")
                .unwrap(),
            OidcSignIn::Existing(carol)
        );
    });
}

use std::time::Duration;

use serde_json::json;

use super::*;

fn approvals(timeout_s: u64, max_held: usize) -> Approvals {
    Approvals::new(&config::Approvals {
        timeout_s,
        max_held,
        ..Default::default()
    })
}

fn call(session: &str, args: &str) -> Call {
    Call {
        connection: "run-1".into(),
        principal: "agent".into(),
        uid: 1500,
        tgid: 42,
        start_time: 7,
        exe: Some("/usr/bin/python3".into()),
        server: "bank".into(),
        method: "tools/call".into(),
        tool: "withdraw_funds".into(),
        arguments_sha256: args.into(),
        arguments: json!({"amount": 5}),
        session: Some(session.into()),
        policy_generation: 1,
        rule: "rule[0]".into(),
    }
}

#[tokio::test]
async fn an_approved_call_is_released_and_a_denied_one_says_who_and_why() {
    let a = approvals(30, 8);
    let (id, rx) = a.hold(call("s1", "h1")).unwrap();
    assert_eq!(a.pending(), 1);
    let listed = a.list();
    assert_eq!(listed["held"][0]["id"], id);
    assert_eq!(listed["held"][0]["call"]["tool"], "withdraw_funds");
    let (c, _) = a.decide(id, true, 0, None, Widen::Call).unwrap();
    assert_eq!(c.tool, "withdraw_funds");
    match a.wait(id, rx).await {
        Outcome::Decided(v) => assert!(v.approved && v.by_uid == 0 && v.scope == "call"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.pending(), 0, "an answered call leaves the list");
    assert!(
        a.decide(id, true, 0, None, Widen::Call).is_err(),
        "answered once"
    );

    let (id, rx) = a.hold(call("s1", "h1")).unwrap();
    assert!(
        a.hold(call("s1", "h1")).is_ok(),
        "an approval of one call covers no other call"
    );
    a.decide(id, false, 1000, Some("not today".into()), Widen::Call)
        .unwrap();
    match a.wait(id, rx).await {
        Outcome::Decided(v) => {
            assert!(!v.approved);
            assert_eq!(v.reason.as_deref(), Some("not today"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unanswered_calls_time_out_and_a_full_queue_refuses_at_once() {
    let a = approvals(1, 1);
    let (id, rx) = a.hold(call("s1", "h1")).unwrap();
    assert!(matches!(a.hold(call("s2", "h2")), Err(Outcome::Full(1))));
    let t0 = std::time::Instant::now();
    assert!(matches!(a.wait(id, rx).await, Outcome::TimedOut(_)));
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert_eq!(a.pending(), 0);
    assert!(a.hold(call("s2", "h2")).is_ok(), "room again");
}

#[tokio::test]
async fn widened_approvals_cover_the_session_or_a_window_and_nothing_else() {
    let a = approvals(30, 8);
    let (id, rx) = a.hold(call("s1", "h1")).unwrap();
    a.decide(id, true, 0, None, Widen::Session).unwrap();
    let _ = a.wait(id, rx).await;
    assert!(matches!(
        a.hold(call("s1", "other-args")),
        Err(Outcome::Granted(_))
    ));
    assert!(
        a.hold(call("s2", "h1")).is_ok(),
        "another session is not covered"
    );
    let mut newer = call("s1", "h1");
    newer.policy_generation = 2;
    assert!(a.hold(newer).is_ok(), "a reloaded policy is not covered");
    let mut other_exe = call("s1", "h1");
    other_exe.exe = Some("/usr/bin/curl".into());
    assert!(a.hold(other_exe).is_ok(), "another program is not covered");

    let b = approvals(30, 8);
    let (id, rx) = b.hold(call("s1", "h1")).unwrap();
    assert!(b
        .decide(
            id,
            true,
            0,
            None,
            Widen::For(Duration::from_secs(10 * 86_400))
        )
        .unwrap_err()
        .contains("max_grant_s"));
    b.decide(id, true, 0, None, Widen::For(Duration::from_millis(300)))
        .unwrap();
    let _ = b.wait(id, rx).await;
    assert!(matches!(b.hold(call("s9", "h9")), Err(Outcome::Granted(_))));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.hold(call("s9", "h9")).is_ok(), "the window closed");
}

/// A process named for no program (its executable unvouched for, or on btrfs) has no
/// program a grant could be bound to: a grant it was given covers that process only, not
/// every other unnamed program of the same principal (a forger's among them).
#[tokio::test]
async fn a_grant_to_a_process_named_for_no_program_covers_that_process_only() {
    let a = approvals(30, 8);
    let unnamed = |tgid: u32, start_time: u64| Call {
        exe: None,
        tgid,
        start_time,
        ..call("s1", "h1")
    };
    let (id, rx) = a.hold(unnamed(42, 7)).unwrap();
    a.decide(id, true, 0, None, Widen::For(Duration::from_secs(60)))
        .unwrap();
    let _ = a.wait(id, rx).await;
    assert!(
        matches!(a.hold(unnamed(42, 7)), Err(Outcome::Granted(_))),
        "the same process is covered"
    );
    assert!(
        a.hold(unnamed(43, 7)).is_ok(),
        "another unnamed process is not covered"
    );
    assert!(
        a.hold(unnamed(42, 8)).is_ok(),
        "a process that took the pid since is not covered"
    );
    let (id, rx) = a.hold(call("s1", "h1")).unwrap();
    a.decide(id, true, 0, None, Widen::For(Duration::from_secs(60)))
        .unwrap();
    let _ = a.wait(id, rx).await;
    let mut restarted = call("s1", "h1");
    restarted.tgid = 99;
    assert!(
        matches!(a.hold(restarted), Err(Outcome::Granted(_))),
        "a named program's grant still covers its other processes"
    );
}

#[tokio::test]
async fn a_waiter_that_goes_away_takes_its_call_off_the_list() {
    let a = approvals(30, 8);
    let (id, rx) = a.hold(call("s1", "h1")).unwrap();
    {
        let wait = a.wait(id, rx);
        let _ = tokio::time::timeout(Duration::from_millis(20), wait).await;
    }
    assert_eq!(a.pending(), 0);
    let e = a.decide(id, true, 0, None, Widen::Call).unwrap_err();
    assert!(e.contains("no call"), "{e}");
    let (id, _rx) = a.hold(call("s1", "h1")).unwrap();
    let e = a.decide(id, false, 0, None, Widen::Session).unwrap_err();
    assert!(e.contains("one call"), "{e}");
}

//! The supervisor with real child processes (/bin/sh scripts, coreutils, busybox).
//!
//! Subreaper and SIGCHLD handling belong to the whole process; nextest runs every test in
//! its own process. Under plain `cargo test` they share one and still pass: each
//! supervisor collects only its own services and leaves foreign zombies alone for a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapp_init::supervise::{Policy, Ready, ServiceSpec, ServiceState, SuperviseError, Supervisor};
use tokio::sync::watch;

type States = BTreeMap<String, ServiceState>;

/// Every wait in these tests ends by then.
const WAIT: Duration = Duration::from_secs(20);

fn logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("kapp_init=debug").with_test_writer().try_init();
}

/// A service running `script` with /bin/sh; `@DIR@` stands for `dir`.
fn sh(name: &str, dir: &Path, script: &str) -> ServiceSpec {
    let script = script.replace("@DIR@", &dir.display().to_string());
    ServiceSpec {
        args: vec!["-c".into(), script],
        stop_timeout: Duration::from_secs(5),
        ..ServiceSpec::new(name, "/bin/sh")
    }
}

fn after(mut spec: ServiceSpec, deps: &[&str], ready: Ready) -> ServiceSpec {
    spec.after = deps.iter().map(|d| d.to_string()).collect();
    spec.ready = ready;
    spec
}

fn line(text: &str) -> Ready {
    Ready::LogLine(text.into())
}

fn fast() -> Policy {
    Policy { backoff_min: Duration::from_millis(100), backoff_max: Duration::from_millis(500), ..Policy::default() }
}

/// Waits (bounded) until `done` holds for the states; returns them.
async fn wait_for(states: &mut watch::Receiver<States>, what: &str, mut done: impl FnMut(&States) -> bool) -> States {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        {
            let now = states.borrow_and_update();
            if done(&now) {
                return now.clone();
            }
        }
        if tokio::time::timeout_at(deadline, states.changed()).await.is_err() {
            panic!("timed out waiting for {what}; states: {:#?}", *states.borrow());
        }
    }
}

fn all_ready<'a>(names: &'a [&'a str]) -> impl FnMut(&States) -> bool + 'a {
    move |s| names.iter().all(|n| matches!(s.get(*n), Some(ServiceState::Ready { .. })))
}

fn pid_of(states: &States, name: &str) -> u32 {
    match states.get(name) {
        Some(ServiceState::Ready { pid } | ServiceState::Starting { pid }) => *pid,
        other => panic!("{name} has no pid: {other:?}"),
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Waits (bounded) until `path` holds a line.
async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = read_lines(path).into_iter().next() {
            return line;
        }
        assert!(Instant::now() < deadline, "{} never written", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(state, parent pid)` of a process from /proc, `None` once it is gone.
fn proc_status(pid: u32) -> Option<(String, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string());
    Some((field("State:")?, field("PPid:")?.parse().ok()?))
}

async fn shutdown_within(supervisor: Supervisor, limit: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(limit, supervisor.shutdown()).await.expect("shutdown took too long");
    start.elapsed()
}

#[tokio::test]
async fn a_crashing_service_is_restarted_with_growing_backoff() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let crash = sh("crash", dir.path(), "date +%s%N >> @DIR@/runs; echo crashing; exit 3");
    let supervisor = Supervisor::start(vec![crash], fast()).unwrap();
    let mut states = supervisor.states();
    let mut delays = BTreeMap::new();
    wait_for(&mut states, "five restarts", |s| {
        if let Some(ServiceState::Backoff { restarts, last_exit, retry_in }) = s.get("crash") {
            assert_eq!(last_exit, "exit code 3");
            delays.insert(*restarts, retry_in.as_millis());
        }
        delays.keys().any(|&r| r >= 5)
    })
    .await;
    // Doubling from backoff_min, capped at backoff_max (a state a busy machine let pass
    // unseen is simply missing here).
    let expected = |restarts: u32| (100u128 << (restarts - 1).min(10)).min(500);
    assert!(delays.len() >= 3 && delays.iter().all(|(&r, &d)| d == expected(r)), "{delays:?}");
    // Each run really waited its delay: the gaps between runs are at least the backoff.
    let started: Vec<u128> = read_lines(&runs).iter().map(|l| l.parse().unwrap()).collect();
    assert!(started.len() >= 5, "{started:?}");
    for (gap, min_ms) in started.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).zip([100, 200, 400, 500]) {
        assert!(gap >= min_ms, "restart after {gap} ms, backoff was {min_ms} ms: {started:?}");
    }
    assert!(supervisor.recent_lines("crash").iter().all(|l| l == "crashing"));
    assert!(supervisor.recent_lines("crash").len() >= 5);
    let mut states = supervisor.states();
    shutdown_within(supervisor, WAIT).await;
    assert!(matches!(states.borrow_and_update()["crash"], ServiceState::Stopped { last_exit: Some(_) }));
}

#[tokio::test]
async fn a_long_run_resets_the_backoff() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { reset_after: Duration::from_millis(300), ..fast() };
    let supervisor = Supervisor::start(vec![sh("slow", dir.path(), "sleep 0.5; exit 1")], policy).unwrap();
    let mut states = supervisor.states();
    let mut delays = BTreeMap::new();
    wait_for(&mut states, "three restarts", |s| {
        if let Some(ServiceState::Backoff { restarts, retry_in, .. }) = s.get("slow") {
            delays.insert(*restarts, retry_in.as_millis());
        }
        delays.contains_key(&3)
    })
    .await;
    assert!(delays.values().all(|&d| d == 100), "{delays:?}");
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn a_dependent_starts_only_after_its_dependency_printed_its_ready_line() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let a = after(
        sh(
            "a",
            dir.path(),
            "echo a-spawned >> @DIR@/order; sleep 0.5; echo a-ready >> @DIR@/order; echo 'a: listening'; exec sleep 60",
        ),
        &[],
        line("listening"),
    );
    let b = after(sh("b", dir.path(), "echo b-spawned >> @DIR@/order; echo up; exec sleep 60"), &["a"], line("up"));
    let supervisor = Supervisor::start(vec![b, a], fast()).unwrap();
    let mut states = supervisor.states();
    let mut saw_waiting = false;
    wait_for(&mut states, "both ready", |s| {
        saw_waiting |=
            matches!(s["a"], ServiceState::Starting { .. }) && s["b"] == ServiceState::Waiting { on: vec!["a".into()] };
        all_ready(&["a", "b"])(s)
    })
    .await;
    assert!(saw_waiting, "b was never seen waiting on a while a was starting");
    assert_eq!(read_lines(&dir.path().join("order")), ["a-spawned", "a-ready", "b-spawned"]);
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn a_dependent_starts_only_after_its_dependency_accepts_tcp() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = format!("sleep 0.5; echo a-listening >> @DIR@/order; exec busybox nc -ll -p {port} -e /bin/true");
    let a = after(sh("a", dir.path(), &script), &[], Ready::Tcp(([127, 0, 0, 1], port).into()));
    let b = after(sh("b", dir.path(), "echo b-spawned >> @DIR@/order; echo up; exec sleep 60"), &["a"], line("up"));
    let supervisor = Supervisor::start(vec![a, b], fast()).unwrap();
    let mut states = supervisor.states();
    wait_for(&mut states, "both ready", all_ready(&["a", "b"])).await;
    assert_eq!(read_lines(&dir.path().join("order")), ["a-listening", "b-spawned"]);
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn a_dependency_restarting_does_not_restart_its_dependents() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let a = after(sh("a", dir.path(), "echo up; sleep 0.2; exit 1"), &[], line("up"));
    let b = after(sh("b", dir.path(), "exec sleep 60"), &["a"], Ready::Started);
    let supervisor = Supervisor::start(vec![a, b], fast()).unwrap();
    let mut states = supervisor.states();
    let first = wait_for(&mut states, "b ready", all_ready(&["b"])).await;
    let later =
        wait_for(&mut states, "a restarted twice", |s| matches!(s["a"], ServiceState::Backoff { restarts: 2, .. }))
            .await;
    assert_eq!(later["b"], first["b"]);
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn a_service_that_cannot_spawn_backs_off_and_holds_back_its_dependents() {
    logs();
    let missing = ServiceSpec::new("missing", "/nonexistent/kapp-test-program");
    let b = after(ServiceSpec::new("b", "/bin/true"), &["missing"], Ready::Started);
    let supervisor = Supervisor::start(vec![missing, b], fast()).unwrap();
    let mut states = supervisor.states();
    let seen = wait_for(&mut states, "two failed spawns", |s| {
        matches!(s["missing"], ServiceState::Backoff { restarts: 2, .. })
    })
    .await;
    let ServiceState::Backoff { last_exit, .. } = &seen["missing"] else { unreachable!() };
    assert!(last_exit.starts_with("spawn failed: "), "{last_exit}");
    assert_eq!(seen["b"], ServiceState::Waiting { on: vec!["missing".into()] });
    let mut states = supervisor.states();
    shutdown_within(supervisor, WAIT).await;
    assert_eq!(states.borrow_and_update()["b"], ServiceState::Stopped { last_exit: None });
}

#[tokio::test]
async fn shutdown_stops_dependents_before_their_dependencies() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    // The later a service is in the chain, the slower it stops: signalled all at once they
    // would record a, b, c.
    let service = |name: &str, delay: &str| {
        let script = format!(
            "trap 'sleep {delay}; echo {name} >> @DIR@/stopped; exit 0' TERM; echo up; while :; do sleep 0.1; done"
        );
        sh(name, dir.path(), &script)
    };
    let a = after(service("a", "0"), &[], line("up"));
    let b = after(service("b", "0.3"), &["a"], line("up"));
    let c = after(service("c", "0.6"), &["b"], line("up"));
    let free = after(service("free", "0"), &[], line("up"));
    let supervisor = Supervisor::start(vec![c, b, a, free], fast()).unwrap();
    let mut states = supervisor.states();
    let ready = wait_for(&mut states, "all ready", all_ready(&["a", "b", "c", "free"])).await;
    shutdown_within(supervisor, WAIT).await;
    let order: Vec<String> = read_lines(&dir.path().join("stopped")).into_iter().filter(|n| n != "free").collect();
    assert_eq!(order, ["c", "b", "a"]);
    let stopped = states.borrow_and_update().clone();
    for name in ["a", "b", "c", "free"] {
        assert_eq!(stopped[name], ServiceState::Stopped { last_exit: Some("exit code 0".into()) }, "{name}");
        // Exited and reaped: no process, no zombie.
        assert_eq!(proc_status(pid_of(&ready, name)), None, "{name}");
    }
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let mut stubborn =
        after(sh("stubborn", dir.path(), "trap '' TERM; echo up; while :; do sleep 0.1; done"), &[], line("up"));
    stubborn.stop_timeout = Duration::from_millis(500);
    let supervisor = Supervisor::start(vec![stubborn], fast()).unwrap();
    let mut states = supervisor.states();
    wait_for(&mut states, "ready", all_ready(&["stubborn"])).await;
    let took = shutdown_within(supervisor, WAIT).await;
    assert!(took >= Duration::from_millis(500), "stopped after {took:?}");
    assert_eq!(
        states.borrow_and_update()["stubborn"],
        ServiceState::Stopped { last_exit: Some("killed by SIGKILL".into()) }
    );
}

#[tokio::test]
async fn an_orphan_is_reparented_to_the_supervisor_and_reaped() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    // The inner shell starts `sleep` and exits at once, so `sleep` loses its parent; the
    // service exits too (and is restarted, without making another orphan).
    let script =
        "[ -e @DIR@/orphan ] || sh -c 'sleep 1 & echo $! > @DIR@/orphan.tmp; mv @DIR@/orphan.tmp @DIR@/orphan'; exit 0";
    let supervisor = Supervisor::start(vec![sh("forker", dir.path(), script)], fast()).unwrap();
    let orphan: u32 = wait_for_file(&dir.path().join("orphan")).await.parse().unwrap();
    let (state, parent) = proc_status(orphan).expect("the orphan ends after a second");
    assert_eq!(parent, std::process::id(), "orphan not reparented to the supervisor (state {state})");
    // Only its parent can make it disappear, so it going away means we reaped it.
    let deadline = Instant::now() + WAIT;
    while let Some((state, _)) = proc_status(orphan) {
        assert!(Instant::now() < deadline, "orphan {orphan} left as {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn children_started_by_other_code_keep_their_exit_status() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    // A service that keeps exiting, so the supervisor handles SIGCHLD all the time.
    let supervisor = Supervisor::start(
        vec![sh("churn", dir.path(), "exit 0")],
        Policy { backoff_max: Duration::from_millis(100), ..fast() },
    )
    .unwrap();
    let mut child = std::process::Command::new("/bin/sh").args(["-c", "exit 7"]).spawn().unwrap();
    // It is a zombie for a while before we ask, as with any code that polls its children.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(child.wait().unwrap().code(), Some(7));
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn output_goes_to_the_ring_and_a_rotated_log_file() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let logs_dir = dir.path().join("logs");
    let policy = Policy { log_dir: Some(logs_dir.clone()), log_max_bytes: 1000, ring_lines: 10, echo: false, ..fast() };
    let talker = after(
        sh("talker", dir.path(), "i=0; while [ $i -lt 100 ]; do printf 'line %03d to stdout\\n' $i; i=$((i+1)); done; echo done >&2; exec sleep 60"),
        &[],
        line("done"),
    );
    let long = after(
        sh("long", dir.path(), "head -c 20000 /dev/zero | tr '\\0' x; echo; echo short; exec sleep 60"),
        &[],
        line("short"),
    );
    let supervisor = Supervisor::start(vec![talker, long], policy).unwrap();
    let mut states = supervisor.states();
    wait_for(&mut states, "both ready", all_ready(&["talker", "long"])).await;
    let mut expected: Vec<String> = (0..100).map(|i| format!("line {i:03} to stdout")).collect();
    expected.push("done".into());
    assert_eq!(supervisor.recent_lines("talker"), expected[expected.len() - 10..]);
    // The lines survive in the two files, in order, neither file past the limit.
    let current = logs_dir.join("talker.log");
    let rotated = logs_dir.join("talker.log.1");
    let mut kept = read_lines(&rotated);
    assert!(!kept.is_empty(), "no rotation");
    kept.extend(read_lines(&current));
    assert!(expected.ends_with(&kept) && kept.len() > 20, "{kept:?}");
    for file in [&current, &rotated] {
        assert!(std::fs::metadata(file).unwrap().len() <= 1000, "{}", file.display());
    }
    // A line too long is cut; the next one is whole.
    let long = supervisor.recent_lines("long");
    assert_eq!(long.len(), 2, "{:?}", long.iter().map(String::len).collect::<Vec<_>>());
    assert!(long[0].starts_with(&"x".repeat(8192)) && long[0].len() < 8300 && long[0].ends_with("[line cut]"));
    assert_eq!(long[1], "short");
    assert!(supervisor.recent_lines("nobody").is_empty());
    shutdown_within(supervisor, WAIT).await;
}

#[tokio::test]
async fn children_get_env_null_stdin_and_their_own_process_group() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = after(
        sh("env", dir.path(), "echo \"foo=$FOO\"; echo \"stdin=$(readlink /proc/$$/fd/0)\"; echo \"pgid=$(cut -d' ' -f5 /proc/$$/stat) pid=$$\"; echo end; exec sleep 60"),
        &[],
        line("end"),
    );
    spec.env = vec![("FOO".into(), "bar baz".into())];
    let supervisor = Supervisor::start(vec![spec], fast()).unwrap();
    let mut states = supervisor.states();
    let ready = wait_for(&mut states, "ready", all_ready(&["env"])).await;
    let pid = pid_of(&ready, "env");
    let lines = supervisor.recent_lines("env");
    assert_eq!(lines[..2], ["foo=bar baz", "stdin=/dev/null"]);
    assert_eq!(lines[2], format!("pgid={pid} pid={pid}"));
    assert_ne!(nix::unistd::getpgrp().as_raw() as u32, pid);
    shutdown_within(supervisor, WAIT).await;
}

/// Run by [`children_go_away_when_the_supervisor_is_killed`] in a process of its own.
#[tokio::test]
#[ignore = "a helper: children_go_away_when_the_supervisor_is_killed runs it"]
async fn helper_supervisor_to_be_killed() {
    let dir = PathBuf::from(std::env::var("KAPP_INIT_TEST_HELPER_DIR").expect("run by another test"));
    let service = sh("victim", &dir, "echo $$ > @DIR@/pid.tmp; mv @DIR@/pid.tmp @DIR@/pid; exec sleep 60");
    let _supervisor = Supervisor::start(vec![service], fast()).unwrap();
    tokio::time::sleep(WAIT).await;
}

#[tokio::test]
async fn children_go_away_when_the_supervisor_is_killed() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_supervisor_to_be_killed", "--ignored", "--nocapture"])
        .env("KAPP_INIT_TEST_HELPER_DIR", dir.path())
        .spawn()
        .unwrap();
    let victim: u32 = wait_for_file(&dir.path().join("pid")).await.parse().unwrap();
    // Time for the runtime's threads to come and go: the signal must not follow them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(proc_status(victim).is_some_and(|(state, _)| !state.starts_with('Z')));
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    while let Some((state, _)) = proc_status(victim).filter(|(state, _)| !state.starts_with('Z')) {
        assert!(Instant::now() < deadline, "service {victim} outlived its supervisor ({state})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_service() {
    let spec = |name: &str, deps: &[&str]| after(ServiceSpec::new(name, "/bin/true"), deps, Ready::Started);
    let refuse = |specs: Vec<ServiceSpec>| match Supervisor::start(specs, Policy::default()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    let e = refuse(vec![spec("store", &[]), spec("store", &[])]);
    assert!(matches!(&e, SuperviseError::DuplicateName { service } if service == "store"), "{e}");
    assert!(e.to_string().contains("\"store\""), "{e}");

    let e = refuse(vec![spec("apiserver", &["store"])]);
    assert!(
        matches!(&e, SuperviseError::UnknownDependency { service, dependency } if service == "apiserver" && dependency == "store"),
        "{e}"
    );

    let e = refuse(vec![
        spec("ok", &[]),
        spec("x", &["ok", "z"]),
        spec("y", &["x"]),
        spec("z", &["y"]),
        spec("after-cycle", &["z"]),
    ]);
    let SuperviseError::DependencyCycle { service, cycle } = &e else { panic!("{e}") };
    assert!(["x", "y", "z"].contains(&service.as_str()), "{e}");
    assert_eq!(cycle.len(), 4, "{e}");
    assert_eq!(cycle.first(), cycle.last());
    assert!(e.to_string().contains(" -> "), "{e}");

    let e = refuse(vec![spec("self", &["self"])]);
    assert!(
        matches!(&e, SuperviseError::DependencyCycle { service, cycle } if service == "self" && cycle.len() == 2),
        "{e}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    let policy = Policy { log_dir: Some(file.path().to_path_buf()), ..Policy::default() };
    let e = Supervisor::start(vec![spec("store", &[])], policy).err().expect("a file as log directory");
    assert!(matches!(&e, SuperviseError::LogFile { service, .. } if service == "store"), "{e}");
    assert!(e.to_string().contains(&file.path().display().to_string()), "{e}");

    for bad in ["", "Store", "kube_proxy", "a b"] {
        let e = refuse(vec![spec(bad, &[])]);
        assert!(matches!(&e, SuperviseError::InvalidName { service } if service == bad), "{e}");
    }
}

use super::*;

const BUDGET: Duration = Duration::from_secs(60);

fn op(
    client: u64,
    call: u64,
    ret: Option<u64>,
    key: &str,
    input: Input,
    output: Output,
) -> Operation {
    Operation {
        client,
        call,
        ret,
        key: key.to_string(),
        input,
        output,
    }
}

fn get(client: u64, call: u64, ret: u64, value: Option<&str>) -> Operation {
    op(
        client,
        call,
        Some(ret),
        "k",
        Input::Get,
        Output::Value(value.map(str::to_string)),
    )
}

fn put(client: u64, call: u64, ret: u64, value: &str) -> Operation {
    op(
        client,
        call,
        Some(ret),
        "k",
        Input::Put(value.to_string()),
        Output::Ok,
    )
}

fn del(client: u64, call: u64, ret: u64) -> Operation {
    op(client, call, Some(ret), "k", Input::Delete, Output::Ok)
}

fn cas_input(expect: Option<&str>, new: &str) -> Input {
    Input::Cas {
        expect: expect.map(str::to_string),
        new: new.to_string(),
    }
}

fn cas(
    client: u64,
    call: u64,
    ret: u64,
    expect: Option<&str>,
    new: &str,
    swapped: bool,
) -> Operation {
    op(
        client,
        call,
        Some(ret),
        "k",
        cas_input(expect, new),
        Output::Cas(swapped),
    )
}

fn unknown(client: u64, call: u64, input: Input) -> Operation {
    op(client, call, None, "k", input, Output::Unknown)
}

fn on_key(mut o: Operation, key: &str) -> Operation {
    o.key = key.to_string();
    o
}

#[track_caller]
fn assert_linearizable(history: &[Operation]) {
    match check(history, BUDGET) {
        CheckResult::Linearizable => {}
        other => panic!("expected linearizable, got: {other}"),
    }
}

#[track_caller]
fn assert_violation(history: &[Operation]) -> Violation {
    match check(history, BUDGET) {
        CheckResult::NotLinearizable(v) => v,
        CheckResult::Linearizable => panic!("expected a violation, history was accepted"),
        CheckResult::Timeout => panic!("expected a violation, check timed out"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        get(1, 0, 1, None),
        put(1, 2, 3, "a"),
        get(2, 4, 5, Some("a")),
        put(2, 6, 7, "b"),
        get(1, 8, 9, Some("b")),
        cas(1, 10, 11, Some("b"), "c", true),
        cas(2, 12, 13, Some("b"), "d", false),
        get(2, 14, 15, Some("c")),
    ]);
}

#[test]
fn fresh_key_reads_absent() {
    assert_linearizable(&[get(1, 0, 1, None)]);
    assert_violation(&[get(1, 0, 1, Some("a"))]);
}

#[test]
fn stale_read_after_completed_write_is_not_linearizable() {
    let v = assert_violation(&[
        put(1, 0, 10, "a"),
        put(1, 20, 30, "b"),
        get(2, 40, 50, Some("a")),
    ]);
    assert_eq!(v.key, "k");
    assert_eq!(v.longest_prefix.len(), 2);
    assert_eq!(v.stuck[0], get(2, 40, 50, Some("a")));
}

#[test]
fn concurrent_read_may_see_old_or_new() {
    for seen in ["a", "b"] {
        assert_linearizable(&[
            put(1, 0, 10, "a"),
            put(1, 20, 40, "b"),
            get(2, 25, 35, Some(seen)),
        ]);
    }
    // but not a value that is neither
    assert_violation(&[
        put(1, 0, 10, "a"),
        put(1, 20, 40, "b"),
        get(2, 25, 35, None),
    ]);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    assert_linearizable(&[put(1, 0, 10, "a"), get(2, 10, 20, None)]);
    assert_violation(&[put(1, 0, 10, "a"), get(2, 11, 20, None)]);
}

#[test]
fn new_then_old_reads_overlapping_a_write_is_not_linearizable() {
    // write of "b" spans both reads; the first read sees the new value, the
    // second (starting after the first finished) sees the old one
    let history = [
        put(1, 0, 5, "a"),
        put(1, 10, 100, "b"),
        get(2, 20, 30, Some("b")),
        get(3, 40, 50, Some("a")),
    ];
    assert_violation(&history);
    // the reverse order (old, then new) is fine
    assert_linearizable(&[
        put(1, 0, 5, "a"),
        put(1, 10, 100, "b"),
        get(2, 20, 30, Some("a")),
        get(3, 40, 50, Some("b")),
    ]);
}

#[test]
fn concurrent_cas_both_succeeding_is_not_linearizable() {
    assert_violation(&[
        put(1, 0, 5, "a"),
        cas(2, 10, 20, Some("a"), "b", true),
        cas(3, 12, 22, Some("a"), "c", true),
    ]);
}

#[test]
fn concurrent_cas_one_success_one_failure_is_linearizable() {
    let history = [
        put(1, 0, 5, "a"),
        cas(2, 10, 20, Some("a"), "b", true),
        cas(3, 12, 22, Some("a"), "c", false),
    ];
    assert_linearizable(&history);
    // and the winner is visible afterwards, the loser's value is not
    let mut ok = history.to_vec();
    ok.push(get(1, 30, 31, Some("b")));
    assert_linearizable(&ok);
    let mut bad = history.to_vec();
    bad.push(get(1, 30, 31, Some("c")));
    assert_violation(&bad);
}

#[test]
fn cas_on_absent_key() {
    assert_linearizable(&[cas(1, 0, 1, None, "a", true), get(1, 2, 3, Some("a"))]);
    assert_violation(&[cas(1, 0, 1, None, "a", false)]);
    assert_violation(&[put(1, 0, 1, "x"), cas(1, 2, 3, None, "a", true)]);
}

#[test]
fn unknown_write_later_observed_is_linearizable() {
    assert_linearizable(&[
        put(1, 0, 5, "a"),
        unknown(2, 10, Input::Put("b".into())),
        get(3, 100, 110, Some("b")),
    ]);
}

#[test]
fn unknown_write_never_observed_is_linearizable() {
    assert_linearizable(&[
        put(1, 0, 5, "a"),
        unknown(2, 10, Input::Put("b".into())),
        get(3, 100, 110, Some("a")),
        get(3, 120, 130, Some("a")),
    ]);
    // same with a CAS in the history, so the write is searched, not pruned
    assert_linearizable(&[
        put(1, 0, 5, "a"),
        unknown(2, 10, Input::Put("b".into())),
        get(3, 100, 110, Some("a")),
        cas(3, 120, 130, Some("a"), "c", true),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call() {
    assert_violation(&[
        get(1, 0, 5, Some("b")),
        unknown(2, 10, Input::Put("b".into())),
    ]);
}

#[test]
fn unknown_write_once_observed_stays() {
    // once the unknown write has been seen it cannot be "undone"
    assert_violation(&[
        put(1, 0, 5, "a"),
        unknown(2, 10, Input::Put("b".into())),
        get(3, 100, 110, Some("b")),
        get(3, 120, 130, Some("a")),
    ]);
}

#[test]
fn unknown_cas_may_or_may_not_apply() {
    let base = || vec![put(1, 0, 5, "a"), unknown(2, 10, cas_input(Some("a"), "b"))];
    let mut seen = base();
    seen.push(get(3, 100, 110, Some("b")));
    assert_linearizable(&seen);
    let mut unseen = base();
    unseen.push(get(3, 100, 110, Some("a")));
    assert_linearizable(&unseen);
    // a CAS whose comparison can never hold cannot have swapped
    let mut impossible = vec![put(1, 0, 5, "a"), unknown(2, 10, cas_input(Some("z"), "b"))];
    impossible.push(get(3, 100, 110, Some("b")));
    assert_violation(&impossible);
}

#[test]
fn unknown_outputs_are_ignored_for_unknown_ops() {
    // output of an op with ret None is ignored even if it looks wrong
    let mut o = unknown(2, 10, Input::Put("b".into()));
    o.output = Output::Cas(true);
    assert_linearizable(&[o, get(3, 100, 110, Some("b"))]);
    let mut g = unknown(2, 10, Input::Get);
    g.output = Output::Value(Some("never".into()));
    assert_linearizable(&[g]);
}

#[test]
fn completed_op_with_unknown_output_matches_anything() {
    let mut g = get(2, 10, 20, None);
    g.output = Output::Unknown;
    assert_linearizable(&[put(1, 0, 5, "a"), g]);
}

#[test]
fn mismatched_output_is_not_linearizable() {
    let mut g = get(1, 0, 1, None);
    g.output = Output::Ok;
    assert_violation(&[g]);
}

#[test]
fn read_of_a_value_nobody_wrote_is_not_linearizable() {
    let v = assert_violation(&[
        put(1, 0, 10, "a"),
        put(2, 5, 15, "b"),
        get(3, 8, 20, Some("c")),
        put(1, 30, 40, "d"),
    ]);
    assert_eq!(v.stuck[0], get(3, 8, 20, Some("c")));
}

#[test]
fn delete_semantics() {
    assert_linearizable(&[put(1, 0, 1, "a"), del(1, 2, 3), get(2, 4, 5, None)]);
    assert_violation(&[put(1, 0, 1, "a"), del(1, 2, 3), get(2, 4, 5, Some("a"))]);
    // deleting an absent key is fine
    assert_linearizable(&[del(1, 0, 1), get(1, 2, 3, None)]);
    // after a delete the key is absent again for CAS
    assert_linearizable(&[
        put(1, 0, 1, "a"),
        del(1, 2, 3),
        cas(2, 4, 5, None, "b", true),
        get(2, 6, 7, Some("b")),
    ]);
    assert_violation(&[
        put(1, 0, 1, "a"),
        del(1, 2, 3),
        cas(2, 4, 5, Some("a"), "b", true),
    ]);
    // a read concurrent with a delete may see either
    for seen in [Some("a"), None] {
        assert_linearizable(&[put(1, 0, 1, "a"), del(1, 2, 10), get(2, 3, 8, seen)]);
    }
    // unknown delete, observed
    assert_linearizable(&[
        put(1, 0, 1, "a"),
        unknown(1, 2, Input::Delete),
        get(2, 10, 11, None),
    ]);
    // delete output must be ok
    let mut d = del(1, 0, 1);
    d.output = Output::Cas(true);
    assert_violation(&[d]);
}

#[test]
fn keys_are_independent() {
    let history = [
        on_key(put(1, 0, 10, "a"), "x"),
        on_key(put(2, 0, 10, "b"), "y"),
        on_key(get(1, 20, 30, Some("a")), "x"),
        on_key(get(2, 20, 30, Some("b")), "y"),
        on_key(get(3, 20, 30, None), "z"),
    ];
    assert_linearizable(&history);
    let mut bad = history.to_vec();
    bad.push(on_key(get(3, 40, 50, Some("a")), "y"));
    let v = assert_violation(&bad);
    assert_eq!(v.key, "y");
    assert!(v.longest_prefix.iter().all(|o| o.key == "y"));
    assert!(v.stuck.iter().all(|o| o.key == "y"));
}

#[test]
fn ret_before_call_is_clamped() {
    // ret < call is treated as ret == call
    let history = [
        op(1, 10, Some(5), "k", Input::Put("a".into()), Output::Ok),
        get(2, 10, 20, None),
    ];
    assert_linearizable(&history);
    assert_violation(&[
        op(1, 10, Some(5), "k", Input::Put("a".into()), Output::Ok),
        get(2, 11, 20, None),
    ]);
}

#[test]
fn violation_display_explains_the_failure() {
    let v = assert_violation(&[
        put(1, 0, 10, "a"),
        put(1, 20, 30, "b"),
        get(2, 40, 50, Some("a")),
    ]);
    let text = v.to_string();
    assert!(text.contains("key \"k\""), "{text}");
    assert!(
        text.contains("longest linearizable prefix has 2 operations"),
        "{text}"
    );
    assert!(text.contains("value after that prefix: \"b\""), "{text}");
    assert!(text.contains("client 2 [40, 50] get => \"a\""), "{text}");
    assert!(text.contains("here it would return \"b\""), "{text}");
    let result = CheckResult::NotLinearizable(v);
    assert!(!result.is_linearizable());
    assert!(result.violation().is_some());
}

#[test]
fn violation_display_truncates_long_prefixes() {
    let mut history: Vec<Operation> = (0..50)
        .map(|i| put(1, i * 10, i * 10 + 1, &format!("v{i}")))
        .collect();
    history.push(get(2, 1000, 1001, Some("v3")));
    let v = assert_violation(&history);
    assert_eq!(v.longest_prefix.len(), 50);
    let text = v.to_string();
    assert!(text.contains("the last 10 are"), "{text}");
    assert!(!text.contains("\"v39\""), "{text}");
    assert!(text.contains("\"v40\""), "{text}");
}

/// Tiny xorshift64* generator so the tests need no dependencies.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(splitmix64(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Sim {
    clients: u64,
    ops: usize,
    keys: u64,
    /// Per-mille probability that an operation's outcome is unknown.
    unknown_permille: u64,
}

/// Generates a history from a simulated linearizable store: every operation
/// takes effect at a random point inside its interval (or, for unknown
/// outcomes, at a random later point or never) and outputs are computed by
/// applying the operations in that order to a sequential map.
/// Give every completed operation the output it gets when the operations take effect in
/// the order of `effects` (effect time, tie-break, index into `history`).
fn settle_outputs(history: &mut [Operation], mut effects: Vec<(u64, u64, usize)>) {
    effects.sort_unstable();
    let mut state: HashMap<String, Option<String>> = HashMap::new();
    for (_, _, i) in effects {
        let o = &mut history[i];
        let out = apply(state.entry(o.key.clone()).or_default(), &o.input);
        if o.ret.is_some() {
            o.output = out;
        }
    }
}

fn simulate(seed: u64, sim: &Sim) -> Vec<Operation> {
    let mut rng = XorShift::new(seed);
    let mut next_call: Vec<u64> = (0..sim.clients).map(|_| rng.below(50)).collect();
    let mut written: Vec<Vec<String>> = vec![Vec::new(); sim.keys as usize];
    let mut history = Vec::with_capacity(sim.ops);
    // (linearization time, tie breaker, index) of operations that take effect
    let mut effects: Vec<(u64, u64, usize)> = Vec::new();
    for n in 0..sim.ops {
        let client = (0..sim.clients as usize)
            .min_by_key(|&c| next_call[c])
            .unwrap_or(0);
        let call = next_call[client];
        let k = rng.below(sim.keys) as usize;
        let input = match rng.below(100) {
            0..=44 => Input::Get,
            45..=74 => Input::Put(format!("v{n}")),
            75..=82 => Input::Delete,
            _ => {
                let recent = &written[k][written[k].len().saturating_sub(3)..];
                let pick = rng.below(recent.len() as u64 + 1) as usize;
                Input::Cas {
                    expect: recent.get(pick).cloned(),
                    new: format!("v{n}"),
                }
            }
        };
        if let Input::Put(v) | Input::Cas { new: v, .. } = &input {
            written[k].push(v.clone());
        }
        let duration = 1 + rng.below(100);
        let (ret, effect) = if rng.below(1000) < sim.unknown_permille {
            let effect = (rng.below(2) == 0).then(|| call + rng.below(400));
            next_call[client] = call + 150 + rng.below(20);
            (None, effect)
        } else {
            next_call[client] = call + duration + 1 + rng.below(30);
            (Some(call + duration), Some(call + rng.below(duration + 1)))
        };
        if let Some(t) = effect {
            effects.push((t, rng.next(), history.len()));
        }
        history.push(Operation {
            client: client as u64,
            call,
            ret,
            key: format!("k{k}"),
            input,
            output: Output::Unknown,
        });
    }
    settle_outputs(&mut history, effects);
    history
}

/// Changes a random completed read to return a value nobody ever wrote.
fn corrupt_one_read(history: &mut [Operation], seed: u64) -> Operation {
    let reads: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].input == Input::Get && history[i].ret.is_some())
        .collect();
    let i = reads[XorShift::new(seed).below(reads.len() as u64) as usize];
    history[i].output = Output::Value(Some("never-written".into()));
    history[i].clone()
}

#[test]
fn simulated_histories_are_linearizable_and_corruption_is_caught() {
    for seed in 0..60 {
        let unknown_permille = [0, 30, 100, 200][seed as usize % 4];
        let sim = Sim {
            clients: 1 + seed % 8,
            ops: 300,
            keys: 1 + seed % 3,
            unknown_permille,
        };
        let mut history = simulate(seed, &sim);
        match check(&history, BUDGET) {
            CheckResult::Linearizable => {}
            other => panic!("seed {seed}: simulated history rejected: {other}"),
        }
        let bad = corrupt_one_read(&mut history, seed);
        match check(&history, BUDGET) {
            CheckResult::NotLinearizable(v) => assert_eq!(v.key, bad.key, "seed {seed}"),
            CheckResult::Linearizable => panic!("seed {seed}: corrupted read {bad:?} accepted"),
            CheckResult::Timeout => panic!("seed {seed}: timed out on corrupted history"),
        }
    }
}

/// Reference checker: tries every order of the operations that respects
/// real time (touching intervals count as concurrent), with unknown-outcome
/// operations free to appear anywhere after their call or not at all.
fn brute_force(history: &[Operation]) -> bool {
    fn search(ops: &[Operation], left: &mut Vec<usize>, state: &mut Option<String>) -> bool {
        if left.iter().all(|&i| ops[i].ret.is_none()) {
            return true;
        }
        for k in 0..left.len() {
            let x = &ops[left[k]];
            let blocked = left
                .iter()
                .any(|&r| ops[r].ret.is_some_and(|ret| ret < x.call));
            if blocked {
                continue;
            }
            let mut next = state.clone();
            let out = apply(&mut next, &x.input);
            if x.ret.is_some() && x.output != Output::Unknown && x.output != out {
                continue;
            }
            let i = left.remove(k);
            let mut next_state = next;
            let ok = search(ops, left, &mut next_state);
            left.insert(k, i);
            if ok {
                return true;
            }
        }
        false
    }
    let mut keys: Vec<&str> = history.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter().all(|key| {
        let ops: Vec<Operation> = history.iter().filter(|o| o.key == *key).cloned().collect();
        search(&ops, &mut (0..ops.len()).collect(), &mut None)
    })
}

/// A tiny random history over few values, so that values repeat and
/// operations collide; outputs come from a simulated execution and are
/// sometimes perturbed.
fn tiny_history(rng: &mut XorShift) -> Vec<Operation> {
    let values = ["a", "b", "c"];
    let value = |rng: &mut XorShift| values[rng.below(3) as usize].to_string();
    let maybe_value = |rng: &mut XorShift| (rng.below(4) > 0).then(|| value(rng));
    let n = 2 + rng.below(9) as usize;
    let clients = 1 + rng.below(4);
    let mut next_call = vec![0u64; clients as usize];
    let mut history = Vec::new();
    let mut effects = Vec::new();
    for i in 0..n {
        let client = rng.below(clients) as usize;
        let call = next_call[client] + rng.below(5);
        let duration = rng.below(8);
        let input = match rng.below(4) {
            0 => Input::Get,
            1 => Input::Put(value(rng)),
            2 => Input::Delete,
            _ => Input::Cas {
                expect: maybe_value(rng),
                new: value(rng),
            },
        };
        let unknown = rng.below(4) == 0;
        let (ret, effect) = if unknown {
            next_call[client] = call + 1;
            (None, (rng.below(2) == 0).then(|| call + rng.below(20)))
        } else {
            next_call[client] = call + duration + 1;
            (Some(call + duration), Some(call + rng.below(duration + 1)))
        };
        if let Some(t) = effect {
            effects.push((t, rng.next(), i));
        }
        history.push(Operation {
            client: client as u64,
            call,
            ret,
            key: if rng.below(5) == 0 {
                "other".into()
            } else {
                "k".into()
            },
            input,
            output: Output::Unknown,
        });
    }
    settle_outputs(&mut history, effects);
    if rng.below(3) > 0 {
        let i = rng.below(n as u64) as usize;
        history[i].output = match &history[i].input {
            Input::Get => Output::Value(maybe_value(rng)),
            Input::Cas { .. } => Output::Cas(rng.below(2) == 0),
            _ => Output::Ok,
        };
    }
    history
}

#[test]
fn agrees_with_brute_force_on_tiny_histories() {
    let mut rng = XorShift::new(42);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..30_000 {
        let history = tiny_history(&mut rng);
        let expected = brute_force(&history);
        match check(&history, BUDGET) {
            CheckResult::Linearizable if expected => accepted += 1,
            CheckResult::NotLinearizable(_) if !expected => rejected += 1,
            other => {
                panic!("case {case}: brute force says {expected}, check says {other}\n{history:#?}")
            }
        }
    }
    // both verdicts must be well represented for the comparison to mean much
    assert!(
        accepted > 10_000 && rejected > 3_000,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn large_simulated_histories() {
    let cases = [
        (
            "8 clients, 2000 ops, 5 keys",
            Sim {
                clients: 8,
                ops: 2000,
                keys: 5,
                unknown_permille: 10,
            },
        ),
        (
            "8 clients, 3000 ops, 1 key",
            Sim {
                clients: 8,
                ops: 3000,
                keys: 1,
                unknown_permille: 5,
            },
        ),
    ];
    for (seed, (name, sim)) in cases.iter().enumerate() {
        let mut history = simulate(1000 + seed as u64, sim);
        let start = Instant::now();
        let result = check(&history, BUDGET);
        let ok_time = start.elapsed();
        assert!(result.is_linearizable(), "{name}: {result}");
        corrupt_one_read(&mut history, seed as u64);
        let start = Instant::now();
        let result = check(&history, BUDGET);
        let bad_time = start.elapsed();
        assert!(
            result.violation().is_some(),
            "{name}: corrupted history gave {result:?}"
        );
        eprintln!("{name}: linearizable in {ok_time:?}, violation found in {bad_time:?}");
    }
}

#[test]
fn pathological_history_times_out() {
    // many fully concurrent writes followed by two reads that cannot both be
    // satisfied: refuting it means exploring every subset of the writes
    let mut history: Vec<Operation> = (0..40).map(|i| put(i, 0, 100, &format!("v{i}"))).collect();
    history.push(get(100, 200, 210, Some("v0")));
    history.push(get(100, 220, 230, Some("v1")));
    let start = Instant::now();
    let result = check(&history, Duration::from_millis(50));
    let elapsed = start.elapsed();
    assert!(matches!(result, CheckResult::Timeout), "got {result:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

//! Linearizability checker for concurrent key-value histories.
//!
//! Tests of the replicated store record every client operation (call time,
//! return time, input and output) while leaders are killed and the network is
//! partitioned, then ask [`check`] whether the recorded history could have
//! been produced by a single, atomic key-value map.
//!
//! The algorithm is the one popularised by porcupine: Wing & Gong's search
//! for a linearization, with Lowe's memoization of `(set of linearized
//! operations, model state)` pairs. The history is first split per key
//! (linearizability is compositional, so each key is an independent register)
//! and every partition is searched on its own.
//!
//! Operations with an unknown outcome are what makes such searches blow up
//! (each one may or may not have happened, anywhere after its call), so the
//! search adds a few reductions that are exact, not heuristics: values nobody
//! ever reads are merged, identical unknown-outcome operations are used in
//! call order, an unknown-outcome operation is only placed right before an
//! operation that depends on it, and a configuration is skipped when one
//! using a subset of the unknown-outcome operations was already explored.
//! The test suite compares the verdicts with a brute-force checker.
//!
//! # Semantics
//!
//! * Every key starts absent (`None`).
//! * Operation intervals are closed: two operations whose intervals merely
//!   touch (`a.ret == b.call`) are treated as concurrent.
//! * An operation with `ret: None` has an unknown outcome: it may have taken
//!   effect at any point after its call, or never. It is modelled as returning
//!   at +infinity with an output that matches anything. Unknown-outcome `Get`s
//!   carry no information and are dropped.
//! * An operation whose output does not fit its input (e.g. a `Get` answered
//!   with [`Output::Ok`]) can never be linearized, so it makes the history
//!   non-linearizable. [`Output::Unknown`] on a completed operation matches
//!   any result.
//! * A `ret` earlier than its `call` is invalid input; it is clamped to `call`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// One client operation as recorded by a test.
///
/// Times are taken from any monotonic clock (e.g. nanoseconds since the test
/// started); only their order matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Identifier of the client that issued the operation (informational).
    pub client: u64,
    /// Time the call was issued.
    pub call: u64,
    /// Time the response arrived; `None` means the outcome is unknown
    /// (timeout, connection lost): the operation may or may not have taken
    /// effect, at any time after `call`.
    pub ret: Option<u64>,
    /// Key the operation acts on.
    pub key: String,
    /// What the client asked for.
    pub input: Input,
    /// What the client observed; ignored when `ret` is `None`.
    pub output: Output,
}

/// The request part of an [`Operation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Read the current value.
    Get,
    /// Unconditionally write a value.
    Put(String),
    /// Remove the key.
    Delete,
    /// Compare-and-swap: succeeds iff the current value equals `expect`
    /// (`None` = key absent), in which case the value becomes `new`.
    Cas {
        /// Value the key must currently hold (`None` = absent).
        expect: Option<String>,
        /// Value written when the comparison succeeds.
        new: String,
    },
}

/// The response part of an [`Operation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Result of a [`Input::Get`]: the value read (`None` = absent).
    Value(Option<String>),
    /// Result of a [`Input::Put`] or [`Input::Delete`].
    Ok,
    /// Result of a [`Input::Cas`]: whether it swapped.
    Cas(bool),
    /// No response is known; matches any result.
    Unknown,
}

/// Outcome of [`check`].
#[derive(Clone, Debug)]
pub enum CheckResult {
    /// Every key's history has a valid linearization.
    Linearizable,
    /// Some key's history has none; the violation describes the first such
    /// key (in key order).
    NotLinearizable(Violation),
    /// The time budget ran out before a verdict was reached.
    Timeout,
}

impl CheckResult {
    /// Whether the result is [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// The violation, if the result is [`CheckResult::NotLinearizable`].
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckResult::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => f.write_str("history is linearizable"),
            CheckResult::NotLinearizable(v) => v.fmt(f),
            CheckResult::Timeout => f.write_str("linearizability check timed out"),
        }
    }
}

/// Evidence that the history of one key is not linearizable.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key whose history is not linearizable.
    pub key: String,
    /// The longest linearizable prefix the search found for this key, in
    /// linearization order.
    pub longest_prefix: Vec<Operation>,
    /// Operations that could not be placed after that prefix. The first one
    /// is the operation whose response arrived while it still could not be
    /// linearized; the rest are the other operations that were pending at that
    /// moment (every one of them was tried and led to a dead end).
    pub stuck: Vec<Operation>,
}

/// How many prefix operations [`Violation`]'s `Display` shows.
const SHOWN_PREFIX: usize = 10;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "history of key {:?} is not linearizable", self.key)?;
        let mut state: Option<String> = None;
        for op in &self.longest_prefix {
            apply(&mut state, &op.input);
        }
        let n = self.longest_prefix.len();
        let skip = n.saturating_sub(SHOWN_PREFIX);
        if skip > 0 {
            writeln!(
                f,
                "longest linearizable prefix has {n} operations, the last {SHOWN_PREFIX} are:"
            )?;
        } else {
            writeln!(f, "longest linearizable prefix has {n} operations:")?;
        }
        for (i, op) in self.longest_prefix.iter().enumerate().skip(skip) {
            writeln!(f, "  {:>5}. {}", i + 1, DisplayOp(op))?;
        }
        writeln!(
            f,
            "value after that prefix: {}",
            DisplayValue(state.as_deref())
        )?;
        writeln!(f, "operations that could not be placed next:")?;
        for op in &self.stuck {
            let mut s = state.clone();
            let expected = apply(&mut s, &op.input);
            let note = if op.ret.is_none() || output_matches(&op.output, &expected) {
                "applicable here, but every continuation failed".to_string()
            } else {
                format!("here it would return {}", DisplayOutput(&expected))
            };
            writeln!(f, "  - {}  ({note})", DisplayOp(op))?;
        }
        Ok(())
    }
}

/// Applies `input` to a sequential register holding `state` and returns the
/// output a correct store would give. This is the model the checker uses.
pub fn apply(state: &mut Option<String>, input: &Input) -> Output {
    match input {
        Input::Get => Output::Value(state.clone()),
        Input::Put(v) => {
            *state = Some(v.clone());
            Output::Ok
        }
        Input::Delete => {
            *state = None;
            Output::Ok
        }
        Input::Cas { expect, new } => {
            if state == expect {
                *state = Some(new.clone());
                Output::Cas(true)
            } else {
                Output::Cas(false)
            }
        }
    }
}

/// Whether an observed output is consistent with the model's output.
fn output_matches(observed: &Output, expected: &Output) -> bool {
    *observed == Output::Unknown || observed == expected
}

struct DisplayValue<'a>(Option<&'a str>);

impl fmt::Display for DisplayValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:?}"),
            None => f.write_str("absent"),
        }
    }
}

struct DisplayOutput<'a>(&'a Output);

impl fmt::Display for DisplayOutput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Output::Value(v) => DisplayValue(v.as_deref()).fmt(f),
            Output::Ok => f.write_str("ok"),
            Output::Cas(true) => f.write_str("swapped"),
            Output::Cas(false) => f.write_str("not swapped"),
            Output::Unknown => f.write_str("unknown"),
        }
    }
}

struct DisplayOp<'a>(&'a Operation);

impl fmt::Display for DisplayOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        write!(f, "client {} [{}, ", op.client, op.call)?;
        match op.ret {
            Some(r) => write!(f, "{r}] ")?,
            None => f.write_str("?] ")?,
        }
        match &op.input {
            Input::Get => f.write_str("get")?,
            Input::Put(v) => write!(f, "put {v:?}")?,
            Input::Delete => f.write_str("delete")?,
            Input::Cas { expect, new } => {
                write!(f, "cas {} -> {new:?}", DisplayValue(expect.as_deref()))?
            }
        }
        if op.ret.is_some() {
            write!(f, " => {}", DisplayOutput(&op.output))
        } else {
            f.write_str(" => outcome unknown")
        }
    }
}

/// Checks whether `history` is linearizable with respect to a key-value map
/// in which every key starts absent.
///
/// The history is partitioned by key and each partition is checked on its
/// own; the first non-linearizable key (in key order) is reported.
///
/// `budget` bounds the total wall time of the search. The deadline is polled
/// periodically, so a search that finishes very quickly may still produce a
/// verdict with a zero budget; a search that runs past the deadline returns
/// [`CheckResult::Timeout`].
pub fn check(history: &[Operation], budget: Duration) -> CheckResult {
    let deadline = Instant::now().checked_add(budget);
    let mut partitions: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        if op.ret.is_none() && op.input == Input::Get {
            // an unknown-outcome read neither changes nor constrains anything
            continue;
        }
        partitions.entry(op.key.as_str()).or_default().push(i);
    }
    for (key, indices) in partitions {
        let ops: Vec<&Operation> = indices.iter().map(|&i| &history[i]).collect();
        match check_partition(&ops, deadline) {
            Search::Linearizable => {}
            Search::Timeout => return CheckResult::Timeout,
            Search::Stuck { prefix, stuck } => {
                return CheckResult::NotLinearizable(Violation {
                    key: key.to_string(),
                    longest_prefix: prefix.iter().map(|&i| ops[i].clone()).collect(),
                    stuck: stuck.iter().map(|&i| ops[i].clone()).collect(),
                });
            }
        }
    }
    CheckResult::Linearizable
}

/// Result of searching one partition. Indices refer to the partition's
/// operation list.
enum Search {
    Linearizable,
    Stuck {
        prefix: Vec<usize>,
        stuck: Vec<usize>,
    },
    Timeout,
}

/// Model state: 0 = absent, otherwise an interned value id.
type State = u32;

/// An operation compiled against interned values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    /// Read; `None` matches any value.
    Get(Option<State>),
    /// Write of a value (a `Put`, or a `Delete` writing `0`).
    Write(State),
    /// Compare-and-swap; `out: None` means the result is unknown.
    Cas {
        expect: State,
        new: State,
        out: Option<bool>,
    },
    /// Output inconsistent with input: can never be linearized.
    Never,
}

impl Step {
    /// Applies the step to `state`; `None` if the recorded output is
    /// impossible from that state.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Get(None) => Some(state),
            Step::Get(Some(v)) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas { expect, new, out } => {
                let swaps = state == expect;
                match out {
                    None => Some(if swaps { new } else { state }),
                    Some(true) => swaps.then_some(new),
                    Some(false) => (!swaps).then_some(state),
                }
            }
            Step::Never => None,
        }
    }
}

/// Model state for a value that no operation ever compares against.
const JUNK: State = 1;

/// Assigns small integer ids to values: 0 is "absent", and every value that
/// is written but never observed (no completed `Get` returns it, no `Cas`
/// expects it) maps to [`JUNK`]. Steps only ever compare the state with
/// observed values, so such values are indistinguishable and merging them
/// changes no outcome, while it lets the search treat their writes alike.
struct Interner<'a> {
    ids: HashMap<&'a str, State>,
}

impl<'a> Interner<'a> {
    fn new(ops: &[&'a Operation]) -> Self {
        let mut ids = HashMap::new();
        for op in ops {
            let observed = match (&op.input, &op.output) {
                (Input::Get, Output::Value(Some(v))) if op.ret.is_some() => v,
                (
                    Input::Cas {
                        expect: Some(v), ..
                    },
                    _,
                ) => v,
                _ => continue,
            };
            let next = State::try_from(ids.len() + 2).unwrap_or(State::MAX);
            ids.entry(observed.as_str()).or_insert(next);
        }
        Interner { ids }
    }

    fn id(&self, value: Option<&str>) -> State {
        value.map_or(0, |v| self.ids.get(v).copied().unwrap_or(JUNK))
    }
}

fn compile(op: &Operation, values: &Interner<'_>) -> Step {
    let known = op.ret.is_some();
    match (&op.input, if known { &op.output } else { &Output::Unknown }) {
        (Input::Get, Output::Value(v)) => Step::Get(Some(values.id(v.as_deref()))),
        (Input::Get, Output::Unknown) => Step::Get(None),
        (Input::Put(v), Output::Ok | Output::Unknown) => Step::Write(values.id(Some(v))),
        (Input::Delete, Output::Ok | Output::Unknown) => Step::Write(0),
        (Input::Cas { expect, new }, out @ (Output::Cas(_) | Output::Unknown)) => Step::Cas {
            expect: values.id(expect.as_deref()),
            new: values.id(Some(new)),
            out: match out {
                Output::Cas(b) => Some(*b),
                _ => None,
            },
        },
        _ => Step::Never,
    }
}

/// Fixed-size bitset over operation indices.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }
}

/// Hasher for keys that already are well-mixed 64-bit hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The constraint left by an unknown-outcome operation that was just
/// linearized: `(its step, model state before it)`. See [`worth_it`].
type Obligation = Option<(Step, State)>;

/// Memo of visited search configurations: completed operations linearized,
/// unknown-outcome operations linearized, model state, and obligation.
///
/// Keys are a Zobrist hash of the completed-operation set (maintained
/// incrementally by the search) mixed with the state; buckets hold the exact
/// configurations to rule out collisions.
///
/// Besides exact repeats, the cache prunes dominated configurations. An
/// unknown-outcome operation returns at +infinity and accepts any output, so
/// it can always be linearized last. Hence a configuration that has linearized
/// the same completed operations into the same state with only a *subset* of
/// the unknown-outcome operations, under no obligation or the same one, can do
/// everything this one can; if it was already visited this one need not be.
#[derive(Default)]
struct Cache {
    map: HashMap<u64, Vec<CacheEntry>, BuildHasherDefault<PassThroughHasher>>,
}

struct CacheEntry {
    known: Box<[u64]>,
    unknown: Box<[u64]>,
    state: State,
    obligation: Obligation,
}

/// Whether every bit of `a` is also set in `b`.
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// Configuration of the search, as seen by the cache.
struct Config<'a> {
    known_hash: u64,
    known: &'a Bitset,
    unknown: &'a Bitset,
    state: State,
    obligation: Obligation,
}

impl Cache {
    /// Records the configuration; returns false if it, or a configuration
    /// dominating it, was already present.
    fn insert(&mut self, c: &Config<'_>) -> bool {
        let key = c.known_hash ^ splitmix64(u64::from(c.state) ^ 0x5851_f42d_4c95_7f2d);
        let bucket = self.map.entry(key).or_default();
        let comparable = |e: &CacheEntry| e.state == c.state && *e.known == *c.known.words;
        if bucket.iter().any(|e| {
            comparable(e)
                && (e.obligation.is_none() || e.obligation == c.obligation)
                && is_subset(&e.unknown, &c.unknown.words)
        }) {
            return false;
        }
        // entries dominated by the new one are no longer needed
        bucket.retain(|e| {
            !(comparable(e)
                && (c.obligation.is_none() || e.obligation == c.obligation)
                && is_subset(&c.unknown.words, &e.unknown))
        });
        bucket.push(CacheEntry {
            known: c.known.words.clone().into_boxed_slice(),
            unknown: c.unknown.words.clone().into_boxed_slice(),
            state: c.state,
            obligation: c.obligation,
        });
        true
    }
}

const NIL: usize = usize::MAX;

/// How many search iterations run between deadline checks (a power of two).
const DEADLINE_POLL: u64 = 1024;

/// Drops unknown-outcome writes that provably cannot matter.
///
/// In a partition without compare-and-swap, an unknown-outcome write whose
/// value no completed read observed can always be assumed never to have
/// happened: the only operations between it and the next write would be
/// reads, and none of them can have returned its value. Dropping such writes
/// keeps failing searches from exploring every subset of them.
fn prune_unobserved_writes(ops: &[&Operation], steps: &[Step]) -> Vec<bool> {
    let mut keep = vec![true; ops.len()];
    if steps.iter().any(|s| matches!(s, Step::Cas { .. })) {
        return keep;
    }
    let observed: HashSet<State> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Get(Some(v)) => Some(*v),
            _ => None,
        })
        .collect();
    for (i, (op, step)) in ops.iter().zip(steps).enumerate() {
        if let (None, Step::Write(v)) = (op.ret, step) {
            if !observed.contains(v) {
                keep[i] = false;
            }
        }
    }
    keep
}

/// Doubly linked lists over nodes `0..len`, supporting the "dancing links"
/// trick: a node unlinked keeps its own pointers, so undoing removals in
/// reverse order restores the lists exactly.
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Links {
    fn new(len: usize) -> Self {
        Links {
            next: vec![NIL; len],
            prev: vec![NIL; len],
        }
    }

    /// Appends `node` after `tail`; returns `node` as the new tail.
    fn append(&mut self, tail: usize, node: usize) -> usize {
        self.next[tail] = node;
        self.prev[node] = tail;
        node
    }

    /// Removes `node` (never a list head) from its list.
    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Puts back the most recently unlinked node still out of its list.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }
}

/// One choice on the search stack.
struct Frame {
    /// The operation linearized.
    op: usize,
    /// Model state before it.
    prev_state: State,
    /// For unknown-outcome operations: the time of the first pending return
    /// when the choice was made (bounds which of them were candidates).
    limit: u64,
}

/// Where the search scans for the next candidate.
#[derive(Clone, Copy)]
enum Cursor {
    /// A node of the list of completed operations' call and return events.
    Known(usize),
    /// A node of a list of unknown-outcome classes, and the time of the first
    /// pending return: classes whose next member was called no later than
    /// that offer a candidate. The write classes are scanned first, then the
    /// compare-and-swap classes expecting the current state (`true` once
    /// scanning those).
    Unknown(usize, u64, bool),
}

/// Whether linearizing `next` (whose step gives `new_state`) right after the
/// unknown-outcome operation named by `obligation` is worth exploring.
///
/// Any linearization can be rewritten so that no unknown-outcome operation
/// `w` (taken from state `s`) is immediately followed by an operation `x`
/// that
/// * gives the same state whether or not `w` came first (`w` can be moved to
///   the end instead, where it never matters), or
/// * is a completed operation that could equally run first from `s`, with
///   `w` after it ending in the same state (the two can be swapped).
///
/// Each rewrite either drops an unknown-outcome operation or moves one past
/// a completed operation, so rewriting terminates; the search therefore only
/// has to look for linearizations in this form. This keeps it from trying
/// every subset of unknown-outcome writes nobody needed.
fn worth_it(obligation: Obligation, next: Step, completed: bool, new_state: State) -> bool {
    let Some((w, s)) = obligation else {
        return true;
    };
    match next.apply(s) {
        None => true,
        Some(s1) => s1 != new_state && !(completed && w.apply(s1) == Some(new_state)),
    }
}

/// What the completed candidates of a configuration could use an
/// unknown-outcome operation for (see [`worth_it`]): an operation moving the
/// state from `s` to `w` can only be followed by a candidate that reads `w`
/// (a `Get` of it, or a `Cas` expecting it), or by a completed `Cas` that did
/// not swap although it expects `s`. (Unknown-outcome candidates are
/// checked separately.)
#[derive(Default)]
struct Demand {
    /// Values some candidate reads.
    reads: Vec<State>,
    /// Whether a completed candidate `Cas` needs the current state changed.
    change: bool,
}

impl Demand {
    fn add(&mut self, step: Step, state: State) {
        match step {
            Step::Get(Some(v))
            | Step::Cas {
                expect: v,
                out: Some(true),
                ..
            } => self.reads.push(v),
            Step::Cas {
                expect,
                out: Some(false),
                ..
            } => self.change |= expect == state,
            Step::Cas {
                expect, out: None, ..
            } => {
                self.reads.push(expect);
                self.change |= expect == state;
            }
            Step::Get(None) | Step::Write(_) | Step::Never => {}
        }
    }
}

/// Unknown-outcome operations of a partition, grouped into classes of
/// identical steps. Members of a class are interchangeable, and the
/// earlier-called one can go wherever a later one can, so each class is used
/// in call order. Classes live in lists sorted by first call: one for
/// writes, and one per expected value for compare-and-swaps (which only do
/// something when the state equals that value).
struct Unknowns {
    /// Members of each class, sorted by call.
    members: Vec<Vec<usize>>,
    /// How many members of each class are linearized.
    used: Vec<usize>,
    /// Class of each unknown-outcome operation.
    class_of: HashMap<usize, usize>,
    /// Bit of each unknown-outcome operation in the configuration's set.
    bit: HashMap<usize, usize>,
    /// Class `c` is node `c`; list heads follow: the write list first, then
    /// one per compare-and-swap expectation.
    links: Links,
    /// Head node of the compare-and-swap list for each expected value.
    cas_heads: HashMap<State, usize>,
}

impl Unknowns {
    fn new(ops: &[usize], steps: &[Step], call: &[u64]) -> Self {
        let mut sorted = ops.to_vec();
        sorted.sort_by_key(|&i| (call[i], i));
        let mut class_of_step: HashMap<Step, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut class_of = HashMap::new();
        for &op in &sorted {
            let class = *class_of_step.entry(steps[op]).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[class].push(op);
            class_of.insert(op, class);
        }
        let bit = members
            .iter()
            .flatten()
            .enumerate()
            .map(|(b, &op)| (op, b))
            .collect();
        let classes = members.len();
        let mut expects: Vec<State> = members
            .iter()
            .filter_map(|m| match steps[m[0]] {
                Step::Cas { expect, .. } => Some(expect),
                _ => None,
            })
            .collect();
        expects.sort_unstable();
        expects.dedup();
        let cas_heads: HashMap<State, usize> = expects
            .iter()
            .enumerate()
            .map(|(i, &e)| (e, classes + 1 + i))
            .collect();
        let mut links = Links::new(classes + 1 + expects.len());
        let mut tails: HashMap<usize, usize> = HashMap::new();
        for (class, m) in members.iter().enumerate() {
            let head = match steps[m[0]] {
                Step::Cas { expect, .. } => cas_heads[&expect],
                _ => classes,
            };
            let tail = tails.entry(head).or_insert(head);
            *tail = links.append(*tail, class);
        }
        Unknowns {
            used: vec![0; classes],
            members,
            class_of,
            bit,
            links,
            cas_heads,
        }
    }

    fn write_list(&self) -> usize {
        self.members.len()
    }

    /// First class node of the list after `head`, or `NIL`.
    fn first(&self, head: Option<usize>) -> usize {
        head.map_or(NIL, |h| self.links.next[h])
    }

    /// Next unused member of `class` if it was called by `limit`.
    fn candidate(&self, class: usize, call: &[u64], limit: u64) -> Option<usize> {
        let op = self.members[class][self.used[class]];
        (call[op] <= limit).then_some(op)
    }

    /// Whether the list continues with classes called by `limit` at `node`.
    fn in_range(&self, node: usize, call: &[u64], limit: u64) -> bool {
        node != NIL && call[self.members[node][0]] <= limit
    }

    fn take(&mut self, class: usize) {
        self.used[class] += 1;
        if self.used[class] == self.members[class].len() {
            self.links.unlink(class);
        }
    }

    fn give_back(&mut self, class: usize) {
        if self.used[class] == self.members[class].len() {
            self.links.relink(class);
        }
        self.used[class] -= 1;
    }

    /// Whether an unused compare-and-swap expecting `value` is available.
    fn cas_reads(&self, value: State, call: &[u64], limit: u64) -> bool {
        let mut node = self.first(self.cas_heads.get(&value).copied());
        while self.in_range(node, call, limit) {
            if self.candidate(node, call, limit).is_some() {
                return true;
            }
            node = self.links.next[node];
        }
        false
    }
}

/// Runs the WGL search over the operations of one key.
///
/// Completed operations live in a doubly linked list of call and return
/// events sorted by time (calls first on ties, so touching intervals count
/// as concurrent). The candidates for the next linearization point are the
/// calls before the first return in the list; choosing one lifts its call
/// and return out of the list, and reaching a return means the operation
/// owning it cannot be placed, so the search backtracks.
///
/// Unknown-outcome operations return at +infinity, so they are kept out of
/// the list (see [`Unknowns`]): they are candidates whenever their call
/// precedes the first pending return. They are tried only after every
/// completed candidate, never when they would not change the state, and only
/// where [`worth_it`] allows some candidate to follow. The search succeeds
/// once every completed operation is linearized: the remaining
/// unknown-outcome operations can go last.
fn check_partition(all_ops: &[&Operation], deadline: Option<Instant>) -> Search {
    let values = Interner::new(all_ops);
    let all_steps: Vec<Step> = all_ops.iter().map(|op| compile(op, &values)).collect();
    let keep = prune_unobserved_writes(all_ops, &all_steps);
    // `orig[i]` is the index in `all_ops` of the i-th kept operation.
    let orig: Vec<usize> = (0..all_ops.len()).filter(|&i| keep[i]).collect();
    let steps: Vec<Step> = orig.iter().map(|&i| all_steps[i]).collect();
    let n = orig.len();
    let call: Vec<u64> = orig.iter().map(|&o| all_ops[o].call).collect();
    // `None` = unknown outcome; a return before the call is clamped to it
    let ret: Vec<Option<u64>> = orig
        .iter()
        .map(|&o| all_ops[o].ret.map(|r| r.max(all_ops[o].call)))
        .collect();

    // Events of completed operations: `(time, is_return, op)`, sorted.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for i in 0..n {
        if let Some(r) = ret[i] {
            events.push((call[i], false, i));
            events.push((r, true, i));
        }
    }
    events.sort_unstable();
    let known_total = events.len() / 2;
    if known_total == 0 {
        return Search::Linearizable;
    }
    // Event list: node 0 is the head, event `j` is node `j + 1`.
    let mut list = Links::new(events.len() + 1);
    let mut call_node = vec![NIL; n];
    let mut ret_node = vec![NIL; n];
    for (j, &(_, is_ret, op)) in events.iter().enumerate() {
        list.append(j, j + 1);
        if is_ret {
            ret_node[op] = j + 1;
        } else {
            call_node[op] = j + 1;
        }
    }
    let event = |node: usize| events[node - 1];

    let unknown_ops: Vec<usize> = (0..n).filter(|&i| ret[i].is_none()).collect();
    let mut unknowns = Unknowns::new(&unknown_ops, &steps, &call);

    let zobrist: Vec<u64> = (0..n as u64)
        .map(|i| splitmix64(i ^ 0x2545_f491_4f6c_dd1d))
        .collect();
    let mut known_done = Bitset::new(n);
    let mut known_count = 0;
    let mut known_hash = 0u64;
    let mut unknown_done = Bitset::new(unknown_ops.len());
    let mut cache = Cache::default();
    let mut stack: Vec<Frame> = Vec::with_capacity(n);
    let mut best: Vec<usize> = Vec::new();
    let mut state: State = 0;
    let mut iterations = 0u64;
    let mut cursor = Cursor::Known(list.next[0]);
    // demand of the current configuration, computed when first needed
    let mut demand: Option<Demand> = None;

    while known_count < known_total {
        iterations += 1;
        if iterations & (DEADLINE_POLL - 1) == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return Search::Timeout;
        }
        let obligation = match stack.last() {
            Some(f) if ret[f.op].is_none() => Some((steps[f.op], f.prev_state)),
            _ => None,
        };
        let (frame, new_state) = match cursor {
            Cursor::Known(node) => {
                let (time, is_ret, op) = event(node);
                if is_ret {
                    // completed candidates exhausted; try unknown-outcome ones
                    cursor =
                        Cursor::Unknown(unknowns.first(Some(unknowns.write_list())), time, false);
                    demand = None;
                    continue;
                }
                cursor = Cursor::Known(list.next[node]);
                let Some(new_state) = steps[op].apply(state) else {
                    continue;
                };
                if !worth_it(obligation, steps[op], true, new_state) {
                    continue;
                }
                known_done.set(op);
                let config = Config {
                    known_hash: known_hash ^ zobrist[op],
                    known: &known_done,
                    unknown: &unknown_done,
                    state: new_state,
                    obligation: None,
                };
                if !cache.insert(&config) {
                    known_done.clear(op);
                    continue;
                }
                known_hash ^= zobrist[op];
                known_count += 1;
                list.unlink(call_node[op]);
                list.unlink(ret_node[op]);
                (
                    Frame {
                        op,
                        prev_state: state,
                        limit: 0,
                    },
                    new_state,
                )
            }
            Cursor::Unknown(mut node, limit, mut in_cas) => {
                // find the next class offering a promising candidate
                let mut found = None;
                loop {
                    if !unknowns.in_range(node, &call, limit) {
                        if in_cas {
                            break;
                        }
                        // writes done; compare-and-swaps expecting the state
                        in_cas = true;
                        node = unknowns.first(unknowns.cas_heads.get(&state).copied());
                        continue;
                    }
                    let class = node;
                    node = unknowns.links.next[node];
                    let Some(op) = unknowns.candidate(class, &call, limit) else {
                        continue;
                    };
                    let Some(new_state) = steps[op].apply(state) else {
                        continue;
                    };
                    if new_state == state || !worth_it(obligation, steps[op], false, new_state) {
                        continue;
                    }
                    let d = demand.get_or_insert_with(|| {
                        let mut d = Demand::default();
                        let mut node = list.next[0];
                        while node != NIL && !event(node).1 {
                            d.add(steps[event(node).2], state);
                            node = list.next[node];
                        }
                        d
                    });
                    if d.change
                        || d.reads.contains(&new_state)
                        || unknowns.cas_reads(new_state, &call, limit)
                    {
                        found = Some((class, op, new_state));
                        break;
                    }
                }
                cursor = Cursor::Unknown(node, limit, in_cas);
                if let Some((class, op, new_state)) = found {
                    unknown_done.set(unknowns.bit[&op]);
                    let config = Config {
                        known_hash,
                        known: &known_done,
                        unknown: &unknown_done,
                        state: new_state,
                        obligation: Some((steps[op], state)),
                    };
                    if !cache.insert(&config) {
                        unknown_done.clear(unknowns.bit[&op]);
                        continue;
                    }
                    unknowns.take(class);
                    (
                        Frame {
                            op,
                            prev_state: state,
                            limit,
                        },
                        new_state,
                    )
                } else {
                    // every candidate failed: undo the most recent choice and
                    // resume the scan after it
                    let Some(frame) = stack.pop() else {
                        return stuck(&best, &call, &ret, &orig);
                    };
                    state = frame.prev_state;
                    demand = None;
                    let op = frame.op;
                    if ret[op].is_none() {
                        let class = unknowns.class_of[&op];
                        unknowns.give_back(class);
                        unknown_done.clear(unknowns.bit[&op]);
                        let in_cas = matches!(steps[op], Step::Cas { .. });
                        cursor = Cursor::Unknown(unknowns.links.next[class], frame.limit, in_cas);
                    } else {
                        known_done.clear(op);
                        known_hash ^= zobrist[op];
                        known_count -= 1;
                        list.relink(ret_node[op]);
                        list.relink(call_node[op]);
                        cursor = Cursor::Known(list.next[call_node[op]]);
                    }
                    continue;
                }
            }
        };
        stack.push(frame);
        state = new_state;
        if stack.len() > best.len() {
            best.clear();
            best.extend(stack.iter().map(|f| f.op));
        }
        cursor = Cursor::Known(list.next[0]);
    }
    // only unknown-outcome operations remain; they can all go last
    Search::Linearizable
}

/// Builds the failure report from the deepest linearized prefix: the
/// operation with the earliest pending return comes first, followed by the
/// other operations called before that return.
fn stuck(best: &[usize], call: &[u64], ret: &[Option<u64>], orig: &[usize]) -> Search {
    let mut in_prefix = vec![false; call.len()];
    for &i in best {
        in_prefix[i] = true;
    }
    let remaining: Vec<usize> = (0..call.len()).filter(|&i| !in_prefix[i]).collect();
    let ret_time = |i: usize| ret[i].unwrap_or(u64::MAX);
    let mut stuck = Vec::new();
    if let Some(&blocker) = remaining.iter().min_by_key(|&&i| (ret_time(i), i)) {
        stuck.push(blocker);
        let mut pending: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|&i| i != blocker && call[i] <= ret_time(blocker))
            .collect();
        pending.sort_by_key(|&i| (call[i], i));
        stuck.extend(pending);
    }
    Search::Stuck {
        prefix: best.iter().map(|&i| orig[i]).collect(),
        stuck: stuck.into_iter().map(|i| orig[i]).collect(),
    }
}

#[cfg(test)]
mod tests;

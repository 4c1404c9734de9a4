//! The store as real `kapp store` processes on loopback: SIGKILL of the leader loses no
//! acknowledged write, a killed member rejoins from its disk, and a damaged data directory
//! is refused at start with a message naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapp_e2e::{free_ports, Proc};
use kapp_store_client::{ClientConfig, StoreClient, CLIENT_GROUP, PEER_GROUP};
use kapp_tls::pki::Ca;

struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
    procs: BTreeMap<u64, Proc>,
    client_pem: kapp_tls::Pem,
}

impl Cluster {
    fn new(dir: &Path, n: usize) -> Cluster {
        let ca = Ca::generate("e2e").unwrap();
        let member = ca.issue("store", &[PEER_GROUP, CLIENT_GROUP], &["127.0.0.1"]).unwrap();
        member.write_files(&dir.join("ca.pem"), &dir.join("member.pem"), &dir.join("member.key")).unwrap();
        let client_pem = ca.issue("apiserver", &[CLIENT_GROUP], &[]).unwrap();
        Cluster { dir: dir.to_path_buf(), ports: free_ports(n), procs: BTreeMap::new(), client_pem }
    }

    fn members_arg(&self) -> String {
        self.ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",")
    }

    fn args(&self, id: u64) -> Vec<String> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        vec![
            "store".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.ports[id as usize - 1]),
            "--members".into(),
            self.members_arg(),
            "--data-dir".into(),
            d(&format!("m{id}")),
            "--ca".into(),
            d("ca.pem"),
            "--cert".into(),
            d("member.pem"),
            "--key".into(),
            d("member.key"),
            "--heartbeat-ms".into(),
            "50".into(),
            "--election-ms".into(),
            "300".into(),
        ]
    }

    fn start(&mut self, id: u64) {
        let log = self.dir.join(format!("m{id}.log"));
        let p = Proc::spawn(&format!("store {id}"), &self.args(id), &log).unwrap();
        self.procs.insert(id, p);
    }

    fn client(&self) -> StoreClient {
        let eps = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut cfg = ClientConfig::new(eps, self.client_pem.clone());
        cfg.attempt_timeout = Duration::from_secs(2);
        cfg.deadline = Duration::from_secs(30);
        StoreClient::new(cfg).unwrap()
    }

    async fn leader(&self, c: &StoreClient) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(st) = c.status().await {
                if let Some(l) = st.leader {
                    if self.procs.contains_key(&l) {
                        return l;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 3);
    for id in 1..=3 {
        c.start(id);
    }
    let s = c.client();
    let mut acked = BTreeMap::new();
    // Writers keep going while the leader is killed.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in 0..300 {
                let k = format!("/acked/{i:04}");
                if s.put(k.clone(), format!("v{i}")).await.is_ok() {
                    acked.insert(k, format!("v{i}"));
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.leader(&s).await;
    c.procs.get_mut(&leader).unwrap().kill();
    c.procs.remove(&leader);
    acked.extend(writer.await.unwrap());
    assert!(acked.len() >= 250, "writes kept being acknowledged after the kill: {}", acked.len());
    let new_leader = c.leader(&s).await;
    assert_ne!(new_leader, leader);

    // The killed member comes back from its disk and catches up.
    c.start(leader);
    let target = s.status().await.unwrap().revision;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(st) = s.member_status(leader as usize - 1).await {
            if st.revision >= target {
                break;
            }
        }
        assert!(Instant::now() < deadline, "restarted member did not catch up:\n{}", c.procs[&leader].output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = s.list("/acked/").await.unwrap();
    let got: BTreeMap<String, String> = all
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap()))
        .collect();
    for (k, v) in &acked {
        assert_eq!(got.get(k), Some(v), "acknowledged write {k} lost");
    }
    // Kill everyone at once and restart: still all there.
    for p in c.procs.values_mut() {
        p.kill();
    }
    c.procs.clear();
    for id in 1..=3 {
        c.start(id);
    }
    let all = s.list("/acked/").await.unwrap();
    assert!(all.kvs.len() >= acked.len());
    for kv in &all.kvs {
        let k = String::from_utf8(kv.key.clone()).unwrap();
        if let Some(v) = acked.get(&k) {
            assert_eq!(v.as_bytes(), kv.value.as_slice());
        }
    }
}

/// Start member 1 of a one-member cluster, write, stop it cleanly; returns the cluster.
async fn one_member_with_data(dir: &Path) -> Cluster {
    let mut c = Cluster::new(dir, 1);
    c.start(1);
    let s = c.client();
    for i in 0..200 {
        s.put(format!("/d/{i}"), vec![b'x'; 100]).await.unwrap();
    }
    let st = c.procs.get_mut(&1).unwrap().terminate(Duration::from_secs(20)).unwrap();
    assert!(st.success(), "clean stop: {}", c.procs[&1].output());
    c.procs.clear();
    c
}

fn start_expecting_refusal(c: &mut Cluster, must_mention: &str) {
    c.start(1);
    let p = c.procs.get_mut(&1).unwrap();
    let st = p.wait(Duration::from_secs(20)).unwrap_or_else(|_| panic!("a damaged store must not start:\n{}", p.output()));
    assert!(!st.success());
    let out = p.output();
    assert!(out.contains(must_mention), "the refusal should name {must_mention}:\n{out}");
    c.procs.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_directory_is_refused_naming_the_file() {
    // A truncated manifest.
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_member_with_data(dir.path()).await;
    let db = dir.path().join("m1/store/db");
    let manifest = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-"))
        .unwrap();
    let len = std::fs::metadata(&manifest).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&manifest).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    start_expecting_refusal(&mut c, "MANIFEST");

    // A missing CURRENT file.
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_member_with_data(dir.path()).await;
    std::fs::remove_file(dir.path().join("m1/store/db/CURRENT")).unwrap();
    start_expecting_refusal(&mut c, "CURRENT");

    // Bytes flipped in the middle of the write-ahead log.
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_member_with_data(dir.path()).await;
    let db = dir.path().join("m1/store/db");
    let wal = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&wal, bytes).unwrap();
    start_expecting_refusal(&mut c, ".log");

    // A data directory that belongs to another member.
    let dir = tempfile::tempdir().unwrap();
    let c = one_member_with_data(dir.path()).await;
    let mut args = c.args(1);
    args[2] = "7".into();
    args[6] = format!("7=127.0.0.1:{}", c.ports[0]);
    let mut p = Proc::spawn("wrong member", &args, &dir.path().join("wrong.log")).unwrap();
    assert!(!p.wait(Duration::from_secs(20)).unwrap().success());
    assert!(p.output().contains("kapp-store.json"), "{}", p.output());
}

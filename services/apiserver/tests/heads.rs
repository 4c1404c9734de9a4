//! `GET /kapp/heads`: every store member's raft view, for every authenticated identity
//! (viewers included), read-only; a stopped member is reported unreachable, not omitted.

use kapp_api::heads::{HeadList, PATH};
use kapp_apiserver::{NODES, VIEWERS};
use kapp_store::testing::TestCluster;

mod common;
use common::call;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_reads_the_heads_and_a_stopped_member_shows_as_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = TestCluster::start(3, dir.path()).await;
    let leader = store.wait_leader(std::time::Duration::from_secs(10)).await;
    let (api, viewer) = common::start(&store, VIEWERS, None, None).await;
    let j = "application/json";

    let (code, body) = call(&viewer, "GET", PATH, None, j).await;
    assert_eq!(code, 200, "{body}");
    let heads: HeadList = serde_json::from_value(body).unwrap();
    assert_eq!((heads.kind.as_str(), heads.api_version.as_str()), ("HeadList", "kapp.dev/v1"));
    assert_eq!(heads.items.iter().map(|h| h.id).collect::<Vec<_>>(), [Some(1), Some(2), Some(3)]);
    assert!(heads.items.iter().all(|h| h.reachable && h.voter && h.initialized && h.leader == Some(leader)), "{heads:?}");
    assert_eq!(heads.items.iter().filter(|h| h.state == "Leader").count(), 1);

    // Nodes read it too; nobody writes it; an identity of no kapp group reads nothing.
    let node = common::client_as(&store, &api, "system:node:n1", &[NODES]);
    assert_eq!(call(&node, "GET", PATH, None, j).await.0, 200);
    assert_eq!(call(&viewer, "POST", PATH, Some(serde_json::json!({})), j).await.0, 405);
    let stranger = common::client_as(&store, &api, "someone", &["other"]);
    assert_eq!(call(&stranger, "GET", PATH, None, j).await.0, 403);

    // A stopped follower: still listed, with its id and the error.
    let down = (1..=3).find(|i| *i != leader).unwrap();
    store.stop(down).await;
    let (code, body) = call(&viewer, "GET", PATH, None, j).await;
    assert_eq!(code, 200);
    let heads: HeadList = serde_json::from_value(body).unwrap();
    let h = heads.items.iter().find(|h| h.id == Some(down)).expect("the stopped member is listed");
    assert!(!h.reachable && !h.error.is_empty() && h.voter, "{h:?}");
    assert_eq!(heads.items.iter().filter(|h| h.reachable).count(), 2);

    api.shutdown().await;
    store.shutdown().await;
}

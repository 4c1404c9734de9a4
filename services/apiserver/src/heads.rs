//! `GET /kapp/heads` ([`kapp_api::heads::PATH`]): each store member's own view of raft (role,
//! term, commit and apply indexes, revision), asked of every member this apiserver's store
//! client knows, the way `kapp store-status` asks them. Read-only; every authenticated
//! identity may read it (viewers included): it holds no object data.

use std::time::Duration;

use http::{Method, StatusCode};
use kapp_api::heads::{HeadList, HeadStatus, API_VERSION, KIND};
use kapp_store_client::wire::MemberStatus;
use kapp_store_client::StoreClient;
use kapp_tls::Body;

/// How long one member may take to answer before it is reported unreachable.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// Answer a request for the head list.
pub async fn serve(store: &StoreClient, method: &Method) -> http::Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return super::fail(405, "MethodNotAllowed", &format!("{method} is not supported on {}: it is read-only", kapp_api::heads::PATH));
    }
    super::json_response(StatusCode::OK, &serde_json::to_value(heads(store).await).expect("json serialises"))
}

/// Ask every configured member for its status, at once, each within [`MEMBER_TIMEOUT`].
pub async fn heads(store: &StoreClient) -> HeadList {
    let endpoints = store.endpoints().to_vec();
    let asks = (0..endpoints.len()).map(|i| async move {
        match tokio::time::timeout(MEMBER_TIMEOUT, store.member_status(i)).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {MEMBER_TIMEOUT:?}")),
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    HeadList { api_version: API_VERSION.into(), kind: KIND.into(), kapp_version: env!("CARGO_PKG_VERSION").into(), items: merge(&endpoints, answers) }
}

/// One entry per member: the members that answered, those that did not, and those in the
/// membership this apiserver has no endpoint for. Pure, so it is tested without a cluster.
pub fn merge(endpoints: &[String], answers: Vec<Result<MemberStatus, String>>) -> Vec<HeadStatus> {
    // The membership as the leader sees it, else as any member that answered does.
    let membership = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .max_by_key(|s| (s.state == "Leader", s.term))
        .map(|s| s.members.clone())
        .unwrap_or_default();
    let mut out: Vec<HeadStatus> = Vec::new();
    for (ep, answer) in endpoints.iter().zip(answers) {
        let head = match answer {
            Ok(st) => HeadStatus {
                id: Some(st.id),
                endpoint: ep.clone(),
                reachable: true,
                error: String::new(),
                voter: membership.iter().any(|m| m.id == st.id && m.voter),
                state: st.state,
                initialized: st.initialized,
                leader: st.leader,
                term: st.term,
                last_log_index: st.last_log_index,
                committed: st.committed,
                applied: st.applied,
                revision: st.revision,
            },
            Err(error) => {
                let known = membership.iter().find(|m| &m.addr == ep);
                HeadStatus { id: known.map(|m| m.id), endpoint: ep.clone(), error, voter: known.is_some_and(|m| m.voter), ..HeadStatus::default() }
            }
        };
        if !out.iter().any(|h| h.id.is_some() && h.id == head.id) {
            out.push(head);
        }
    }
    for m in &membership {
        if !out.iter().any(|h| h.id == Some(m.id)) {
            out.push(HeadStatus { id: Some(m.id), endpoint: m.addr.clone(), voter: m.voter, error: "not among this apiserver's store endpoints".into(), ..HeadStatus::default() });
        }
    }
    out.sort_by_key(|h| (h.id.is_none(), h.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapp_store_client::wire::MemberInfo;

    fn member(id: u64, state: &str, leader: u64) -> MemberStatus {
        MemberStatus {
            id,
            state: state.into(),
            initialized: true,
            leader: Some(leader),
            term: 4,
            last_log_index: Some(20),
            committed: Some(20),
            applied: Some(20),
            revision: 9,
            compacted: 0,
            members: (1..=3).map(|i| MemberInfo { id: i, addr: format!("h{i}:2379"), voter: true }).collect(),
        }
    }

    #[test]
    fn a_silent_member_is_named_from_the_membership() {
        let eps: Vec<String> = (1..=3).map(|i| format!("h{i}:2379")).collect();
        let heads = merge(&eps, vec![Err("connection refused".into()), Ok(member(2, "Leader", 2)), Ok(member(3, "Follower", 2))]);
        assert_eq!(heads.len(), 3);
        assert_eq!((heads[0].id, heads[0].reachable, heads[0].voter, heads[0].error.as_str()), (Some(1), false, true, "connection refused"));
        assert_eq!((heads[1].id, heads[1].state.as_str(), heads[1].leader), (Some(2), "Leader", Some(2)));
    }

    #[test]
    fn members_without_an_endpoint_are_listed_and_unknown_ones_last() {
        let heads = merge(&["h2:2379".into(), "elsewhere:1".into()], vec![Ok(member(2, "Leader", 2)), Err("timed out".into())]);
        let ids: Vec<Option<u64>> = heads.iter().map(|h| h.id).collect();
        assert_eq!(ids, [Some(1), Some(2), Some(3), None]);
        assert_eq!(heads[0].error, "not among this apiserver's store endpoints");
        assert_eq!(heads[3].endpoint, "elsewhere:1");
    }
}

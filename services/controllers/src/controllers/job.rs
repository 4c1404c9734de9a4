//! Job: run pods until `completions` succeed, `parallelism` at a time; failed pods are
//! replaced after a backoff (doubling to 6 min) until `backoffLimit` failures, then the
//! Job fails; `activeDeadlineSeconds` bounds its run; `ttlSecondsAfterFinished` deletes it.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{delete_exact, propagation, requeue, Ctx};
use crate::pods::{controller_ref, from_template, is_active, is_ready, now_unix, phase};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

const MAX_BACKOFF: Duration = Duration::from_secs(360);

fn finished(job: &Job) -> Option<(&str, i64)> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True").map(|c| {
        (c.type_.as_str(), c.last_transition_time.as_ref().map(|t| t.0.as_second()).unwrap_or_else(now_unix))
    })
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(job) = ctx.jobs.get(key) else { return Ok(Next::Done) };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let (ns, name) = split_key(key);
    let api: Api<Job> = ctx.api(ns);
    let now = now_unix();
    let spec = job.spec.clone().unwrap_or_default();
    let pods = ctx.pods.owned_by(&job.uid().unwrap_or_default());
    let active: Vec<_> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    // Pods that failed, plus container restarts of OnFailure pods, count against backoffLimit.
    let restarts: i32 = pods
        .iter()
        .filter(|p| phase(p) != "Failed")
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .map(|c| c.restart_count)
        .sum();
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i32 + restarts;

    if let Some((_, at)) = finished(&job) {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let left = at + i64::from(ttl) - now;
            if left <= 0 {
                delete_exact(&api, job.as_ref(), &propagation(PropagationPolicy::Background)).await?;
                return Ok(Next::Done);
            }
            return requeue(Duration::from_secs(left as u64));
        }
        return Ok(Next::Done);
    }

    let mut st = job.status.clone().unwrap_or_default();
    let start = st.start_time.as_ref().map(|t| t.0.as_second()).unwrap_or(now);
    if st.start_time.is_none() && !spec.suspend.unwrap_or(false) {
        st.start_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    }
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
    let deadline_hit = spec.active_deadline_seconds.is_some_and(|d| now - start >= d);
    let failure = if failed > backoff_limit {
        Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".to_string()))
    } else if deadline_hit {
        Some(("DeadlineExceeded", "Job was active longer than specified deadline".to_string()))
    } else {
        None
    };
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let mut next = Next::Done;
    if let Some((reason, message)) = &failure {
        if !active.is_empty() {
            ctx.delete_pods(key, &active).await?;
        }
        add_condition(&mut st, "Failed", reason, message);
        ctx.events.record(job.as_ref(), true, reason, message.clone());
    } else if complete {
        add_condition(&mut st, "Complete", "", "");
        st.completion_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        ctx.events.record(job.as_ref(), false, "Completed", "Job completed".into());
    } else if !spec.suspend.unwrap_or(false) && ctx.expect.satisfied(key, &ctx.pods) {
        let remaining = completions.map_or(parallelism, |c| (c - succeeded).max(0));
        let want = parallelism.min(remaining) as usize;
        if active.len() < want {
            // A failure delays the replacement: job_backoff × 2^(failures−1), at most 6 min.
            let wait = backoff_left(ctx, key, failed);
            if wait.is_zero() {
                let template = spec.template.clone();
                let uid = job.uid().unwrap_or_default();
                let labels = [("batch.kubernetes.io/job-name", name), ("job-name", name), ("batch.kubernetes.io/controller-uid", uid.as_str()), ("controller-uid", uid.as_str())];
                let pods = (0..want - active.len()).map(|_| from_template(&template, controller_ref(job.as_ref()), ns, None, &labels)).collect();
                let n = ctx.create_pods(key, ns, pods).await?;
                ctx.events.record(job.as_ref(), false, "SuccessfulCreate", format!("Created {n} pod(s)"));
            } else {
                next = Next::After(wait);
            }
        } else if active.len() > want {
            let extra = active.len() - want;
            ctx.delete_pods(key, &active[..extra]).await?;
        }
        if let Some(d) = spec.active_deadline_seconds {
            let left = (start + d - now).max(1) as u64;
            next = match next {
                Next::After(w) => Next::After(w.min(Duration::from_secs(left))),
                Next::Done => Next::After(Duration::from_secs(left)),
            };
        }
    }
    st.active = Some(active.len() as i32).filter(|_| failure.is_none() && !complete);
    st.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    if job.status.as_ref() != Some(&st) {
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": st}))).await?;
    }
    if failure.is_some() || complete {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            return requeue(Duration::from_secs(ttl.max(0) as u64));
        }
    }
    Ok(next)
}

/// How long a Job with `failed` failures still waits before replacing a pod.
fn backoff_left(ctx: &Ctx, key: &str, failed: i32) -> Duration {
    if failed == 0 {
        return Duration::ZERO;
    }
    let mut m = ctx.job_failures.lock().expect("job failures lock");
    let e = m.entry(key.to_string()).or_insert((failed, Instant::now()));
    if e.0 != failed {
        *e = (failed, Instant::now());
    }
    let wait = ctx.cfg.job_backoff.saturating_mul(1 << (failed - 1).clamp(0, 16) as u32).min(MAX_BACKOFF);
    wait.saturating_sub(e.1.elapsed())
}

fn add_condition(st: &mut JobStatus, ty: &str, reason: &str, message: &str) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != ty);
    conds.push(JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.to_string()).filter(|r| !r.is_empty()),
        message: Some(message.to_string()).filter(|m| !m.is_empty()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

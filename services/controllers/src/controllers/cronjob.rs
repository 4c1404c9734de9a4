//! CronJob: a Job per scheduled time (UTC), named `<cronjob>-<minutes since the epoch>` so a
//! retry cannot start it twice; concurrencyPolicy Allow/Forbid/Replace,
//! startingDeadlineSeconds, at most the latest of many missed runs, history limits.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{tz::TimeZone, Timestamp};
use kube::api::{Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{delete_exact, propagation, Ctx};
use crate::pods::{controller_ref, now_unix};
use crate::cache::split_key;
use crate::queue::Next;
use crate::Error;

/// A parsed five-field cron schedule (minute hour day-of-month month day-of-week).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches if either does (cron's rule).
    day_or: bool,
}

fn field(s: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u32 + min);
        }
        v.parse::<u32>().map_err(|_| format!("{v:?} is not a number"))
    };
    let restricted = s != "*" && s != "?";
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (r, st.parse::<u32>().map_err(|_| format!("step {st:?} is not a number"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err("a step of 0".into());
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { max } else { v })
        };
        // Sunday may be written 7.
        let (lo, hi) = if max == 6 { (lo.min(7), hi.min(7)) } else { (lo, hi) };
        if lo < min || hi > max.max(if max == 6 { 7 } else { max }) || lo > hi {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << (if max == 6 { v % 7 } else { v });
            v += step;
        }
    }
    Ok((bits, restricted))
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = match s.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("{s:?}: expected 5 fields (minute hour day-of-month month day-of-week), found {}", f.len()));
        }
        const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (minutes, _) = field(f[0], 0, 59, &[]).map_err(|e| format!("minute: {e}"))?;
        let (hours, _) = field(f[1], 0, 23, &[]).map_err(|e| format!("hour: {e}"))?;
        let (days, dr) = field(f[2], 1, 31, &[]).map_err(|e| format!("day of month: {e}"))?;
        let (months, _) = field(f[3], 1, 12, MONTHS).map_err(|e| format!("month: {e}"))?;
        let (weekdays, wr) = field(f[4], 0, 6, DAYS).map_err(|e| format!("day of week: {e}"))?;
        Ok(Schedule { minutes, hours, days, months, weekdays, day_or: dr && wr })
    }

    /// The first scheduled time strictly after `t` (Unix seconds, UTC), within 5 years.
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let mut t = (t / 60 + 1) * 60;
        let end = t + 5 * 366 * 86400;
        while t < end {
            let z = Timestamp::from_second(t).ok()?.to_zoned(TimeZone::UTC);
            let dom = self.days & (1 << z.day()) != 0;
            let dow = self.weekdays & (1 << z.weekday().to_sunday_zero_offset()) != 0;
            let day = if self.day_or { dom || dow } else { dom && dow };
            if self.months & (1 << z.month()) == 0 || !day {
                t = (t / 86400 + 1) * 86400; // next day
            } else if self.hours & (1 << z.hour()) == 0 {
                t = (t / 3600 + 1) * 3600;
            } else if self.minutes & (1 << z.minute()) == 0 {
                t += 60;
            } else {
                return Some(t);
            }
        }
        None
    }
}

pub(crate) async fn reconcile(ctx: &Ctx, key: &str) -> Result<Next, Error> {
    let Some(cj) = ctx.cronjobs.get(key) else { return Ok(Next::Done) };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let (ns, name) = split_key(key);
    let spec = cj.spec.clone().unwrap_or_default();
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            ctx.events.record(cj.as_ref(), true, "UnparseableSchedule", format!("spec.schedule: {e}"));
            return Ok(Next::Done);
        }
    };
    let jobs_api: Api<Job> = ctx.api(ns);
    let mut jobs = ctx.jobs.owned_by(&cj.uid().unwrap_or_default());
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()));
    let done = |j: &Job, ty: &str| j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"));
    let active: Vec<_> = jobs.iter().filter(|j| !done(j, "Complete") && !done(j, "Failed")).cloned().collect();

    // History limits.
    for (ty, limit) in [("Complete", spec.successful_jobs_history_limit.unwrap_or(3)), ("Failed", spec.failed_jobs_history_limit.unwrap_or(1))] {
        let finished: Vec<_> = jobs.iter().filter(|j| done(j, ty)).collect();
        let limit = limit.max(0) as usize;
        if finished.len() > limit {
            for j in &finished[..finished.len() - limit] {
                delete_exact(&jobs_api, j.as_ref(), &propagation(PropagationPolicy::Background)).await?;
            }
        }
    }

    let now = now_unix();
    let earliest = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map(|t| t.0.as_second())
        .unwrap_or(now);
    // The most recent time due, counting how many were missed.
    let (mut due, mut missed) = (None, 0);
    let mut t = earliest;
    while let Some(n) = schedule.next_after(t) {
        if n > now {
            break;
        }
        due = Some(n);
        missed += 1;
        t = n;
        if missed > 100 {
            // Too many missed runs: only the latest counts (Kubernetes' rule).
            let mut last = n;
            while let Some(m) = schedule.next_after(last).filter(|m| *m <= now) {
                last = m;
            }
            due = Some(last);
            break;
        }
    }
    let mut status = json!({
        "active": active.iter().map(|j| ObjectReference { api_version: Some("batch/v1".into()), kind: Some("Job".into()), name: Some(j.name_any()), namespace: Some(ns.into()), uid: j.uid(), ..Default::default() }).collect::<Vec<_>>(),
    });
    if let Some(last_ok) = jobs.iter().filter(|j| done(j, "Complete")).filter_map(|j| j.status.as_ref()?.completion_time.clone()).max_by_key(|t| t.0) {
        status["lastSuccessfulTime"] = json!(last_ok);
    }
    if let Some(t) = due.filter(|_| !spec.suspend.unwrap_or(false)) {
        let too_late = spec.starting_deadline_seconds.is_some_and(|d| now - t > d);
        let forbid = spec.concurrency_policy.as_deref() == Some("Forbid") && !active.is_empty();
        if too_late {
            ctx.events.record(cj.as_ref(), true, "MissSchedule", format!("Missed scheduled time to start a job: {}", Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default()));
            status["lastScheduleTime"] = json!(Time(Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH)));
        } else if !forbid {
            if spec.concurrency_policy.as_deref() == Some("Replace") {
                for j in &active {
                    delete_exact(&jobs_api, j.as_ref(), &propagation(PropagationPolicy::Background)).await?;
                }
            }
            let tmpl = spec.job_template.clone();
            let tm = tmpl.metadata.unwrap_or_default();
            let mut annotations = tm.annotations.unwrap_or_default();
            annotations.insert("batch.kubernetes.io/cronjob-scheduled-timestamp".into(), Timestamp::from_second(t).map(|x| x.to_string()).unwrap_or_default());
            let job = Job {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{}", t / 60)),
                    namespace: Some(ns.into()),
                    labels: tm.labels,
                    annotations: Some(annotations),
                    owner_references: Some(vec![controller_ref(cj.as_ref())]),
                    ..Default::default()
                },
                spec: tmpl.spec,
                status: None,
            };
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => ctx.events.record(cj.as_ref(), false, "SuccessfulCreate", format!("Created job {}", j.name_any())),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            status["lastScheduleTime"] = json!(Time(Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH)));
        }
    }
    let current = serde_json::to_value(cj.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = ["active", "lastScheduleTime", "lastSuccessfulTime"].iter().any(|k| status.get(*k).is_some_and(|v| current.get(*k) != Some(v) && !(v.as_array().is_some_and(Vec::is_empty) && current.get(*k).is_none())));
    if changed {
        let api: Api<CronJob> = ctx.api(ns);
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    let next = schedule.next_after(now).map(|n| (n - now).max(1) as u64).unwrap_or(3600);
    Ok(Next::After(Duration::from_secs(next)))
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    fn at(s: &str) -> i64 {
        s.parse::<k8s_openapi::jiff::Timestamp>().unwrap().as_second()
    }

    #[test]
    fn schedules_find_their_next_time() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(at("2026-11-22T10:02:30Z")), Some(at("2026-11-22T10:05:00Z")));
        assert_eq!(every5.next_after(at("2026-11-22T10:05:00Z")), Some(at("2026-11-22T10:10:00Z")));
        let weekdays = Schedule::parse("30 9 * * mon-fri").unwrap();
        // 2026-11-21 is a Saturday.
        assert_eq!(weekdays.next_after(at("2026-11-21T12:00:00Z")), Some(at("2026-11-23T09:30:00Z")));
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(daily.next_after(at("2026-12-31T23:59:00Z")), Some(at("2027-01-01T00:00:00Z")));
        // Day of month OR day of week when both are restricted.
        let either = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(either.next_after(at("2026-11-22T00:00:00Z")), Some(at("2026-11-27T00:00:00Z")));
        let sunday7 = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(sunday7.next_after(at("2026-11-22T00:00:00Z")), Some(at("2026-11-29T00:00:00Z")));
    }

    #[test]
    fn bad_schedules_name_the_field() {
        assert!(Schedule::parse("* * *").unwrap_err().contains("5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().starts_with("minute"));
        assert!(Schedule::parse("* * * foo *").unwrap_err().starts_with("month"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("step"));
    }
}

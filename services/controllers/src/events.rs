//! Events for what the controllers do: posted in the background through a bounded queue
//! (a full queue drops the event, never blocks a reconcile).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};

const QUEUE: usize = 1024;

#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Event>,
    component: &'static str,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str) -> Recorder {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(QUEUE);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let ns = ev.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = api.create(&PostParams::default(), &ev).await {
                    tracing::debug!(error = %e, "posting an event failed");
                }
            }
        });
        Recorder { tx, component }
    }

    /// Record `reason`/`message` about `obj`; `warning` for type Warning.
    pub fn record<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, message: String) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let ev = Event {
            metadata: ObjectMeta { generate_name: Some(format!("{}.", obj.name_any())), namespace: Some(ns.clone()), ..Default::default() },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).to_string()),
                kind: Some(K::kind(&()).to_string()),
                name: Some(obj.name_any()),
                namespace: obj.namespace(),
                uid: obj.uid(),
                resource_version: obj.resource_version(),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            source: Some(EventSource { component: Some(self.component.to_string()), host: None }),
            reporting_component: Some(self.component.to_string()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        if self.tx.try_send(ev).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

//! Concurrent plugin events are coalesced: one reconcile (one data-plane
//! call) for every event queued behind the lock, each event still answered
//! on its own; a lone event is handled at once. No kernel needed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_cni::Error;
use ambit_cni::agent::{Agent, AgentConfig, Dataplane, EventOutcome, Metrics};
use ambit_cni::event::{EventKind, PodEvent};
use ambit_cni::pod::EnrolledPod;
use ambit_cni::source::DirSource;
use ambit_cni::state::Removal;

/// Records the size of each enrol call; each call is slow, so events
/// arriving meanwhile queue up.
#[derive(Clone, Default)]
struct Slow(Arc<Mutex<Vec<usize>>>);

impl Dataplane for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn start(&mut self) -> Result<(), Error> {
        Ok(())
    }
    fn observed(&mut self) -> Result<BTreeSet<IpAddr>, Error> {
        Ok(BTreeSet::new())
    }
    fn enrol(&mut self, pods: &[EnrolledPod]) -> Vec<Result<(), Error>> {
        std::thread::sleep(Duration::from_millis(50));
        self.0.lock().expect("lock").push(pods.len());
        pods.iter().map(|_| Ok(())).collect()
    }
    fn unenrol(&mut self, _pods: &[Removal]) -> Result<(), Error> {
        Ok(())
    }
    fn stop(&mut self, _keep_rules: bool) -> Result<(), Error> {
        Ok(())
    }
}

fn event(i: usize) -> PodEvent {
    PodEvent {
        netns: String::new(),
        container_id: format!("ctr-{i}"),
        ifname: "eth0".into(),
        pod_name: format!("pod-{i}"),
        pod_namespace: "mesh".into(),
        pod_uid: None,
        ips: vec![format!("10.0.0.{}", i + 1).parse().expect("ip")],
        netns_id: None,
    }
}

#[test]
fn concurrent_adds_share_reconciles_and_each_gets_its_answer() {
    let dir = std::env::temp_dir().join(format!("ambit-coalesce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    const PODS: usize = 24;
    for i in 0..=PODS {
        std::fs::write(
            dir.join(format!("pod-{i}.yaml")),
            format!(
                "name: pod-{i}\nnamespace: mesh\nuid: uid-{i}\n\
                 namespace_labels: {{istio.io/dataplane-mode: ambient}}\n"
            ),
        )
        .expect("record");
    }
    let calls = Slow::default();
    let agent = Agent::start(AgentConfig {
        dataplane: Box::new(calls.clone()),
        source: Some(Box::new(DirSource::new(&dir, None))),
        sandbox_dir: None,
        metrics: Metrics::default(),
    })
    .expect("start");

    let outcomes: Vec<EventOutcome> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..PODS)
            .map(|i| {
                let agent = &agent;
                s.spawn(move || agent.handle_event(EventKind::Add, event(i)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread").expect("event"))
            .collect()
    });
    assert!(outcomes.iter().all(|o| *o == EventOutcome::Enrolled));
    let sizes = calls.0.lock().expect("lock").clone();
    assert_eq!(sizes.iter().sum::<usize>(), PODS, "{sizes:?}");
    assert!(sizes.len() < PODS, "no coalescing: {sizes:?}");
    assert_eq!(agent.enrolled().expect("enrolled").len(), PODS);

    // A lone event: handled at once, alone.
    let lone = agent
        .handle_event(EventKind::Add, event(PODS))
        .expect("lone");
    assert_eq!(lone, EventOutcome::Enrolled);
    assert_eq!(calls.0.lock().expect("lock").last(), Some(&1));
    let _ = std::fs::remove_dir_all(&dir);
}

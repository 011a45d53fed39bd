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

/// An agent over a [`Slow`] data plane whose pod source (in `dir`, named
/// after `tag`) lists `pods` ambient pods, `pod-0` on.
fn slow_agent(tag: &str, pods: usize) -> (std::path::PathBuf, Arc<Agent>, Slow) {
    let dir = std::env::temp_dir().join(format!("ambit-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for i in 0..pods {
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
    (dir, agent, calls)
}

#[test]
fn concurrent_adds_share_reconciles_and_each_gets_its_answer() {
    const PODS: usize = 24;
    let (dir, agent, calls) = slow_agent("coalesce", PODS + 1);

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

#[test]
fn queued_events_are_finished_together_and_a_dropped_ticket_still_applies() {
    let (dir, agent, calls) = slow_agent("coalesce-q", 3);
    let before = calls.0.lock().expect("lock").len();

    let first = agent.enqueue(EventKind::Add, event(0)).expect("queue 0");
    let dropped = agent.enqueue(EventKind::Add, event(1)).expect("queue 1");
    let third = agent.enqueue(EventKind::Add, event(2)).expect("queue 2");
    drop(dropped);
    // One finish handles all three with one data-plane call.
    assert_eq!(
        agent.finish(first).expect("finish 0"),
        EventOutcome::Enrolled
    );
    assert_eq!(calls.0.lock().expect("lock")[before..], [3]);
    // The third's answer was kept for it; no further call.
    assert_eq!(
        agent.finish(third).expect("finish 2"),
        EventOutcome::Enrolled
    );
    assert_eq!(calls.0.lock().expect("lock").len(), before + 1);
    // The dropped ticket's pod was enrolled all the same.
    let pods: BTreeSet<String> = agent
        .enrolled()
        .expect("enrolled")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(
        pods,
        BTreeSet::from(["pod-0".into(), "pod-1".into(), "pod-2".into()])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! The agent's queue of plugin events: events wait in the inbox for the
//! next holder of the core lock, which handles every queued event with one
//! reconcile; each caller then reads its own answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, MutexGuard};

use super::{Agent, EventOutcome};
use crate::error::Error;
use crate::event::{EventKind, PodEvent};

/// Plugin events queued for the next holder of the core lock.
#[derive(Default)]
pub(super) struct Inbox {
    next: u64,
    queued: Vec<(u64, EventKind, PodEvent)>,
    done: BTreeMap<u64, Result<EventOutcome, Error>>,
    /// Tickets dropped before their answer was read: their answers are
    /// not kept.
    abandoned: BTreeSet<u64>,
}

impl Inbox {
    fn push(&mut self, kind: EventKind, event: PodEvent) -> u64 {
        self.next += 1;
        self.queued.push((self.next, kind, event));
        self.next
    }

    /// Keeps the answers to other handlers' events until they read them.
    fn keep(&mut self, results: BTreeMap<u64, Result<EventOutcome, Error>>) {
        for (ticket, result) in results {
            if !self.abandoned.remove(&ticket) {
                self.done.insert(ticket, result);
            }
        }
    }
}

/// A plugin event in the agent's queue, from [`Agent::enqueue`]; its
/// answer comes from [`Agent::finish`].
///
/// Dropping it unanswered does not withdraw the event (the next handler
/// still applies it); only its answer is discarded.
#[must_use = "the event's answer is read with Agent::finish"]
pub struct Queued {
    agent: Arc<Agent>,
    ticket: u64,
    answered: bool,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if let Ok(mut inbox) = self.agent.inbox()
            && inbox.done.remove(&self.ticket).is_none()
        {
            inbox.abandoned.insert(self.ticket);
        }
    }
}

impl Agent {
    /// Handles one plugin event (blocking). ADD enrols the pod now when the
    /// pod source says it is ambient; DEL forgets the sandbox and removes
    /// the enrolment unless the pod source still provides one.
    ///
    /// Events that arrive while another is being handled are coalesced:
    /// each is queued, and whoever takes the agent's lock next handles
    /// every queued event with one reconcile (one set update for all their
    /// pods); the others find their answer ready when they get the lock.
    /// A lone event is handled at once, as before.
    pub fn handle_event(&self, kind: EventKind, event: PodEvent) -> Result<EventOutcome, Error> {
        let ticket = self.inbox()?.push(kind, event);
        self.answer(ticket)
    }

    /// Queues one plugin event without handling it; [`Agent::finish`]
    /// handles it (with every other queued event) and returns its answer.
    ///
    /// Together they are [`Agent::handle_event`] split in two, for a
    /// caller that handles events on one thread: queue each ready event
    /// first, then finish them, and one reconcile serves them all.
    pub fn enqueue(self: &Arc<Self>, kind: EventKind, event: PodEvent) -> Result<Queued, Error> {
        let ticket = self.inbox()?.push(kind, event);
        Ok(Queued {
            agent: self.clone(),
            ticket,
            answered: false,
        })
    }

    /// Handles a queued event (blocking), unless another handler already
    /// did, and returns its answer.
    pub fn finish(&self, mut queued: Queued) -> Result<EventOutcome, Error> {
        queued.answered = true;
        self.answer(queued.ticket)
    }

    /// The answer to `ticket`: from the inbox if another handler took it,
    /// or by handling everything queued now.
    fn answer(&self, ticket: u64) -> Result<EventOutcome, Error> {
        let mut core = self.lock()?;
        let queued = {
            let mut inbox = self.inbox()?;
            if let Some(done) = inbox.done.remove(&ticket) {
                return done;
            }
            std::mem::take(&mut inbox.queued)
        };
        let mut results = core.handle_events(queued, &self.metrics);
        let mine = results.remove(&ticket);
        self.inbox()?.keep(results);
        mine.unwrap_or_else(|| {
            Err(Error::invalid(
                "plugin event",
                "lost while queued (a previous operation panicked?)",
            ))
        })
    }

    fn inbox(&self) -> Result<MutexGuard<'_, Inbox>, Error> {
        self.inbox
            .lock()
            .map_err(|_| Error::invalid("agent event queue", "a previous operation panicked"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn event(i: u8) -> PodEvent {
        PodEvent {
            netns: String::new(),
            container_id: format!("ctr-{i}"),
            ifname: "eth0".into(),
            pod_name: format!("pod-{i}"),
            pod_namespace: "mesh".into(),
            pod_uid: None,
            ips: vec![IpAddr::from([10, 0, 0, i])],
            netns_id: None,
        }
    }

    #[test]
    fn abandoned_answers_are_not_kept() {
        let mut inbox = Inbox::default();
        let a = inbox.push(EventKind::Add, event(1));
        let b = inbox.push(EventKind::Add, event(2));
        inbox.abandoned.insert(b);
        inbox.keep(BTreeMap::from([
            (a, Ok(EventOutcome::Enrolled)),
            (b, Ok(EventOutcome::Enrolled)),
        ]));
        assert_eq!(inbox.done.keys().copied().collect::<Vec<_>>(), [a]);
        assert!(inbox.abandoned.is_empty());
    }
}

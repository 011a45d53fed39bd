use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread;

use nix::sched::CloneFlags;

/// A job: told whether the namespace was joined, it runs (or declines)
/// and answers its caller itself.
pub(super) type Job = Box<dyn FnOnce(bool) + Send>;

/// The worker's queue; `None` until started, or after it stopped.
static QUEUE: Mutex<Option<Sender<(OwnedFd, Job)>>> = Mutex::new(None);

/// Set once a worker could not be started.
static BROKEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller must not use the worker: none can be started, or
/// the caller is the worker (a job must not wait for another job).
pub(super) fn unusable() -> bool {
    BROKEN.load(Ordering::Relaxed) || ON_WORKER.with(Cell::get)
}

/// Queues `job` to run inside the namespace `ns`, starting the worker
/// if there is none; false if no worker took it.
pub(super) fn submit(ns: OwnedFd, job: Job) -> bool {
    let mut queue = QUEUE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut item = (ns, job);
    // Twice at most: a worker that stopped since the last job is
    // replaced once.
    for _ in 0..2 {
        if queue.is_none() {
            match start() {
                Some(tx) => *queue = Some(tx),
                None => {
                    BROKEN.store(true, Ordering::Relaxed);
                    return false;
                }
            }
        }
        match queue.as_ref().map(|tx| tx.send(item)) {
            Some(Ok(())) => return true,
            Some(Err(mpsc::SendError(back))) => {
                item = back;
                *queue = None;
            }
            None => return false,
        }
    }
    false
}

fn start() -> Option<Sender<(OwnedFd, Job)>> {
    let (tx, rx) = mpsc::channel::<(OwnedFd, Job)>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<bool>(1);
    let spawned = thread::Builder::new()
        .name("ns:worker".into())
        .spawn(move || {
            ON_WORKER.with(|w| w.set(true));
            // Home is the process's namespace, whatever namespace the
            // thread that started the worker was in.
            let home = File::open("/proc/self/ns/net").map(OwnedFd::from);
            let home = match home {
                Ok(h) if nix::sched::setns(h.as_fd(), CloneFlags::CLONE_NEWNET).is_ok() => h,
                _ => {
                    let _ = ready_tx.send(false);
                    return;
                }
            };
            let _ = ready_tx.send(true);
            for (ns, job) in rx {
                let entered = nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).is_ok();
                job(entered);
                drop(ns);
                if entered && nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                    // Stuck elsewhere: stop; the next job starts a new
                    // worker.
                    return;
                }
            }
        });
    match spawned {
        Ok(_) if ready_rx.recv() == Ok(true) => Some(tx),
        _ => None,
    }
}

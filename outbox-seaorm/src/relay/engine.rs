//! The claim loop: claim while there is room, hand groups to tasks, and shut down without
//! losing anything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::chain::{self, Admit, Next, Run, Snapshot};
use super::completer::{Completer, Item};
use super::probe::{self, Stage};
use super::stats::{BatchReport, bump};
use super::worker::{self, Mode, Prior};
use super::{Shared, lease};
use crate::admin::Handles;
use crate::driver::{ClaimOrder, ClaimSpec, Claimed, RelayRow};
use crate::error::Result;
use crate::relay::policy::{DeliveryOrder, OnFailure};
use crate::wake;

/// A claimed batch, with the aggregate chains that were live when its claim started.
pub(crate) struct Batch {
    rows: Vec<Claimed>,
    chains: Snapshot,
    /// The claim's token.
    token: i64,
}

/// Claims one batch for `shared`'s relay.
pub(crate) async fn claim(shared: &Shared, limit: u32) -> Result<Batch> {
    bump(&shared.stats.polls, 1);
    let s = &shared.settings;
    let order = match shared.policy.order {
        DeliveryOrder::Unordered => ClaimOrder::Any,
        DeliveryOrder::PerAggregate(f) => ClaimOrder::PerAggregate {
            dead_blocks: f == OnFailure::Block,
        },
    };
    // Never claim again what this relay still holds or runs, even if its lease lapsed.
    let held = shared.held.all();
    // In per-aggregate order, the chains first, then what runs in them (see `chain`).
    let (chains, passable) = match order {
        ClaimOrder::Any => (Snapshot::new(), Vec::new()),
        ClaimOrder::PerAggregate { .. } => (shared.chains.snapshot(), shared.held.passable()),
    };
    let spec = ClaimSpec {
        relay: &shared.id,
        limit,
        lease: s.lease,
        order,
        window: s.window.max(limit),
        timeout: s.claim_timeout,
        bounded: shared.bounded,
        token: new_token(),
        held: &held,
        passable: &passable,
    };
    let started = std::time::Instant::now();
    probe::mark(Stage::ClaimStart, &[]);
    let batch = shared.driver.claim(&shared.db, &spec).await?;
    super::metrics::claimed(started.elapsed(), batch.len());
    if !batch.is_empty() {
        if probe::enabled() {
            let seqs: Vec<i64> = batch.iter().map(|c| c.envelope.sequence).collect();
            probe::mark(Stage::ClaimEnd, &seqs);
        }
        bump(&shared.stats.batches, 1);
        bump(&shared.stats.claimed, batch.len() as u64);
    }
    Ok(Batch {
        rows: batch,
        chains,
        token: spec.token,
    })
}

/// Takes a claimed batch into the relay's held messages: their leases are kept from now on,
/// their fates awaited.
fn hold(shared: &Shared, batch: &Batch) {
    shared
        .held
        .claimed(batch.rows.iter().map(|c| c.envelope.sequence), batch.token);
}

/// Claims the claim loop keeps in flight ahead of the batch it dispatches, while claims come
/// back full (PostgreSQL and MariaDB). Measured in BENCHMARKS.md ("Closing #18", claims
/// ahead).
const CLAIMS_AHEAD: usize = 1;

/// Claims the loop makes one at a time after a claim ahead came back short.
const AHEAD_PAUSE: u32 = 16;

/// The same in per-aggregate order, whose claim statement costs about 3.5× the unordered one.
const ORDERED_CLAIMS_AHEAD: usize = 2;

/// A fresh claim token: random, so no two claims (of any relay, any process) share one.
fn new_token() -> i64 {
    let (hi, lo) = uuid::Uuid::now_v7().as_u64_pair();
    // The v7 random bits (the low 62 bits of `lo`) mixed with the time, never 0 (which stands
    // for "none" in a claim's list of held rows).
    let t = (lo ^ hi.rotate_left(17)) as i64;
    if t == 0 { 1 } else { t }
}

/// The per-handler states of the messages of `batch` that may have some (they failed before,
/// or a relay claimed them before without writing an outcome).
async fn prior(shared: &Shared, batch: &[Claimed]) -> Result<Prior> {
    let seqs: Vec<i64> = batch
        .iter()
        .filter(|c| c.failed_before || c.claims > 1)
        .map(|c| c.envelope.sequence)
        .collect();
    shared.driver.prior_deliveries(&shared.db, &seqs).await
}

/// Starts the groups of `batch`: each on a task of its own under the concurrency limit; or,
/// when a relay died holding some of them, one message at a time after everything else
/// finished (see [`Mode::Careful`]).
pub(crate) async fn dispatch(
    shared: &Arc<Shared>,
    batch: Batch,
    out: &Completer,
    permits: &Arc<Semaphore>,
    running: &mut JoinSet<()>,
) -> Result<()> {
    let Batch {
        rows: batch,
        chains,
        ..
    } = batch;
    let prior = match prior(shared, &batch).await {
        Ok(p) => Arc::new(p),
        Err(e) => {
            // Give the batch back rather than sit on it until the leases expire.
            let seqs: Vec<i64> = batch.iter().map(|c| c.envelope.sequence).collect();
            shared.held.decided(seqs.iter().copied());
            out.send(vec![Item::Release(seqs)]);
            return Err(e);
        }
    };
    let suspects = batch.iter().filter(|c| c.claims > 1).count();
    let groups = worker::groups(batch, shared.policy.order);
    let ordered = matches!(shared.policy.order, DeliveryOrder::PerAggregate(_));
    if suspects == 0 && ordered {
        for group in groups {
            if group.first().is_none_or(|c| c.delayed) {
                spawn_group(shared, group, &prior, out, permits, running);
                continue;
            }
            let key = chain::key_of(&group[0]);
            let seqs: Vec<i64> = group.iter().map(|c| c.envelope.sequence).collect();
            let run = Run {
                group,
                prior: prior.clone(),
            };
            match shared.chains.admit(key.clone(), run, &chains) {
                Admit::Start(id, run) => {
                    shared.held.chained(seqs);
                    spawn_chain(shared, key, id, run, out, permits, running);
                }
                Admit::Queued => shared.held.chained(seqs),
                Admit::GiveBack(run) => give_back(shared, out, &run.group, Item::Release),
            }
        }
        return Ok(());
    }
    if suspects == 0 {
        for group in groups {
            spawn_group(shared, group, &prior, out, permits, running);
        }
        return Ok(());
    }
    bump(&shared.stats.suspects, suspects as u64);
    tracing::info!(
        relay = %shared.id, suspects,
        "a relay died or hung holding some of these messages: running the batch one message at a time"
    );
    // A run claimed behind one of this relay's chains would run before the chain's own runs
    // (which wait for permits like any group): give it back, the chain's writes free it. Only
    // this claim is undone: a suspect among them stays one, to run alone next time.
    let (groups, behind): (Vec<_>, Vec<_>) = groups.into_iter().partition(|g| {
        g.first()
            .is_none_or(|c| c.delayed || !chains.contains_key(&chain::key_of(c)))
    });
    for group in behind {
        give_back(shared, out, &group, Item::Unclaim);
    }
    // On a task of its own, under the relay's shutdown like any group. Nothing else of this
    // relay may run meanwhile, or a crash would be blamed on the wrong message: it takes every
    // permit (groups already running finish first, later ones wait).
    let (shared, out, permits) = (shared.clone(), out.clone(), permits.clone());
    let all = u32::try_from(shared.settings.concurrency).unwrap_or(u32::MAX);
    running.spawn(async move {
        let Ok(_permits) = permits.acquire_many_owned(all).await else {
            return;
        };
        out.send_and_wait(Vec::new()).await;
        for group in groups {
            let seqs: Vec<i64> = group.iter().map(|c| c.envelope.sequence).collect();
            let run = worker::run_group(&shared, group, &prior, &out, Mode::Careful);
            guarded(&shared, &seqs, &out, run).await;
        }
    });
    Ok(())
}

/// Runs `group` on a task of its own under the concurrency limit.
fn spawn_group(
    shared: &Arc<Shared>,
    group: Vec<Claimed>,
    prior: &Arc<Prior>,
    out: &Completer,
    permits: &Arc<Semaphore>,
    running: &mut JoinSet<()>,
) {
    let (shared, out, permits, prior) =
        (shared.clone(), out.clone(), permits.clone(), prior.clone());
    running.spawn(async move {
        let Ok(_permit) = permits.acquire_owned().await else {
            return;
        };
        let seqs: Vec<i64> = group.iter().map(|c| c.envelope.sequence).collect();
        probe::mark(Stage::GroupStart, &seqs);
        let run = worker::run_group(&shared, group, &prior, &out, Mode::Normal);
        guarded(&shared, &seqs, &out, run).await;
    });
}

/// Runs chain `id` of aggregate `key` on a task of its own: `first`, then each run queued
/// behind it, each under the concurrency limit, until none is queued or one holds the
/// aggregate back (then the queued ones are given back).
fn spawn_chain(
    shared: &Arc<Shared>,
    key: chain::Key,
    id: u64,
    first: Run,
    out: &Completer,
    permits: &Arc<Semaphore>,
    running: &mut JoinSet<()>,
) {
    let (shared, out, permits) = (shared.clone(), out.clone(), permits.clone());
    running.spawn(async move {
        // Aborted (shutdown timeout) or dropped (a foreground batch dropped half-way), the
        // chain must not stay live with runs queued on it that nothing would run.
        let mut end = ChainEnd {
            shared: shared.clone(),
            out: out.clone(),
            key: key.clone(),
            id,
            ended: false,
        };
        let mut next = first;
        loop {
            let clean = {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                let seqs: Vec<i64> = next.group.iter().map(|c| c.envelope.sequence).collect();
                probe::mark(Stage::GroupStart, &seqs);
                let run = worker::run_group(&shared, next.group, &next.prior, &out, Mode::Normal);
                guarded(&shared, &seqs, &out, run).await.unwrap_or(false)
            };
            match shared.chains.after_run(&key, id, clean) {
                Next::Run(run) => next = run,
                Next::Done => break,
                Next::GiveBack(runs) => {
                    for run in runs {
                        give_back(&shared, &out, &run.group, Item::Release);
                    }
                    break;
                }
            }
        }
        end.ended = true;
    });
}

/// Abandons a chain whose task stops early (see `spawn_chain`), giving back its queue.
struct ChainEnd {
    shared: Arc<Shared>,
    out: Completer,
    key: chain::Key,
    id: u64,
    /// The chain ended (queue empty, or broken and given back): nothing to abandon.
    ended: bool,
}

impl Drop for ChainEnd {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        for run in self.shared.chains.abandon(&self.key, self.id) {
            give_back(&self.shared, &self.out, &run.group, Item::Release);
        }
    }
}

/// Gives `group` back without running it, written as `how` (a release, or undoing the claim).
fn give_back(shared: &Shared, out: &Completer, group: &[Claimed], how: fn(Vec<i64>) -> Item) {
    let seqs: Vec<i64> = group.iter().map(|c| c.envelope.sequence).collect();
    if seqs.is_empty() {
        return;
    }
    bump(&shared.stats.chain_given_back, seqs.len() as u64);
    shared.held.decided(seqs.iter().copied());
    out.send(vec![how(seqs)]);
}

/// Runs a group's future; if it panics (a bug, or user code the relay calls outside a
/// handler's own task: a metrics recorder, a tracing layer), its messages not decided yet are
/// given back, counted and logged at ERROR, and the relay goes on.
async fn guarded<T>(
    shared: &Shared,
    seqs: &[i64],
    out: &Completer,
    run: impl std::future::Future<Output = T>,
) -> Option<T> {
    use futures_util::FutureExt;
    let panic = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(v) => return Some(v),
        Err(panic) => panic,
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    let open: Vec<i64> = shared
        .held
        .open()
        .into_iter()
        .filter(|s| seqs.contains(s))
        .collect();
    bump(&shared.stats.group_panics, 1);
    tracing::error!(
        relay = %shared.id, released = open.len(), panic = %message,
        "a group task panicked: giving its undecided messages back; the relay goes on"
    );
    shared.held.forget_lost(seqs);
    if !open.is_empty() {
        shared.held.decided(open.iter().copied());
        out.send(vec![Item::Release(open)]);
    }
    None
}

/// The background relay: claims while fewer than half a batch of its messages are undecided
/// (with claims ahead on the server while claims come back full, see [`CLAIMS_AHEAD`]),
/// waits for a wake-up, a write of its own or the poll interval when there is nothing to
/// claim, and on shutdown lets running messages finish (up to the shutdown timeout), gives the
/// rest back and writes everything decided.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    tracing::info!(relay = %shared.id, "outbox relay started");
    if let Err(e) = shared
        .driver
        .register_relay(&shared.db, &relay_row(&shared))
        .await
    {
        tracing::warn!(relay = %shared.id, error = %e.report(), "could not record the relay in the relays table");
    }
    let (out, completer) = Completer::spawn(shared.clone());
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(lease::heartbeat(
        shared.clone(),
        stop_heartbeat.clone(),
        true,
    ));
    let permits = Arc::new(Semaphore::new(shared.settings.concurrency));
    let mut running = JoinSet::new();
    let mut wake = wake::subscribe();
    let mut decided = shared.held.on_decided();
    let mut written = shared.held.on_written();
    let mut failures = 0u32;
    let batch_size = shared.settings.batch_size;
    // Claims kept in flight while claims come back full (a backlog): they run on the server,
    // each on a connection of its own, while this loop dispatches the batch before them. Not
    // on SQLite, where claims take turns at the file's write lock anyway.
    let ahead_max = if shared.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        0
    } else {
        match shared.policy.order {
            DeliveryOrder::Unordered => CLAIMS_AHEAD,
            DeliveryOrder::PerAggregate(_) => ORDERED_CLAIMS_AHEAD,
        }
    };
    let mut ahead: VecDeque<tokio::task::JoinHandle<Result<Batch>>> = VecDeque::new();
    let mut ahead_paused = 0u32;
    // Messages claimed ahead and held (their leases kept by the heartbeat from the moment the
    // claim returns) but not dispatched yet: they do not count against the room.
    let waiting = Arc::new(AtomicUsize::new(0));
    'claiming: while !cancel.is_cancelled() {
        while shared
            .held
            .open_count()
            .saturating_sub(waiting.load(Ordering::Acquire))
            > (batch_size / 2) as usize
        {
            tokio::select! {
                _ = cancel.cancelled() => break 'claiming,
                _ = decided.changed() => {}
                Some(_) = running.join_next() => {}
            }
        }
        let room = batch_size;
        let claimed = match ahead.pop_front() {
            Some(task) => match task.await {
                Ok(claimed) => {
                    // Held when its claim returned: it no longer waits.
                    if let Ok(batch) = &claimed {
                        waiting.fetch_sub(batch.rows.len(), Ordering::AcqRel);
                    }
                    // A claim ahead that came back short (in per-aggregate order with few
                    // aggregates, every one of them is still in flight) cost a statement for
                    // little: none for the next claims, then try again.
                    if !matches!(&claimed, Ok(b) if b.rows.len() as u32 >= room) {
                        ahead_paused = AHEAD_PAUSE;
                    }
                    claimed
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => continue,
            },
            None => {
                ahead_paused = ahead_paused.saturating_sub(1);
                // A wake-up or a write from now on is one this claim may not have seen.
                wake.borrow_and_update();
                written.borrow_and_update();
                let claimed = claim(&shared, room).await;
                if let Ok(batch) = &claimed {
                    hold(&shared, batch);
                }
                claimed
            }
        };
        let result = match claimed {
            Ok(batch) if batch.rows.is_empty() => Ok(0),
            Ok(batch) => {
                let n = batch.rows.len();
                dispatch(&shared, batch, &out, &permits, &mut running)
                    .await
                    .map(|()| n)
            }
            Err(e) => Err(e),
        };
        // Claimed after the dispatch: in per-aggregate order the batch's runs are in their
        // chains by then, so a claim ahead may take the runs behind them.
        if ahead_paused == 0 && matches!(result, Ok(n) if n as u32 >= room) {
            while ahead.len() < ahead_max {
                wake.borrow_and_update();
                written.borrow_and_update();
                let (shared, waiting) = (shared.clone(), waiting.clone());
                ahead.push_back(tokio::spawn(async move {
                    let claimed = claim(&shared, room).await;
                    if let Ok(batch) = &claimed {
                        // Counted as waiting first: the loop never sees these rows as open
                        // and dispatched, which would make it wait for room they hold.
                        waiting.fetch_add(batch.rows.len(), Ordering::AcqRel);
                        hold(&shared, batch);
                    }
                    claimed
                }));
            }
        }
        while running.try_join_next().is_some() {}
        match result {
            Ok(n) => {
                failures = 0;
                if n as u32 >= room || !ahead.is_empty() {
                    continue;
                }
                // Nothing (or not much) to claim: wait for new rows, for one of this relay's
                // writes (which may free an aggregate's next message: in per-aggregate order a
                // claim finds nothing while the aggregates' earlier messages are in flight), or
                // for the next poll. A write that landed while the claim ran counts too.
                if written.has_changed().unwrap_or(false) {
                    continue;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = wake.changed() => {}
                    _ = written.changed() => {}
                    _ = tokio::time::sleep(shared.settings.poll_interval) => {}
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                bump(&shared.stats.errors, 1);
                let backoff = Duration::from_millis(100)
                    .saturating_mul(1 << failures.min(7))
                    .min(Duration::from_secs(10));
                tracing::warn!(
                    relay = %shared.id, error = %e.report(), retry_in = ?backoff,
                    "outbox relay claim failed"
                );
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    // Claims still in flight end (each bounded by the claim timeout); what they claimed is
    // held, undecided, and `finish` gives it back.
    for task in ahead {
        let _ = task.await;
    }
    finish(&shared, running, &out).await;
    drop(out);
    if let Ok(w) = completer.await {
        tracing::debug!(relay = %shared.id, written = ?w, "completer finished");
    }
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    if let Err(e) = shared.driver.relay_stopped(&shared.db, &shared.id).await {
        tracing::debug!(relay = %shared.id, error = %e.report(), "could not record the relay's stop");
    }
    tracing::info!(relay = %shared.id, "outbox relay stopped");
}

/// How the relay describes itself in the relays table.
fn relay_row(shared: &Shared) -> RelayRow {
    let r = &shared.registry;
    let handles = Handles {
        handlers: r
            .handlers()
            .iter()
            .map(|h| (h.name().to_owned(), h.event_type().to_owned()))
            .collect(),
        routes: r.routes().map(|h| h.name().to_owned()).collect(),
        cdc_routes: r.cdc_routes().map(str::to_owned).collect(),
        event_types: r.event_types().map(|(t, _)| t.to_owned()).collect(),
    };
    RelayRow {
        id: shared.id.clone(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        lease_ms: shared.settings.lease.as_millis().min(i64::MAX as u128) as i64,
        handled: serde_json::to_string(&handles).expect("strings always serialize"),
    }
}

/// Lets running groups finish for up to the shutdown timeout, then stops them and gives their
/// undecided messages back.
async fn finish(shared: &Shared, mut running: JoinSet<()>, out: &Completer) {
    let all_done = async { while running.join_next().await.is_some() {} };
    let timed_out = tokio::time::timeout(shared.settings.shutdown_timeout, all_done)
        .await
        .is_err();
    if timed_out {
        running.abort_all();
        while running.join_next().await.is_some() {}
    }
    let open = shared.held.open();
    if !open.is_empty() {
        if timed_out {
            tracing::warn!(
                relay = %shared.id, unfinished = open.len(),
                "shutdown timeout: writing what finished, giving back the rest"
            );
        }
        shared.held.decided(open.iter().copied());
        out.send(vec![Item::Release(open)]);
    }
}

/// One batch, in the foreground: claim, run every group, write everything, report.
pub(crate) async fn run_once(shared: &Arc<Shared>) -> Result<BatchReport> {
    let batch = claim(shared, shared.settings.batch_size).await?;
    hold(shared, &batch);
    if batch.rows.is_empty() {
        return Ok(BatchReport::default());
    }
    let claimed = batch.rows.len();
    // If this future is dropped half-way (a timeout, a cancelled task), the relay forgets the
    // batch and stops renewing its leases, as if it had died: the messages go back to the
    // pool when the leases expire.
    let _forget = Forget(
        shared,
        batch.rows.iter().map(|c| c.envelope.sequence).collect(),
    );
    let (out, completer) = Completer::spawn(shared.clone());
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let heartbeat = tokio::spawn(lease::heartbeat(shared.clone(), stop.clone(), false));
    let permits = Arc::new(Semaphore::new(shared.settings.concurrency));
    let mut running = JoinSet::new();
    let result = dispatch(shared, batch, &out, &permits, &mut running).await;
    while running.join_next().await.is_some() {}
    drop(out);
    let written = completer.await.unwrap_or_default();
    stop.cancel();
    let _ = heartbeat.await;
    result?;
    let mut report = BatchReport {
        claimed,
        ..BatchReport::default()
    };
    report.add_written(&written);
    Ok(report)
}

/// Forgets held messages when dropped (they were written, or will be redelivered).
struct Forget<'a>(&'a Shared, Vec<i64>);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.held.written(std::mem::take(&mut self.1));
    }
}

//! A lock kept in a remote record that is only ever written guarded by the version read just
//! before (a Kubernetes Lease and its resourceVersion, a Secret Manager secret and its etag).
//!
//! Owns the rules every such lock shares, once:
//! - A claim is live until its expiry (by this machine's clock). A live claim is never taken,
//!   not even with `--force`; an expired one is taken over only with `--force` (the operator
//!   confirms that the run that held it is really gone).
//! - Every write carries the version that was read (or creates the record). A lost race means
//!   someone else wrote in between: rotor re-reads and decides again; it never overwrites what
//!   it did not read.
//! - While held, a background task renews the claim every `duration / 3` and writes a new stage
//!   as soon as [`LockGuard::set_stage`] records it. That task is the record's only writer in
//!   this run, and every write it issues (a first attempt or a retry after a lost race) carries
//!   the latest stage, read under the mutex `set_stage` writes it under: within one run the
//!   stage in the record only moves forward. If a renewal finds another holder (this run
//!   failed to renew for a whole duration and an operator forced a takeover), the guard is
//!   *lost*: the task emits an event and stops, [`LockGuard::lost`] names the new holder,
//!   `set_stage` and `release` never touch the record again, and the engine stops before its
//!   next step or journal write.
//! - An emergency rekey may ask the holder to hand over: it writes a [`Handover`] into the
//!   holder's description (guarded, same claim only, expiry untouched). The holder's next
//!   renewal races with that write, re-reads, sees the request and keeps it; the engine then
//!   stops at its next stable state and releases.
//! - A claim this run could not renew for a whole duration has *lapsed*, by this run's own
//!   clock (measured from before the last write that landed): anyone may take it over with
//!   `--force` from then on, so the guard reports it lost (a synthetic holder says it lapsed),
//!   stops renewing, and the engine stops before its next step or journal write. Its release
//!   still clears the record if nobody took it meanwhile.
//! - Release clears the claim (guarded the same way) so the next run need not wait for it to
//!   expire. A guard dropped without release stops renewing, and the claim lapses.
//!
//! - Where other writers in this process write the same record (a Secret Manager store writes
//!   the secret whose annotation is the lock), every read-decide-write of the lock runs during
//!   the backend's [turn](Backend::turn), which those writers take too, and a renewal starts
//!   from a fresh read: the lock and the steps never race each other's versions.
//!
//! A [`Backend`] supplies the record's reads and guarded writes and the pure mapping between a
//! record and a [`Holder`]. Must never: write a record it does not hold, or hold anything but
//! who holds it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{Handover, Holder, LockError, LockGuard, RotationLock};
use crate::events::{Event, EventSink};

/// How long a claim lives without renewal unless configured otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// How many lost races in a row one decision tolerates before giving up.
pub const MAX_RACES: usize = 8;

/// Held while one read-decide-write of the record runs (see [`Backend::turn`]).
pub type Turn = Box<dyn Send + Sync>;

/// Why a guarded write did not happen.
pub enum Write {
    /// Someone else wrote first (version mismatch, or the record vanished): read again.
    Raced,
    /// The write failed for another reason.
    Failed(LockError),
}

/// Where a lock record lives and how a holder maps onto it.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The record as read, carrying the version its next write is guarded by.
    type Record: Clone + Send + Sync + 'static;

    /// The record, or `None` when there is none yet.
    async fn get(&self) -> Result<Option<Self::Record>, LockError>;
    /// Writes `next`: creates it when `current` was `None`, else replaces it guarded by the
    /// version `next` carries.
    async fn put(&self, next: &Self::Record, create: bool) -> Result<Self::Record, Write>;
    /// Who holds the record (expiry included), or `None` when it is free.
    fn holder_of(&self, r: &Self::Record) -> Option<Holder>;
    /// `current` (or a new record) as claimed by `holder` at `now` for `duration`.
    fn claim(
        &self,
        current: Option<&Self::Record>,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Self::Record;
    /// `last` (the holder's own last write) renewed at `now` with `holder`'s current stage.
    fn renewed(
        &self,
        last: &Self::Record,
        holder: &Holder,
        now: DateTime<Utc>,
        duration: Duration,
    ) -> Self::Record;
    /// `current` with its holder description replaced by `holder`, and nothing else changed
    /// (no renewal): how a handover request is written.
    fn noted(&self, current: &Self::Record, holder: &Holder) -> Self::Record;
    /// `last` given back: no holder.
    fn released(&self, last: &Self::Record, now: DateTime<Utc>) -> Self::Record;
    /// Whether `a` and `b` record the same acquisition (the holder's token).
    fn same_claim(&self, a: &Self::Record, b: &Self::Record) -> bool;
    /// Where the record lives (`leases/rotor-x in namespace demo`).
    fn describe(&self) -> String;
    /// The error when races never end.
    fn races(&self) -> LockError;
    /// Waits for this process's turn to write the record, where other writers in this process
    /// write it too (a Secret Manager store and the lock on its annotation) and take the same
    /// turn: held from the read a write is decided on to the write, so neither moves the
    /// other's version in between. A backend that has one also gets its record read again
    /// before each renewal, since those writers move its version. `None` (the default) where
    /// the lock is the record's only writer.
    async fn turn(&self) -> Option<Turn> {
        None
    }
}

/// What `acquire` does with a record it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it: it is free, or expired and `force` was given (`from` is the previous holder).
    Take {
        /// The holder whose expired claim is taken over.
        from: Option<Holder>,
    },
    /// Someone holds it and renews it.
    Held(Holder),
    /// Its holder stopped renewing it; taking it over needs `force`.
    Expired(Holder),
}

/// The acquisition rule: free → take; live → held (even with `force`); expired → take only with
/// `force`.
pub fn decide(holder: Option<Holder>, now: DateTime<Utc>, force: bool) -> Decision {
    match holder {
        None => Decision::Take { from: None },
        Some(h) if now < h.expires => Decision::Held(h),
        Some(h) if force => Decision::Take { from: Some(h) },
        Some(h) => Decision::Expired(h),
    }
}

/// A lock in a remote record.
pub struct RecordLock<B: Backend> {
    ctx: Arc<Ctx<B>>,
}

/// What the lock and its renewal task share.
struct Ctx<B: Backend> {
    backend: B,
    duration: Duration,
    events: Option<Arc<dyn EventSink>>,
}

impl<B: Backend> RecordLock<B> {
    /// A lock in `backend`'s record, with the default duration.
    pub fn with_backend(backend: B) -> RecordLock<B> {
        RecordLock {
            ctx: Arc::new(Ctx {
                backend,
                duration: DEFAULT_DURATION,
                events: None,
            }),
        }
    }

    /// Sets the claim's duration (at least 3 s; renewals run every third of it).
    pub fn with_duration(mut self, duration: Duration) -> RecordLock<B> {
        self.ctx_mut().duration = duration.max(Duration::from_secs(3));
        self
    }

    /// Reports takeovers, failed renewals and a lost claim to `events` (besides the log).
    pub fn with_events(mut self, events: Arc<dyn EventSink>) -> RecordLock<B> {
        self.ctx_mut().events = Some(events);
        self
    }

    fn ctx_mut(&mut self) -> &mut Ctx<B> {
        Arc::get_mut(&mut self.ctx).expect("configured before use")
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.ctx.backend
    }

    /// A guard over `record`, whose claim was written no earlier than `written`.
    fn guard(&self, record: B::Record, holder: Holder, written: Instant) -> Box<dyn LockGuard> {
        let shared = Arc::new(Mutex::new(Shared {
            last: record,
            renewed: written,
            lapsed: false,
            lost: None,
            handover: None,
            holder,
            seq: 0,
            issued: 0,
        }));
        let (stage_tx, stage_rx) = watch::channel(0);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(renew_loop(
            self.ctx.clone(),
            shared.clone(),
            stage_rx,
            stop_rx,
        ));
        Box::new(Guard {
            ctx: self.ctx.clone(),
            stage: stage_tx,
            shared,
            stop: Mutex::new(Some(stop_tx)),
            task: Mutex::new(Some(task)),
        })
    }
}

impl<B: Backend> Ctx<B> {
    fn note(&self, message: String) {
        tracing::warn!(lock = %self.backend.describe(), "{message}");
        if let Some(events) = &self.events {
            events.emit(&Event::Note { message });
        }
    }

    /// One renewal (or stage update) of the record this guard holds, carrying the latest
    /// stage.
    async fn renew(&self, shared: &Mutex<Shared<B::Record>>) -> Result<(), Renewal> {
        let b = &self.backend;
        let started = Instant::now();
        let turn = b.turn().await;
        let mut last = shared.lock().expect("lock mutex").last.clone();
        if turn.is_some() {
            // Other writers in this process moved the record's version since this run last
            // wrote it: start from the record as it is.
            last = self.reread(shared, &last).await?;
        }
        for _ in 0..MAX_RACES {
            // The latest stage (and a standing handover request, which once seen stays in the
            // record for others to read), taken under the mutex `set_stage` writes under.
            let (holder, seq) = shared.lock().expect("lock mutex").next_write();
            let next = b.renewed(&last, &holder, Utc::now(), self.duration);
            match b.put(&next, false).await {
                Ok(written) => {
                    let mut s = shared.lock().expect("lock mutex");
                    s.last = written;
                    s.renewed = started;
                    tracing::debug!(lock = %b.describe(), seq, "lock renewed");
                    return Ok(());
                }
                // Still ours (a retried write landed, a rekey asked for a handover, or someone
                // edited other fields): go again.
                Err(Write::Raced) => last = self.reread(shared, &last).await?,
                Err(Write::Failed(e)) => return Err(Renewal::Failed(e)),
            }
        }
        Err(Renewal::Failed(b.races()))
    }

    /// The record as it is now, if it is still this run's claim `last`, with the handover
    /// request it carries now (set, or withdrawn) noted.
    async fn reread(
        &self,
        shared: &Mutex<Shared<B::Record>>,
        last: &B::Record,
    ) -> Result<B::Record, Renewal> {
        let b = &self.backend;
        match b.get().await {
            Ok(Some(now)) if b.same_claim(&now, last) => {
                shared.lock().expect("lock mutex").handover =
                    b.holder_of(&now).and_then(|h| h.handover);
                Ok(now)
            }
            Ok(now) => Err(Renewal::Lost(foreign(
                now.as_ref().and_then(|r| b.holder_of(r)),
            ))),
            Err(e) => Err(Renewal::Failed(e)),
        }
    }
}

/// Why a renewal did not happen.
enum Renewal {
    /// Someone else holds the record now.
    Lost(Holder),
    /// The write did not go through (retried already); the next tick tries again.
    Failed(LockError),
}

/// The holder to report when the record is no longer ours.
fn foreign(holder: Option<Holder>) -> Holder {
    holder.unwrap_or_else(|| {
        nobody("nobody (the lock was released or deleted by someone else)".into())
    })
}

/// A holder that is no run: what a lost guard reports when nobody holds the record.
fn nobody(identity: String) -> Holder {
    let now = Utc::now();
    Holder {
        identity,
        command: "-".into(),
        rotation: None,
        stage: "-".into(),
        since: now,
        expires: now,
        handover: None,
    }
}

#[async_trait]
impl<B: Backend> RotationLock for RecordLock<B> {
    async fn acquire(&self, holder: Holder, force: bool) -> Result<Box<dyn LockGuard>, LockError> {
        let ctx = &self.ctx;
        let b = &ctx.backend;
        // The claim this call wrote last, to recognise it if a retried write landed twice.
        let mut attempted: Option<(B::Record, Instant)> = None;
        for _ in 0..MAX_RACES {
            let _turn = b.turn().await;
            let now = Utc::now();
            let at = Instant::now();
            let current = b.get().await?;
            if let (Some(cur), Some((mine, written))) = (&current, &attempted)
                && b.same_claim(cur, mine)
            {
                return Ok(self.guard(cur.clone(), holder, *written));
            }
            let from = match current.as_ref().map(|r| decide(b.holder_of(r), now, force)) {
                None => None,
                Some(Decision::Take { from }) => from,
                Some(Decision::Held(h)) => return Err(LockError::Held(Box::new(h))),
                Some(Decision::Expired(h)) => return Err(LockError::Expired(Box::new(h))),
            };
            let next = b.claim(current.as_ref(), &holder, now, ctx.duration);
            attempted = Some((next.clone(), at));
            match b.put(&next, current.is_none()).await {
                Ok(record) => {
                    if let Some(prev) = from {
                        ctx.note(format!(
                            "took over the lock {} with --force from {} ({}, at stage {}), whose claim expired at {}",
                            b.describe(),
                            prev.identity,
                            prev.command,
                            prev.stage,
                            prev.expires.format("%Y-%m-%d %H:%M:%S UTC")
                        ));
                    }
                    let mut h = holder;
                    h.since = now;
                    return Ok(self.guard(record, h, at));
                }
                // Someone else wrote first: read again and decide again.
                Err(Write::Raced) => continue,
                Err(Write::Failed(e)) => return Err(e),
            }
        }
        Err(b.races())
    }

    async fn holder(&self) -> Result<Option<Holder>, LockError> {
        let b = &self.ctx.backend;
        Ok(b.get().await?.as_ref().and_then(|r| b.holder_of(r)))
    }

    async fn request_handover(&self, seen: &Holder, req: &Handover) -> Result<bool, LockError> {
        let b = &self.ctx.backend;
        for _ in 0..MAX_RACES {
            let _turn = b.turn().await;
            let Some(current) = b.get().await? else {
                return Ok(false);
            };
            let Some(mut h) = b.holder_of(&current).filter(|h| h.same_claim(seen)) else {
                return Ok(false);
            };
            // A request still standing says the same thing; one past its deadline is void.
            if h.handover.as_ref().is_some_and(Handover::stands) {
                return Ok(true);
            }
            h.handover = Some(req.clone());
            match b.put(&b.noted(&current, &h), false).await {
                Ok(_) => return Ok(true),
                Err(Write::Raced) => continue,
                Err(Write::Failed(e)) => return Err(e),
            }
        }
        Err(b.races())
    }

    async fn withdraw_handover(&self, req: &Handover) -> Result<(), LockError> {
        let b = &self.ctx.backend;
        for _ in 0..MAX_RACES {
            let _turn = b.turn().await;
            let Some(current) = b.get().await? else {
                return Ok(());
            };
            let Some(mut h) = b
                .holder_of(&current)
                .filter(|h| h.handover.as_ref() == Some(req))
            else {
                return Ok(());
            };
            h.handover = None;
            match b.put(&b.noted(&current, &h), false).await {
                Ok(_) => return Ok(()),
                Err(Write::Raced) => continue,
                Err(Write::Failed(e)) => return Err(e),
            }
        }
        Err(b.races())
    }

    fn describe(&self) -> String {
        self.ctx.backend.describe()
    }
}

/// State the guard and its renewal task share.
struct Shared<R> {
    /// The record as this run last wrote it (carries the version for the next write).
    last: R,
    /// When (by this process's clock) the last write of the claim that landed started.
    renewed: Instant,
    /// The claim went unrenewed for a whole duration (`lost` then says so).
    lapsed: bool,
    /// Who took the lock over, once a renewal found out (or a synthetic holder for a lapse).
    lost: Option<Holder>,
    /// A rekey's request to hand over, once a renewal found it.
    handover: Option<Handover>,
    /// The holder as [`LockGuard::set_stage`] last described it (the latest stage).
    holder: Holder,
    /// How many times the stage was set: the sequence number of `holder`'s stage.
    seq: u64,
    /// The stage sequence number of the last write issued: never more than `seq`, and never
    /// lower in a later write.
    issued: u64,
}

impl<R> Shared<R> {
    /// The holder to write next (the latest stage, and a standing handover request) and its
    /// stage sequence number, recorded as issued: a later write never carries an older stage.
    fn next_write(&mut self) -> (Holder, u64) {
        debug_assert!(self.seq >= self.issued, "stages only move forward");
        self.issued = self.seq;
        let mut h = self.holder.clone();
        h.handover = self.handover.clone().filter(Handover::stands);
        (h, self.seq)
    }
}

/// A held claim.
struct Guard<B: Backend> {
    ctx: Arc<Ctx<B>>,
    /// Wakes the renewal task with the stage sequence number just set.
    stage: watch::Sender<u64>,
    shared: Arc<Mutex<Shared<B::Record>>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Renews every `duration / 3`, and at once when the stage changes, until told to stop or
/// until the claim is lost.
async fn renew_loop<B: Backend>(
    ctx: Arc<Ctx<B>>,
    shared: Arc<Mutex<Shared<B::Record>>>,
    mut stage: watch::Receiver<u64>,
    mut stop: oneshot::Receiver<()>,
) {
    let period = ctx.duration / 3;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            changed = stage.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(period) => {}
        }
        // A stage set from now on wakes the next round; this one writes the latest anyway.
        stage.borrow_and_update();
        // No renewal attempt starts (or goes on retrying) once the claim has lapsed.
        let lapses_at = {
            let s = shared.lock().expect("lock mutex");
            if s.lost.is_some() {
                return;
            }
            tokio::time::Instant::from_std(s.renewed + ctx.duration)
        };
        let outcome = tokio::select! {
            biased;
            () = tokio::time::sleep_until(lapses_at) => None,
            r = ctx.renew(&shared) => Some(r),
        };
        let Some(outcome) = outcome else {
            lapse(&ctx, &shared);
            return;
        };
        match outcome {
            Ok(()) => {}
            Err(Renewal::Lost(by)) => {
                ctx.note(format!(
                    "lost the lock {}: {} ({}) holds it now; this run stops before its next step and writes nothing more",
                    ctx.backend.describe(),
                    by.identity,
                    by.command
                ));
                shared.lock().expect("lock mutex").lost = Some(by);
                return;
            }
            Err(Renewal::Failed(e)) => {
                let expires = ctx
                    .backend
                    .holder_of(&shared.lock().expect("lock mutex").last)
                    .map(|h| h.expires.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default();
                ctx.note(format!(
                    "could not renew the lock {} (it lapses at {expires} unless a later renewal succeeds): {e}",
                    ctx.backend.describe()
                ));
                if lapse(&ctx, &shared).is_some() {
                    return;
                }
            }
        }
    }
}

/// Marks the claim lapsed (and says so, once) when it went unrenewed for a whole duration;
/// returns who [`LockGuard::lost`] reports: the run that took the lock, or a synthetic holder
/// for a lapse.
fn lapse<B: Backend>(ctx: &Ctx<B>, shared: &Mutex<Shared<B::Record>>) -> Option<Holder> {
    let lapsed = {
        let mut s = shared.lock().expect("lock mutex");
        if s.lost.is_some() || s.renewed.elapsed() < ctx.duration {
            return s.lost.clone();
        }
        let h = nobody(format!(
            "nobody yet (this run could not renew its claim for {}s, so it lapsed and may be taken over)",
            ctx.duration.as_secs()
        ));
        s.lapsed = true;
        s.lost = Some(h.clone());
        h
    };
    ctx.note(format!(
        "the claim on the lock {} lapsed: {}; this run stops before its next step and writes nothing more",
        ctx.backend.describe(),
        lapsed.identity
    ));
    Some(lapsed)
}

impl<B: Backend> Guard<B> {
    /// Stops the renewal task and waits for a renewal in flight, so nothing writes after.
    async fn stop(&self) {
        if let Some(tx) = self.stop.lock().expect("lock mutex").take() {
            let _ = tx.send(());
        }
        let task = self.task.lock().expect("lock mutex").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[async_trait]
impl<B: Backend> LockGuard for Guard<B> {
    fn set_stage(&self, rotation: Option<&str>, stage: &str) {
        if self.lost().is_some() {
            return;
        }
        let seq = {
            let mut s = self.shared.lock().expect("lock mutex");
            if let Some(r) = rotation {
                s.holder.rotation = Some(r.to_string());
            }
            s.holder.stage = stage.to_string();
            s.seq += 1;
            s.seq
        };
        self.stage.send_replace(seq);
    }

    fn lost(&self) -> Option<Holder> {
        lapse(&self.ctx, &self.shared)
    }

    fn handover(&self) -> Option<Handover> {
        let req = self.shared.lock().expect("lock mutex").handover.clone()?;
        req.stands().then_some(req)
    }

    async fn release(self: Box<Self>) -> Result<(), LockError> {
        self.stop().await;
        let (mut last, taken) = {
            let s = self.shared.lock().expect("lock mutex");
            (s.last.clone(), s.lost.is_some() && !s.lapsed)
        };
        if taken {
            // Not ours any more: leave it to its holder.
            return Ok(());
        }
        // A lapsed claim is cleared only if it is still ours (the guarded write below).
        let b = &self.ctx.backend;
        let _turn = b.turn().await;
        if _turn.is_some() {
            // Other writers in this process moved the record's version: start from it as it is.
            match b.get().await? {
                Some(now) if b.same_claim(&now, &last) => last = now,
                _ => return Ok(()),
            }
        }
        for _ in 0..MAX_RACES {
            match b.put(&b.released(&last, Utc::now()), false).await {
                Ok(_) => return Ok(()),
                Err(Write::Raced) => match b.get().await? {
                    Some(now) if b.same_claim(&now, &last) => last = now,
                    // Taken over, released or deleted by someone else meanwhile: not ours.
                    _ => return Ok(()),
                },
                Err(Write::Failed(e)) => return Err(e),
            }
        }
        Err(b.races())
    }
}

impl<B: Backend> Drop for Guard<B> {
    fn drop(&mut self) {
        // Fallback when release was not called: stop renewing; the claim lapses on its own.
        if let Some(task) = self.task.lock().expect("lock mutex").take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(expires: &str) -> Holder {
        let mut h = Holder::me("rotate");
        h.stage = "T3 promote forward".into();
        h.expires = expires.parse().unwrap();
        h
    }

    #[test]
    fn live_claims_are_held_expired_ones_need_force() {
        let live: DateTime<Utc> = "2026-01-02T03:00:29Z".parse().unwrap();
        let dead: DateTime<Utc> = "2026-01-02T03:00:31Z".parse().unwrap();
        let h = || Some(holder("2026-01-02T03:00:30Z"));
        assert!(
            matches!(decide(h(), live, false), Decision::Held(h) if h.stage == "T3 promote forward")
        );
        assert!(
            matches!(decide(h(), live, true), Decision::Held(_)),
            "force never takes a live claim"
        );
        assert!(matches!(decide(h(), dead, false), Decision::Expired(_)));
        assert!(matches!(
            decide(h(), dead, true),
            Decision::Take { from: Some(_) }
        ));
        assert_eq!(decide(None, live, false), Decision::Take { from: None });
    }

    /// A record in memory: its version (moved by every write) and its holder.
    #[derive(Clone, Debug)]
    struct Rec {
        version: u64,
        holder: Option<Holder>,
    }

    #[derive(Default)]
    struct Mem {
        record: Option<Rec>,
        /// The stage of every write issued, in order, whether it landed or not.
        issued: Vec<String>,
        /// How many of the next writes find that another writer of the record (a step) moved
        /// its version just before them.
        steps: usize,
    }

    /// A backend whose writes wait at `gate`, so a test decides what happens while one is in
    /// flight.
    struct Fake {
        mem: Arc<Mutex<Mem>>,
        gate: Arc<tokio::sync::Semaphore>,
        /// Pretend other writers in this process write the record too (a turn, fresh reads).
        shared: bool,
    }

    #[async_trait]
    impl Backend for Fake {
        type Record = Rec;

        async fn get(&self) -> Result<Option<Rec>, LockError> {
            Ok(self.mem.lock().unwrap().record.clone())
        }

        async fn put(&self, next: &Rec, create: bool) -> Result<Rec, Write> {
            let stage = next.holder.as_ref().map_or("-".into(), |h| h.stage.clone());
            self.mem.lock().unwrap().issued.push(stage);
            drop(self.gate.acquire().await.unwrap());
            let mut m = self.mem.lock().unwrap();
            if m.steps > 0 {
                m.steps -= 1;
                if let Some(r) = m.record.as_mut() {
                    r.version += 1;
                }
                return Err(Write::Raced);
            }
            match (&m.record, create) {
                (None, true) => {}
                (Some(r), false) if r.version == next.version => {}
                _ => return Err(Write::Raced),
            }
            let written = Rec {
                version: next.version + 1,
                holder: next.holder.clone(),
            };
            m.record = Some(written.clone());
            Ok(written)
        }

        fn holder_of(&self, r: &Rec) -> Option<Holder> {
            r.holder.clone()
        }

        fn claim(&self, current: Option<&Rec>, h: &Holder, now: DateTime<Utc>, d: Duration) -> Rec {
            let mut h = h.clone();
            h.since = now;
            h.expires = now + chrono::Duration::from_std(d).unwrap();
            Rec {
                version: current.map_or(0, |r| r.version),
                holder: Some(h),
            }
        }

        fn renewed(&self, last: &Rec, h: &Holder, now: DateTime<Utc>, d: Duration) -> Rec {
            let mut h = h.clone();
            if let Some(prev) = &last.holder {
                h.since = prev.since;
            }
            h.expires = now + chrono::Duration::from_std(d).unwrap();
            Rec {
                version: last.version,
                holder: Some(h),
            }
        }

        fn noted(&self, current: &Rec, h: &Holder) -> Rec {
            Rec {
                version: current.version,
                holder: Some(h.clone()),
            }
        }

        fn released(&self, last: &Rec, _now: DateTime<Utc>) -> Rec {
            Rec {
                version: last.version,
                holder: None,
            }
        }

        fn same_claim(&self, a: &Rec, b: &Rec) -> bool {
            match (&a.holder, &b.holder) {
                (Some(x), Some(y)) => x.same_claim(y),
                _ => false,
            }
        }

        fn describe(&self) -> String {
            "the fake record".into()
        }

        fn races(&self) -> LockError {
            LockError::HeldUnknown {
                path: "the fake record".into(),
            }
        }

        async fn turn(&self) -> Option<Turn> {
            self.shared.then(|| Box::new(()) as Turn)
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..5000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Within one run the stage in the record only moves forward: a renewal in flight while
    /// the engine sets newer stages, and whose write then meets a step's write (a lost race),
    /// retries with the newest stage, never the one it started with; no write carries an older
    /// stage than one issued before it.
    #[tokio::test]
    async fn stages_written_never_go_backwards_when_a_renewal_races_set_stage() {
        const STAGES: [&str; 6] = [
            "S0 stable",
            "T1 publish forward",
            "S1 published",
            "T2 widen forward",
            "S2 dual-accept",
            "T3 promote forward",
        ];
        for shared in [false, true] {
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            gate.add_permits(1 << 20);
            let mem = Arc::new(Mutex::new(Mem::default()));
            let lock = RecordLock::with_backend(Fake {
                mem: mem.clone(),
                gate: gate.clone(),
                shared,
            });
            let g = lock.acquire(Holder::me("rotate"), false).await.unwrap();
            // Writes wait from now on; the next one meets a step's write.
            gate.acquire_many(1 << 20).await.unwrap().forget();
            mem.lock().unwrap().steps = 1;
            g.set_stage(Some("r-1"), STAGES[0]);
            until("the renewal to issue S0", || {
                mem.lock().unwrap().issued.last().map(String::as_str) == Some(STAGES[0])
            })
            .await;
            // The engine moves on while that write is in flight.
            for stage in &STAGES[1..] {
                g.set_stage(None, stage);
            }
            let mark = mem.lock().unwrap().issued.len();
            gate.add_permits(1 << 20);
            let last = STAGES[STAGES.len() - 1];
            let stage_now = || {
                mem.lock()
                    .unwrap()
                    .record
                    .as_ref()
                    .and_then(|r| r.holder.as_ref())
                    .map(|h| h.stage.clone())
            };
            until("the newest stage to land", || {
                stage_now().as_deref() == Some(last)
            })
            .await;
            // Then many more stages, with steps writing in between.
            let more: Vec<String> = (0..40).map(|i| format!("U{i:02}")).collect();
            for (i, stage) in more.iter().enumerate() {
                mem.lock().unwrap().steps = i % 3;
                g.set_stage(None, stage);
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let newest = more.last().unwrap().clone();
            until("the last stage to land", || {
                stage_now().as_deref() == Some(newest.as_str())
            })
            .await;
            let issued = mem.lock().unwrap().issued.clone();
            let order = |s: &str| {
                std::iter::once("starting")
                    .chain(STAGES)
                    .chain(more.iter().map(String::as_str))
                    .position(|x| x == s)
                    .unwrap_or_else(|| panic!("unknown stage {s}"))
            };
            let seen: Vec<usize> = issued.iter().map(|s| order(s)).collect();
            assert!(
                seen.windows(2).all(|w| w[0] <= w[1]),
                "a write carried an older stage than one before it (shared {shared}): {issued:?}"
            );
            // The retry after the lost race (and everything after it) carried the newest stage.
            assert!(
                issued[mark..]
                    .iter()
                    .take_while(|s| !s.starts_with('U'))
                    .all(|s| s == last),
                "a retry wrote a stage older than the newest set (shared {shared}): {issued:?}"
            );
            g.release().await.unwrap();
            assert!(
                mem.lock()
                    .unwrap()
                    .record
                    .as_ref()
                    .unwrap()
                    .holder
                    .is_none()
            );
        }
    }
}

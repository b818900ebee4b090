//! A fixed set of dedicated OS threads running inference jobs from a bounded queue.
//!
//! Model work is CPU-bound for tens of milliseconds: on a tokio worker it would stall every other
//! request on that worker, so it runs here instead (as text-embeddings-inference does). Workers
//! block on the queue (no spinning: on 2 cores a busy-waiting pool halves throughput), the queue is
//! bounded so overload is answered at once with RESOURCE_EXHAUSTED rather than by growing latency,
//! and each job carries its deadline and its caller's tracing span.
//!
//! The bound counts requests, not jobs: one request may queue several jobs at once
//! ([`InferencePool::submit_all`], e.g. a comparison's probe and each gallery image) so that idle
//! workers share it; it holds one place in the queue until a worker takes its first job, and it
//! is admitted whole or refused whole.
//!
//! Each worker is also the only thread of its own rayon pool (when the workers cover the cores),
//! so the network kernels' rayon splits run inline on it: left to rayon's global pool (one
//! thread per core), every worker's kernels forked onto the same two threads, and at one
//! request in flight a 640x480 FAST compare took 49 ms instead of 39 (ACCURATE 96 instead of
//! 73) on 2 cores. When there are fewer workers than cores, each worker's pool gets the cores
//! left over ([`PoolConfig::kernel_threads`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use faceproof_imaging::Cancellation;
use faceproof_telemetry::Metrics;
use tokio::sync::oneshot;
use tracing::Span;

use crate::RuntimeError;
use crate::deadline::Deadline;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A job in the queue and the place its request holds there.
struct Queued {
    admission: Arc<Admission>,
    job: Job,
}

/// One request's place among the [`PoolConfig::queue_capacity`] waiting ones, shared by its
/// jobs: given back when a worker takes the first of them (the request is no longer waiting) or
/// when they are all dropped unrun.
struct Admission {
    waiting_requests: Arc<AtomicUsize>,
    released: AtomicBool,
}

impl Admission {
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.waiting_requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

/// Size of an [`InferencePool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads, each running one job at a time.
    pub threads: usize,
    /// Requests that may wait for a worker (a request waits until a worker takes its first
    /// job); one more is refused with [`RuntimeError::QueueFull`].
    pub queue_capacity: usize,
}

impl PoolConfig {
    /// One worker per available core: inference is CPU-bound, more threads only add contention.
    pub fn default_threads() -> usize {
        available_cores()
    }

    /// Threads of each worker's rayon pool, the worker included: the cores divided among the
    /// workers (at least 1), so that workers and kernels together never ask for more threads
    /// than there are cores.
    pub fn kernel_threads(&self) -> usize {
        (available_cores() / self.threads.max(1)).max(1)
    }
}

fn available_cores() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// Counters for metrics, updated lock-free by the pool (and mirrored into the Prometheus
/// [`Metrics`] of [`InferencePool::with_metrics`]).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs accepted and not yet taken by a worker.
    pub queue_depth: AtomicUsize,
    /// Requests refused because the queue was full (all their jobs, however many).
    pub rejected_queue_full: AtomicU64,
    /// Jobs dropped unrun because their deadline passed while queued.
    pub expired_in_queue: AtomicU64,
    /// Jobs dropped unrun because their caller had gone away.
    pub abandoned: AtomicU64,
    /// Jobs that panicked.
    pub panicked: AtomicU64,
    /// Jobs that ran to completion (successfully or with an engine error).
    pub completed: AtomicU64,
}

/// Dedicated inference threads fed by a bounded queue. Dropping the pool closes the queue; the
/// workers finish the jobs already queued and exit.
#[derive(Debug)]
pub struct InferencePool {
    sender: Sender<Queued>,
    /// Requests admitted whose first job no worker has taken yet; at most `queue_capacity`.
    waiting_requests: Arc<AtomicUsize>,
    stats: Arc<PoolStats>,
    config: PoolConfig,
    metrics: Option<Metrics>,
}

impl InferencePool {
    /// Starts `config.threads` worker threads named `{name}-infer-{i}`.
    pub fn new(name: &str, config: PoolConfig) -> Result<Self, RuntimeError> {
        Self::start(name, config, None)
    }

    /// As [`Self::new`], also publishing the queue depth and queue-full rejections to `metrics`
    /// (`faceproof_inference_queue_depth`, `faceproof_inference_queue_rejected_total`).
    pub fn with_metrics(
        name: &str,
        config: PoolConfig,
        metrics: Metrics,
    ) -> Result<Self, RuntimeError> {
        Self::start(name, config, Some(metrics))
    }

    fn start(
        name: &str,
        config: PoolConfig,
        metrics: Option<Metrics>,
    ) -> Result<Self, RuntimeError> {
        if config.threads == 0 {
            return Err(RuntimeError::InvalidPoolConfig(
                "at least one worker thread is needed".into(),
            ));
        }
        if config.queue_capacity == 0 {
            return Err(RuntimeError::InvalidPoolConfig(
                "queue capacity must be at least 1".into(),
            ));
        }
        // Unbounded: admission ([`Admission`]) bounds it to `queue_capacity` requests.
        let (sender, receiver) = channel::<Queued>();
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(PoolStats::default());
        let kernel_threads = config.kernel_threads();
        for index in 0..config.threads {
            let receiver = Arc::clone(&receiver);
            let stats = Arc::clone(&stats);
            let metrics = metrics.clone();
            let thread_name = format!("{name}-infer-{index}");
            thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    // Held while the worker runs: dropping it would stop its helper threads.
                    let _kernel_pool = join_own_kernel_pool(&thread_name, kernel_threads);
                    worker_loop(&receiver, &stats, metrics.as_ref());
                })
                .map_err(RuntimeError::SpawnWorker)?;
        }
        Ok(Self {
            sender,
            waiting_requests: Arc::default(),
            stats,
            config,
            metrics,
        })
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    /// Shared counters for metrics exporters.
    pub fn stats(&self) -> Arc<PoolStats> {
        Arc::clone(&self.stats)
    }

    /// Queues `work` and returns the receiver of its result, or fails at once when the queue is
    /// full. The job runs inside the current tracing span; it is skipped if its deadline passes
    /// while queued (answered [`RuntimeError::DeadlineExceeded`]) or if the receiver is dropped.
    pub fn submit<T, F>(&self, deadline: Deadline, work: F) -> Result<JobResult<T>, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(&Deadline) -> T + Send + 'static,
    {
        let mut receivers = self.submit_all(deadline, vec![work])?;
        receivers.pop().ok_or(RuntimeError::PoolClosed)
    }

    /// Queues the jobs of one request together, each on its own so that idle workers run them
    /// side by side (FIFO, so busy workers take them one after another), and returns their
    /// receivers in order. The request takes one place in the queue, whatever its number of
    /// jobs: all are queued, or none and [`RuntimeError::QueueFull`].
    pub fn submit_all<T, F>(
        &self,
        deadline: Deadline,
        works: Vec<F>,
    ) -> Result<Vec<JobResult<T>>, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(&Deadline) -> T + Send + 'static,
    {
        let capacity = self.config.queue_capacity;
        let admitted =
            self.waiting_requests
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                    (waiting < capacity).then_some(waiting + 1)
                });
        if admitted.is_err() {
            self.stats
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            if let Some(metrics) = &self.metrics {
                metrics.record_queue_rejection();
            }
            return Err(RuntimeError::QueueFull { capacity });
        }
        let admission = Arc::new(Admission {
            waiting_requests: Arc::clone(&self.waiting_requests),
            released: AtomicBool::new(false),
        });
        let span = Span::current();
        let mut receivers = Vec::with_capacity(works.len());
        for work in works {
            let (result_tx, result_rx) = oneshot::channel();
            let span = span.clone();
            let stats = Arc::clone(&self.stats);
            let job: Job = Box::new(move || run_job(work, deadline, &span, result_tx, &stats));
            // Count before sending so a fast worker never decrements below zero.
            self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
            let queued = Queued {
                admission: Arc::clone(&admission),
                job,
            };
            if self.sender.send(queued).is_err() {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                publish_queue_depth(&self.stats, self.metrics.as_ref());
                // Jobs already queued are skipped: their receivers are dropped here.
                return Err(RuntimeError::PoolClosed);
            }
            receivers.push(result_rx);
        }
        publish_queue_depth(&self.stats, self.metrics.as_ref());
        Ok(receivers)
    }

    /// Submits `work` and waits for its result, at most until `deadline`. Dropping the returned
    /// future (the caller went away) makes the pool skip the job if it has not started yet.
    pub async fn run<T, F>(&self, deadline: Deadline, work: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(&Deadline) -> T + Send + 'static,
    {
        let receiver = self.submit(deadline, work)?;
        wait_for(deadline, receiver).await
    }
}

/// The receiving end of one queued job's result.
pub type JobResult<T> = oneshot::Receiver<Result<T, RuntimeError>>;

/// Waits for a submitted job's result, at most until `deadline`.
pub async fn wait_for<T>(deadline: Deadline, receiver: JobResult<T>) -> Result<T, RuntimeError> {
    let wait_until = tokio::time::Instant::from_std(deadline.instant());
    match tokio::time::timeout_at(wait_until, receiver).await {
        Ok(Ok(result)) => result,
        // The worker dropped the sender without answering: only when the pool is torn down.
        Ok(Err(_)) => Err(RuntimeError::PoolClosed),
        Err(_) => Err(RuntimeError::DeadlineExceeded),
    }
}

/// Cancels its token when dropped: when the future awaiting a job is dropped (the caller went
/// away, the transport gave up) or returns (at the deadline), the job stops at its next check.
pub(crate) struct CancelOnDrop(pub(crate) Cancellation);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl InferencePool {
    /// As [`Self::run`], handing the job a [`Cancellation`] that expires at `deadline` and is
    /// cancelled as soon as this future is dropped or gives up: long stages inside the job check
    /// it (per row band, per network layer) so abandoned work stops within milliseconds.
    /// [`Cancellation::caller_gone`] tells the two causes apart afterwards.
    pub async fn run_cancellable<T, F>(
        &self,
        deadline: Deadline,
        cancel: Cancellation,
        work: F,
    ) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(&Cancellation) -> T + Send + 'static,
    {
        let guard = CancelOnDrop(cancel.clone());
        let result = self.run(deadline, move |_| work(&cancel)).await;
        drop(guard);
        result
    }
}

/// Copies the queue depth into the gauge. Submitters and workers race to publish; re-reading
/// after the write means whoever published last saw the final value, so at rest the gauge
/// equals the counter.
fn publish_queue_depth(stats: &PoolStats, metrics: Option<&Metrics>) {
    let Some(metrics) = metrics else {
        return;
    };
    loop {
        let depth = stats.queue_depth.load(Ordering::Relaxed);
        metrics.set_queue_depth(depth);
        if stats.queue_depth.load(Ordering::Relaxed) == depth {
            return;
        }
    }
}

/// Makes the calling worker thread the first thread of a new rayon pool of `threads` (the
/// others are helpers named after it), so the kernels' `rayon::join`s and
/// `rayon::current_num_threads()` on this thread see this pool, not the global one. Keep the
/// returned pool while the worker runs (rayon keeps the adopted thread's registry for the rest of
/// the thread's life). If rayon refuses, the worker goes on with the global pool: slower, still
/// correct.
fn join_own_kernel_pool(worker_name: &str, threads: usize) -> Option<rayon::ThreadPool> {
    let helper_prefix = worker_name.to_owned();
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .thread_name(move |index| format!("{helper_prefix}-k{index}"))
        .build();
    match built {
        Ok(pool) => Some(pool),
        Err(error) => {
            tracing::warn!(
                %error,
                "could not give the inference worker its own kernel pool; \
                 its kernels share rayon's global pool"
            );
            None
        }
    }
}

fn worker_loop(receiver: &Mutex<Receiver<Queued>>, stats: &PoolStats, metrics: Option<&Metrics>) {
    loop {
        // The lock is held only while waiting for the next job; nothing can panic under it, so a
        // poisoned lock still guards a sound receiver.
        let next = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(Queued { admission, job }) = next else {
            tracing::debug!("inference queue closed, worker exiting");
            return;
        };
        // Its request is under way: its place in the queue goes to the next one.
        admission.release();
        drop(admission);
        stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        publish_queue_depth(stats, metrics);
        job();
    }
}

fn run_job<T, F>(
    work: F,
    deadline: Deadline,
    span: &Span,
    result_tx: oneshot::Sender<Result<T, RuntimeError>>,
    stats: &PoolStats,
) where
    F: FnOnce(&Deadline) -> T,
{
    let _entered = span.enter();
    if result_tx.is_closed() {
        stats.abandoned.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("caller went away while queued, skipping inference job");
        return;
    }
    if deadline.is_expired() {
        stats.expired_in_queue.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("deadline passed while queued, skipping inference job");
        // The caller may have gone in the meantime: nobody to tell then.
        let _ = result_tx.send(Err(RuntimeError::DeadlineExceeded));
        return;
    }
    // The job owns everything it touches; a panic leaves no shared state half-updated that the
    // next job could see, so unwinding out of it is sound.
    let outcome = catch_unwind(AssertUnwindSafe(|| work(&deadline)));
    let message = match outcome {
        Ok(value) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            let _ = result_tx.send(Ok(value));
            return;
        }
        Err(payload) => panic_message(payload.as_ref()),
    };
    stats.panicked.fetch_add(1, Ordering::Relaxed);
    tracing::error!(panic = %message, "inference job panicked");
    let _ = result_tx.send(Err(RuntimeError::JobPanicked(message)));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    fn pool(threads: usize, queue_capacity: usize) -> InferencePool {
        InferencePool::new(
            "test",
            PoolConfig {
                threads,
                queue_capacity,
            },
        )
        .unwrap()
    }

    fn later() -> Deadline {
        Deadline::after(Duration::from_secs(60))
    }

    /// Occupies the single worker until the returned sender is dropped or sent to.
    async fn block_worker(
        pool: &InferencePool,
    ) -> (
        mpsc::Sender<()>,
        oneshot::Receiver<Result<(), RuntimeError>>,
    ) {
        let (started_tx, started_rx) = oneshot::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let done = pool
            .submit(later(), move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .unwrap();
        started_rx.await.unwrap();
        (release_tx, done)
    }

    #[tokio::test]
    async fn runs_jobs_off_the_async_runtime() {
        let pool = pool(2, 4);
        let name = pool
            .run(later(), |_| thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("test-infer-"));
    }

    #[tokio::test]
    async fn each_worker_runs_kernels_in_its_own_pool_sized_to_the_cores_it_leaves() {
        let cores = available_cores();
        // One worker per core: the kernels' splits run inline on the worker.
        let per_core = pool(cores, 4);
        assert_eq!(per_core.config().kernel_threads(), 1);
        let (threads, joined_on) = per_core
            .run(later(), |_| {
                let worker = thread::current().id();
                let (a, b) = rayon::join(|| thread::current().id(), || thread::current().id());
                (rayon::current_num_threads(), [worker, a, b])
            })
            .await
            .unwrap();
        assert_eq!(threads, 1);
        assert!(
            joined_on.iter().all(|id| *id == joined_on[0]),
            "{joined_on:?}"
        );
        // One worker: its pool spans every core (the worker and cores - 1 helpers).
        let single = pool(1, 4);
        assert_eq!(single.config().kernel_threads(), cores);
        let (threads, sum) = single
            .run(later(), |_| {
                let (a, b) = rayon::join(|| 1, || 2);
                (rayon::current_num_threads(), a + b)
            })
            .await
            .unwrap();
        assert_eq!((threads, sum), (cores, 3));
    }

    #[tokio::test]
    async fn full_queue_is_refused_immediately() {
        let pool = pool(1, 1);
        let (release, first) = block_worker(&pool).await;
        let queued = pool.submit(later(), |_| 2).unwrap();
        assert_eq!(pool.stats().queue_depth.load(Ordering::Relaxed), 1);
        let refused = pool.submit(later(), |_| 3);
        assert!(matches!(
            refused,
            Err(RuntimeError::QueueFull { capacity: 1 })
        ));
        assert_eq!(pool.stats().rejected_queue_full.load(Ordering::Relaxed), 1);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_request_s_jobs_are_admitted_together_as_one_waiting_request() {
        let pool = pool(1, 1);
        let (release, first) = block_worker(&pool).await;
        // Three jobs, one place: admitted whole.
        let group = pool
            .submit_all(later(), (1..=3).map(|n| move |_: &Deadline| n).collect())
            .unwrap();
        assert_eq!(pool.stats().queue_depth.load(Ordering::Relaxed), 3);
        // The queue is full: another request is refused whole, a single job too.
        let refused = pool.submit_all(later(), vec![|_: &Deadline| 4, |_: &Deadline| 5]);
        assert!(matches!(
            refused,
            Err(RuntimeError::QueueFull { capacity: 1 })
        ));
        assert!(pool.submit(later(), |_| 6).is_err());
        assert_eq!(pool.stats().rejected_queue_full.load(Ordering::Relaxed), 2);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let mut results = Vec::new();
        for receiver in group {
            results.push(receiver.await.unwrap().unwrap());
        }
        assert_eq!(results, [1, 2, 3]);
        // Once a worker took its first job the request no longer waits: its place is free.
        assert_eq!(pool.run(later(), |_| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn idle_workers_run_one_request_s_jobs_side_by_side() {
        let pool = pool(2, 1);
        // Each job waits for the other: both finish only if two workers run them at once.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let jobs = (0..2)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                move |_: &Deadline| {
                    barrier.wait();
                    thread::current().name().map(str::to_owned)
                }
            })
            .collect();
        let mut names = Vec::new();
        for receiver in pool.submit_all(later(), jobs).unwrap() {
            let result = tokio::time::timeout(Duration::from_secs(10), receiver).await;
            names.push(result.unwrap().unwrap().unwrap().unwrap());
        }
        assert_ne!(names[0], names[1]);
    }

    #[tokio::test]
    async fn a_request_whose_jobs_are_dropped_unrun_gives_its_place_back() {
        let pool = pool(1, 1);
        let (release, first) = block_worker(&pool).await;
        let group = pool
            .submit_all(later(), vec![|_: &Deadline| 1, |_: &Deadline| 2])
            .unwrap();
        drop(group);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        // Both abandoned jobs are taken and skipped; then the place is free again.
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.stats().abandoned.load(Ordering::Relaxed) < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(pool.run(later(), |_| 3).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn job_expired_in_queue_is_answered_without_running() {
        let pool = pool(1, 2);
        let (release, _first) = block_worker(&pool).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let ran_in_job = Arc::clone(&ran);
        let expired = pool
            .submit(Deadline::after(Duration::ZERO), move |_| {
                ran_in_job.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        release.send(()).unwrap();
        assert!(matches!(
            expired.await.unwrap(),
            Err(RuntimeError::DeadlineExceeded)
        ));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(pool.stats().expired_in_queue.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn abandoned_job_is_skipped() {
        let pool = pool(1, 2);
        let (release, _first) = block_worker(&pool).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let ran_in_job = Arc::clone(&ran);
        let abandoned = pool
            .submit(later(), move |_| {
                ran_in_job.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        drop(abandoned);
        release.send(()).unwrap();
        // FIFO: once this job has run, the abandoned one has been taken and skipped.
        pool.run(later(), |_| ()).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(pool.stats().abandoned.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn panic_is_reported_and_worker_survives() {
        let pool = pool(1, 1);
        let result: Result<(), _> = pool.run(later(), |_| panic!("boom")).await;
        assert!(matches!(result, Err(RuntimeError::JobPanicked(message)) if message == "boom"));
        assert_eq!(pool.run(later(), |_| 41 + 1).await.unwrap(), 42);
        assert_eq!(pool.stats().panicked.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn run_gives_up_at_the_deadline() {
        let pool = pool(1, 1);
        let (_release, _first) = block_worker(&pool).await;
        let result = pool
            .run(Deadline::after(Duration::from_millis(20)), |_| ())
            .await;
        assert!(matches!(result, Err(RuntimeError::DeadlineExceeded)));
    }

    #[tokio::test]
    async fn dropping_the_caller_cancels_the_running_job() {
        let pool = pool(1, 1);
        let (started_tx, started_rx) = oneshot::channel();
        let (stopped_tx, stopped_rx) = mpsc::channel();
        let cancel = Cancellation::with_deadline(later().instant());
        let run = pool.run_cancellable(later(), cancel.clone(), move |cancel| {
            let _ = started_tx.send(());
            while cancel.check().is_ok() {
                thread::sleep(Duration::from_millis(1));
            }
            let _ = stopped_tx.send(());
        });
        tokio::select! {
            _ = run => panic!("the job cannot finish before its caller goes away"),
            _ = started_rx => {}
        }
        // `run` is dropped here: the job sees the cancellation at its next check.
        stopped_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the job stops once its caller is gone");
        assert!(cancel.caller_gone());
    }

    #[tokio::test]
    async fn the_deadline_reaches_a_running_job() {
        let pool = pool(1, 1);
        let deadline = Deadline::after(Duration::from_millis(30));
        let cancel = Cancellation::with_deadline(deadline.instant());
        let (stopped_tx, stopped_rx) = mpsc::channel();
        let result = pool
            .run_cancellable(deadline, cancel, move |cancel| {
                while cancel.check().is_ok() {
                    thread::sleep(Duration::from_millis(1));
                }
                let _ = stopped_tx.send(Instant::now());
            })
            .await;
        // The job may stop and answer just before the waiting side times out: either is fine,
        // what matters is that it stopped at the deadline instead of running on.
        assert!(matches!(
            result,
            Err(RuntimeError::DeadlineExceeded) | Ok(())
        ));
        let stopped = stopped_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the job stops at the deadline");
        assert!(stopped >= deadline.instant());
    }

    #[tokio::test]
    async fn queue_depth_and_rejections_reach_the_metrics() {
        let metrics = Metrics::new();
        let pool = InferencePool::with_metrics(
            "test",
            PoolConfig {
                threads: 1,
                queue_capacity: 1,
            },
            metrics.clone(),
        )
        .unwrap();
        let (release, first) = block_worker(&pool).await;
        let queued = pool.submit(later(), |_| ()).unwrap();
        assert!(pool.submit(later(), |_| ()).is_err());
        let text = metrics.encode().unwrap();
        assert!(text.contains("faceproof_inference_queue_depth 1"), "{text}");
        assert!(
            text.contains("faceproof_inference_queue_rejected_total 1"),
            "{text}"
        );
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        let text = metrics.encode().unwrap();
        assert!(text.contains("faceproof_inference_queue_depth 0"), "{text}");
    }

    #[test]
    fn rejects_empty_configuration() {
        assert!(
            InferencePool::new(
                "x",
                PoolConfig {
                    threads: 0,
                    queue_capacity: 1
                }
            )
            .is_err()
        );
        assert!(
            InferencePool::new(
                "x",
                PoolConfig {
                    threads: 1,
                    queue_capacity: 0
                }
            )
            .is_err()
        );
    }
}

//! The per-request plumbing every model-service handler shares: the request's deadline from its
//! `grpc-timeout`, the engine run on the inference pool under a [`Cancellation`], and the failure
//! logged and sent as a status with rich details. The handler keeps only its own request checks,
//! engine call and proto mapping. A request made of independent parts (a comparison's probe and
//! gallery images) runs them as separate jobs ([`Inference::run_each`]) so idle workers share it.

use std::sync::Arc;

use faceproof_imaging::Cancellation;
use tonic::{Request, Response, Status};

use crate::deadline::{Deadline, DeadlinePolicy};
use crate::error::ServiceError;
use crate::pool::{CancelOnDrop, InferencePool, wait_for};

/// An engine, the pool its work runs on and the deadline rules; cheap to clone.
pub struct Inference<E: ?Sized> {
    engine: Arc<E>,
    pool: Arc<InferencePool>,
    deadlines: DeadlinePolicy,
}

impl<E: ?Sized> Clone for Inference<E> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            pool: Arc::clone(&self.pool),
            deadlines: self.deadlines,
        }
    }
}

impl<E: ?Sized> std::fmt::Debug for Inference<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference")
            .field("pool", &self.pool.config())
            .field("deadlines", &self.deadlines)
            .finish_non_exhaustive()
    }
}

impl<E: ?Sized + Send + Sync + 'static> Inference<E> {
    pub fn new(engine: Arc<E>, pool: Arc<InferencePool>, deadlines: DeadlinePolicy) -> Self {
        Self {
            engine,
            pool,
            deadlines,
        }
    }

    /// The request's deadline (taken first, so the budget counts from arrival) and its message.
    pub fn accept<T>(&self, request: Request<T>) -> (Deadline, T) {
        let deadline = self.deadlines.deadline_for(request.metadata());
        (deadline, request.into_inner())
    }

    /// Runs `infer` on the pool and waits for it until `deadline`. The job's [`Cancellation`]
    /// expires at the deadline and is cancelled when this future is dropped (the caller went
    /// away); it comes back with the engine's output so an engine error that says "stopped" can
    /// be told apart ([`ServiceError::stopped`]). Queue full, deadline passed in the queue, a
    /// panicking job or a closed pool are already answered here.
    pub async fn run<Job, Out>(
        &self,
        deadline: Deadline,
        job: Job,
        infer: fn(&E, Job, &Cancellation) -> Out,
    ) -> Result<(Out, Cancellation), ServiceError>
    where
        Job: Send + 'static,
        Out: Send + 'static,
    {
        let engine = Arc::clone(&self.engine);
        let cancel = Cancellation::with_deadline(deadline.instant());
        let output = self
            .pool
            .run_cancellable(deadline, cancel.clone(), move |cancel| {
                infer(&engine, job, cancel)
            })
            .await?;
        Ok((output, cancel))
    }
}

impl<E: ?Sized + Send + Sync + 'static> Inference<E> {
    /// Runs `infer` once per job, each job on its own on the pool: idle workers run one
    /// request's jobs side by side, busy ones take them in turn (no extra work, no extra
    /// threads). The jobs are queued together as one request (all, or RESOURCE_EXHAUSTED).
    ///
    /// The answer is the outputs in order, or the first failure in job order, exactly as if the
    /// jobs had run one after another and stopped at the first failure: a failing job cancels
    /// the jobs after it (they can no longer change the answer) but never those before it. Each
    /// job's [`Cancellation`] expires at `deadline` and is cancelled when this future returns or
    /// is dropped; a failure comes back with its job's token, as [`Self::run`] does. A job no
    /// worker has taken by then is skipped unrun (its receiver is gone). A panicking job is a
    /// failure like any other, answered INTERNAL ([`crate::RuntimeError::JobPanicked`]); its worker
    /// lives on.
    pub async fn run_each<Job, T, Fail>(
        &self,
        deadline: Deadline,
        jobs: Vec<Job>,
        infer: fn(&E, Job, &Cancellation) -> Result<T, Fail>,
    ) -> Result<Result<Vec<T>, (Fail, Cancellation)>, ServiceError>
    where
        Job: Send + 'static,
        T: Send + 'static,
        Fail: Send + 'static,
    {
        let tokens: Arc<[Cancellation]> = jobs
            .iter()
            .map(|_| Cancellation::with_deadline(deadline.instant()))
            .collect();
        // Every job stops at its next check once this future returns or is dropped.
        let _guards: Vec<CancelOnDrop> = tokens.iter().cloned().map(CancelOnDrop).collect();
        let works = jobs
            .into_iter()
            .enumerate()
            .map(|(index, job)| {
                let engine = Arc::clone(&self.engine);
                let tokens = Arc::clone(&tokens);
                move |_: &Deadline| {
                    // Disarmed on success; a failure (or a panic) stops the jobs after this one.
                    let mut on_failure = CancelAfter {
                        tokens: &tokens,
                        index,
                        armed: true,
                    };
                    let output = infer(&engine, job, &tokens[index]);
                    on_failure.armed = output.is_err();
                    output
                }
            })
            .collect();
        let receivers = self.pool.submit_all(deadline, works)?;
        let mut outputs = Vec::with_capacity(receivers.len());
        for (receiver, token) in receivers.into_iter().zip(tokens.iter()) {
            match wait_for(deadline, receiver).await? {
                Ok(output) => outputs.push(output),
                Err(failure) => return Ok(Err((failure, token.clone()))),
            }
        }
        Ok(Ok(outputs))
    }
}

/// Cancels the jobs after `index` when dropped armed: job `index` failed or panicked.
struct CancelAfter<'a> {
    tokens: &'a [Cancellation],
    index: usize,
    armed: bool,
}

impl Drop for CancelAfter<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for token in self.tokens.iter().skip(self.index + 1) {
            token.cancel();
        }
    }
}

/// The gRPC answer of one call named `call` (e.g. "compare"): the response, or the failure
/// logged (code and reason) and sent as a status with its details.
pub fn respond<T>(call: &str, result: Result<T, ServiceError>) -> Result<Response<T>, Status> {
    match result {
        Ok(response) => Ok(Response::new(response)),
        Err(error) => {
            tracing::info!(code = ?error.code, reason = %error.reason, "{call} failed");
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;
    use crate::pool::PoolConfig;

    struct Doubler;

    fn inference() -> Inference<Doubler> {
        let pool = InferencePool::new(
            "test",
            PoolConfig {
                threads: 1,
                queue_capacity: 1,
            },
        )
        .unwrap();
        Inference::new(
            Arc::new(Doubler),
            Arc::new(pool),
            DeadlinePolicy {
                default: Duration::from_secs(5),
                max: Duration::from_secs(10),
            },
        )
    }

    #[tokio::test]
    async fn runs_the_job_under_the_request_deadline() {
        let inference = inference();
        let mut request = Request::new(21_u32);
        request.set_timeout(Duration::from_secs(2));
        let (deadline, message) = inference.accept(request);
        assert!(deadline.remaining() <= Duration::from_secs(2));
        let (output, cancel) = inference
            .run(deadline, message, |_: &Doubler, job, cancel| {
                (job * 2, cancel.check().is_ok())
            })
            .await
            .unwrap();
        assert_eq!(output, (42, true));
        // The job is over: its token is cancelled so late checks stop.
        assert!(cancel.is_cancelled());
    }

    #[tokio::test]
    async fn a_passed_deadline_is_answered_without_running() {
        let inference = inference();
        let expired = Deadline::after(Duration::ZERO);
        let error = inference
            .run(expired, 1_u32, |_: &Doubler, job, _| job)
            .await
            .unwrap_err();
        assert_eq!(Status::from(error).code(), Code::DeadlineExceeded);
    }

    fn pool_of(threads: usize) -> Inference<Doubler> {
        let pool = InferencePool::new(
            "test",
            PoolConfig {
                threads,
                queue_capacity: 1,
            },
        )
        .unwrap();
        Inference::new(Arc::new(Doubler), Arc::new(pool), inference().deadlines)
    }

    /// `n` doubles; `0` fails at once; `1` waits until cancelled; `3` fails after 200 ms of
    /// work; `7` panics. A job that saw its cancellation fails with `u32::MAX`.
    fn script(_: &Doubler, job: u32, cancel: &Cancellation) -> Result<u32, u32> {
        let work = |milliseconds: u32| {
            for _ in 0..milliseconds {
                cancel.check().map_err(|_| u32::MAX)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        };
        match job {
            0 => Err(0),
            1 => work(u32::MAX).and(Err(u32::MAX)),
            3 => work(200).and(Err(3)),
            7 => panic!("scripted engine panic"),
            n => Ok(n * 2),
        }
    }

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(10))
    }

    #[tokio::test]
    async fn run_each_answers_the_outputs_in_order() {
        let outputs = pool_of(2)
            .run_each(soon(), vec![2, 4, 5, 6], script)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outputs, [4, 8, 10, 12]);
    }

    #[tokio::test]
    async fn a_failure_stops_the_jobs_after_it_and_is_the_answer() {
        // The waiting job after the failure is cancelled; the answer is the failure, not the
        // cancellation it caused, on one worker and on two.
        for threads in [1, 2] {
            let (failure, _) = pool_of(threads)
                .run_each(soon(), vec![2, 0, 1], script)
                .await
                .unwrap()
                .unwrap_err();
            assert_eq!(failure, 0, "{threads} workers");
        }
    }

    #[tokio::test]
    async fn the_first_failure_in_job_order_wins_whichever_ends_first() {
        // Job 0 works for 200 ms then fails; job 1 fails at once on the other worker. Job 1 must
        // not stop job 0: the answer is job 0's own failure, as if run one after another.
        let (failure, _) = pool_of(2)
            .run_each(soon(), vec![3, 0], script)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(failure, 3);
    }

    #[tokio::test]
    async fn a_panicking_job_is_internal_and_frees_its_worker() {
        // One worker: the job after the panic (it would wait for its cancellation forever) is
        // skipped or stopped, so the next request is served; the panic text stays in the log.
        let inference = pool_of(1);
        let error = inference
            .run_each(soon(), vec![2, 7, 1], script)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(error.code, crate::error::ErrorCode::Internal);
        assert!(!error.message.contains("scripted"), "{}", error.message);
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            inference.run_each(soon(), vec![2], script),
        )
        .await
        .expect("the worker is free again");
        assert_eq!(next.unwrap().unwrap(), [4]);
    }

    #[test]
    fn failures_become_statuses_with_their_reason() {
        let status = respond::<()>("test", Err(ServiceError::deadline_exceeded())).unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(respond("test", Ok(7)).unwrap().into_inner(), 7);
    }
}

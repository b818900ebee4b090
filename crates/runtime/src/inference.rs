//! The per-request plumbing every model-service handler shares: the request's deadline from its
//! `grpc-timeout`, the engine run on the inference pool under a [`Cancellation`], and the failure
//! logged and sent as a status with rich details. The handler keeps only its own request checks,
//! engine call and proto mapping.

use std::sync::Arc;

use faceproof_imaging::Cancellation;
use tonic::{Request, Response, Status};

use crate::deadline::{Deadline, DeadlinePolicy};
use crate::error::ServiceError;
use crate::pool::InferencePool;

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

    #[test]
    fn failures_become_statuses_with_their_reason() {
        let status = respond::<()>("test", Err(ServiceError::deadline_exceeded())).unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(respond("test", Ok(7)).unwrap().into_inner(), 7);
    }
}

//! The test kit every API test of faceproof shares (a dev-dependency only, never shipped):
//! - [`model_service`]: the matcher or the liveness service started in-process on `127.0.0.1:0`
//!   with the real models, and clients for it;
//! - [`fake_backend`]: scripted matcher and liveness backends for the gateway's tests;
//! - [`net`]: addresses for "nothing answers there" that cannot race with other processes.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod fake_backend;
pub mod model_service;
pub mod net;

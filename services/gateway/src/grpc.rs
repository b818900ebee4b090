//! The gRPC front end: `faceproof.gateway.v1.FaceVerification`.

use std::sync::Arc;

use faceproof_proto::gateway::v1 as pb;
use faceproof_proto::gateway::v1::face_verification_server::FaceVerification;
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, ClientId};
use crate::error::ServiceError;
use crate::service::Gateway;

pub struct GrpcApi {
    gateway: Arc<Gateway>,
}

impl GrpcApi {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl FaceVerification for GrpcApi {
    async fn compare_with_liveness(
        &self,
        request: Request<pb::CompareWithLivenessRequest>,
    ) -> Result<Response<pb::CompareWithLivenessResponse>, Status> {
        // The authentication layer put the client there; without it the call did not pass the
        // layer, so refuse rather than serve an anonymous caller.
        let client = request
            .extensions()
            .get::<ClientId>()
            .cloned()
            .ok_or(ServiceError::Unauthenticated(AuthError::MissingToken))?;
        let caller_timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            // An unreadable value is ignored (the gateway's own deadline applies), as tonic does.
            .and_then(|value| faceproof_runtime::parse_grpc_timeout(value).ok());
        let response = self
            .gateway
            .compare_with_liveness(&client, request.into_inner(), caller_timeout)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_signing_keys(
        &self,
        _request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        Ok(Response::new(self.gateway.signing_keys()))
    }
}

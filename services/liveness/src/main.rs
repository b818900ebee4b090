//! faceproof liveness service binary: everything happens in the runtime host
//! ([`faceproof_runtime::host::main`]) for [`faceproof_liveness::Liveness`].

fn main() -> anyhow::Result<()> {
    faceproof_runtime::host::main::<faceproof_liveness::Liveness>()
}

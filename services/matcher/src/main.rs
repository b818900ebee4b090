//! faceproof matcher service binary: everything happens in the runtime host
//! ([`faceproof_runtime::host::main`]) for [`faceproof_matcher::Matcher`].

fn main() -> anyhow::Result<()> {
    faceproof_runtime::host::main::<faceproof_matcher::Matcher>()
}

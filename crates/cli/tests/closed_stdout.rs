//! Output into a pipe whose reader is gone (`faceproof models list | head -0`) ends the command
//! quietly with the SIGPIPE status instead of a panic and a backtrace.

use std::process::{Command, Stdio};

#[test]
fn closed_stdout_ends_with_sigpipe_status_not_a_panic() {
    let store = tempfile::tempdir().expect("temp dir");
    let (reader, writer) = std::io::pipe().expect("pipe");
    // Closed before the command starts: its first write fails with EPIPE, deterministically.
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_faceproof"))
        .args(["models", "list", "--model-dir"])
        .arg(store.path())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run faceproof");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

